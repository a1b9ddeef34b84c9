"""The numeric cores of dedup, held against plain references: MinHash estimates against exact
word-5-gram Jaccard, connected components against union-find, bucket pairing, partitioning."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pipelines.corpus.components import bucket_pairs, large_star, small_star
from pipelines.corpus.minhash import MinHasher, similarity
from pipelines.corpus.shuffle import concat, partition_of, split_by
from tests.corpus_inputs import jaccard, near_duplicate_corpus


def test_minhash_estimates_word_5gram_jaccard():
    docs = near_duplicate_corpus(seed=3, clusters=20, copies=4)
    hasher = MinHasher()
    sigs = hasher.signatures([t for _, t, _ in docs])
    errors = [
        similarity(sigs[i], sigs[j]) - jaccard(docs[i][1], docs[j][1])
        for i, j in itertools.combinations(range(len(docs)), 2)
        if docs[i][2] == docs[j][2]
    ]
    assert abs(np.mean(errors)) < 0.02  # unbiased
    assert np.std(errors) < 0.06  # binomial spread for 112 permutations is at most 0.047


def test_signatures_are_deterministic_and_batch_independent():
    texts = [t for _, t, _ in near_duplicate_corpus(seed=4, clusters=3, copies=2)]
    together = MinHasher(seed=5).signatures(texts)
    alone = np.vstack([MinHasher(seed=5).signatures([t]) for t in texts])
    assert together.dtype == np.uint32 and together.shape == (len(texts), 112)
    assert (together == alone).all()
    assert not (MinHasher(seed=6).signatures(texts[:1]) == together[:1]).all()


def test_band_keys_equal_exactly_when_band_rows_equal():
    hasher = MinHasher(bands=4, rows=3)
    sigs = np.array([[1] * 12, [1] * 6 + [2] * 6, [1] * 12], np.uint32)
    keys = hasher.band_keys(sigs)
    assert keys.shape == (3, 4) and (keys[0] == keys[2]).all()
    assert (keys[0, :2] == keys[1, :2]).all() and not (keys[0, 2:] == keys[1, 2:]).any()
    assert len(set(keys[0])) == 4  # the same rows in another band give another bucket


def test_short_and_empty_texts_still_get_signatures():
    sigs = MinHasher().signatures(["", "two words", "two words", "other words"])
    assert (sigs[1] == sigs[2]).all() and not (sigs[1] == sigs[3]).all()


def union_find(n: int, edges) -> list[int]:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


@pytest.mark.parametrize("parts", [1, 3])
def test_large_small_star_matches_union_find(parts):
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 80))
        edges = rng.integers(0, n, size=(int(rng.integers(1, 120)), 2))
        edges = edges[edges[:, 0] != edges[:, 1]]
        u, v = edges[:, 0].astype(np.uint64), edges[:, 1].astype(np.uint64)
        # Partitioned exactly as the Ray rounds do, with each partition processed on its own.
        state = split_by({"src": np.r_[u, v], "dst": np.r_[v, u]}, "src", parts)
        for _ in range(64):
            outs = [large_star(p["src"], p["dst"]) for p in state]
            if sum(o[1] for o in outs) == 0:
                break
            grown = concat([{"src": o[0][0], "dst": o[0][1]} for o in outs], state[0])
            small = [small_star(p["src"], p["dst"]) for p in split_by(grown, "src", parts)]
            a = np.concatenate([s[0] for s in small])
            b = np.concatenate([s[1] for s in small])
            state = split_by({"src": np.r_[a, b], "dst": np.r_[b, a]}, "src", parts)
        else:
            pytest.fail("did not converge")
        labels = {int(x): int(r) for o in outs for x, r in zip(*o[2])}
        assert [labels.get(i, i) for i in range(n)] == union_find(n, edges.tolist())


def test_bucket_pairs_small_buckets_all_pairs_large_buckets_linear():
    buckets = np.array([7, 7, 7, 9, 9, 5] + [3] * 40, np.uint64)
    nodes = np.array([30, 10, 20, 40, 40, 50] + list(range(100, 140)), np.uint64)
    u, v = bucket_pairs(buckets, nodes, all_pairs_up_to=16)
    pairs = set(zip(u.tolist(), v.tolist()))
    assert {(10, 20), (10, 30), (20, 30)} <= pairs  # all pairs of a 3-member bucket
    assert not any(50 in p or p == (40, 40) for p in pairs)  # singletons and self pairs: none
    big = {p for p in pairs if p[0] >= 100}
    assert len(big) == 39 + 38  # star from the smallest plus the chain, not 40*39/2
    assert union_find(140, [(a, b) for a, b in big])[139] == 100  # and still connected
    assert all(a < b for a, b in pairs)


def test_partitions_are_stable_and_balanced():
    keys = np.arange(100_000, dtype=np.uint64)  # sequential keys must still spread evenly
    parts = partition_of(keys, 8)
    assert (parts == partition_of(keys, 8)).all()
    counts = np.bincount(parts, minlength=8)
    assert counts.min() > 0.9 * counts.mean()
    rows = split_by({"k": keys, "x": keys * 2}, "k", 8)
    assert sum(len(r["k"]) for r in rows) == len(keys)
    assert all(
        (r["x"] == r["k"] * 2).all() and (partition_of(r["k"], 8) == i).all() for i, r in enumerate(rows)
    )


def test_random_docs_are_dissimilar():
    rng = random.Random(1)
    a = " ".join(rng.choice("abcdefghij") + str(rng.randrange(10**6)) for _ in range(300))
    b = " ".join(rng.choice("abcdefghij") + str(rng.randrange(10**6)) for _ in range(300))
    sigs = MinHasher().signatures([a, b])
    assert similarity(sigs[0], sigs[1]) < 0.05
