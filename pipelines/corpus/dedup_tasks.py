"""The Ray tasks of dedup (see dedup.py for the rounds): numpy in, numpy out, one partition each.

Nodes are document numbers as uint64 with the top bit set for documents of this build ("new");
documents of an earlier corpus's index are "old" nodes without it, so they sort first and are
always the ones kept.
"""

from __future__ import annotations

import numpy as np

from pipelines.core.workspace import Workspace
from pipelines.corpus import components
from pipelines.corpus import index as corpus_index
from pipelines.corpus.shuffle import concat, partition_of, returns, split, split_by

NEW = np.uint64(1 << 63)
KEEP, EXACT, FUZZY = 0, 1, 2


def split_nodes(columns: dict, key: str, parts: int) -> list[dict]:
    """Split by a node column, ignoring the NEW bit: a document's partition is the same whether it
    is new here or old in an index (index/signatures is partitioned by document number)."""
    return split(columns, partition_of(columns[key] & ~NEW, parts), parts)


def _keys(nodes: np.ndarray) -> np.ndarray:
    """Document numbers (int64) of nodes."""
    return (nodes & ~NEW).astype(np.int64)


def _empty(num_perm: int, bands: int) -> dict:
    u64 = np.zeros(0, np.uint64)
    return {
        "exact": {"hash": u64, "node": u64},
        "bands": {"bucket": u64, "node": u64, "hash": u64},
        "docs": {
            "node": u64,
            "fidx": np.zeros(0, np.int64),
            "hash": u64,
            "sig": np.zeros((0, num_perm), np.uint32),
            "bands": np.zeros((0, bands), np.uint64),
        },
        "pairs": {"u": u64, "v": u64},
        "edges": {"src": u64, "dst": u64},
        "decisions": {"node": u64, "dup_of": u64},
        "labels": {"node": u64, "root": u64},
    }


def _fixed_list(column, width: int, dtype) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(dtype, copy=False).reshape(-1, width)


def scan(files: list[tuple[int, str]], ws_uri: str, parts: int, num_perm: int, bands: int):
    """The surviving documents of some staging files ((fidx, path) each), split three ways by
    partition: exact hashes, band buckets, and the documents themselves (signatures)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ws = Workspace(ws_uri)
    columns = ["key", "reason", "exact_hash", "sig", "bands"]
    tables = [pq.read_table(ws.path(rel), filesystem=ws.fs, columns=columns) for _, rel in files]
    fidx = np.concatenate([np.full(t.num_rows, f, np.int64) for (f, _), t in zip(files, tables)])
    table = pa.concat_tables(tables)
    survivors = pc.is_null(table["reason"])
    table, fidx = table.filter(survivors), fidx[survivors.to_numpy(zero_copy_only=False)]
    node = table["key"].to_numpy().astype(np.uint64) | NEW
    hashes = table["exact_hash"].to_numpy().astype(np.uint64)
    sig = _fixed_list(table["sig"], num_perm, np.uint32)
    band = _fixed_list(table["bands"], bands, np.uint64)
    exact = split_by({"hash": hashes, "node": node}, "hash", parts)
    band_rows = {"bucket": band.ravel(), "node": np.repeat(node, bands), "hash": np.repeat(hashes, bands)}
    buckets = split_by(band_rows, "bucket", parts)
    docs = {"node": node, "fidx": fidx, "hash": hashes, "sig": sig, "bands": band}
    return [*exact, *buckets, *split_nodes(docs, "node", parts)]


def exact_reduce(part: int, parts: int, ws_uri: str, index_dirs: list[str], *chunks):
    rows = concat(list(chunks), _empty(0, 0)["exact"])
    hashes, nodes = rows["hash"], rows["node"]
    old = corpus_index.read_part(Workspace(ws_uri), index_dirs, "exact", part) if index_dirs else None
    if old is not None:
        hashes = np.concatenate([hashes, old["exact_hash"].astype(np.uint64)])
        nodes = np.concatenate([nodes, old["doc"].astype(np.uint64)])
    order = np.lexsort((nodes, hashes))
    hashes, nodes = hashes[order], nodes[order]
    first = np.r_[True, hashes[1:] != hashes[:-1]] if len(hashes) else np.zeros(0, bool)
    keeper = nodes[np.maximum.accumulate(np.where(first, np.arange(len(nodes)), 0))] if len(nodes) else nodes
    dup = ~first & ((nodes & NEW) != 0)
    # By keeper: a keeper that fuzzy dedup drops later hands its copies on (see resolve_exact).
    return returns(split_nodes({"node": nodes[dup], "dup_of": keeper[dup]}, "dup_of", parts))


def resolve_exact(parts: int, n_labels: int, *chunks):
    """Exact duplicates of a document that is itself a near-duplicate point to what is kept."""
    empty = _empty(0, 0)
    labels = concat(list(chunks[:n_labels]), empty["labels"])
    decisions = concat(list(chunks[n_labels:]), empty["decisions"])
    hit = np.isin(decisions["dup_of"], labels["node"])
    if hit.any():
        order = np.argsort(labels["node"])
        at = order[np.searchsorted(labels["node"], decisions["dup_of"][hit], sorter=order)]
        decisions["dup_of"][hit] = labels["root"][at]
    return returns(split_nodes(decisions, "node", parts))


def band_reduce(part: int, parts: int, ws_uri: str, index_dirs: list[str], collapse_exact: bool, *chunks):
    rows = concat(list(chunks), _empty(0, 0)["bands"])
    buckets, nodes, hashes = rows["bucket"], rows["node"], rows["hash"]
    if collapse_exact and len(nodes):  # exact copies share every bucket: only their keeper pairs up
        order = np.lexsort((nodes, hashes, buckets))
        buckets, nodes, hashes = buckets[order], nodes[order], hashes[order]
        first = np.r_[True, (buckets[1:] != buckets[:-1]) | (hashes[1:] != hashes[:-1])]
        buckets, nodes = buckets[first], nodes[first]
    old = corpus_index.read_part(Workspace(ws_uri), index_dirs, "bands", part) if index_dirs else None
    if old is not None:
        buckets = np.concatenate([buckets, old["bucket"].astype(np.uint64)])
        nodes = np.concatenate([nodes, old["doc"].astype(np.uint64)])
    u, v = components.bucket_pairs(buckets, nodes)
    u_new, v_new = (u & NEW) != 0, (v & NEW) != 0
    keep = u_new | v_new  # two old documents were settled when their corpus was built
    left = np.where(u_new, u, v)[keep]  # the new document goes left: its signature is looked up first
    right = np.where(u_new, v, u)[keep]
    return returns(split_nodes({"u": left, "v": right}, "u", parts))


def _lookup(docs: dict, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signatures of the `wanted` nodes, which of them were found)."""
    out = np.zeros((len(wanted), docs["sig"].shape[1]), np.uint32)
    found = np.zeros(len(wanted), bool)
    if len(docs["node"]) and len(wanted):
        order = np.argsort(docs["node"])
        at = order[np.minimum(np.searchsorted(docs["node"], wanted, sorter=order), len(order) - 1)]
        found = docs["node"][at] == wanted
        out[found] = docs["sig"][at[found]]
    return out, found


def verify_left(parts: int, num_perm: int, bands: int, n_pairs: int, *chunks):
    empty = _empty(num_perm, bands)
    pairs = concat(list(chunks[:n_pairs]), empty["pairs"])
    docs = concat(list(chunks[n_pairs:]), empty["docs"])
    pairs["u"], pairs["v"] = components.unique_edges(pairs["u"], pairs["v"])  # found in several bands
    sig_u, found = _lookup(docs, pairs["u"])
    assert found.all(), "the left node of a pair is always a new document of this partition"
    out = {"u": pairs["u"], "v": pairs["v"], "sig_u": sig_u}
    return returns(split_nodes(out, "v", parts))


def verify_right(
    part: int, parts: int, num_perm: int, bands: int, threshold: float, ws_uri, index_dirs, n_pairs, *chunks
):
    empty = _empty(num_perm, bands)
    like = {**empty["pairs"], "sig_u": empty["docs"]["sig"]}
    pairs = concat(list(chunks[:n_pairs]), like)
    docs = concat(list(chunks[n_pairs:]), empty["docs"])
    v_old = (pairs["v"] & NEW) == 0
    sig_v, found = _lookup(docs, pairs["v"])
    if v_old.any():
        old = corpus_index.read_part(Workspace(ws_uri), index_dirs, "signatures", part)
        if old is not None:
            old_docs = {"node": old["doc"].astype(np.uint64), "sig": old["sig"].astype(np.uint32)}
            sig_v[v_old], found[v_old] = _lookup(old_docs, pairs["v"][v_old])
    sig_v[~found] = ~pairs["sig_u"][~found]  # nothing to verify against: every position disagrees
    similar = (pairs["sig_u"] == sig_v).mean(axis=1) >= threshold if len(sig_v) else np.zeros(0, bool)
    u, v = pairs["u"][similar], pairs["v"][similar]
    edges = split_nodes({"src": np.concatenate([u, v]), "dst": np.concatenate([v, u])}, "src", parts)
    return [*edges, {"candidate_pairs": len(similar), "verified_pairs": int(similar.sum())}]


def large_star_task(parts: int, *chunks):
    edges = concat(list(chunks), _empty(0, 0)["edges"])
    (v, m), not_star, (leaf, root) = components.large_star(edges["src"], edges["dst"])
    out = split_nodes({"src": v, "dst": m}, "src", parts)
    return [*out, {"node": leaf, "root": root}, not_star]


def small_star_task(parts: int, *chunks):
    edges = concat(list(chunks), _empty(0, 0)["edges"])
    a, b = components.small_star(edges["src"], edges["dst"])
    both = {"src": np.concatenate([a, b]), "dst": np.concatenate([b, a])}
    return returns(split_nodes(both, "src", parts))


def finalize(
    part: int, parts: int, num_perm: int, bands: int, ws_uri: str, out_index: str, n_exact, n_labels, *chunks
):
    empty = _empty(num_perm, bands)
    exact = concat(list(chunks[:n_exact]), empty["decisions"])
    labels = concat(list(chunks[n_exact : n_exact + n_labels]), empty["labels"])
    docs = concat(list(chunks[n_exact + n_labels :]), empty["docs"])
    node = docs["node"]
    kind = np.zeros(len(node), np.int8)
    dup_of = np.zeros(len(node), np.uint64)
    for code, table, target in ((FUZZY, labels, "root"), (EXACT, exact, "dup_of")):  # exact wins
        hit = np.isin(node, table["node"])
        if hit.any():
            order = np.argsort(table["node"])
            at = order[np.searchsorted(table["node"], node[hit], sorter=order)]
            kind[hit], dup_of[hit] = code, table[target][at]
    dropped = kind != KEEP
    decisions = {
        "key": _keys(node[dropped]),
        "dup_of": _keys(dup_of[dropped]),
        "kind": kind[dropped],
        "fidx": docs["fidx"][dropped],
    }
    by_file = split(decisions, decisions["fidx"] % parts, parts)
    kept = ~dropped
    keys = _keys(node[kept])
    exact_rows = split_by({"exact_hash": docs["hash"][kept], "doc": keys}, "exact_hash", parts)
    band_rows = {"bucket": docs["bands"][kept].ravel(), "doc": np.repeat(keys, bands)}
    corpus_index.write_part(
        Workspace(ws_uri), out_index, "signatures", part, {"doc": keys, "sig": docs["sig"][kept]}
    )
    return [*by_file, *exact_rows, *split_by(band_rows, "bucket", parts)]


def write_index_part(ws_uri: str, out_index: str, kind: str, part: int, *chunks):
    like = {"exact": {"exact_hash": np.zeros(0, np.uint64)}, "bands": {"bucket": np.zeros(0, np.uint64)}}[
        kind
    ]
    rows = concat(list(chunks), {**like, "doc": np.zeros(0, np.int64)})
    corpus_index.write_part(Workspace(ws_uri), out_index, kind, part, rows)
    return len(rows["doc"])
