"""The kept documents' part of index/ (see index.py), partitioned by document number like
index/signatures, in two Ray rounds once dedup has decided:

  index/ngrams   doc, hashes: the sampled n-gram hashes (what contamination checks compare)
  index/records  doc, source, source_id: where the document came from (what a reject's
                 `duplicate_of` is resolved with, in this version and in later refreshes)

  scan   per group of staging files (those with fidx % P == g, whose dedup decisions sit in the
         same partition of DedupResult.decisions): the kept rows split by partition
  write  per partition: one part file of each kind, rows sorted by doc

The hashes were computed by the per-document step (process.py, staging column `ngrams`), so no
document text is read again; the driver holds only object references.
"""

from __future__ import annotations

import posixpath

import numpy as np

from pipelines.core.workspace import Workspace
from pipelines.corpus import index as corpus_index
from pipelines.corpus.shuffle import concat, partition_of, remote, returns

COLUMNS = ("key", "reason", "ngrams", "source", "source_id")


def _empty() -> dict:
    return {
        "doc": np.zeros(0, np.int64),
        "count": np.zeros(0, np.int64),
        "hashes": np.zeros(0, np.uint64),
        "source": np.zeros(0, object),
        "source_id": np.zeros(0, object),
    }


def _kept(table, decisions: dict, fidx: int) -> np.ndarray:
    """Which rows of staging file `fidx` are published as kept (not rejected, not a duplicate)."""
    import pyarrow.compute as pc

    mine = decisions["fidx"] == fidx
    dropped = np.isin(table["key"].to_numpy(), decisions["key"][mine])
    return pc.is_null(table["reason"]).to_numpy(zero_copy_only=False) & ~dropped


def scan_kept(files: list[tuple[int, str]], ws_uri: str, parts: int, *decision_chunks):
    """The kept documents of some staging files ((fidx, path) each), as `parts` chunks (see
    _empty) by partition of the document number."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ws = Workspace(ws_uri)
    like = {k: np.zeros(0, np.int64) for k in ("key", "dup_of", "fidx")} | {"kind": np.zeros(0, np.int8)}
    decisions = concat(list(decision_chunks), like)
    tables = []
    for fidx, rel in files:
        table = pq.read_table(ws.path(rel), filesystem=ws.fs, columns=list(COLUMNS))
        tables.append(table.filter(pa.array(_kept(table, decisions, fidx))))
    if not tables:
        return returns([_empty() for _ in range(parts)])
    kept = pa.concat_tables(tables)
    lists = kept["ngrams"].combine_chunks()
    doc = kept["key"].to_numpy().astype(np.int64)
    count = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    hashes = lists.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)
    source = np.array(kept["source"].to_pylist(), object)
    source_id = np.array(kept["source_id"].to_pylist(), object)
    part = partition_of(doc.astype(np.uint64), parts)  # as index/signatures: by document number
    owner = np.repeat(part, count)
    return returns(
        [
            {
                "doc": doc[part == p],
                "count": count[part == p],
                "hashes": hashes[owner == p],
                "source": source[part == p],
                "source_id": source_id[part == p],
            }
            for p in range(parts)
        ]
    )


def write_kept_part(ws_uri: str, out_index: str, part: int, *chunks) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = concat(list(chunks), _empty())
    order = np.argsort(rows["doc"], kind="stable")
    offsets = np.concatenate([[0], np.cumsum(rows["count"])]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(rows["hashes"], pa.uint64()))
    docs = pa.array(rows["doc"], pa.int64())
    tables = {
        "ngrams": pa.table({"doc": docs, "hashes": lists}),
        "records": pa.table(
            {
                "doc": docs,
                "source": pa.array(rows["source"], pa.string()),
                "source_id": pa.array(rows["source_id"], pa.string()),
            }
        ),
    }
    ws = Workspace(ws_uri)
    for kind, table in tables.items():
        path = corpus_index.part_path(out_index, kind, part)
        ws.makedirs(posixpath.dirname(path))
        pq.write_table(table.take(pa.array(order)), ws.path(path), filesystem=ws.fs)
    return len(order)


def write_kept_index(ws_uri: str, staged: list[str], decisions: list, parts: int, out_index: str) -> None:
    """Both rounds, done when this returns. `decisions`: DedupResult.decisions (per partition p: refs
    of the decisions of staging files fidx % P == p)."""
    import ray

    files = list(enumerate(staged))
    scans = [
        remote(scan_kept).options(num_returns=parts).remote(files[g::parts], ws_uri, parts, *decisions[g])
        for g in range(min(parts, len(files)))
    ]
    scans = [s if parts > 1 else [s] for s in scans]
    ray.get(
        [remote(write_kept_part).remote(ws_uri, out_index, p, *[s[p] for s in scans]) for p in range(parts)]
    )
