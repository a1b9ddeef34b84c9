"""Hash partitioning of column batches (dicts of numpy arrays) for the dedup shuffles on Ray.

A map task splits its rows into `n` parts by a key and returns them as `n` separate objects
(num_returns=n); the reduce task for part p receives part p of every map task. Nothing passes
through the driver but object references.
"""

from __future__ import annotations

import functools

import numpy as np

from pipelines.corpus.minhash import mix64

Columns = dict[str, np.ndarray]


def partition_of(keys: np.ndarray, n: int) -> np.ndarray:
    """Partition of each key; keys are mixed first, so sequential or structured keys spread evenly."""
    return (mix64(np.asarray(keys, dtype=np.uint64)) % np.uint64(n)).astype(np.int64)


def split(columns: Columns, parts: np.ndarray, n: int) -> list[Columns]:
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(n + 1))
    return [{k: v[order[bounds[i] : bounds[i + 1]]] for k, v in columns.items()} for i in range(n)]


def split_by(columns: Columns, key: str, n: int) -> list[Columns]:
    return split(columns, partition_of(columns[key], n), n)


def concat(parts: list[Columns], like: Columns) -> Columns:
    """Concatenate parts (column by column); `like` gives names, dtypes and row shapes when empty."""
    parts = [p for p in parts if p]
    return {k: np.concatenate([p[k] for p in parts] or [v[:0]]) for k, v in like.items()}


def returns(parts: list):
    """What a task with num_returns=len(parts) must return (Ray wants a bare value for 1)."""
    return parts if len(parts) > 1 else parts[0]


def as_list(refs, n: int) -> list:
    return list(refs) if n > 1 else [refs]


@functools.cache
def remote(fn):
    """fn as a Ray remote function, created on first use (keeps `import ray` out of import time)."""
    import ray

    return ray.remote(fn)
