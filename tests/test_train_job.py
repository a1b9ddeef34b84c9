"""The pretrain job the way users run it: `ray job submit --working-dir .` to a `ray start --head`
cluster; a new version of the registered model appears in a real MLflow server.
(The 2-node cluster run is part of tests/test_train_faults.py: it is the uninterrupted reference.)"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mlflow
import pytest
from prepared_workspace import pretrain_job_args, run_in_repo

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"
SHORT = ("train.max_steps=6", "train.checkpoint_interval=3", "train.eval_interval=3", "train.log_interval=2")


def test_ray_job_submit_trains_and_registers_a_new_version(
    ray_head, mlflow_server, prepared_workspace, tmp_path
):
    name = "job-submit-model"
    args = pretrain_job_args(
        prepared_workspace,
        tmp_path / "ws",
        *SHORT,
        "train.num_workers=1",  # one worker starts faster; the 2-worker paths are tested elsewhere
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment=job-submit",
        f"mlflow.registered_model={name}",
    )
    proc = submit_job(ray_head, args)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert "[pretrain] step 6/6 | loss" in proc.stdout and "eta" in proc.stdout  # progress for a person
    client = mlflow.MlflowClient(mlflow_server)
    [version] = client.search_model_versions(f"name = '{name}'")
    assert client.get_latest_versions(name)[0].version == version.version  # models:/<name>/latest
    assert client.get_model_version_by_alias(name, "champion").version == version.version  # the first
    assert version.tags["gate.decision"] == "promoted to champion"
    manifest = json.loads(next((tmp_path / "ws" / "models").glob("*/manifest.json")).read_text())
    assert manifest["version"] == version.version and manifest["steps"] == 6


def submit_job(env: dict, args: list[str], attempts: int = 20):
    """`ray job submit`, retried while the fresh head's job agent is not up yet ("No available agent
    to submit job": the dashboard answers before its agent registers, slowly on a busy machine)."""
    for _ in range(attempts):
        proc = run_in_repo([str(RAY), "job", "submit", "--working-dir", ".", "--", "python", *args], env=env)
        if "No available agent to submit job" not in proc.stderr:
            return proc
        time.sleep(3)
    return proc
