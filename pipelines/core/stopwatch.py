"""Named wall-clock phases, for the breakdown of where a stage's time went (its manifest's `timing`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the block's wall time to `<name>_s` (a phase timed twice adds up)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - start, 3)
