"""Test-only fault injection, in one place. Each hook is off unless a test sets its variable:

    PIPELINES_TEST_FAULT_STEPS=7,13          training rank 1 exits hard after steps 7 and 13, once each
    PIPELINES_TEST_FAULT_RAISE=ImportError   ... instead raises this built-in exception there, on every
                                             attempt (an error no restart cures)
    PIPELINES_TEST_FAULT_BEFORE_MANIFEST=X   the process dies after stage X uploaded its files,
                                             before its manifest.json

The launcher and the runner ask here (`step_fault`, `die_before_manifest`); no other module reads
these variables.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

FAULT_ENV = "PIPELINES_TEST_FAULT_STEPS"
FAULT_RAISE_ENV = "PIPELINES_TEST_FAULT_RAISE"
FAULT_PUBLISH_ENV = "PIPELINES_TEST_FAULT_BEFORE_MANIFEST"


@dataclass
class FaultHook:
    """Rank `rank` exits hard after each optimizer step in `steps`, once per step and run (a marker
    file, written before exiting, stops the restarted worker from exiting again)."""

    steps: tuple[int, ...]
    marker_dir: str  # a workspace URI: the restarted worker may run on another node
    rank: int = 1
    raises: str | None = None  # a built-in exception's name: raise it (every attempt) instead of exiting

    # Ray Train V2 collects each rank's report on its health check (every 2 s): a rank that dies
    # sooner after reporting takes its part of that checkpoint with it and the run resumes from the one
    # before. The hook waits that long, so a test knows which checkpoint the restart must use.
    wait_s: float = 3.0

    def maybe_fire(self, step: int, rank: int) -> None:
        from pipelines.core.workspace import Workspace

        if self.raises and step in self.steps and rank == self.rank:
            self._raise(step, rank)
        markers, marker = Workspace(self.marker_dir), f"fault-at-step-{step}"
        if step in self.steps and rank == self.rank and not markers.exists(marker):
            markers.write_bytes(marker, f"rank {rank} exited after step {step}\n".encode())
            time.sleep(self.wait_s)
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
        raise getattr(builtins, self.raises)(f"test hook: rank {rank} raises after step {step}")


def step_fault(marker_dir: str) -> FaultHook | None:
    """The training fault a test asked for, its markers under `marker_dir`; None in real runs."""
    steps = os.environ.get(FAULT_ENV)
    if not steps:
        return None
    return FaultHook(
        tuple(int(s) for s in steps.split(",")), marker_dir, raises=os.environ.get(FAULT_RAISE_ENV)
    )


def die_before_manifest(stage: str) -> None:
    if os.environ.get(FAULT_PUBLISH_ENV) == stage:
        os._exit(3)
