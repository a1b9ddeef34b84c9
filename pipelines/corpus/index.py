"""The dedup index of a corpus version: what a later refresh probes instead of reading documents.

    index/index.json              settings a prober must share (n-gram, bands, rows, seed, partitions)
    index/exact/part-PPPPP.parquet       exact_hash uint64, doc int64     (partition of exact_hash)
    index/bands/part-PPPPP.parquet       bucket uint64, doc int64         (partition of bucket key)
    index/signatures/part-PPPPP.parquet  doc int64, sig list<uint32>[n]   (partition of doc)

`doc` is the document id as a number (id == f"{doc:016x}"); only kept documents are indexed. A
new document's exact hash, band buckets or id fall in one partition each, so a prober reads the
part files of the partitions it has rows for, and never a document. A refreshed corpus version
(pipelines/refresh/stage.py) holds its parent's part files plus one `part-PPPPP-gNNNN.parquet` per
partition for each refresh generation NNNN: a partition is all of its files.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import CorpusConfig
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError

KINDS = ("exact", "bands", "signatures")
INDEX_VERSION = 1


def settings(cfg: CorpusConfig) -> dict:
    return {
        "version": INDEX_VERSION,
        "ngram": cfg.ngram,
        "bands": cfg.bands,
        "rows": cfg.rows,
        "minhash_seed": cfg.minhash_seed,
        "partitions": cfg.partitions,
    }


def part_path(index_dir: str, kind: str, part: int) -> str:
    return posixpath.join(index_dir, kind, f"part-{part:05d}.parquet")


def check_compatible(ws: Workspace, corpus_dirs: list[str], cfg: CorpusConfig) -> list[str]:
    """The index dirs of `corpus_dirs`, after checking that their settings match `cfg`."""
    wanted = settings(cfg)
    dirs = []
    for corpus in corpus_dirs:
        meta_rel = posixpath.join(corpus, "index", "index.json")
        if not ws.exists(meta_rel):
            raise UserError(f"corpus {ws.full_uri(corpus)} has no index/index.json to deduplicate against")
        meta = ws.read_json(meta_rel)
        if meta != wanted:
            diff = sorted(k for k in wanted if meta.get(k) != wanted[k])
            raise UserError(f"corpus index {ws.full_uri(meta_rel)} was built with other settings: {diff}")
        dirs.append(posixpath.join(corpus, "index"))
    return dirs


def write_part(ws: Workspace, index_dir: str, kind: str, part: int, columns: dict[str, np.ndarray]) -> None:
    arrays = {}
    for name, values in columns.items():
        if values.ndim == 2:  # signatures: one fixed-size list per row
            flat = pa.array(values.ravel())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        else:
            arrays[name] = pa.array(values)
    path = part_path(index_dir, kind, part)
    ws.makedirs(posixpath.dirname(path))
    pq.write_table(pa.table(arrays), ws.path(path), filesystem=ws.fs)


def part_files(ws: Workspace, index_dir: str, kind: str, part: int) -> list[str]:
    """Every file of one partition: part-PPPPP.parquet and the refresh generations' part-PPPPP-g*."""
    folder = posixpath.join(index_dir, kind)
    name = posixpath.basename(part_path(index_dir, kind, part))
    stem = name.removesuffix(".parquet")
    return [
        posixpath.join(folder, f)
        for f in ws.list_files(folder)
        if f == name or (f.startswith(f"{stem}-") and f.endswith(".parquet") and "/" not in f)
    ]


def read_part(ws: Workspace, index_dirs: list[str], kind: str, part: int) -> dict[str, np.ndarray] | None:
    """One partition of `kind` over several indexes (concatenated), or None when none has rows."""
    tables = [
        pq.read_table(ws.path(p), filesystem=ws.fs) for d in index_dirs for p in part_files(ws, d, kind, part)
    ]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    table = pa.concat_tables(tables)
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            out[name] = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        else:
            out[name] = column.to_numpy()
    return out
