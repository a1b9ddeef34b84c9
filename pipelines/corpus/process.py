"""The per-document steps, run on Ray Data batches: extract -> normalise -> language -> quality
filters -> PII -> decontamination (and the sampled n-grams of index/ngrams) -> MinHash. A record rejected by one step passes the later ones untouched, so each
batch keeps every record and each rejected record names its stage and reason. Extraction and
normalisation depend on the raw record alone, the steps after them on the text alone, so an exact
copy of a page or a text this worker has seen takes those steps' outcome from a memo (memo.py)
instead of running them again.

Each step's CPU time is spread over the batch's rows (`sec_<step>` columns), so the funnel's
per-stage seconds are plain column sums later, with no shared counters between workers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import contextmanager

import pyarrow as pa
import xxhash

from pipelines.config import CorpusConfig
from pipelines.core.ngrams import ngram_hashes, sampled
from pipelines.corpus import filters as qf
from pipelines.corpus.decontaminate import EvalHandle, EvalTable
from pipelines.corpus.extract import ExtractTimeout, decode_html, extract_text
from pipelines.corpus.index import NGRAM_KEEP_BITS
from pipelines.corpus.langid import identify
from pipelines.corpus.memo import PAGE_OUTCOME, TEXT_OUTCOME, OutcomeMemo, page_key, text_key
from pipelines.corpus.minhash import MinHasher, words
from pipelines.corpus.normalize import decode_utf8, normalize_text, replacement_chars
from pipelines.corpus.pii import redact
from pipelines.corpus.schema import STAGING_SCHEMA


def minhasher(cfg: CorpusConfig) -> MinHasher:
    return MinHasher(ngram=cfg.ngram, bands=cfg.bands, rows=cfg.rows, seed=cfg.minhash_seed)


def _reject(row: dict, stage: str, reason: str, detail: str | None = None) -> None:
    row.update(stage=stage, reason=reason, detail=detail)


class DocumentProcessor:
    """Built once per worker process and config (see `_processor`)."""

    def __init__(self, cfg: CorpusConfig, evals: EvalTable | None = None):
        self.cfg, self.evals = cfg, evals
        self.filters = qf.make_filters(cfg.filters, cfg.filter_params)
        self.hasher = minhasher(cfg)
        self.pages = OutcomeMemo(PAGE_OUTCOME, page_key)
        self.texts = OutcomeMemo(TEXT_OUTCOME, text_key)
        Step = tuple[str, Callable[[list[dict]], None]]
        # Pure functions of the raw record, then of the normalised text: each run has its memo.
        self.page_steps: list[Step] = [("extract", self.extract), ("normalize", self.normalize)]
        self.text_steps: list[Step] = [
            ("language", self.language),
            ("quality", self.quality),
            ("pii", self.pii),
            ("decontaminate", self.decontaminate),
            ("minhash", self.minhash),
        ]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            row["recalled"] = False
        for memo, steps in ((self.pages, self.page_steps), (self.texts, self.text_steps)):
            fresh, waiting = memo.split([r for r in rows if r["reason"] is None])
            self._run(steps, rows, fresh)
            memo.settle(fresh, waiting)
        for row in rows:
            if row["reason"] is not None:  # rejected: keep the record, not its payload
                row.update(text=None, exact_hash=None, sig=None, bands=None, ngrams=None)
        return pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)

    def _run(self, steps, rows: list[dict], todo: list[dict]) -> None:
        """Each step on the rows of `todo` not rejected yet; its CPU time is spread over `rows`."""
        for name, step in steps:
            with self._timed(rows, name):
                live = [r for r in todo if r["reason"] is None]
                if live:
                    step(live)

    @contextmanager
    def _timed(self, rows: list[dict], name: str):
        started = time.thread_time()  # CPU time: other processes on a busy machine do not count
        yield
        share = (time.thread_time() - started) / max(1, len(rows))
        for row in rows:
            row[f"sec_{name}"] = share

    # --- steps -----------------------------------------------------------------------------
    def extract(self, rows: list[dict]) -> None:
        for row in rows:
            if row["format"] != "html":
                continue
            try:
                row["text"] = extract_text(
                    decode_html(row["raw"]), self.cfg.extractor, self.cfg.extract_timeout_s
                )
            except ExtractTimeout:
                _reject(row, "extract", "extract_timeout", f"over {self.cfg.extract_timeout_s}s")
            except Exception as exc:  # noqa: BLE001 - a page the extractor cannot parse is a reject
                _reject(row, "extract", "extract_error", f"{type(exc).__name__}: {exc}"[:300])
            row["raw"] = None

    def normalize(self, rows: list[dict]) -> None:
        for row in rows:
            text = row["text"] if row["text"] is not None else decode_utf8(row["raw"] or b"")
            row["raw"] = None
            bad = replacement_chars(text)
            row["replacement_chars"] = bad
            text = normalize_text(text)
            if not text:
                _reject(row, "normalize", "empty")
            elif bad > self.cfg.max_replacement_ratio * len(text):
                _reject(row, "normalize", "invalid_utf8", f"{bad} replacement characters in {len(text)}")
            row["text"] = text

    def language(self, rows: list[dict]) -> None:
        wanted = set(self.cfg.languages)
        for row, (lang, score) in zip(rows, identify([r["text"] for r in rows])):
            row["lang"], row["lang_score"] = lang, score
            if wanted and (lang not in wanted or score < self.cfg.min_lang_score):
                _reject(row, "language", "language", f"{lang} {score:.2f}")

    def quality(self, rows: list[dict]) -> None:
        for row in rows:
            doc = qf.Doc(row["text"])
            reason = qf.apply(self.filters, doc)
            if reason:
                _reject(row, "quality", reason)
            row["text"] = doc.text  # C4 keeps only its good lines

    def pii(self, rows: list[dict]) -> None:
        for row in rows:
            row["pii_redactions"] = 0
            if self.cfg.pii_redaction:
                row["text"], row["pii_redactions"] = redact(row["text"])

    def decontaminate(self, rows: list[dict]) -> None:
        """The n-grams of the text (as published: after PII redaction): a hit in the eval table is a
        reject; a sample of them is what index/ngrams keeps of the document."""
        hashes = [ngram_hashes(row["text"], self.cfg.decontaminate_ngram) for row in rows]
        for row, h in zip(rows, hashes):
            row["ngrams"] = sampled(h, NGRAM_KEEP_BITS)
        if self.evals is None:
            return
        for row, hit in zip(rows, self.evals.matches(hashes)):
            if hit:
                _reject(row, "decontaminate", "contaminated", hit)

    def minhash(self, rows: list[dict]) -> None:
        word_lists = [words(r["text"]) for r in rows]
        sigs = self.hasher.signatures_of_words(word_lists)
        bands = self.hasher.band_keys(sigs)
        for row, word_list, sig, band in zip(rows, word_lists, sigs, bands):
            row["words"] = len(word_list)
            row["exact_hash"] = xxhash.xxh3_64_intdigest(row["text"].encode())
            row["sig"], row["bands"] = sig, band


@functools.lru_cache(maxsize=4)
def _processor(cfg_json: str, evals: EvalHandle | None = None) -> DocumentProcessor:
    """One processor per worker process, config and eval table (its memo holds outcomes under
    both): the language model, filters and eval table load once."""
    return DocumentProcessor(CorpusConfig.model_validate_json(cfg_json), evals.load() if evals else None)


def warm_up(cfg_json: str, evals: EvalHandle | None = None) -> None:
    """Build this process's processor and run its models once (imports, language model, extractor),
    and import Ray Data, which every task it runs here needs first."""
    import ray.data  # noqa: F401

    processor = _processor(cfg_json, evals)
    identify(["warm up"])
    extract_text("<p>warm up</p>", processor.cfg.extractor, 0)


def process_batch(batch: pa.Table, cfg_json: str, evals: EvalHandle | None = None) -> pa.Table:
    return _processor(cfg_json, evals)(batch)
