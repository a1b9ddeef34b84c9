"""Word n-grams as 64-bit hashes: what decontamination and the contamination gate compare.

Text is lower-cased and cut into runs of letters and digits (the GPT-3 paper's 13-gram overlap
check works on such normalized words), so punctuation, case and white space do not hide a copy.
An n-gram's hash is a polynomial over its words' xxh3 hashes, computed for every position of a
document at once with numpy (wrapping uint64 arithmetic), so a document costs one xxhash call per
word and n vector operations.

`sampled` keeps the hashes whose top bits are zero: the same n-gram is kept or left wherever it
occurs, so two sampled sets intersect exactly where the full sets do, on a fixed share of their
n-grams. A copied document shares hundreds of n-grams and is found in the sample; the index stays
a small fraction of the text.

A corpus version keeps each kept document's sample in index/ngrams (pipelines/corpus/index.py);
`read_ngrams` reads it for the stages after the corpus, and `overlap_shares` says, per document,
how much of its sample another set of documents holds.
"""

from __future__ import annotations

import posixpath
import re
from typing import NamedTuple

import numpy as np
import xxhash

from pipelines.core.workspace import Workspace
from pipelines.errors import MissingIndex

WORD = re.compile(r"[^\W_]+")
MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it permutes uint64


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """The uint64 hashes of every word n-gram of `text`, in order (empty when it has fewer words)."""
    tokens = words(text)
    if len(tokens) < n:
        return np.empty(0, dtype=np.uint64)
    word = np.fromiter(
        (xxhash.xxh3_64_intdigest(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens)
    )
    count = len(tokens) - n + 1
    out = word[:count].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            out = out * MULTIPLIER + word[j : j + count]
    return out


def sampled(hashes: np.ndarray, keep_bits: int) -> np.ndarray:
    """The hashes whose top `keep_bits` bits are zero: one in 2**keep_bits, the same ones everywhere."""
    if keep_bits <= 0:
        return hashes
    return hashes[(hashes >> np.uint64(64 - keep_bits)) == 0]


def distinct(hashes: np.ndarray) -> np.ndarray:
    """Sorted unique hashes: what `contains` searches."""
    return np.unique(hashes)


def contains(table: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """For each of `hashes`, whether it is in `table` (sorted, distinct)."""
    if len(table) == 0 or len(hashes) == 0:
        return np.zeros(len(hashes), dtype=bool)
    at = np.searchsorted(table, hashes).clip(max=len(table) - 1)
    return table[at] == hashes


class Ngrams(NamedTuple):
    """index/ngrams of a corpus version: document i's sampled hashes are hashes[offsets[i]:offsets[i + 1]]."""

    docs: np.ndarray  # int64 document numbers (id == f"{doc:016x}")
    offsets: np.ndarray  # int64, len(docs) + 1
    hashes: np.ndarray  # uint64

    @classmethod
    def of_texts(cls, texts: list[str], n: int, keep_bits: int) -> Ngrams:
        """Texts' sampled hashes, as index/ngrams holds a corpus's (documents numbered 0, 1, ...)."""
        samples = [sampled(ngram_hashes(text, n), keep_bits) for text in texts]
        offsets = np.cumsum([0, *(len(h) for h in samples)], dtype=np.int64)
        hashes = np.concatenate(samples) if samples else np.zeros(0, np.uint64)
        return cls(np.arange(len(texts), dtype=np.int64), offsets, hashes)

    def owners(self) -> np.ndarray:
        """For each hash, the position in `docs` of its document."""
        return np.repeat(np.arange(len(self.docs)), np.diff(self.offsets))

    def of(self, mask: np.ndarray) -> np.ndarray:
        """The hashes of the documents where `mask` (over docs) is true, concatenated."""
        return self.hashes[np.asarray(mask, bool)[self.owners()]]

    def overlap_shares(self, table: np.ndarray) -> np.ndarray:
        """Per document, the share of its sampled hashes found in `table` (sorted, distinct); 0 for
        a document too short to have any."""
        found = np.bincount(self.owners(), weights=contains(table, self.hashes), minlength=len(self.docs))
        return found / np.maximum(np.diff(self.offsets), 1)


def read_ngrams(ws: Workspace, corpus_dir: str) -> tuple[Ngrams, dict]:
    """Every document's sampled hashes in a corpus version's index/ngrams (every partition and
    refresh generation) and their settings ({"n", "keep_bits"}); MissingIndex for a version built
    before that index."""
    index_dir = posixpath.join(corpus_dir, "index")
    meta_rel = posixpath.join(index_dir, "index.json")
    settings = (ws.read_json(meta_rel) if ws.exists(meta_rel) else {}).get("ngrams")
    if settings is None:
        raise MissingIndex(f"corpus {ws.full_uri(corpus_dir)} has no n-gram index (index/ngrams): rebuild it")
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = posixpath.join(index_dir, "ngrams")
    files = sorted(f for f in ws.list_files(folder) if f.endswith(".parquet"))
    tables = [pq.read_table(ws.path(posixpath.join(folder, f)), filesystem=ws.fs) for f in files]
    if not tables:
        return Ngrams(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint64)), settings
    table = pa.concat_tables(tables)
    lists = table.column("hashes").combine_chunks()
    counts = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    hashes = lists.flatten().to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    return Ngrams(table.column("doc").to_numpy().astype(np.int64), offsets, hashes), settings
