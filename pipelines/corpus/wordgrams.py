"""Word n-gram statistics for the Gopher repetition rules, on integer word ids with numpy.

Equal to datatrove's string-based loops (tests hold them against a plain reference) at a fraction
of the cost: each distinct word is looked up once, an n-gram is a 64-bit polynomial key of its
word ids (a collision needs two different n-grams of one document to share 64 bits), built from
the (n-1)-gram keys in one pass; a hash table (pandas' factorize, no sort) numbers the n-grams in
order of first appearance; the greedy repeated-span scan visits only n-grams that occur more
than once, since a singleton can never be "seen before"; and it runs only when a bound computed in
numpy says the document might exceed the rule's share.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class WordGrams:
    def __init__(self, words: list[str]):
        index = {w: i for i, w in enumerate(dict.fromkeys(words))}  # a Python step per distinct word only
        self.ids = np.fromiter(map(index.__getitem__, words), np.uint64, len(words))
        self.lengths = np.fromiter(map(len, words), np.int64, len(words))
        self.prefix = np.concatenate([[0], np.cumsum(self.lengths)])  # characters before word i
        self._keys = {0: np.zeros(len(words) + 1, np.uint64)}  # n -> one key per n-gram position
        self._codes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # n -> codes(n)
        self._bounds: dict[int, int] = {}  # n -> _repeat_bound(n)

    def keys(self, n: int) -> np.ndarray:
        """One uint64 per n-gram position: key_n[i] = key_(n-1)[i] * M + id[i + n - 1] + 1."""
        if n not in self._keys:
            shorter = self.keys(n - 1)
            count = max(0, len(self.ids) - n + 1)
            with np.errstate(over="ignore"):
                self._keys[n] = shorter[:count] * _MULTIPLIER + self.ids[n - 1 : n - 1 + count] + np.uint64(1)
        return self._keys[n]

    def codes(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(code per n-gram position, occurrences per code); codes count up in order of first
        appearance, so a smaller code is an n-gram seen earlier."""
        import pandas as pd  # not at the top: config validation imports the filters, and must stay cheap

        if n not in self._codes:  # the bound and the scan both number the n-grams
            codes = pd.factorize(self.keys(n))[0]
            self._codes[n] = codes, np.bincount(codes)
        return self._codes[n]

    def chars(self, start: int, n: int) -> int:
        """Characters of the n words from `start`, without separators."""
        return int(self.prefix[start + n] - self.prefix[start])

    def top_chars(self, n: int) -> int:
        """len(" ".join(g)) * count(g) of the most frequent n-gram g (the first seen among ties)."""
        codes, counts = self.codes(n)
        if not len(codes):
            return 0
        top = int(np.argmax(counts))  # the first maximum: the earliest n-gram among the most frequent
        start = int(np.argmax(codes == top))
        return (self.chars(start, n) + n - 1) * int(counts[top])

    def repeated_chars(self, n: int) -> int:
        """Characters in repeated n-grams, scanning left to right and jumping past each repeat
        (datatrove's find_all_duplicate)."""
        return self._scan_repeats(n, lambda chars: False)

    def repeated_share_above(self, n: int, length: int, share: float) -> bool:
        """repeated_chars(n) / length > share. The scan runs only where a bound says it might be,
        and stops as soon as it is."""
        over = lambda chars: chars / length > share  # noqa: E731
        smaller = [bound for m, bound in self._bounds.items() if m <= n]
        if smaller and not over(min(smaller)):
            return False  # most documents: a bound already computed rules the scan out
        if not over(self._repeat_bound(n)):
            return False
        return over(self._scan_repeats(n, over))

    def _repeat_bound(self, n: int) -> int:
        """An upper bound of repeated_chars(n): characters of the words covered by an n-gram
        occurrence that is not its n-gram's first. The scan counts only such occurrences, and the
        ones it counts do not overlap. A repeat of an n-gram is two overlapping repeats of
        (n-1)-grams, so the bound for n-1 also bounds n."""
        codes, _ = self.codes(n)
        # codes count up in order of first appearance: a first occurrence exceeds every code before it
        later = np.flatnonzero(codes[1:] <= np.maximum.accumulate(codes)[:-1]) + 1
        edges = np.bincount(later, minlength=len(self.ids) + 1) - np.bincount(
            later + n, minlength=len(self.ids) + 1
        )
        self._bounds[n] = int(self.lengths[np.cumsum(edges)[:-1] > 0].sum())
        return self._bounds[n]

    def _scan_repeats(self, n: int, done: Callable[[int], bool]) -> int:
        codes, counts = self.codes(n)
        candidates = np.flatnonzero(counts[codes] > 1)
        spans = (self.prefix[candidates + n] - self.prefix[candidates]).tolist()
        seen: set[int] = set()
        chars, position = 0, 0
        for start, code, span in zip(candidates.tolist(), codes[candidates].tolist(), spans):
            if start < position:
                continue  # inside a repeat that was just counted
            if code in seen:
                chars += span
                if done(chars):
                    break
                position = start + n
            else:
                seen.add(code)
                position = start + 1
        return chars
