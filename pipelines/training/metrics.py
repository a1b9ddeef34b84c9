"""Rank 0's view of a training run: MLflow metrics without duplicates, progress, memory.

Ray Train V2 has no MLflow callback, so rank 0 logs through an MlflowClient into the run whose id
travels in the checkpoint. A restarted run recomputes the steps after its last checkpoint; the
steps MLflow already holds (read once at start, per metric key) are not logged again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pipelines.runtime.console import emit

FLUSH_METRICS = 900  # MLflow accepts at most 1000 metrics per log_batch call


class MetricsLog:
    """Buffered per-step metrics for one MLflow run; `flush()` at log intervals and checkpoints."""

    def __init__(self, tracking_uri: str, run_id: str, keys: Iterable[str]):
        from mlflow import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.last_step = {key: self._last_logged_step(key) for key in keys}
        self._pending: list[Any] = []

    def _last_logged_step(self, key: str) -> int:
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is None or not math.isfinite(value) or step <= self.last_step.get(key, -1):
                continue
            self._pending.append(Metric(key, float(value), now, step))
            self.last_step[key] = step

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:FLUSH_METRICS], self._pending[FLUSH_METRICS:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_event(self, step: int, key: str, value: float) -> None:
        """A value that each (re)start records once, even at a step logged before (no dedup)."""
        self.client.log_metric(self.run_id, key, value, step=step)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config as params: flattened, truncated and with credentials redacted here,
        whatever the caller passed (a URL password or token never reaches the tracking server)."""
        from mlflow.entities import Param

        from pipelines.runtime.tracking import safe_params

        items = [Param(k, v) for k, v in safe_params(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])


def memory_mb(device: Any) -> float:
    """Peak allocated memory on a CUDA device, else this process's resident set size."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Progress:
    """Rank 0's line per log interval for a person, and the numbers of a live bar."""

    def __init__(self, max_steps: int, start_step: int, label: str):
        self.max_steps, self.start_step, self.label = max_steps, start_step, label
        self.started = time.perf_counter()

    def report(self, step: int, metrics: dict[str, float]) -> None:
        text, progress = self.line(step, metrics)
        emit(text, progress)

    def line(self, step: int, metrics: dict[str, float]) -> tuple[str, dict[str, Any]]:
        """("[label] step 10/300 | loss ... | eta 0:01:58", the live bar's {label, step, total, postfix})."""
        done = step - self.start_step
        per_step = (time.perf_counter() - self.started) / max(done, 1)
        eta = timedelta(seconds=round(per_step * (self.max_steps - step)))
        loss, speed = f"loss {metrics['loss']:.4f}", f"{metrics['tokens_per_s']:,.0f} tok/s"
        figures = [loss, f"lr {metrics['lr']:.2e}", speed]
        if metrics.get("mfu") is not None:
            figures.append(f"mfu {100 * metrics['mfu']:.1f}%")
        val = []
        if metrics.get("val_loss") is not None:
            bpb = f" ({metrics['val_bpb']:.3f} bpb)" if metrics.get("val_bpb") is not None else ""
            val = [f"val {metrics['val_loss']:.4f}{bpb}"]
        text = " | ".join([f"[{self.label}] step {step}/{self.max_steps}", *figures, *val, f"eta {eta}"])
        # The bar keeps what fits beside it on a terminal line (it has its own rate and ETA).
        bar = {"label": self.label, "step": step, "total": self.max_steps}
        return text, {**bar, "postfix": " | ".join([loss, speed, *val])}
