"""Elastic training end to end: resume on another number of workers and ZeRO stage, survive a lost
node, checkpoint on SIGTERM. Real Ray Train, DeepSpeed and a real MLflow server.

Every run is the tiny pretrain run of 60 steps (a checkpoint and an evaluation every 20):
  - "reference": 2 workers at ZeRO 1, uninterrupted;
  - "shrink": 2 workers at ZeRO 1 until rank 0 raises an error no restart cures after step 41 (the
    run ends; its last checkpoint is step 40), then submitted again on 1 worker to the end;
  - "grow": the same from 1 worker at ZeRO 1 to 2 workers at ZeRO 2.
Each step logs a digest of the windows it trained on (`data_digest`): the interrupted runs must have
seen exactly the reference's windows at every step, and end within 0.5% of its val loss.
"""

from __future__ import annotations

import json
from collections import Counter

import mlflow
import pytest
from prepared_workspace import pretrain_on_two_nodes

from pipelines.core.faults import (
    FAULT_ENV,
    FAULT_HOLD_ENV,
    FAULT_RAISE_ENV,
    FAULT_RANK_ENV,
    FAULT_SIGTERM_ENV,
)
from pipelines.core.workflow import Runner
from pipelines.errors import RunFailed
from pipelines.training.pretrain import pretrain_stage

pytestmark = pytest.mark.slow
STEPS = (
    "train.max_steps=60",
    "train.eval_interval=20",
    "train.checkpoint_interval=20",
    "train.log_interval=20",
)


def submit(pw, server, workspace, run: str, *extra: str, env: dict | None = None):
    """The pretrain stage on the session's Ray, in this process: (manifest, console lines)."""
    overrides = pw.train_overrides(
        workspace,
        f"mlflow.tracking_uri={server}",
        "mlflow.experiment=train-elastic",
        "mlflow.registered_model=elastic-model",
        f"train.run_name={run}",
        "train.max_failures=0",
        *STEPS,
        *extra,
    )
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        runner = Runner(pw.config(*overrides), [pretrain_stage()], log=logs.append)
        runner.run()
    return runner.published("pretrain").manifest, logs


def interrupted(pw, server, workspace, run: str, before: tuple, after: tuple):
    """A run stopped by an incurable error after step 41, then resubmitted with `after`."""
    stop = {FAULT_ENV: "41", FAULT_RAISE_ENV: "ImportError", FAULT_RANK_ENV: "0"}
    with pytest.raises(RunFailed, match="ImportError"):
        submit(pw, server, workspace, run, *before, env=stop)
    return submit(pw, server, workspace, run, *after)


def newest_checkpoint(run_dir):
    return max((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name)


def restarts(client, run_id: str) -> list[tuple[int, float]]:
    """(step, world size) of every (re)start, in time order."""
    metrics = sorted(client.get_metric_history(run_id, "restart_world_size"), key=lambda m: m.timestamp)
    return [(m.step, m.value) for m in metrics]


def history(client, run_id: str, key: str) -> dict[int, float]:
    metrics = client.get_metric_history(run_id, key)
    logged = sorted((m.step, m.value) for m in metrics)
    assert max(Counter(m.step for m in metrics).values()) == 1, f"{key}: a step logged twice: {logged}"
    return {m.step: m.value for m in metrics}


@pytest.fixture(scope="module")
def runs(prepared_workspace, mlflow_server, ray_module, tmp_path_factory):
    pw, root = prepared_workspace, tmp_path_factory.mktemp("elastic")
    workers = lambda n: f"train.num_workers={n}"  # noqa: E731
    reference = submit(pw, mlflow_server, root / "reference", "reference", workers(2))
    shrink = interrupted(pw, mlflow_server, root / "shrink", "shrink", (workers(2),), (workers(1),))
    grow = interrupted(
        pw, mlflow_server, root / "grow", "grow", (workers(1),), (workers(2), "train.zero_stage=2")
    )
    return {
        "reference": reference,
        "shrink": shrink,
        "grow": grow,
        "client": mlflow.MlflowClient(mlflow_server),
        "workspaces": {"shrink": root / "shrink"},
    }


@pytest.mark.parametrize("name", ["shrink", "grow"])
def test_a_resumed_run_on_another_layout_sees_the_same_windows_at_every_step(runs, name):
    client, (reference, _), (resumed, logs) = runs["client"], runs["reference"], runs[name]
    assert resumed["resumed_from_step"] == 40 and resumed["steps"] == 60
    expected = history(client, reference["mlflow_run_id"], "data_digest")
    seen = history(client, resumed["mlflow_run_id"], "data_digest")  # both submissions: one MLflow run
    assert sorted(seen) == sorted(expected) == list(range(1, 61))
    assert seen == expected
    assert len(set(expected.values())) == 60  # the digest tells the steps' windows apart
    assert resumed["val"]["loss"] == pytest.approx(reference["val"]["loss"], rel=0.005)
    assert any("resharded from" in line or "resumes with train.num_workers" in line for line in logs)


def test_every_change_of_layout_is_in_mlflow(runs):
    client = runs["client"]
    for name, before, after in (("shrink", 2, 1), ("grow", 1, 2)):
        manifest, logs = runs[name]
        run = client.get_run(manifest["mlflow_run_id"])
        assert restarts(client, run.info.run_id) == [(0, before), (40, after)]
        assert manifest["world_size"] == after
        assert f"train.num_workers {before} -> {after}" in run.data.tags["resumed.step_40"]
        assert "resharded.step_40" in run.data.tags
    grow_tags = client.get_run(runs["grow"][0]["mlflow_run_id"]).data.tags
    assert "train.zero_stage 1 -> 2" in grow_tags["resumed.step_40"]
    assert "at ZeRO 1 to 2 at ZeRO 2" in grow_tags["resharded.step_40"]


def test_a_checkpoint_of_another_model_shape_is_refused_in_one_line(runs, prepared_workspace, mlflow_server):
    from pipelines.errors import UserError

    workspace = runs["workspaces"]["shrink"]  # the run "shrink" has checkpoints there
    with pytest.raises(UserError) as refused:  # the CLI prints it as one line with exit code 2
        submit(
            prepared_workspace, mlflow_server, workspace, "shrink", "train.num_workers=1", "model.n_layer=3"
        )
    [line] = str(refused.value).splitlines()
    assert "'train.run_name'" in line and "'shrink' has checkpoints of another model shape" in line


def test_sigterm_checkpoints_at_the_step_boundary_and_the_resubmission_resumes_there(
    prepared_workspace, mlflow_server, ray_module, tmp_path
):
    pw, workspace = prepared_workspace, tmp_path / "ws"
    term = {FAULT_ENV: "7", FAULT_SIGTERM_ENV: "1"}  # rank 1 gets a real SIGTERM in step 7
    few = ("train.max_steps=20", "train.checkpoint_interval=5", "train.eval_interval=10")
    with pytest.raises(RunFailed, match="preempted: a worker got SIGTERM during step 7"):
        submit(pw, mlflow_server, workspace, "sigterm", "train.num_workers=2", *few, env=term)
    run_dir = workspace / "checkpoints" / "sigterm"
    last = newest_checkpoint(run_dir) / "train_state"
    states = [json.loads((last / f"rank-{r:05d}.json").read_text()) for r in (0, 1)]
    assert [s["step"] for s in states] == [7, 7]  # the step the signal came in: not 5, not 10
    assert states[1]["sigterm_during_step"] == 7 and states[0]["sigterm_during_step"] is None
    resumed, logs = submit(pw, mlflow_server, workspace, "sigterm", "train.num_workers=2", *few)
    assert resumed["resumed_from_step"] == 7 and resumed["steps"] == 20
    assert any("resuming from the checkpoint of step 7" in line for line in logs)

    # a partial checkpoint (a rank's part cut short) is passed over for the one before, with a warning
    newest = newest_checkpoint(run_dir)
    part = newest / "state" / "rank-00001.safetensors"
    part.write_bytes(part.read_bytes()[:100])
    more = ("train.max_steps=25", *few[1:])
    again, logs = submit(pw, mlflow_server, workspace, "sigterm", "train.num_workers=2", *more)
    assert again["resumed_from_step"] == 15 and again["steps"] == 25
    assert [p.rstrip("/").split("/")[-1] for p in again["skipped_checkpoints"]] == [newest.name]
    assert any("skipped the incomplete checkpoint" in line and newest.name in line for line in logs)


def test_losing_the_node_of_one_worker_of_an_elastic_run_finishes_on_the_other(
    prepared_workspace, mlflow_server, tmp_path
):
    """[1, 2] workers on a 2-node cluster, one per node; rank 1 holds after step 21 (the step-20
    checkpoint is in) and the test removes the node it is on: Ray Train restarts the run on the
    one worker it can place, from step 20, and it finishes."""
    pw, workspace = prepared_workspace, tmp_path / "ws"
    overrides = pw.train_overrides(
        workspace,
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment=train-elastic",
        "mlflow.registered_model=elastic-model",
        "train.run_name=lost-node",
        "train.num_workers=[1,2]",
        "train.max_steps=40",
        "train.checkpoint_interval=10",
        "train.eval_interval=20",
        "train.max_failures=2",
    )
    held = workspace / "checkpoints" / "lost-node" / "fault-at-step-21"
    env = {FAULT_ENV: "21", FAULT_HOLD_ENV: "1", "PIPELINES_TEST_REMOVE_NODE_ON": str(held)}
    # Right after the loss Ray still counts the gone node's CPU: the first restart waits for 2 workers
    # until Ray Train's start-up timeout (60 s by default; 10 s here), then places 1.
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    manifest, proc = pretrain_on_two_nodes([*pw.overrides, *overrides], env=env)
    print("\n".join(line for line in proc.stdout.splitlines() if "[pretrain]" in line or "NODE" in line))
    assert "REMOVED NODE" in proc.stdout
    assert manifest["resumed_from_step"] == 20 and manifest["steps"] == 40 and manifest["world_size"] == 1
    client = mlflow.MlflowClient(mlflow_server)
    # 2 workers until the node went (elastic: maybe from 1 first, grown before any checkpoint), then 1
    starts = restarts(client, manifest["mlflow_run_id"])
    assert starts[-2:] == [(0, 2), (20, 1)], starts
    assert "resharded.step_20" in client.get_run(manifest["mlflow_run_id"]).data.tags
    digests = history(client, manifest["mlflow_run_id"], "data_digest")
    assert sorted(digests) == list(range(1, 41))  # every step once, the lost steps 21 redone
