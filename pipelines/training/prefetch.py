"""Micro-batches read ahead in a background thread, into pinned memory, for GPU training.

A synchronous read leaves the GPU idle while the host slices the next windows out of the shards,
and a copy from pageable memory cannot overlap with compute. The Prefetcher keeps `depth` batches
ready, pinned, so `x.to(device, non_blocking=True)` is a real asynchronous copy.

It stays exactly resumable: a checkpoint must record the position of the next batch the loop has
not taken, not the reader's (which is `depth` batches ahead). So each batch travels with the
source's state after it, and state_dict() is the state after the last batch handed out.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

DEPTH = 2  # batches read ahead: enough to hide the read behind a step; each is a few MB


class Prefetcher:
    def __init__(self, source: Any, batch_size: int, pin: bool, depth: int = DEPTH):
        self.source, self.batch_size, self.pin = source, batch_size, pin
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] | None = None  # the source's state after the last batch taken

    def next_batch(self, batch_size: int) -> tuple[Any, Any]:
        if batch_size != self.batch_size:
            raise ValueError(f"prefetching batches of {self.batch_size}, asked for {batch_size}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="batch-prefetch", daemon=True)
            self._thread.start()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        x, y, self._state = item
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return self._state if self._state is not None else self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("the prefetcher has read ahead: restore its source before the first batch")
        self.source.load_state_dict(state)

    def _read(self) -> None:
        """The only code that touches the source once reading has started."""
        try:
            while True:
                x, y = self.source.next_batch(self.batch_size)
                if self.pin:
                    x, y = x.pin_memory(), y.pin_memory()
                self._ready.put((x, y, self.source.state_dict()))
        except BaseException as exc:  # noqa: BLE001 - handed to the training loop, raised there
            self._ready.put(exc)


def prefetched(source: Any, device: Any, batch_size: int) -> Any:
    """The source as the loop should read it: prefetched and pinned on CUDA, as it is elsewhere
    (on a CPU the reader thread would only take cores from the step)."""
    return Prefetcher(source, batch_size, pin=True) if device.type == "cuda" else source
