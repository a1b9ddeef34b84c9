"""Word n-gram statistics for the Gopher repetition rules, on integer word ids with numpy.

Equal to datatrove's string-based loops (tests hold them against a plain reference) at a fraction
of the cost: each word is looked up once, n-grams are 64-bit hashes of id windows (a collision
needs two different n-grams of one document to share 64 bits), and the greedy repeated-span scan
visits only n-grams that occur more than once, since a singleton can never be "seen before".
"""

from __future__ import annotations

import numpy as np

from pipelines.corpus.minhash import mix64

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class WordGrams:
    def __init__(self, words: list[str]):
        vocab: dict[str, int] = {}
        self.ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.uint64, len(words))
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        self.prefix = np.concatenate([[0], np.cumsum(lengths)])  # characters before word i

    def keys(self, n: int) -> np.ndarray:
        """One uint64 per n-gram position."""
        count = len(self.ids) - n + 1
        if count <= 0:
            return np.zeros(0, np.uint64)
        key = np.zeros(count, np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                key = key * _MULTIPLIER + self.ids[k : k + count] + np.uint64(1)
        return mix64(key)

    def chars(self, start: int, n: int) -> int:
        """Characters of the n words from `start`, without separators."""
        return int(self.prefix[start + n] - self.prefix[start])

    def top_chars(self, n: int) -> int:
        """len(" ".join(g)) * count(g) of the most frequent n-gram g (the first seen among ties)."""
        keys = self.keys(n)
        if not len(keys):
            return 0
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        top = counts.max()
        start = int(first[counts == top].min())
        return (self.chars(start, n) + n - 1) * int(top)

    def repeated_chars(self, n: int) -> int:
        """Characters in repeated n-grams, scanning left to right and jumping past each repeat
        (datatrove's find_all_duplicate)."""
        keys = self.keys(n)
        if not len(keys):
            return 0
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        candidates = np.flatnonzero(counts[inverse] > 1)
        seen: set[int] = set()
        chars, position = 0, 0
        for start, key in zip(candidates.tolist(), keys[candidates].tolist()):
            if start < position:
                continue  # inside a repeat that was just counted
            if key in seen:
                chars += self.chars(start, n)
                position = start + n
            else:
                seen.add(key)
                position = start + 1
        return chars
