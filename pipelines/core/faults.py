"""Test-only fault injection, in one place. Each hook is off unless a test sets its variable:

    PIPELINES_TEST_FAULT_STEPS=7,13          training rank 1 exits hard after steps 7 and 13, once each
    PIPELINES_TEST_FAULT_RAISE=ImportError   ... instead raises this built-in exception there, on every
                                             attempt (an error no restart cures)
    PIPELINES_TEST_FAULT_SIGTERM=1           ... instead sends itself SIGTERM there, once (a real signal,
                                             to its real handler), and waits until it was handled
    PIPELINES_TEST_FAULT_HOLD=1              ... instead stops there, once, until something kills it
                                             (a test removes its node)
    PIPELINES_TEST_FAULT_RANK=0              the rank that does it (default 1)
    PIPELINES_TEST_FAULT_BEFORE_MANIFEST=X   the process dies after stage X uploaded its files,
                                             before its manifest.json

The launcher and the runner ask here (`step_fault`, `die_before_manifest`); no other module reads
these variables.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

FAULT_ENV = "PIPELINES_TEST_FAULT_STEPS"
FAULT_RAISE_ENV = "PIPELINES_TEST_FAULT_RAISE"
FAULT_PUBLISH_ENV = "PIPELINES_TEST_FAULT_BEFORE_MANIFEST"
FAULT_SIGTERM_ENV = "PIPELINES_TEST_FAULT_SIGTERM"
FAULT_HOLD_ENV = "PIPELINES_TEST_FAULT_HOLD"
FAULT_RANK_ENV = "PIPELINES_TEST_FAULT_RANK"


@dataclass
class FaultHook:
    """Rank `rank` exits hard after each optimizer step in `steps`, once per step and run (a marker
    file, written before exiting, stops the restarted worker from exiting again)."""

    steps: tuple[int, ...]
    marker_dir: str  # a workspace URI: the restarted worker may run on another node
    rank: int = 1
    raises: str | None = None  # a built-in exception's name: raise it (every attempt) instead of exiting
    sigterm: bool = False  # send this process SIGTERM (once per run) instead of exiting
    hold: bool = False  # stop (once per run) until killed, instead of exiting

    # Ray Train V2 collects each rank's report on its health check (every 2 s): a rank that dies
    # sooner after reporting takes its part of that checkpoint with it and the run resumes from the one
    # before. The hook waits that long, so a test knows which checkpoint the restart must use.
    wait_s: float = 3.0

    def maybe_fire(self, step: int, rank: int, sigterm_handled=lambda timeout: True) -> None:
        """`sigterm_handled(timeout)`: waits until this process's SIGTERM handler has run."""
        from pipelines.core.workspace import Workspace

        if self.raises and step in self.steps and rank == self.rank:
            self._raise(step, rank)
        markers, marker = Workspace(self.marker_dir), f"fault-at-step-{step}"
        if step in self.steps and rank == self.rank and not markers.exists(marker):
            if self.sigterm:
                markers.write_bytes(marker, f"rank {rank} sent itself SIGTERM after step {step}\n".encode())
                os.kill(os.getpid(), signal.SIGTERM)
                if not sigterm_handled(120):  # the worker's main thread runs the handler
                    raise RuntimeError("test hook: the SIGTERM handler did not run within 120 s")
                return
            time.sleep(self.wait_s)
            if self.hold:
                markers.write_bytes(marker, f"rank {rank} holds after step {step}\n".encode())
                threading.Event().wait()  # until the test kills this worker's node
            markers.write_bytes(marker, f"rank {rank} exited after step {step}\n".encode())
            sys.stdout.write(f"[fault] rank {rank} exits after step {step} (test hook)\n")
            sys.stdout.flush()
            os._exit(1)

    def _raise(self, step: int, rank: int) -> None:
        """A marker per attempt (so a test counts the attempts), then the exception."""
        import builtins

        from pipelines.core.workspace import Workspace

        markers = Workspace(self.marker_dir)
        attempt = next(n for n in range(1, 1000) if not markers.exists(f"raised-at-step-{step}-{n}"))
        markers.write_bytes(f"raised-at-step-{step}-{attempt}", b"")
        time.sleep(self.wait_s)  # the run's last checkpoint is registered before the failure
        raise getattr(builtins, self.raises)(f"test hook: rank {rank} raises after step {step}")


def step_fault(marker_dir: str) -> FaultHook | None:
    """The training fault a test asked for, its markers under `marker_dir`; None in real runs."""
    steps = os.environ.get(FAULT_ENV)
    if not steps:
        return None
    return FaultHook(
        tuple(int(s) for s in steps.split(",")),
        marker_dir,
        rank=int(os.environ.get(FAULT_RANK_ENV, "1")),
        raises=os.environ.get(FAULT_RAISE_ENV),
        sigterm=os.environ.get(FAULT_SIGTERM_ENV) == "1",
        hold=os.environ.get(FAULT_HOLD_ENV) == "1",
    )


def die_before_manifest(stage: str) -> None:
    if os.environ.get(FAULT_PUBLISH_ENV) == stage:
        os._exit(3)
