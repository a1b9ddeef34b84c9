"""Fault tolerance of the pretrain stage, end to end on real Ray clusters and a real MLflow server.

Three submissions of the same tiny run (20 steps, a checkpoint every 5):
  - "clean": uninterrupted, on its own 2-node ray.cluster_utils.Cluster (1 CPU per node, so one
    training worker per node), in a subprocess so the session's Ray keeps running;
  - "faulty", on the session's Ray: rank 1 exits after step 7 (Ray Train restarts the workers from
    the step-5 checkpoint, FailureConfig(max_failures=1)) and again after step 13 (a second failure:
    the job fails); then the same job is submitted again and resumes from the step-10 checkpoint;
  - "clean" submitted again (--force): finished before, so it does not train again.
The faulty run must end with the clean run's weights (1e-6) and loss curve (so every batch after each
restart was the right one), with every step in MLflow exactly once, in the one MLflow run it started.
"""

from __future__ import annotations

import json
from collections import Counter

import mlflow
import pytest
import torch
from prepared_workspace import pretrain_on_two_nodes
from safetensors.torch import load_file

from pipelines.core.faults import FAULT_ENV
from pipelines.core.workflow import Runner
from pipelines.training.pretrain import pretrain_stage

pytestmark = pytest.mark.slow
RUN = "faults"
MODEL = "faults-model"


def overrides(pw, server, workspace) -> list[str]:
    return pw.train_overrides(
        workspace,
        f"mlflow.tracking_uri={server}",
        "mlflow.experiment=train-faults",
        f"mlflow.registered_model={MODEL}",
        f"train.run_name={RUN}",
        "train.log_interval=1",
        "train.max_failures=1",
    )


def submit(pw, server, workspace, *, force: bool = False):
    """The stage on the session's Ray, in this process."""
    logs: list[str] = []
    runner = Runner(pw.config(*overrides(pw, server, workspace)), [pretrain_stage()], log=logs.append)
    runner.run(force=["pretrain"] if force else [])
    return runner.published("pretrain").manifest, logs


def submit_on_two_nodes(pw, server, workspace):
    """The stage on a fresh 2-node cluster (its own Ray, so in a subprocess)."""
    manifest, _ = pretrain_on_two_nodes([*pw.overrides, *overrides(pw, server, workspace)])
    return manifest


@pytest.fixture(scope="module")
def runs(prepared_workspace, mlflow_server, ray_module, tmp_path_factory):
    from ray.train import TrainingFailedError

    pw, root = prepared_workspace, tmp_path_factory.mktemp("faults")
    clean_ws, faulty_ws = root / "clean", root / "faulty"
    clean = submit_on_two_nodes(pw, mlflow_server, clean_ws)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAULT_ENV, "7,13")
        with pytest.raises(TrainingFailedError):
            submit(pw, mlflow_server, faulty_ws)
        failed_record = json.loads((faulty_ws / "checkpoints" / RUN / "run.json").read_text())
        resumed, resumed_logs = submit(pw, mlflow_server, faulty_ws)
    again, again_logs = submit(pw, mlflow_server, clean_ws, force=True)
    return {
        "clean": clean,
        "resumed": resumed,
        "again": again,
        "failed_record": failed_record,
        "resumed_logs": resumed_logs,
        "again_logs": again_logs,
        "clean_ws": clean_ws,
        "faulty_ws": faulty_ws,
        "client": mlflow.MlflowClient(mlflow_server),
    }


def history(client, run_id: str, key: str) -> dict[int, float]:
    metrics = client.get_metric_history(run_id, key)
    steps = Counter(m.step for m in metrics)
    assert max(steps.values()) == 1, f"{key}: steps logged twice: {[s for s, n in steps.items() if n > 1]}"
    return {m.step: m.value for m in metrics}


def weights(workspace, manifest) -> dict[str, torch.Tensor]:
    return load_file(str(workspace / manifest["output"] / "model.safetensors"))


def test_both_faults_fired_and_the_resubmission_resumed_from_the_last_checkpoint(runs):
    faults = runs["faulty_ws"] / "checkpoints" / RUN
    assert (faults / "fault-at-step-7").is_file() and (faults / "fault-at-step-13").is_file()
    assert runs["clean"]["resumed_from_step"] == 0
    assert runs["resumed"]["resumed_from_step"] == 10  # the checkpoint before the second fault
    assert runs["resumed"]["steps"] == runs["clean"]["steps"] == 20
    assert any("resuming from the checkpoint of step 10" in line for line in runs["resumed_logs"])


def test_interrupted_run_ends_with_the_uninterrupted_weights(runs):
    clean, resumed = weights(runs["clean_ws"], runs["clean"]), weights(runs["faulty_ws"], runs["resumed"])
    assert clean.keys() == resumed.keys()
    for key in clean:
        assert torch.allclose(clean[key], resumed[key], rtol=0, atol=1e-6), key
    assert runs["resumed"]["val"]["loss"] == pytest.approx(runs["clean"]["val"]["loss"], abs=1e-6)


def test_every_step_is_in_mlflow_once_with_the_uninterrupted_values(runs):
    client = runs["client"]
    clean = history(client, runs["clean"]["mlflow_run_id"], "loss")
    resumed = history(client, runs["resumed"]["mlflow_run_id"], "loss")
    assert sorted(resumed) == sorted(clean) == list(range(1, 21))
    # the same loss at every step: after each restart the reader served exactly the next batch
    for step, value in clean.items():
        assert resumed[step] == pytest.approx(value, abs=1e-6), step
    for key in ("lr", "grad_norm", "tokens_per_s", "mfu", "memory_mb", "tokens"):
        assert sorted(history(client, runs["resumed"]["mlflow_run_id"], key)) == list(range(1, 21)), key
    val = history(client, runs["resumed"]["mlflow_run_id"], "val_loss")
    assert sorted(val) == [0, 10, 20]
    assert val[20] < val[0] - 0.5  # it learned


def test_the_resubmission_continues_the_first_mlflow_run(runs):
    client, run_id = runs["client"], runs["resumed"]["mlflow_run_id"]
    assert run_id == runs["failed_record"]["mlflow_run_id"]
    experiment = client.get_experiment_by_name("train-faults")
    continuing = client.search_runs([experiment.experiment_id], f"tags.training_run_id = '{run_id}'")
    assert len(continuing) == 1  # the second submission's own stage run points at the training run
    run = client.get_run(run_id)
    assert run.data.params["resolved.precision"] == "fp32"
    assert run.data.params["resolved.world_size"] == "2"
    assert run.data.params["train.zero_stage"] == "1"
    [dataset] = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name.startswith("shards/")


def test_a_finished_run_submitted_again_does_not_train(runs):
    client, clean = runs["client"], runs["clean"]
    assert runs["again"]["resumed_from_step"] == 20
    assert any("not training again" in line for line in runs["again_logs"])
    assert sorted(history(client, clean["mlflow_run_id"], "loss")) == list(range(1, 21))  # no new steps
    first, second = weights(runs["clean_ws"], clean), weights(runs["clean_ws"], runs["again"])
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_checkpoints_keep_the_last_two(runs):
    checkpoints = sorted(
        p for p in (runs["clean_ws"] / "checkpoints" / RUN).glob("checkpoint_*") if p.is_dir()
    )
    assert len(checkpoints) == 2
    final = checkpoints[-1]
    state = json.loads((final / "train_state" / "rank-00000.json").read_text())
    assert state["step"] == 20 and set(state["rng"]) >= {"torch", "numpy", "python"}
    assert (final / "train_state" / "rank-00001.json").is_file()
    assert (final / "model" / "model.safetensors").is_file()


def test_each_submission_registers_a_version_and_the_gate_records_its_figures(runs):
    client = runs["client"]
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    assert [int(runs[k]["version"]) for k in ("clean", "resumed", "again")] == versions[-3:]
    latest = client.get_latest_versions(MODEL)[0]
    assert latest.version == runs["again"]["version"]  # models:/<name>/latest
    tags = client.get_model_version(MODEL, runs["resumed"]["version"]).tags
    assert float(tags["gate.candidate_bpb"]) == pytest.approx(
        runs["resumed"]["val"]["bits_per_byte"], rel=1e-6
    )
    assert tags["gate.decision"] in ("promoted to champion", "kept the champion")


def test_the_uninterrupted_run_put_one_worker_on_each_of_two_nodes(runs):
    checkpoints = runs["clean_ws"] / "checkpoints" / RUN
    final = max((p for p in checkpoints.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name)
    nodes = {
        json.loads((final / "train_state" / f"rank-{r:05d}.json").read_text())["node_id"] for r in (0, 1)
    }
    assert len(nodes) == 2
    faulty = runs["faulty_ws"] / "checkpoints" / RUN
    final = max((p for p in faulty.glob("checkpoint_*") if p.is_dir()), key=lambda p: p.name)
    nodes = {
        json.loads((final / "train_state" / f"rank-{r:05d}.json").read_text())["node_id"] for r in (0, 1)
    }
    assert len(nodes) == 1  # the session's Ray: one node, same weights
