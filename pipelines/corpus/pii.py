"""Optional PII redaction: e-mail addresses and IP addresses become fixed placeholders."""

from __future__ import annotations

import re

EMAIL = re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
EMAIL_PLACEHOLDER = "<EMAIL>"
IP_PLACEHOLDER = "<IP_ADDRESS>"


def redact(text: str) -> tuple[str, int]:
    """(text with e-mails and IP addresses replaced, number of replacements)."""
    text, emails = EMAIL.subn(EMAIL_PLACEHOLDER, text)
    text, ips4 = IPV4.subn(IP_PLACEHOLDER, text)
    text, ips6 = IPV6.subn(IP_PLACEHOLDER, text)
    return text, emails + ips4 + ips6
