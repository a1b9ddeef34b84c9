"""What a run of steps made of a document, remembered by a 128-bit hash of that step's input.

Two memos serve the document processor (process.py), each under one config:
- pages: extraction and normalisation are pure functions of the raw record, so an exact copy of a
  page (a mirror, a re-crawl) is not parsed again;
- texts: language id, the quality filters, PII redaction, decontamination and MinHash are pure
  functions of the normalised text (and of the evaluation texts, fixed for a processor), so a
  copy of a text (also one from a different page) takes their outcome.
The outcome is the same either way: rejects keep their stage and reason, copies still reach exact
dedup and are dropped there. Copies inside one batch wait for their first to be computed. A memo
holds at most `max_entries` outcomes and `max_chars` of kept text (a reject's outcome holds no
text) and forgets the least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import xxhash

# Row fields each run of steps writes.
PAGE_OUTCOME = ("raw", "text", "replacement_chars", "stage", "reason", "detail")
TEXT_OUTCOME = (
    "lang",
    "lang_score",
    "stage",
    "reason",
    "detail",
    "text",
    "pii_redactions",
    "words",
    "exact_hash",
    "sig",
    "bands",
    "ngrams",
)


def page_key(row: dict) -> bytes:
    """The record as read: its format and its raw bytes (HTML, text files) or its given text."""
    content = row["raw"] if row["raw"] is not None else (row["text"] or "").encode()
    return xxhash.xxh3_128_digest(row["format"].encode() + b"\0" + content)


def text_key(row: dict) -> bytes:
    return xxhash.xxh3_128_digest(row["text"].encode())


class OutcomeMemo:
    def __init__(
        self,
        fields: tuple[str, ...],
        key: Callable[[dict], bytes],
        max_entries: int = 50_000,
        max_chars: int = 32_000_000,
    ):
        self.fields, self.key = fields, key
        self.max_entries, self.max_chars = max_entries, max_chars
        self._outcomes: OrderedDict[bytes, dict] = OrderedDict()
        self._chars = 0

    def split(self, rows: list[dict]) -> tuple[list[dict], dict[bytes, list[dict]]]:
        """Fill the rows whose input was seen before; return the rows still to compute (one per
        distinct input) and the copies waiting on each of them (key -> rows)."""
        fresh, waiting = [], {}
        for row in rows:
            key = self.key(row)
            if key in self._outcomes:
                self._outcomes.move_to_end(key)
                row.update(self._outcomes[key], recalled=True)
            elif key in waiting:
                waiting[key].append(row)
            else:
                waiting[key] = []
                row["_memo_key"] = key
                fresh.append(row)
        return fresh, waiting

    def settle(self, fresh: list[dict], waiting: dict[bytes, list[dict]]) -> None:
        """Remember the computed rows and give their outcome to the copies that waited."""
        for row in fresh:
            key = row.pop("_memo_key")
            outcome = {f: row.get(f) for f in self.fields}
            for copy in waiting[key]:
                copy.update(outcome, recalled=True)
            self._remember(key, outcome)

    def _remember(self, key: bytes, outcome: dict) -> None:
        size = len(outcome["text"] or "") if outcome["reason"] is None else 0
        if size > self.max_chars:
            return
        if outcome["reason"] is not None:
            outcome = {**outcome, "text": None}  # a reject's text is never published
        self._outcomes[key] = outcome
        self._chars += size
        while self._chars > self.max_chars or len(self._outcomes) > self.max_entries:
            _, old = self._outcomes.popitem(last=False)
            self._chars -= len(old["text"] or "")
