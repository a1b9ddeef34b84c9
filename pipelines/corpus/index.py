"""The dedup index of a corpus version: what a later refresh probes instead of reading documents.

    index/index.json              settings a prober must share (n-gram, bands, rows, seed, partitions)
    index/exact/part-PPPPP.parquet       exact_hash uint64, doc int64     (partition of exact_hash)
    index/bands/part-PPPPP.parquet       bucket uint64, doc int64         (partition of bucket key)
    index/signatures/part-PPPPP.parquet  doc int64, sig list<uint32>[n]   (partition of doc)
    index/ngrams/part-PPPPP.parquet      doc int64, hashes list<uint64>   (partition of doc)
    index/records/part-PPPPP.parquet     doc int64, source, source_id     (partition of doc)

`doc` is the document id as a number (id == f"{doc:016x}"); only kept documents are indexed. A
new document's exact hash, band buckets or id fall in one partition each, so a prober reads the
part files of the partitions it has rows for, and never a document. A refreshed corpus version
(pipelines/refresh/stage.py) holds its parent's part files plus one `part-PPPPP-gNNNN.parquet` per
partition for each refresh generation NNNN: a partition is all of its files.

`ngrams` holds, per kept document, `sampled(ngram_hashes(text, n), keep_bits)`
(pipelines/core/ngrams.py; n = corpus.decontaminate_ngram, keep_bits = NGRAM_KEEP_BITS, both in
index.json): one in 2**keep_bits of its word n-grams, the same ones in every document, so two
documents' samples intersect where their n-gram sets do. Other stages read it with
core/ngrams.read_ngrams (the shards' val split, the contamination gate).
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import CorpusConfig
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError

KINDS = ("exact", "bands", "signatures", "ngrams", "records")
INDEX_VERSION = 2  # 2: index/ngrams and index/records
NGRAM_KEEP_BITS = 3  # index/ngrams keeps one n-gram in 8


def settings(cfg: CorpusConfig) -> dict:
    return {
        "version": INDEX_VERSION,
        "ngram": cfg.ngram,
        "bands": cfg.bands,
        "rows": cfg.rows,
        "minhash_seed": cfg.minhash_seed,
        "partitions": cfg.partitions,
        "ngrams": {"n": cfg.decontaminate_ngram, "keep_bits": NGRAM_KEEP_BITS},
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
    """One part file, its rows sorted by its flat columns (the first is the primary key): the rows
    arrive in the order of the staging rows, which a busy cluster may change; the files may not."""
    keys = [v for v in columns.values() if v.ndim == 1]
    order = np.lexsort(keys[::-1]) if keys and len(keys[0]) else np.zeros(0, np.int64)
    columns = {name: values[order] for name, values in columns.items()}
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
            out[name] = column.to_numpy(zero_copy_only=False)  # strings (index/records) copy
    return out


def records_of(ws: Workspace, index_dirs: list[str], docs: np.ndarray, parts: int) -> dict[int, tuple]:
    """(source, source_id) of each kept document number in `docs`, from index/records of
    `index_dirs` (read only the partitions `docs` fall in)."""
    from pipelines.corpus.shuffle import partition_of

    docs = np.unique(np.asarray(docs, np.int64))
    found: dict[int, tuple] = {}
    for part in np.unique(partition_of(docs.astype(np.uint64), parts)).tolist():
        rows = read_part(ws, index_dirs, "records", int(part))
        if rows is None:
            continue
        hit = np.isin(rows["doc"], docs)
        for doc, source, source_id in zip(rows["doc"][hit], rows["source"][hit], rows["source_id"][hit]):
            found[int(doc)] = (source, source_id)
    return found
