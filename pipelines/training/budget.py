"""When a training run stops, and its learning rate on the way: after `max_steps` optimizer steps,
or at a wall-clock budget (`time_budget`, e.g. 10m or 2h).

With a budget the run's clock is its training time: this attempt's since the worker started
(engine, restore, evaluations and checkpoints included) plus what earlier attempts had trained
when their last checkpoint was written (TrainState.train_seconds); time a failed run spent down
does not count. The learning rate warms up over `warmup_steps` steps as always, then decays on a
cosine over the clock's share of the budget instead of the steps' share of max_steps. Each step,
the run stops when the next step would not leave room for the final evaluation and the final
checkpoint, estimated from the slowest of each so far (a checkpoint not yet measured: as long as
an evaluation), so both land inside the budget. Rank 0's clock decides, and all ranks learn it
in the step's one all-reduce (collectives.agree): they stop at the same step with the same rate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from gpt2core.optim import lr_at, lr_at_progress
from pipelines.core.duration import parse_duration

FINAL_CHECKPOINT_FACTOR = 2.0  # the final checkpoint also gathers and writes the whole model
RECENT_STEPS = 20  # the step-time estimate: the median of the last steps


@dataclass
class StepBudget:
    """A run of max_steps optimizer steps (the rate decays over the steps)."""

    max_steps: int
    max_lr: float
    warmup_steps: int
    min_lr_ratio: float
    trained_before_s: float = 0.0  # earlier attempts' training time (the resumed checkpoint's)
    started: float = field(default_factory=time.perf_counter)  # this attempt's worker start

    def clock(self) -> float:
        """Training time so far: this attempt's and the earlier ones' up to their last checkpoint."""
        return self.trained_before_s + time.perf_counter() - self.started

    def lr(self, step: int, progress: float) -> float:
        return lr_at(step, self.max_lr, self.warmup_steps, self.max_steps, self.min_lr_ratio)

    def progress(self, step: int) -> float:
        return step / self.max_steps

    def done(self, step: int) -> bool:
        return step >= self.max_steps

    @property
    def total_steps(self) -> int:
        return self.max_steps

    def step_took(self, seconds: float) -> None:
        pass

    def evaluated(self, seconds: float) -> None:
        pass

    def checkpointed(self, seconds: float) -> None:
        pass


@dataclass
class TimeBudget(StepBudget):
    """A run that trains until `budget_s` seconds of training time (max_steps is not used)."""

    budget_s: float = 0.0
    steps: list[float] = field(default_factory=list)
    eval_s: float = 0.0
    checkpoint_s: float = 0.0

    def lr(self, step: int, progress: float) -> float:
        return lr_at_progress(step, progress, self.max_lr, self.warmup_steps, self.min_lr_ratio)

    def reserve(self) -> float:
        """What the final evaluation and checkpoint will take."""
        checkpoint = self.checkpoint_s or self.eval_s
        return self.eval_s + FINAL_CHECKPOINT_FACTOR * checkpoint

    def progress(self, step: int) -> float:
        """The clock's share of the time there is for steps."""
        return min(self.clock() / max(self.budget_s - self.reserve(), 1e-9), 1.0)

    def done(self, step: int) -> bool:
        """Rank 0's verdict: the next step would not leave room for the final evaluation and checkpoint."""
        next_step = statistics.median(self.steps[-RECENT_STEPS:]) if self.steps else 0.0
        return self.clock() + next_step + self.reserve() >= self.budget_s

    @property
    def total_steps(self) -> int:
        """The steps the budget holds at the current pace (for progress lines)."""
        if not self.steps:
            return 0
        per_step = statistics.median(self.steps[-RECENT_STEPS:])
        left = max(self.budget_s - self.reserve() - self.clock(), 0.0)
        return len(self.steps) + int(left / per_step)

    def step_took(self, seconds: float) -> None:
        self.steps.append(seconds)

    def evaluated(self, seconds: float) -> None:
        self.eval_s = max(self.eval_s, seconds)

    def checkpointed(self, seconds: float) -> None:
        self.checkpoint_s = max(self.checkpoint_s, seconds)


def plan_for(loop, trained_before_s: float, started: float) -> StepBudget:
    """The loop config's stopping rule: its time_budget if it has one, else max_steps."""
    base = dict(max_lr=loop.lr, warmup_steps=loop.warmup_steps, min_lr_ratio=loop.min_lr_ratio)
    base.update(trained_before_s=trained_before_s, started=started)
    if loop.time_budget is None:
        return StepBudget(loop.max_steps, **base)
    budget = parse_duration(loop.time_budget)
    return TimeBudget(0, **base, budget_s=budget)


def budget_line(plan: TimeBudget, timing: dict[str, float]) -> str:
    """Where a time budget went: steps, evaluation, checkpoints, start-up (this attempt's)."""
    parts = {
        "steps": timing.get("steps_s", 0.0),
        "evaluation": timing.get("eval_s", 0.0),
        "checkpoints": timing.get("checkpoint_s", 0.0) + timing.get("final_checkpoint_s", 0.0),
        "start-up": timing.get("setup_s", 0.0),
    }
    spent = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in parts.items())
    return f"time budget {plan.budget_s:g}s: trained {plan.clock():.1f}s ({spent})"
