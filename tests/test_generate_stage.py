"""The `generate` stage: Ray Data on an actor pool over a registered model, on the session Ray and a
real MLflow server. 1,000 prompts give 1,000 rows, twice identical with the same seed; bad lines are
counted; over-long prompts are truncated or rejected, by config."""

from __future__ import annotations

import json

import mlflow
import pyarrow.parquet as pq
import pytest
from finetune_inputs import register_model, run_stage
from prepared_workspace import docstring_documents, make_model_dir

from pipelines.errors import UserError
from pipelines.generate.stage import generate_stage

NAME = "generate-test"
N_PROMPTS = 1000


@pytest.fixture(scope="module")
def model_dir(prepared_workspace, tmp_path_factory):
    pw = prepared_workspace
    return make_model_dir(tmp_path_factory.mktemp("gen") / "model", pw.tokenizer_dir, 512, 10, pw.shards_dir)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    lines = [
        line.strip()
        for _, text in docstring_documents()
        for line in text.splitlines()
        if 20 < len(line) <= 80
    ]
    records = [{"id": f"p{i:04d}", "prompt": lines[i % len(lines)]} for i in range(N_PROMPTS - 1)]
    records.append({"id": "long", "prompt": "a very long prompt " * 100})
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [json.dumps(r) for r in records]
    rows[10:10] = ["{broken json", json.dumps({"id": "x", "text": "no prompt field"})]
    path.write_text("\n".join(rows) + "\n")
    return path


def generate_cfg(prepared_workspace, workspace, prompts, *extra):
    return prepared_workspace.config(
        f"workspace={workspace}",
        f"mlflow.registered_model={NAME}",
        f"generate.prompts={prompts}",
        "generate.max_new_tokens=6",
        "generate.batch_size=50",
        "generate.num_actors=2",
        "generate.top_k=50",
        "generate.seed=7",
        f"generate.model_uri=models:/{NAME}@champion",
        *extra,
    )


def read_rows(workspace, manifest):
    table = pq.read_table(workspace / manifest["output"] / "data")
    return table.sort_by("prompt_index").to_pylist()


@pytest.mark.slow
def test_1000_prompts_give_1000_rows_identical_across_runs(
    prepared_workspace, model_dir, prompts_file, mlflow_env, ray_local, tmp_path
):
    mlflow.set_experiment("generate-tests")
    version = register_model(model_dir, NAME, alias="champion")
    runs = []
    for name in ("first", "second"):
        cfg = generate_cfg(prepared_workspace, tmp_path / name, prompts_file)
        manifest = run_stage(generate_stage(), cfg)
        runs.append((manifest, read_rows(tmp_path / name, manifest)))
    (manifest, rows), (_, again) = runs
    assert manifest["rows"] == len(rows) == N_PROMPTS
    assert manifest["rejected_lines"] == 2
    assert {r["reason"] for r in manifest["rejects"]} == {"malformed_json", "missing_prompt"}
    assert manifest["model_version"] == version and manifest["model_uri"] == f"models:/{NAME}/{version}"
    assert rows == again  # same seed, same prompts: the same completions
    assert [r["prompt_id"] for r in rows[:3]] == ["p0000", "p0001", "p0002"]
    assert all(r["model_version"] == version for r in rows)
    assert {r["finish_reason"] for r in rows} <= {"eos", "length"}
    assert all(0 < r["completion_tokens"] <= 6 or r["finish_reason"] == "eos" for r in rows)
    assert sum(r["completion_tokens"] for r in rows) == manifest["completion_tokens"]
    long = next(r for r in rows if r["prompt_id"] == "long")
    assert long["truncated"] and long["prompt_tokens"] > 64
    # truncated: exactly the prompts with more than block_size - max_new_tokens = 58 tokens
    assert all(r["truncated"] == (r["prompt_tokens"] > 58) for r in rows)
    assert manifest["truncated_prompts"] == sum(r["truncated"] for r in rows) < 20
    assert len({r["completion"] for r in rows}) > N_PROMPTS // 4  # sampled, not one constant answer
    run = mlflow.search_runs(experiment_names=["gpt2-demo"], filter_string="tags.mlflow.runName = 'generate'")
    assert (run["metrics.tokens_per_s"] > 0).all()


@pytest.mark.slow  # after the 1000-prompt test (slow), which registers the model it uses
def test_long_prompts_rejected_by_config_and_missing_alias(
    prepared_workspace, model_dir, prompts_file, mlflow_env, ray_local, tmp_path
):
    mlflow.set_experiment("generate-tests")
    if "champion" not in mlflow.MlflowClient().get_registered_model(NAME).aliases:
        register_model(model_dir, NAME, alias="champion")
    small = tmp_path / "small.txt"
    small.write_text("Return the number of\n" + "word " * 100 + "\nRaise an error if\n")
    cfg = generate_cfg(
        prepared_workspace, tmp_path / "ws", small, "generate.long_prompts=reject", "generate.num_actors=1"
    )
    manifest = run_stage(generate_stage(), cfg)
    rows = read_rows(tmp_path / "ws", manifest)
    assert [r["finish_reason"] == "prompt_too_long" for r in rows] == [False, True, False]
    assert rows[1]["completion"] == "" and manifest["finish_reasons"]["prompt_too_long"] == 1
    cfg = generate_cfg(prepared_workspace, tmp_path / "ws2", small, f"generate.model_uri=models:/{NAME}@nope")
    with pytest.raises(UserError, match=r"generate\.model_uri.*no alias 'nope'"):
        run_stage(generate_stage(), cfg)
