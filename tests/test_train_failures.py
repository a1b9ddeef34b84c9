"""Errors a restart cannot cure end a training run at once, in one line; lost workers still restart.

The classification and Ray Train's failure decision are checked on real exception objects; the
end-to-end case trains on the session Ray with a worker that raises ImportError after step 2 on
every attempt: with max_failures=2 the default policy would start the workers three times.
"""

from __future__ import annotations

import pytest

from pipelines.core.faults import FAULT_ENV, FAULT_RAISE_ENV
from pipelines.core.workflow import Runner
from pipelines.errors import RunFailed, UserError
from pipelines.training.failures import first_incurable, retry_only_curable_policy, run_failed
from pipelines.training.pretrain import pretrain_stage


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def actor_died():
    from ray.exceptions import ActorDiedError

    return ActorDiedError()


@pytest.mark.parametrize(
    "failure",
    [
        ModuleNotFoundError("No module named 'flash_attn'"),
        NotImplementedError(
            "unsupported mix of model_dtype=torch.bfloat16 and grad_accum_dtype=torch.float32"
        ),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x32 and 48x32)"),
        raised_from(RuntimeError("engine setup failed"), ValueError("train_batch_size is not divisible")),
        UserError("config key 'train.shards': missing"),
    ],
)
def test_what_a_restart_would_meet_again_is_incurable(failure):
    assert first_incurable({0: failure, 1: RuntimeError("Connection closed by peer")})[0] == 0


@pytest.mark.parametrize(
    "failures",
    [
        {1: actor_died()},
        {0: RuntimeError("[gloo] Connection closed by peer"), 1: actor_died()},
        # a dead peer makes the survivors fail in all sorts of ways: a restart is the cure
        {0: ValueError("collateral: tensor of a closed connection"), 1: actor_died()},
        {0: ConnectionResetError("reset by peer")},
    ],
)
def test_lost_workers_and_network_errors_are_curable(failures):
    assert first_incurable(failures) is None


def test_the_policy_raises_incurable_failures_and_retries_lost_workers():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    policy = retry_only_curable_policy(FailureConfig(max_failures=3))
    lost = WorkerGroupError("worker died", {1: actor_died()})
    assert [policy.make_decision(lost) for _ in range(4)] == [FailureDecision.RETRY] * 3 + [
        FailureDecision.RAISE
    ]
    fresh = retry_only_curable_policy(FailureConfig(max_failures=3))
    assert fresh.make_decision(WorkerGroupError("bad", {0: ImportError("x")})) == FailureDecision.RAISE


def test_the_driver_line_names_rank_type_and_message_and_keeps_user_errors():
    failed = run_failed(1, ImportError("No module named\n  'flash_attn'"), tracebacks="Traceback ...\n")
    assert str(failed) == (
        "training failed on rank 1 with ImportError: No module named 'flash_attn' (not retried: a restart "
        "cannot cure it)"
    )
    assert failed.detail == "Traceback ...\n"  # the workers' tracebacks, printed above the line
    assert isinstance(run_failed(1, ImportError()), RunFailed) and RunFailed.exit_code == 1
    user = UserError("config key 'x': bad")
    assert run_failed(0, user) is user


@pytest.mark.slow
def test_an_incurable_worker_error_ends_the_run_on_the_first_attempt(
    prepared_workspace, mlflow_env, ray_local, tmp_path, monkeypatch
):
    pw, ws = prepared_workspace, tmp_path / "ws"
    monkeypatch.setenv(FAULT_ENV, "2")
    monkeypatch.setenv(FAULT_RAISE_ENV, "ImportError")
    cfg = pw.config(
        *pw.train_overrides(
            ws, "mlflow.experiment=incurable", "train.max_failures=2", "train.run_name=incurable"
        )
    )
    with pytest.raises(RunFailed) as info:
        Runner(cfg, [pretrain_stage()], log=lambda m: None).run()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "training failed on rank 1 with ImportError: test hook: rank 1 raises after step 2"
    )
    detail = info.value.detail  # the worker's own traceback, for the console above that line
    assert "Traceback (most recent call last)" in detail and "in maybe_fire" in detail
    attempts = sorted(p.name for p in (ws / "checkpoints" / "incurable").glob("raised-at-step-2-*"))
    assert attempts == ["raised-at-step-2-1"]  # the workers ran once: no restart was spent on it


def test_the_command_line_prints_a_run_failure_in_one_line_with_exit_code_1(capsys):
    from pipelines.cli import user_errors

    traceback = 'Traceback (most recent call last):\n  File "loop.py", line 9\nImportError: x\n'

    def main():
        raise RuntimeError("the trainer failed") from run_failed(
            0, ImportError("No module named 'x'"), traceback
        )

    assert user_errors(main) == 1
    err = capsys.readouterr().err
    assert err.startswith(traceback)  # the worker's traceback in full, then the one line
    assert err.removeprefix(traceback).count("\n") == 1
    assert err.removeprefix(traceback).startswith("error: training failed on rank 0 with ImportError")
