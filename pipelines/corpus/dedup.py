"""Exact and fuzzy deduplication on Ray tasks, without gathering documents or signatures anywhere.

Rounds (each a hash-partitioned shuffle of numpy columns; the driver holds only references):
  scan      per group of staging files: exact hashes, band buckets and signatures of the survivors
  exact     per hash partition: the smallest id of each exact hash is kept, the rest point to it
  bands     per bucket partition: documents sharing a bucket become candidate pairs
  verify    per id partition, twice: look up both signatures, keep pairs whose estimated Jaccard
            (share of equal signature positions) reaches `similarity_threshold`
  components  Large-Star / Small-Star rounds until every cluster is a star around its smallest id
  resolve   exact copies of a document that fuzzy dedup dropped point to what that one points to
  finalize  per id partition: decisions (kept, exact or fuzzy duplicate of which id) and the index

Documents of an existing corpus (its index/, see index.py) join as "old" nodes: their numbers lack
the top bit that marks new documents, so they sort first and are always the ones kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipelines.core.workspace import Workspace
from pipelines.corpus.dedup_tasks import (
    band_reduce,
    exact_reduce,
    finalize,
    large_star_task,
    resolve_exact,
    scan,
    small_star_task,
    verify_left,
    verify_right,
    write_index_part,
)
from pipelines.corpus.shuffle import as_list, remote

MAX_ROUNDS = 64


@dataclass
class DedupResult:
    decisions: list  # per partition p: refs to the decisions of staging files with fidx % P == p
    stats: dict = field(default_factory=dict)


def _by_part(refs: list[list], p: int) -> list:
    return [row[p] for row in refs]


@dataclass(frozen=True)
class _Job:
    """What every round's tasks share."""

    uri: str  # the workspace
    parts: int
    num_perm: int
    bands: int
    against: list[str]  # index dirs of earlier corpora


def deduplicate(
    ws: Workspace,
    staging_files: list[str],
    *,
    parts: int,
    num_perm: int,
    bands: int,
    exact: bool,
    fuzzy: bool,
    threshold: float,
    out_index: str,
    against: list[str] = (),
) -> DedupResult:
    """Decide every surviving staging document (kept / exact / fuzzy duplicate of which id) and
    write the index of the kept ones under `out_index`. `against`: index dirs of earlier corpora."""
    job = _Job(ws.full_uri(), parts, num_perm, bands, list(against))
    stats: dict = {"exact": {}, "fuzzy": {}}
    started = time.perf_counter()
    exact_refs, band_refs, doc_refs = _scan(job, staging_files)
    exact_decisions = _exact_round(job, exact_refs) if exact else []
    stats["exact"]["seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    labels = [None] * parts
    if fuzzy:
        labels = _fuzzy_rounds(job, band_refs, doc_refs, exact, threshold, stats["fuzzy"])
    if exact_decisions:  # re-route exact decisions by the duplicate, with their keepers resolved
        exact_decisions = _resolve_round(job, exact_decisions, labels)
    final = _finalize_round(job, out_index, exact_decisions, labels, doc_refs)
    stats["fuzzy"]["seconds"] = time.perf_counter() - started
    return DedupResult([[f[p] for f in final] for p in range(parts)], stats)


def _scan(job: _Job, staging_files: list[str]) -> tuple[list, list, list]:
    """(exact-hash, band-bucket, signature) refs: per scan, one per partition each.

    One scan per partition at most, however many staging files there are: a task's results of up
    to 100 KB are returned inline to the driver's own memory, so many small scans would gather
    signatures there. Fewer, larger results go to Ray's object store on the node that made them."""
    parts, files = job.parts, list(enumerate(staging_files))
    scans = [
        remote(scan)
        .options(num_returns=3 * parts)
        .remote(files[g::parts], job.uri, parts, job.num_perm, job.bands)
        for g in range(min(parts, len(files)))
    ]
    return [s[:parts] for s in scans], [s[parts : 2 * parts] for s in scans], [s[2 * parts :] for s in scans]


def _exact_round(job: _Job, exact_refs: list) -> list:
    import ray

    parts = job.parts
    decisions = [
        as_list(
            remote(exact_reduce)
            .options(num_returns=parts)
            .remote(p, parts, job.uri, job.against, *_by_part(exact_refs, p)),
            parts,
        )
        for p in range(parts)
    ]
    ray.wait([d for row in decisions for d in row], num_returns=len(decisions) * parts)
    return decisions


def _fuzzy_rounds(job: _Job, band_refs, doc_refs, exact: bool, threshold: float, stats: dict) -> list:
    """Candidate pairs from shared buckets, verified on both signatures, then connected components:
    the component labels per partition."""
    import ray

    parts, perm, bands = job.parts, job.num_perm, job.bands
    pairs = [
        as_list(
            remote(band_reduce)
            .options(num_returns=parts)
            .remote(p, parts, job.uri, job.against, exact, *_by_part(band_refs, p)),
            parts,
        )
        for p in range(parts)
    ]
    left = [
        as_list(
            remote(verify_left)
            .options(num_returns=parts)
            .remote(parts, perm, bands, len(pairs), *_by_part(pairs, p), *_by_part(doc_refs, p)),
            parts,
        )
        for p in range(parts)
    ]
    right = [
        remote(verify_right)
        .options(num_returns=parts + 1)
        .remote(
            p,
            parts,
            perm,
            bands,
            threshold,
            job.uri,
            job.against,
            len(left),
            *_by_part(left, p),
            *_by_part(doc_refs, p),
        )  # fmt: skip
        for p in range(parts)
    ]
    counts = ray.get([r[parts] for r in right])
    stats["candidate_pairs"] = sum(c["candidate_pairs"] for c in counts)
    stats["verified_pairs"] = sum(c["verified_pairs"] for c in counts)
    labels, stats["component_rounds"] = _components([r[:parts] for r in right], parts)
    return labels


def _resolve_round(job: _Job, exact_decisions: list, labels: list) -> list:
    parts = job.parts
    return [
        as_list(
            remote(resolve_exact)
            .options(num_returns=parts)
            .remote(
                parts,
                int(labels[p] is not None),
                *[x for x in [labels[p]] if x is not None],
                *_by_part(exact_decisions, p),
            ),
            parts,
        )
        for p in range(parts)
    ]


def _finalize_round(job: _Job, out_index: str, exact_decisions: list, labels: list, doc_refs) -> list:
    """Per id partition: the decisions, and the index of the kept documents written under out_index."""
    import ray

    parts, final = job.parts, []
    for p in range(parts):
        exact_in = _by_part(exact_decisions, p)
        label_in = [labels[p]] if labels[p] is not None else []
        final.append(
            remote(finalize)
            .options(num_returns=3 * parts)
            .remote(
                p,
                parts,
                job.num_perm,
                job.bands,
                job.uri,
                out_index,
                len(exact_in),
                len(label_in),
                *exact_in,
                *label_in,
                *_by_part(doc_refs, p),
            )  # fmt: skip
        )
    index_parts = []
    for k, kind in enumerate(("exact", "bands")):
        for p in range(parts):
            chunks = [f[(k + 1) * parts + p] for f in final]
            index_parts.append(remote(write_index_part).remote(job.uri, out_index, kind, p, *chunks))
    ray.get(index_parts)
    return final


def _components(edge_refs: list[list], parts: int) -> tuple[list, int]:
    """Labels (leaf -> smallest node of its component) per node partition, and the rounds taken."""
    import ray

    for rounds in range(1, MAX_ROUNDS + 1):
        large = [
            remote(large_star_task).options(num_returns=parts + 2).remote(parts, *_by_part(edge_refs, p))
            for p in range(parts)
        ]
        if sum(ray.get([r[parts + 1] for r in large])) == 0:
            return [r[parts] for r in large], rounds
        edge_refs = [
            as_list(
                remote(small_star_task).options(num_returns=parts).remote(parts, *[r[p] for r in large]),
                parts,
            )
            for p in range(parts)
        ]
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
