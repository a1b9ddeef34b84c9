"""The last write of a corpus build: each staging file becomes data/part-F.parquet (kept documents)
and rejects/part-F.parquet (dropped ones, with stage, reason, duplicate_of and detail), and reports
its counts, so stats.json is the sum of what was written, not of what was planned. A duplicate
names the document it copies by id and by its input record (duplicate_of_source and _source_id),
looked up in index/records of this build and of the corpora it was deduplicated against."""

from __future__ import annotations

import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.workspace import Workspace
from pipelines.corpus.dedup_tasks import EXACT, FUZZY
from pipelines.corpus.index import records_of
from pipelines.corpus.schema import DOC_SCHEMA, REJECT_SCHEMA, TIMING_COLUMNS
from pipelines.corpus.shuffle import concat

VERDICTS = {EXACT: ("dedup_exact", "exact_duplicate"), FUZZY: ("dedup_fuzzy", "near_duplicate")}


def _hex(keys: pa.Array) -> pa.Array:
    return pa.array([f"{k:016x}" if k is not None else None for k in keys.to_pylist()], pa.string())


def publish_file(
    fidx: int, ws_uri: str, staging_rel: str, out: str, index_dirs: list[str], parts: int, *decision_chunks
) -> dict:
    """`index_dirs`: where index/records of every document a duplicate may copy is (this build's
    index, written before, and the earlier corpora's); `parts`: their partition count."""
    ws = Workspace(ws_uri)
    # By document id: Ray Data keeps a staging file's rows, but not always in input order (a busy
    # cluster reordered them), and the published files must be the same bytes on every run.
    table = pq.read_table(ws.path(staging_rel), filesystem=ws.fs).sort_by("key")
    like = {
        k: np.zeros(0, t)
        for k, t in (("key", np.int64), ("dup_of", np.int64), ("kind", np.int8), ("fidx", np.int64))
    }
    decisions = concat(list(decision_chunks), like)
    mine = decisions["fidx"] == fidx
    dup_keys, dup_of, kinds = decisions["key"][mine], decisions["dup_of"][mine], decisions["kind"][mine]

    # Attach the dedup verdicts to the rows they name.
    keys = table["key"].to_numpy()
    order = np.argsort(dup_keys)
    at = np.searchsorted(dup_keys, keys, sorter=order)
    at = order[np.minimum(at, max(len(order) - 1, 0))] if len(order) else np.zeros(len(keys), np.int64)
    is_dup = (dup_keys[at] == keys) if len(order) else np.zeros(len(keys), bool)
    stage = table["stage"].to_pylist()
    reason = table["reason"].to_pylist()
    duplicate_of: list[int | None] = [None] * len(keys)
    for i in np.flatnonzero(is_dup):
        stage[i], reason[i] = VERDICTS[int(kinds[at[i]])]
        duplicate_of[i] = int(dup_of[at[i]])
    dropped = pa.array([r is not None for r in reason])
    originals = records_of(ws, index_dirs, np.array([d for d in duplicate_of if d is not None]), parts)
    original = [originals.get(d, (None, None)) if d is not None else (None, None) for d in duplicate_of]

    ids = _hex(table["key"])
    kept = table.filter(pc.invert(dropped)).append_column("id", ids.filter(pc.invert(dropped)))
    data = kept.select(DOC_SCHEMA.names).cast(DOC_SCHEMA)
    rejects = pa.table(
        {
            "id": ids.filter(dropped),
            "source": table["source"].filter(dropped),
            "source_id": table["source_id"].filter(dropped),
            "url": table["url"].filter(dropped),
            "stage": pa.array(stage, pa.string()).filter(dropped),
            "reason": pa.array(reason, pa.string()).filter(dropped),
            "duplicate_of": _hex(pa.array(duplicate_of, pa.int64())).filter(dropped),
            "duplicate_of_source": pa.array([o[0] for o in original], pa.string()).filter(dropped),
            "duplicate_of_source_id": pa.array([o[1] for o in original], pa.string()).filter(dropped),
            "detail": table["detail"].filter(dropped),
        },
        schema=REJECT_SCHEMA,
    )
    name = f"part-{fidx:05d}.parquet"
    for sub, part in (("data", data), ("rejects", rejects)):
        ws.makedirs(posixpath.join(out, sub))
        pq.write_table(part, ws.path(posixpath.join(out, sub, name)), filesystem=ws.fs, compression="zstd")

    by_stage = Counter(s for s, r in zip(stage, reason) if r is not None)
    by_reason = Counter(r for r in reason if r is not None)
    records = Counter(table["source"].to_pylist())
    kept_by_source = Counter(data["source"].to_pylist())
    return {
        "input_docs": table.num_rows,
        "kept_docs": data.num_rows,
        "kept_chars": int(pc.sum(pc.utf8_length(data["text"])).as_py() or 0),
        "dropped": dict(by_reason),
        "dropped_by_stage": dict(by_stage),
        "by_source": {s: {"records": n, "kept": kept_by_source[s]} for s, n in sorted(records.items())},
        "recalled_docs": int(pc.sum(table["recalled"]).as_py() or 0),
        "seconds": {c.removeprefix("sec_"): float(pc.sum(table[c]).as_py() or 0.0) for c in TIMING_COLUMNS},
    }
