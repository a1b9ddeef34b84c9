"""Decontamination: drop every document that shares a word n-gram with an evaluation text.

`corpus.decontaminate` names the evaluation files (paths, globs or URIs, resolved like
corpus.inputs): JSONL (or Parquet) records with the `corpus.text_field` field, or .txt files holding
one document each. The driver reads them once per build into an `EvalTable`: the sorted distinct
hashes of every `corpus.decontaminate_ngram`-gram of every evaluation document
(pipelines/core/ngrams.py: lower-cased words, so case, punctuation and spacing hide no copy) and,
parallel to them, which file each came from (the first that has it). The table goes to Ray's object
store once; `EvalHandle` carries its reference to the Ray Data workers, each of which fetches it
when it builds its document processor (process.py). A document that hits the table is rejected at
stage "decontaminate" with reason `contaminated` and a detail naming the eval file with the most
hits: "evals/lambada.jsonl: 140 of 152 13-grams".

The stage fingerprint holds the eval files' identities (URI, size, mtime), like the inputs', so an
edited eval set makes a new corpus version; a glob that matches nothing, a format other than
JSONL/Parquet/text or a file that cannot be read is a one-line UserError naming the key and file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import xxhash

from pipelines.config import CorpusConfig
from pipelines.core import ngrams
from pipelines.corpus import sources
from pipelines.errors import UserError

KEY = "corpus.decontaminate"
FORMATS = ("jsonl", "parquet", "text")
MAX_EVAL_DOC_BYTES = 1 << 30  # an eval document is never too large to check against


def resolve_files(cfg: CorpusConfig) -> list[sources.InputFile]:
    """The eval files (UserErrors name `corpus.decontaminate`); [] when none are configured."""
    if not cfg.decontaminate:
        return []
    files = sources.resolve(cfg.decontaminate, KEY)
    for f in files:
        fmt = sources.file_format(posixpath.basename(f.uri))
        if fmt is None or fmt[0] not in FORMATS:
            raise UserError(f"{KEY}: {f.uri}: not an eval file (expected .jsonl[.gz|.zst], .parquet or .txt)")
    return files


def identity(cfg: CorpusConfig) -> list:
    """What the stage fingerprint adds for the eval files (their URI, size and mtime)."""
    return sources.identity(cfg.decontaminate)


def check_readable(cfg: CorpusConfig) -> None:
    """At planning time: every eval file resolves and opens (reads its first byte)."""
    for f in resolve_files(cfg):
        fs, path = sources.filesystem(f.uri, KEY)
        try:
            with fs.open_input_stream(path, compression=None) as stream:
                stream.read(1)
        except OSError as exc:
            raise UserError(f"{KEY}: cannot read {f.uri}: {exc}") from None


def eval_texts(f: sources.InputFile, cfg: CorpusConfig) -> Iterator[str]:
    """The normalised documents of one eval file; a UserError for any record it cannot read."""
    from pipelines.corpus.normalize import decode_utf8, normalize_text
    from pipelines.corpus.readers import ReadOptions, read_file

    opts = ReadOptions(cfg.text_field, None, None, MAX_EVAL_DOC_BYTES, 1024)
    for table in read_file(f.uri, opts, f.rel or f.uri):
        for row in table.select(["raw", "text", "reason", "detail"]).to_pylist():
            if row["reason"] is not None:
                raise UserError(f"{KEY}: cannot read {f.uri}: {row['detail'] or row['reason']}")
            yield normalize_text(row["text"] if row["text"] is not None else decode_utf8(row["raw"] or b""))


@dataclass
class EvalTable:
    n: int
    names: list[str]  # eval files, as named below their root
    hashes: np.ndarray  # sorted distinct uint64 n-gram hashes
    files: np.ndarray  # int32: index into `names` of the first file holding each hash
    docs: int = 0

    def digest(self) -> str:
        h = xxhash.xxh3_128()
        for part in (str(self.n).encode(), "\0".join(self.names).encode(), self.hashes, self.files):
            h.update(part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes())
        return h.hexdigest()

    def matches(self, per_doc: list[np.ndarray]) -> list[str | None]:
        """`match` of each document's hashes, with one table lookup for all of them (the few hits
        then get their detail one by one)."""
        if not per_doc or not len(self.hashes):
            return [None] * len(per_doc)
        found = ngrams.contains(self.hashes, np.concatenate(per_doc))
        owner = np.repeat(np.arange(len(per_doc)), [len(h) for h in per_doc])
        hit = set(np.unique(owner[found]).tolist())
        return [self.match(h) if i in hit else None for i, h in enumerate(per_doc)]

    def match(self, hashes: np.ndarray) -> str | None:
        """None when no n-gram of `hashes` (a document's, in order) is in the table; else the detail
        of the reject: the eval file with the most hits, and how many hits of how many n-grams."""
        found = ngrams.contains(self.hashes, hashes)
        if not found.any():
            return None
        at = np.searchsorted(self.hashes, hashes[found])
        by_file = np.bincount(self.files[at], minlength=len(self.names))
        best = int(np.argmax(by_file))
        others = int((by_file > 0).sum()) - 1
        more = f" (and {others} other eval file{'s' if others > 1 else ''})" if others else ""
        return f"{self.names[best]}: {int(by_file[best])} of {len(hashes)} {self.n}-grams{more}"


def build_table(files: list[sources.InputFile], cfg: CorpusConfig) -> EvalTable:
    names = [f.rel or f.uri for f in files]
    chunks, owners, docs = [], [], 0
    for i, f in enumerate(files):
        for text in eval_texts(f, cfg):
            hashes = ngrams.ngram_hashes(text, cfg.decontaminate_ngram)
            chunks.append(hashes)
            owners.append(np.full(len(hashes), i, np.int32))
            docs += 1
    if not chunks:
        return EvalTable(cfg.decontaminate_ngram, names, np.zeros(0, np.uint64), np.zeros(0, np.int32), docs)
    # np.unique's first index is the first occurrence: files are concatenated in order, first wins
    hashes, first = np.unique(np.concatenate(chunks), return_index=True)
    return EvalTable(cfg.decontaminate_ngram, names, hashes, np.concatenate(owners)[first], docs)


@dataclass(frozen=True)
class EvalHandle:
    """What a Ray Data task receives: the table's digest (what the worker's processor cache keys on)
    and its object reference (nested in this object, so Ray passes it on unresolved)."""

    digest: str
    ref: object = field(compare=False, hash=False, repr=False)

    def load(self) -> EvalTable:
        import ray

        return ray.get(self.ref)


def load(cfg: CorpusConfig, log: Callable[[str], None] = print) -> EvalHandle | None:
    """Read the eval files on the driver and put their table in the object store (Ray is running);
    None when decontamination is off."""
    files = resolve_files(cfg)
    if not files:
        return None
    import ray

    table = build_table(files, cfg)
    log(
        f"[corpus] decontaminate against {len(files)} eval files: {table.docs} documents, "
        f"{len(table.hashes)} distinct {table.n}-grams"
    )
    return EvalHandle(table.digest(), ray.put(table))
