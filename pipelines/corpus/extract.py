"""HTML to text with a library made for it: resiliparse (default, fast) or trafilatura (option).

Each document gets a time limit. The limit is a SIGALRM timer, so it needs the main thread of the
process (Ray task workers run tasks there) and it interrupts Python code only: trafilatura is
Python and stops on time; resiliparse runs in C++ in linear time and cannot hang on one page.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

EXTRACTORS = ("resiliparse", "trafilatura")


class ExtractTimeout(Exception):
    pass


def decode_html(raw: bytes) -> str:
    """Bytes to str by the page's declared or detected charset (invalid bytes become U+FFFD)."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(raw, detect_encoding(raw), errors="replace")


def resiliparse_text(html: str) -> str:
    """Main text by resiliparse (also what bench/datatrove_corpus.py gives datatrove)."""
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(
        html,
        preserve_formatting=True,
        main_content=True,
        list_bullets=True,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
        comments=False,
    )


def _trafilatura(html: str) -> str:
    import trafilatura

    return (
        trafilatura.extract(
            html, include_comments=False, include_tables=True, deduplicate=False, favor_precision=False
        )
        or ""
    )


_FUNCTIONS = {"resiliparse": resiliparse_text, "trafilatura": _trafilatura}


@contextmanager
def time_limit(seconds: float):
    """Raise ExtractTimeout in the body after `seconds` (main thread only; elsewhere no limit)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    expired = []

    def expire(signum, frame):
        expired.append(True)
        raise ExtractTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if expired:  # the extractor caught our exception (trafilatura catches broadly): still a timeout
        raise ExtractTimeout


def extract_text(html: str, extractor: str = "resiliparse", timeout_s: float = 5.0) -> str:
    """Main text of an HTML page; raises ExtractTimeout past the limit."""
    with time_limit(timeout_s):
        return _FUNCTIONS[extractor](html)
