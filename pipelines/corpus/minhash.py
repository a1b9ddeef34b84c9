"""MinHash signatures and LSH band keys, vectorised over a whole batch of documents.

Words are hashed once each (xxh3), word 5-grams are combined from the word hashes with numpy, and
the permutations are the multiply-add-shift family h(x) = (a*x + b) >> 32 on uint64 arrays (a
strongly universal family for 32-bit keys), evaluated for all shingles of all documents of a
batch at once and reduced per document with `np.minimum.reduceat`. No Python loop runs per
shingle or per permutation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import xxhash

WORD = re.compile(r"\w+")
_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_PERM_CHUNK = 16  # permutations evaluated together: bounds memory to 16 x shingles x 8 bytes


def words(text: str) -> list[str]:
    """The words that shingles are made of: lower-cased runs of letters and digits."""
    return WORD.findall(text.lower())


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over every output bit (uint64 in and out)."""
    x = x.astype(_U64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return x


@dataclass
class MinHasher:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    _a: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)
    _gram_weights: np.ndarray = field(init=False, repr=False)
    _band_weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        draw = lambda n: rng.integers(0, 2**63, size=n, dtype=np.int64).astype(_U64) * _U64(2)  # noqa: E731
        self._a = draw(self.num_perm) | _U64(1)  # odd multipliers
        self._b = draw(self.num_perm)
        self._gram_weights = draw(self.ngram) | _U64(1)
        self._band_weights = draw(self.rows + 1) | _U64(1)

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def shingles(self, word_list: list[str]) -> np.ndarray:
        """32-bit hashes of the word n-grams (one shingle for a text shorter than n words)."""
        hashes = {w: xxhash.xxh3_64_intdigest(w.encode()) for w in dict.fromkeys(word_list)}
        word_hashes = np.fromiter(map(hashes.__getitem__, word_list), _U64, len(word_list))
        n = self.ngram
        if len(word_hashes) < n:  # too short for one n-gram: the whole text is the only shingle
            word_hashes = np.concatenate([word_hashes, np.zeros(n - len(word_hashes), _U64)])
        count = len(word_hashes) - n + 1
        combined = np.zeros(count, _U64)
        with np.errstate(over="ignore"):
            for k in range(n):  # order-sensitive: each position has its own odd weight
                combined += word_hashes[k : k + count] * self._gram_weights[k]
        return mix64(combined) & _MASK32

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        return self.signatures_of_words([words(t) for t in texts])

    def signatures_of_words(self, word_lists: list[list[str]]) -> np.ndarray:
        """Signatures of texts already split by `words` (callers that also count the words)."""
        if not word_lists:
            return np.zeros((0, self.num_perm), np.uint32)
        parts = [self.shingles(w) for w in word_lists]
        offsets = np.zeros(len(parts), np.int64)
        np.cumsum([len(p) for p in parts[:-1]], out=offsets[1:])
        x = np.concatenate(parts)
        out = np.empty((len(word_lists), self.num_perm), np.uint32)
        buf = np.empty((_PERM_CHUNK, len(x)), _U64)  # reused: fresh temporaries cost 10x the math
        with np.errstate(over="ignore"):
            for start in range(0, self.num_perm, _PERM_CHUNK):
                a = self._a[start : start + _PERM_CHUNK, None]
                hashed = buf[: len(a)]
                np.multiply(a, x[None, :], out=hashed)
                hashed += self._b[start : start + len(a), None]
                # >> 32 is monotonic, so it commutes with min: shift the minima, not every hash
                out[:, start : start + len(a)] = (np.minimum.reduceat(hashed, offsets, axis=1) >> _U64(32)).T
        return out

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: one bucket key per band; equal keys <=> equal rows (up to 2^-64)."""
        n = len(sigs)
        rows = sigs.reshape(n, self.bands, self.rows).astype(_U64)
        with np.errstate(over="ignore"):
            combined = (rows * self._band_weights[: self.rows]).sum(axis=2, dtype=_U64)
            combined += np.arange(self.bands, dtype=_U64) * self._band_weights[self.rows]
        return mix64(combined)


def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the fraction of equal signature positions (row-wise)."""
    return (sig_a == sig_b).mean(axis=-1)
