"""The `generate` stage: Ray Data on an actor pool over a registered model, on the session Ray and a
real MLflow server. 1,000 prompts give 1,000 rows, twice identical with the same seed; bad lines are
counted; over-long prompts are truncated or rejected, by config. The actors ask Ray for a GPU only
with generate.use_gpu, and one that cannot be had is refused in one line, never served by a CPU."""

from __future__ import annotations

import json
import os
import re
import sys

import mlflow
import pyarrow.parquet as pq
import pytest
import torch
from finetune_inputs import register_model, run_stage
from prepared_workspace import docstring_documents, make_model_dir, run_in_repo

from gpt2core.checkpoint import load_model
from gpt2core.tokenizer import load_tokenizer
from pipelines.errors import UserError
from pipelines.generate.stage import (
    ChunkGenerator,
    actor_resources,
    chunks,
    generate_chunk,
    generate_dataset,
    generate_stage,
)

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


# --- devices and resources -----------------------------------------------------------------------
SETTINGS = {
    "max_new_tokens": 5,
    "temperature": 0.8,
    "top_k": 20,
    "top_p": None,
    "seed": 3,
    "long_prompts": "truncate",
}
SOME_PROMPTS = ["Return the number of", "Raise an error if", "The default is"]


def test_actors_ask_for_gpus_only_with_use_gpu():
    assert actor_resources(2, False, 0.5) == {"num_cpus": 2, "num_gpus": 0}
    assert actor_resources(2, True, 0.5) == {"num_cpus": 2, "num_gpus": 0.5}
    assert actor_resources(1, True, 1) == {"num_cpus": 1, "num_gpus": 1}


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"use_gpu": True}, "generate.use_gpu"),  # the session's Ray has no GPU
        ({"cpus_per_actor": 3}, "generate.cpus_per_actor"),  # nor a node with 3 CPUs
        ({"dtype": "fp16"}, "generate.dtype"),  # fp16 on CPU actors
    ],
)
def test_actors_that_cannot_run_are_refused_on_the_driver(ray_local, overrides, key):
    args = {"use_gpu": False, "cpus_per_actor": 1, "dtype": "auto", **overrides}
    cpus = args.pop("cpus_per_actor")
    items = chunks(["1"], ["a prompt"], 1)
    with pytest.raises(UserError, match=rf"^config key '{key}'") as err:
        generate_dataset(items, "no-such-model", None, SETTINGS, "v", 1, cpus, **args)
    assert type(err.value) is UserError  # raised here, not re-raised from an actor by Ray
    assert "\n" not in str(err.value)


def test_gpu_actors_wait_for_a_gpu_node_type_the_autoscaler_can_start(ray_local, reported_node_types):
    from pipelines.generate.stage import check_placement

    check_placement(actor_resources(1, True, 1), "auto")  # no GPU node now, one the autoscaler adds
    with pytest.raises(UserError, match=r"^config key 'generate.use_gpu'"):
        check_placement({"num_cpus": 1, "num_gpus": 9}, "auto")  # more than any node type has


def test_a_cpu_actor_in_bf16_holds_bf16_weights_and_generates(model_dir):
    bf16 = ChunkGenerator(str(model_dir), None, SETTINGS, "v1", use_gpu=False, dtype="bf16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in bf16.model.parameters()} == {"cpu"}
    batch = {"chunk": [0], "index": [[0, 1, 2]], "id": [["a", "b", "c"]], "prompt": [SOME_PROMPTS]}
    rows = bf16(batch)
    assert rows["prompt_id"] == ["a", "b", "c"] and rows["model_version"] == ["v1"] * 3
    assert all(n > 0 or r == "eos" for n, r in zip(rows["completion_tokens"], rows["finish_reason"]))


def test_a_cpu_actor_in_auto_gives_the_tokens_of_the_saved_fp32_model(model_dir):
    auto = ChunkGenerator(str(model_dir), None, SETTINGS, "v1")
    assert {p.dtype for p in auto.model.parameters()} == {torch.float32}
    saved = load_model(model_dir)  # the dtype it was saved in: what the actors loaded before
    expected = generate_chunk(saved, load_tokenizer(model_dir), SOME_PROMPTS, SETTINGS, 4)
    assert generate_chunk(auto.model, auto.tokenizer, SOME_PROMPTS, SETTINGS, 4) == expected


FAKE_GPU_CLUSTER = """
import json, sys
import ray
from pipelines.generate.stage import chunks, generate_dataset

# A Ray that believes in one GPU, on a machine where torch sees none
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
try:
    generate_dataset(chunks(["1"], ["a prompt"], 1), sys.argv[1], None, json.loads(sys.argv[2]), "v", 1, 1,
                     use_gpu=True, num_gpus_per_actor=0.5)
    print("GENERATED")
except Exception as exc:
    print("REFUSED", type(exc).__name__, json.dumps(str(exc)))
finally:
    ray.shutdown()
"""


@pytest.mark.slow
def test_a_gpu_actor_that_finds_no_cuda_device_refuses_to_run_on_cpu(model_dir):
    """Ray places the actor on the GPU it was told of, so the actor's num_gpus request reached it and
    Ray gave it GPU 0; torch sees no CUDA device, and the actor stops instead of generating on CPU."""
    proc = run_in_repo(
        [sys.executable, "-c", FAKE_GPU_CLUSTER, str(model_dir), json.dumps(SETTINGS)],
        env={**os.environ, "RAY_ADDRESS": ""},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [outcome] = [line.split(" ", 2) for line in proc.stdout.splitlines() if line.startswith("REFUSED ")]
    # Ray hands an error of an actor's __init__ back as text only: the UserError is in its traceback
    assert outcome[1] == "ActorDiedError"
    assert re.search(
        r"UserError: config key 'generate.use_gpu': Ray gave this actor GPUs \['?0'?\] "
        r"but device 'cuda': torch sees no CUDA device",
        json.loads(outcome[2]),
    ), outcome[2][-3000:]
