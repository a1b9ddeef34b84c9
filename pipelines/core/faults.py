"""Test-only fault injection, in one place. Each hook is off unless a test sets its variable:

    PIPELINES_TEST_FAULT_STEPS=7,13          training rank 1 exits hard after steps 7 and 13, once each
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
FAULT_PUBLISH_ENV = "PIPELINES_TEST_FAULT_BEFORE_MANIFEST"


@dataclass
class FaultHook:
    """Rank `rank` exits hard after each optimizer step in `steps`, once per step and run (a marker
    file, written before exiting, stops the restarted worker from exiting again)."""

    steps: tuple[int, ...]
    marker_dir: str  # a workspace URI: the restarted worker may run on another node
    rank: int = 1

    # Ray Train V2 collects each rank's report on its health check (every 2 s): a rank that dies
    # sooner after reporting takes its part of that checkpoint with it and the run resumes from the one
    # before. The hook waits that long, so a test knows which checkpoint the restart must use.
    wait_s: float = 3.0

    def maybe_fire(self, step: int, rank: int) -> None:
        from pipelines.core.workspace import Workspace

        markers, marker = Workspace(self.marker_dir), f"fault-at-step-{step}"
        if step in self.steps and rank == self.rank and not markers.exists(marker):
            markers.write_bytes(marker, f"rank {rank} exited after step {step}\n".encode())
            time.sleep(self.wait_s)
            sys.stdout.write(f"[fault] rank {rank} exits after step {step} (test hook)\n")
            sys.stdout.flush()
            os._exit(1)


def step_fault(marker_dir: str) -> FaultHook | None:
    """The training fault a test asked for, its markers under `marker_dir`; None in real runs."""
    steps = os.environ.get(FAULT_ENV)
    return FaultHook(tuple(int(s) for s in steps.split(",")), marker_dir) if steps else None


def die_before_manifest(stage: str) -> None:
    if os.environ.get(FAULT_PUBLISH_ENV) == stage:
        os._exit(3)
