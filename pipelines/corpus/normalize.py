"""Text normalisation: UTF-8 decoding that counts what it had to replace, Unicode NFC, no control
characters, tidy whitespace. Every later step (filters, language id, dedup hashes) sees this text."""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT = "\ufffd"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline (tabs, NBSP, ideographic space, ...)
_LINE_EDGES = re.compile(r" *\n *")
_BLANK_LINES = re.compile(r"\n{3,}")


def decode_utf8(raw: bytes) -> str:
    """Decode UTF-8; each invalid byte sequence becomes U+FFFD (counted later, never hidden)."""
    return raw.decode("utf-8", errors="replace")


def replacement_chars(text: str) -> int:
    return text.count(REPLACEMENT)


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _LINE_EDGES.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()
