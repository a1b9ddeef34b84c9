"""The shards' document index: which documents a shard file holds, and where their tokens are.

Beside each `<split>-NNNNN.arrow` the shards stage writes `<split>-NNNNN.docs.parquet`: one row per
document of that file, in file order, with its corpus `id`, `source` (input file name), `source_id`
(the record's id in that file; null for corpora built before it was kept) and its token range
[`start`, `stop`) in the file's token column, the trailing EOS included. The ranges tile the file.
The manifest names each file's index (splits[split].files[i].doc_index) and checksums it.

    index = read_doc_index(ws, shards_rel)               # split, file, id, source, source_id, start, stop
    tokens = doc_tokens(ws, shards_rel, "train-00000.arrow", start, stop)
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.manifest import read_manifest
from pipelines.core.workspace import Workspace
from pipelines.errors import MissingIndex, UserError

DOC_COLUMNS = ("id", "source", "source_id")  # what the index keeps of a corpus document
INDEX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("stop", pa.int64(), nullable=False),
    ]
)
# Fixed options, so the same documents give the same bytes (and sha256) on every run.
WRITE_OPTIONS = {"compression": "zstd", "compression_level": 3, "use_dictionary": ["source"]}


def index_name(shard_name: str) -> str:
    """`train-00000.arrow` -> `train-00000.docs.parquet`."""
    return shard_name.removesuffix(".arrow") + ".docs.parquet"


def write_doc_index(ws: Workspace, rel: str, docs: pa.Table, doc_tokens: np.ndarray) -> None:
    """Write the index of one shard file: `docs` (DOC_COLUMNS, in file order) and each one's token count."""
    stops = np.cumsum(doc_tokens, dtype=np.int64)
    columns = [docs.column(c).cast(pa.string()) for c in DOC_COLUMNS]
    table = pa.Table.from_arrays(
        [*columns, pa.array(stops - doc_tokens), pa.array(stops)], schema=INDEX_SCHEMA
    )
    pq.write_table(table, ws.path(rel), filesystem=ws.fs, row_group_size=len(table) or 1, **WRITE_OPTIONS)


def read_doc_index(ws: Workspace, shards_rel: str, ids: list[str] | None = None) -> pa.Table:
    """Every document of the shards `shards_rel` (or only those with an id in `ids`): columns split,
    file (the .arrow name) and the index's own, over the manifest's files in split and file order."""
    manifest = read_manifest(ws, shards_rel)
    if manifest is None:
        raise UserError(f"shards {ws.full_uri(shards_rel)} are not published (no manifest.json)")
    entries = [(split, f) for split, info in manifest["splits"].items() for f in info["files"]]
    unindexed = [f["name"] for _, f in entries if "doc_index" not in f]
    if unindexed:
        raise MissingIndex(
            f"shards {ws.full_uri(shards_rel)} have no document index for {len(unindexed)} of their "
            f"{len(entries)} files (built before there was one): rebuild the shards"
        )
    where = pc.field("id").isin(ids) if ids is not None else None
    tables = [_file_index(ws, shards_rel, split, f, where) for split, f in entries]
    if not tables:
        return pa.schema([("split", pa.string()), ("file", pa.string()), *INDEX_SCHEMA]).empty_table()
    return pa.concat_tables(tables)


def _file_index(ws: Workspace, shards_rel: str, split: str, entry: dict, where) -> pa.Table:
    path = ws.path(posixpath.join(shards_rel, entry["doc_index"]))
    table = pq.read_table(path, filesystem=ws.fs, filters=where, partitioning=None)
    table = table.add_column(0, "file", pa.array([entry["name"]] * len(table), pa.string()))
    return table.add_column(0, "split", pa.array([split] * len(table), pa.string()))


def doc_tokens(ws: Workspace, shards_rel: str, file: str, start: int, stop: int) -> np.ndarray:
    """tokens[start:stop] of the shard file `file` (a copy): only the record batches that hold the
    range are read, memory-mapped on a local workspace (gpt2core/data.py reads the files the same way)."""
    path = ws.path(posixpath.join(shards_rel, file))
    parts, offset = [], 0
    with pa.memory_map(path) if ws.is_local else ws.fs.open_input_file(path) as source:
        reader = pa.ipc.open_file(source)
        dtype = reader.schema.field(0).type.to_pandas_dtype()
        for i in range(reader.num_record_batches):
            if offset >= stop:
                break
            column = reader.get_batch(i).column(0)
            low, high = max(start - offset, 0), min(stop - offset, len(column))
            if low < high:
                parts.append(column.slice(low, high - low).to_numpy().copy())
            offset += len(column)
    if not 0 <= start <= stop or sum(len(p) for p in parts) != stop - start:
        raise UserError(f"{ws.full_uri(posixpath.join(shards_rel, file))}: no tokens [{start}, {stop}) in it")
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
