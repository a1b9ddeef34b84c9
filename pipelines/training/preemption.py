"""Preemption: a checkpoint at the next step boundary when a worker's node is about to go.

Two notices reach a worker:
  - SIGTERM (Kubernetes evicting a pod, a spot VM shutting down, an operator's `kill`). Ray's worker
    would exit at once: its handler raises SystemExit in the worker's main thread. The training loop
    runs in another thread, where no handler can be installed, so the backend installs ours in each
    worker's main thread as the worker group starts (`PreemptibleTorchConfig`): it notes the signal
    and the step in progress, and leaves the exit to the loop. A second SIGTERM, or a loop that has
    not acted within GRACE_S, ends the process as Ray's handler would have.
  - Ray's drain notice for the node (a preemption Ray Core knows of ahead, with a deadline), which Ray
    Train hands to each worker (`ray.train.get_preemption_info`).
After each step all ranks agree on the strongest notice any of them has (in the loop's one
all-reduce per step, so every rank takes the same branch): on a drain they checkpoint once and train on - Ray
Train restarts the run from that checkpoint when the node goes; on a SIGTERM they checkpoint and end
the attempt with `Preempted`, which FailureConfig retries on the workers left (or a resubmitted job
resumes). Either way the run loses at most the step in progress.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

NONE, DRAINING, TERMINATING = 0, 1, 2  # the notice levels, ordered: the all-reduce takes the max
GRACE_S = 300.0  # a SIGTERM the loop has not answered by then ends the process anyway


class Preempted(RuntimeError):
    """The attempt ended on a SIGTERM after its checkpoint; a restart resumes from it. (One message
    argument: Ray rebuilds the exception from its args on the driver.)"""

    @classmethod
    def at(cls, step: int) -> Preempted:
        return cls(f"a worker got SIGTERM during step {step}; the checkpoint of step {step} is saved")


@dataclass
class _Notice:
    lock: threading.Lock
    step_in_progress: int = 0
    signalled_during: int | None = None  # the step in progress when SIGTERM came


_NOTICE = _Notice(threading.Lock())
_SIGNALLED = threading.Event()


def install_sigterm_handler() -> None:
    """Run in a worker's main thread (signal handlers can be set nowhere else)."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        with _NOTICE.lock:
            first = _NOTICE.signalled_during is None
            if first:
                _NOTICE.signalled_during = _NOTICE.step_in_progress
        _SIGNALLED.set()
        if not first and callable(previous):  # asked twice: go now, as Ray's own handler does
            previous(signum, frame)
        timer = threading.Timer(GRACE_S, os._exit, args=(128 + signal.SIGTERM,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)


def step_done(step: int) -> int:
    """This rank's notice level at the end of `step`, which marks step + 1 in progress. One lock
    covers both, so a SIGTERM is attributed to the step whose end checkpoints for it."""
    with _NOTICE.lock:
        terminating = _NOTICE.signalled_during is not None
        _NOTICE.step_in_progress = step + 1
    if terminating:
        return TERMINATING
    return DRAINING if _drain_notice() is not None else NONE


def training_from(step: int) -> None:
    """The loop starts (or resumes) with step + 1 in progress."""
    with _NOTICE.lock:
        _NOTICE.step_in_progress = step + 1


def signalled_during() -> int | None:
    return _NOTICE.signalled_during


def wait_for_sigterm(timeout: float) -> bool:
    """Until this process's SIGTERM handler has run (fault-injection tests wait on it)."""
    return _SIGNALLED.wait(timeout)


def _drain_notice():
    """Ray Train's local copy of a drain notice for one of the run's nodes, without the barrier of
    `ray.train.get_preemption_info` (the loop agrees in its own all-reduce instead)."""
    try:
        from ray.train.v2._internal.execution.context import get_train_context

        return get_train_context().preemption_context.preemption_info
    except Exception:  # noqa: BLE001 - outside a Ray Train worker (benchmarks), or another Ray
        return None


def torch_config():
    """Ray Train's TorchConfig, whose backend also installs the SIGTERM handler on every worker."""
    from ray.train.torch.config import TorchConfig, _TorchBackend

    class PreemptibleBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            super().on_start(worker_group, backend_config)
            worker_group.execute(install_sigterm_handler)

    class PreemptibleTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return PreemptibleBackend

    return PreemptibleTorchConfig()
