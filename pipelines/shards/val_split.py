"""Which documents are validation: a stable hash of the id, less those the training split holds.

A document is val when stable_hash(id, "val") falls below `shards.val_fraction` of the hash range,
so it keeps its split as the corpus grows. Near-copies that dedup let through (a page mirrored
with a few edits, a module documented under two names) would then sit on both sides and make
validation look better than it is; so a val candidate with at least `shards.val_max_overlap` of its
sampled word n-grams in the other documents (the corpus's index/ngrams, pipelines/core/ngrams.py)
goes to train instead. The champion gate measures the same overlap on the split that results
(pipelines/lineage/contamination.py).

When the hash picks no document although val_fraction > 0 (a small corpus), the one with the
smallest hash goes to val anyway, so evaluation always has data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.config import ShardsConfig
from pipelines.core import ngrams
from pipelines.core.hashing import stable_hash
from pipelines.core.outputs import iter_corpus_batches
from pipelines.core.workspace import Workspace
from pipelines.errors import MissingIndex


@dataclass(frozen=True)
class ValSplit:
    threshold: int
    forced_id: str | None = None
    to_train: frozenset[str] = field(default_factory=frozenset)  # val by hash, but training text

    def is_val(self, doc_id: str) -> bool:
        by_hash = stable_hash(doc_id, "val") < self.threshold and doc_id not in self.to_train
        return by_hash or doc_id == self.forced_id

    @classmethod
    def for_corpus(
        cls,
        ws: Workspace,
        files: list[str],
        cfg: ShardsConfig,
        corpus_dir: str | None = None,
        log: Callable[[str], None] = print,
        force_one: bool = True,
    ) -> ValSplit:
        """The split of the documents in corpus data `files` (of version `corpus_dir`, whose
        index/ngrams finds the candidates the training split holds; None: the hash alone)."""
        threshold = int(cfg.val_fraction * 2**64)
        if not threshold:
            return cls(0)
        ids = [i for batch in iter_corpus_batches(ws, files, ["id"]) for i in batch.column(0).to_pylist()]
        candidates = [i for i in ids if stable_hash(i, "val") < threshold]
        to_train = frozenset()
        if corpus_dir is not None and cfg.val_max_overlap is not None and candidates:
            to_train = held_by_training(ws, corpus_dir, candidates, cfg.val_max_overlap, log)
        if len(to_train) == len(candidates) and force_one:
            rest = [i for i in ids if i not in to_train] or ids
            first = min(rest, key=lambda i: stable_hash(i, "val"), default=None)
            return cls(threshold, first, to_train)
        return cls(threshold, None, to_train)


def held_by_training(
    ws: Workspace, corpus_dir: str, candidates: list[str], max_overlap: float, log: Callable[[str], None]
) -> frozenset[str]:
    """The candidates with at least `max_overlap` of their sampled n-grams in the other documents."""
    try:
        ng, settings = ngrams.read_ngrams(ws, corpus_dir)
    except MissingIndex as exc:
        log(f"[shards] val split by hash only: {exc}")
        return frozenset()
    is_candidate = np.isin(ng.docs, np.array([int(i, 16) for i in candidates], np.int64))
    shares = ng.overlap_shares(ngrams.distinct(ng.of(~is_candidate)))
    moved = frozenset(f"{d:016x}" for d in ng.docs[is_candidate & (shares >= max_overlap)].tolist())
    if moved:
        log(
            f"[shards] {len(moved)} of {len(candidates)} val documents go to train: at least "
            f"{max_overlap:.0%} of their {settings['n']}-grams are in training documents"
        )
    return moved
