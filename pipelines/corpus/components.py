"""Connected components by alternating Large-Star and Small-Star rounds (Kiveris et al., "Connected
Components in MapReduce and Beyond", SoCC 2014), as numpy kernels over one hash partition of the
edges. Nodes are uint64; every component ends as a star around its smallest node, so "keep the
smallest node of each cluster" falls out of the algorithm.

Large-Star(u): m = min(u, neighbours(u)); link every larger neighbour v to m.
Small-Star(u): m = min(u, smaller neighbours(u)); link u and every smaller neighbour to m.
The graph is done when every node is a centre (all neighbours larger) or a leaf (one neighbour,
smaller): then each leaf's neighbour is its component's minimum.
"""

from __future__ import annotations

import numpy as np


def unique_edges(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(src) == 0:
        return src, dst
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    keep = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])]
    return src[keep], dst[keep]


def _groups(src: np.ndarray, dst: np.ndarray):
    """Edges sorted by (src, dst) with group starts and sizes per distinct src."""
    src, dst = unique_edges(src, dst)
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    sizes = np.diff(np.r_[starts, len(src)])
    return src, dst, starts, sizes


def large_star(src: np.ndarray, dst: np.ndarray):
    """Input: every edge in both directions, grouped here by src. Returns (new edges (v, m) with
    v > m, number of nodes that are neither centre nor leaf, leaves (node, centre))."""
    empty = src[:0]
    if len(src) == 0:
        return (empty, empty), 0, (empty, empty)
    src, dst, starts, sizes = _groups(src, dst)
    nodes = src[starts]
    smallest_neighbour = np.minimum.reduceat(dst, starts)  # dst is sorted within each group
    m = np.repeat(np.minimum(smallest_neighbour, nodes), sizes)
    larger = dst > src
    has_smaller = smallest_neighbour < nodes
    not_star = int(np.count_nonzero(has_smaller & (sizes > 1)))
    leaf = has_smaller & (sizes == 1)
    return (dst[larger], m[larger]), not_star, (nodes[leaf], smallest_neighbour[leaf])


def small_star(src: np.ndarray, dst: np.ndarray):
    """Input: edges (u, v) with u > v, grouped here by u. Returns new edges (a, b) with a > b."""
    empty = src[:0]
    if len(src) == 0:
        return empty, empty
    src, dst, starts, sizes = _groups(src, dst)
    m = np.repeat(dst[starts], sizes)  # dst sorted: the first smaller neighbour is the smallest
    not_min = dst != m
    nodes = src[starts]
    a = np.concatenate([dst[not_min], nodes])
    b = np.concatenate([m[not_min], dst[starts]])
    return a, b


def bucket_pairs(buckets: np.ndarray, nodes: np.ndarray, all_pairs_up_to: int = 16):
    """Candidate pairs (u < v) of nodes that share a bucket: every pair in buckets of up to
    `all_pairs_up_to` members; in larger buckets, each member with the smallest and with its
    successor (linear in the bucket size, and connected before verification)."""
    empty = nodes[:0]
    if len(nodes) == 0:
        return empty, empty
    order = np.lexsort((nodes, buckets))
    buckets, nodes = buckets[order], nodes[order]
    keep = np.r_[True, (buckets[1:] != buckets[:-1]) | (nodes[1:] != nodes[:-1])]
    buckets, nodes = buckets[keep], nodes[keep]
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    sizes = np.diff(np.r_[starts, len(nodes)])
    us, vs = [], []
    for size in np.unique(sizes[(sizes > 1) & (sizes <= all_pairs_up_to)]):
        first = starts[sizes == size]
        i, j = np.triu_indices(int(size), k=1)
        us.append(nodes[(first[:, None] + i[None, :]).ravel()])
        vs.append(nodes[(first[:, None] + j[None, :]).ravel()])
    big = sizes > all_pairs_up_to
    if big.any():
        member = np.repeat(big, sizes)
        group_first = np.repeat(nodes[starts], sizes)
        not_first = np.r_[False, buckets[1:] == buckets[:-1]]
        sel = member & not_first
        us += [group_first[sel], nodes[np.flatnonzero(sel) - 1]]
        vs += [nodes[sel], nodes[sel]]
    if not us:
        return empty, empty
    u, v = np.concatenate(us), np.concatenate(vs)
    return unique_edges(np.minimum(u, v), np.maximum(u, v))
