"""train.time_budget: durations as written in a config, the schedule and stopping rule over the
training clock (a resumed run's clock goes on from its checkpoint), and a bad budget as a one-line
exit 2 naming the key. A real run on a budget: tests/test_console.py (its live bar)."""

from __future__ import annotations

import time

import pytest
from prepared_workspace import run_pretrain_job

from pipelines.config import LoopConfig
from pipelines.core.duration import parse_duration
from pipelines.training.budget import StepBudget, TimeBudget, plan_for


@pytest.mark.parametrize(
    "text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("45", 45)]
)
def test_durations_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "10 minutes", "0s", "-5m", "1x", ""])
def test_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def budget(seconds: float, elapsed: float, trained_before: float = 0.0, **overrides) -> TimeBudget:
    loop = LoopConfig(time_budget=f"{seconds}s", lr=1.0, min_lr_ratio=0.1, warmup_steps=2, **overrides)
    return plan_for(loop, trained_before, time.perf_counter() - elapsed)


def test_the_rate_decays_over_the_clock_and_the_run_stops_with_room_for_the_end():
    plan = budget(100, elapsed=0.0)
    assert isinstance(plan, TimeBudget) and plan.budget_s == 100
    assert plan.lr(0, 0.0) == 0.5 and plan.lr(1, 0.0) == 1.0  # warm-up: by steps
    assert plan.lr(5, 0.0) == 1.0 and plan.lr(5, 0.5) == pytest.approx(0.55) and plan.lr(5, 1.0) == 0.1
    plan.evaluated(5.0)
    plan.checkpointed(10.0)
    assert plan.reserve() == 25.0  # the final evaluation and a final checkpoint of twice a checkpoint
    for _ in range(5):
        plan.step_took(1.0)
    late = budget(100, elapsed=73.5)
    late.eval_s, late.checkpoint_s, late.steps = plan.eval_s, plan.checkpoint_s, plan.steps
    assert not late.done(50)  # 73.5 + a 1 s step + 25 s left for the end < 100
    assert late.progress(50) == pytest.approx(73.5 / 75, abs=1e-3)
    later = budget(100, elapsed=74.5)
    later.eval_s, later.checkpoint_s, later.steps = plan.eval_s, plan.checkpoint_s, plan.steps
    assert later.done(51)


def test_a_resumed_run_counts_its_checkpointed_training_time_not_the_time_down():
    resumed = budget(60, elapsed=1.0, trained_before=40.0)
    assert resumed.clock() == pytest.approx(41.0, abs=0.5)
    assert budget(60, elapsed=0.0, trained_before=61.0).done(0)


def test_without_a_budget_the_steps_decide():
    plan = plan_for(LoopConfig(max_steps=10), 0.0, time.perf_counter())
    assert type(plan) is StepBudget and not plan.done(9) and plan.done(10) and plan.total_steps == 10


def test_a_bad_budget_is_one_line_naming_the_key(prepared_workspace, tmp_path):
    proc = run_pretrain_job(prepared_workspace, tmp_path / "ws", "train.time_budget=soon", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert "train.time_budget" in line and "'soon' is not a duration" in line
