"""The stage runner with small test stages: skipping, selective reruns, crash safety, MLflow runs."""

from __future__ import annotations

import json

import pytest

from pipelines.config import load_config
from pipelines.core.workflow import Runner, Stage
from pipelines.errors import UserError


class Calls:
    def __init__(self):
        self.ran: list[str] = []
        self.crash_in: str | None = None


def make_stages(calls: Calls) -> list[Stage]:
    """a -> b -> c; each writes a file derived from its config section and its input's file."""

    def body(name: str, section: str, upstream: str | None):
        def run(ctx):
            calls.ran.append(name)
            value = json.dumps(ctx.cfg.section(section).model_dump(mode="json"), sort_keys=True)
            if upstream:
                value += "|" + ctx.ws.read_bytes(f"{ctx.inputs[upstream].dir}/data.txt").decode()
            ctx.ws.write_bytes(f"{ctx.out}/part-0.txt", b"partial")
            if calls.crash_in == name:
                raise RuntimeError(f"simulated crash in {name}")
            ctx.ws.write_bytes(f"{ctx.out}/data.txt", value.encode())
            return {"rows": len(value), "nested": {"n": 3}}

        return run

    return [
        Stage("a", body("a", "tokenizer", None), sections=("tokenizer",), needs_ray=False),
        Stage("b", body("b", "shards", "a"), sections=("shards",), inputs=("a",), needs_ray=False),
        Stage("c", body("c", "generate", "b"), sections=("generate",), inputs=("b",), needs_ray=False),
    ]


@pytest.fixture
def make_runner(tmp_path, mlflow_env):
    def make(*overrides: str, calls: Calls | None = None) -> tuple[Runner, Calls]:
        calls = calls or Calls()
        cfg = load_config(
            None, [f"workspace={tmp_path / 'ws'}", "mlflow.experiment=runner-tests", *overrides]
        )
        return Runner(cfg, make_stages(calls), log=lambda m: None), calls

    return make


def test_skips_when_up_to_date(make_runner):
    runner, calls = make_runner()
    runner.run()
    assert calls.ran == ["a", "b", "c"]
    runner, calls = make_runner()
    steps = runner.run()
    assert calls.ran == []
    assert [s.action for s in steps] == ["skip", "skip", "skip"]


def test_config_change_reruns_that_stage_and_downstream_only(make_runner):
    make_runner()[0].run()
    runner, calls = make_runner("shards.val_fraction=0.25")
    assert [s.action for s in runner.plan()] == ["skip", "run", "run"]
    runner.run()
    assert calls.ran == ["b", "c"]
    runner, calls = make_runner("generate.seed=7", "shards.val_fraction=0.25")
    runner.run()
    assert calls.ran == ["c"]


def test_forced_stage_makes_downstream_stale(make_runner):
    make_runner()[0].run()
    runner, calls = make_runner()
    runner.run(force=["b"])
    assert calls.ran == ["b", "c"]


def test_stage_selection_and_from(make_runner):
    runner, calls = make_runner()
    runner.run(stages=["a"])
    assert calls.ran == ["a"]
    runner, calls = make_runner("generate.seed=3")
    steps = runner.run(from_stage="b")
    assert [s.action for s in steps] == ["-", "run", "run"]
    assert calls.ran == ["b", "c"]
    runner, calls = make_runner("generate.seed=4")
    runner.run(from_stage="b")
    assert calls.ran == ["c"]  # b is up to date, only c's config changed


def test_missing_input_is_a_user_error(make_runner):
    runner, _ = make_runner()
    with pytest.raises(UserError, match="stage 'b' needs the output of stage 'a'"):
        runner.run(stages=["b"])


def test_unknown_stage_is_a_user_error(make_runner):
    runner, _ = make_runner()
    with pytest.raises(UserError, match="unknown stage 'zz'"):
        runner.run(stages=["zz"])


def test_crash_mid_write_leaves_no_manifest_and_rerun_redoes_only_that_stage(make_runner):
    calls = Calls()
    calls.crash_in = "b"
    runner, _ = make_runner(calls=calls)
    with pytest.raises(RuntimeError, match="simulated crash in b"):
        runner.run()
    out_b = runner.ws.local_path(runner.output("b"))
    assert (out_b / "part-0.txt").exists() and not (out_b / "manifest.json").exists()
    assert runner.published("b") is None
    assert [s.reason for s in runner.plan()][1] == "incomplete output (no manifest)"

    runner, calls = make_runner()
    runner.run()
    assert calls.ran == ["b", "c"]
    manifest = json.loads((out_b / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["data.txt", "part-0.txt"]
    assert manifest["inputs"]["a"]["fingerprint"] == runner.fingerprint("a")
    assert manifest["rows"] > 0 and "ray" in manifest["versions"]


def test_dry_run_reports_plan_and_changes_nothing(make_runner, tmp_path):
    runner, calls = make_runner()
    lines = []
    runner.log = lines.append
    steps = runner.run(dry_run=True)
    assert calls.ran == [] and [s.action for s in steps] == ["run"] * 3
    assert "will run (not built)" in lines[0]
    assert not (tmp_path / "ws").exists()


def test_mlflow_parent_and_child_runs_on_real_server(make_runner, mlflow_env):
    import mlflow

    runner, _ = make_runner("shards.val_fraction=0.125")
    runner.run()
    client = mlflow.MlflowClient(mlflow_env)
    experiment = client.get_experiment_by_name("runner-tests")
    runs = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=10
    )
    children = {r.info.run_name: r for r in runs[:4] if r.data.tags.get("mlflow.parentRunId")}
    parent_id = children["b"].data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "pipeline"
    assert parent.data.params["shards.val_fraction"] == "0.125"
    assert set(children) == {"a", "b", "c"}
    b = children["b"]
    assert b.info.status == "FINISHED"
    assert b.data.params["shards.val_fraction"] == "0.125"
    assert b.data.metrics["rows"] > 0 and b.data.metrics["nested.n"] == 3 and "seconds" in b.data.metrics
    local = mlflow.artifacts.download_artifacts(run_id=b.info.run_id, artifact_path="manifest.json")
    manifest = json.loads(open(local).read())
    assert manifest["stage"] == "b" and manifest["fingerprint"] == runner.fingerprint("b")


def test_failed_stage_marks_its_mlflow_run_failed(make_runner, mlflow_env):
    import mlflow

    calls = Calls()
    calls.crash_in = "a"
    runner, _ = make_runner("tokenizer.seed=99", calls=calls)
    with pytest.raises(RuntimeError):
        runner.run()
    client = mlflow.MlflowClient(mlflow_env)
    experiment = client.get_experiment_by_name("runner-tests")
    latest = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=2
    )
    assert {r.info.run_name: r.info.status for r in latest} == {"a": "FAILED", "pipeline": "FAILED"}
