"""Object-store workspaces, end to end on a real S3 API server (moto) on 127.0.0.1.

The whole chain (corpus, tokenizer, shards, pretrain, finetune, generate) runs once with a local
workspace and once with `workspace=s3://<bucket>/ws`, over the same JSONL dump (in a local
directory, and in the bucket): the same kept documents, the same shard files, the same final
weights. Then a pretraining run on the bucket's shards whose worker is killed mid-run resumes from
the uploaded checkpoint and ends on the clean run's weights. The node cache and the one-line
errors for an unusable workspace are checked on their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import pyarrow.parquet as pq
import pytest
import torch
from prepared_workspace import OVERRIDES, docstring_documents, run_in_repo
from safetensors.torch import load

from pipelines import cache
from pipelines.config import load_config
from pipelines.stages import pipeline_stages
from pipelines.train import pretrain_stage
from pipelines.train_launch import FAULT_ENV
from pipelines.workflow import Runner
from pipelines.workspace import Workspace

pytestmark = pytest.mark.slow
CHAIN = (
    *OVERRIDES,
    "corpus.min_lang_score=0.3",
    "finetune.max_steps=6",
    "finetune.eval_interval=3",
    "finetune.checkpoint_interval=3",
    "finetune.demo_pairs=200",
    "finetune.micro_batch_size=4",
    "finetune.global_batch_size=16",
    "generate.num_actors=1",
    "generate.max_new_tokens=8",
)


def dump_lines() -> list[str]:
    return [json.dumps({"id": name, "text": text}) for name, text in docstring_documents()]


def run_chain(workspace: str, inputs: str, server: str, tag: str, stages: list[str] | None = None):
    cfg = load_config(
        "configs/demo.yaml",
        [
            *CHAIN,
            f"workspace={workspace}",
            f"corpus.inputs=[{inputs!r}]",
            f"mlflow.tracking_uri={server}",
            f"mlflow.experiment=object-store-{tag}",
            f"mlflow.registered_model=object-store-{tag}",
        ],
    )
    runner = Runner(cfg, pipeline_stages(), log=lambda line: None)
    runner.run(stages=stages)
    return runner


def files_sha256(runner: Runner, stage: str, sub: str = "") -> dict[str, str]:
    out = runner.published(stage)
    return {
        name: entry["sha256"]
        for name, entry in out.manifest["files"].items()
        if name.startswith(sub) and not name.endswith(".json")
    }


def weights(runner: Runner, stage: str = "pretrain") -> dict[str, torch.Tensor]:
    return load(runner.ws.read_bytes(f"{runner.output(stage)}/model.safetensors"))


def kept_ids(runner: Runner) -> list[str]:
    out = runner.published("corpus")
    files = [f"{out.dir}/data/{f}" for f in runner.ws.list_files(f"{out.dir}/data")]
    table = pq.read_table([runner.ws.path(f) for f in files], columns=["id"], filesystem=runner.ws.fs)
    return sorted(table.column("id").to_pylist())


@pytest.fixture(scope="module")
def chains(ray_module, mlflow_server, s3_server, tmp_path_factory):
    import boto3

    local_inputs = tmp_path_factory.mktemp("dump")
    (local_inputs / "docs.jsonl").write_text("\n".join(dump_lines()) + "\n")
    bucket = "object-store-chain"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    s3 = Workspace(f"s3://{bucket}")
    s3.write_bytes("raw/docs.jsonl", (local_inputs / "docs.jsonl").read_bytes())
    # The local side needs only what is compared: up to the pretrained weights.
    local = run_chain(
        str(tmp_path_factory.mktemp("local") / "ws"),
        f"{local_inputs}/*.jsonl",
        mlflow_server,
        "local",
        ["corpus", "tokenizer", "shards", "pretrain"],
    )
    remote = run_chain(f"s3://{bucket}/ws", f"s3://{bucket}/raw/*.jsonl", mlflow_server, "s3")
    return local, remote


def test_the_chain_on_s3_equals_the_local_chain(chains):
    local, remote = chains
    assert not remote.ws.is_local
    for stage in ("corpus", "tokenizer", "shards", "pretrain", "finetune", "generate"):
        assert remote.published(stage) is not None, stage
    assert kept_ids(remote) == kept_ids(local)
    assert files_sha256(remote, "shards") == files_sha256(local, "shards")
    splits = {s: v["tokens"] for s, v in remote.published("shards").manifest["splits"].items()}
    assert splits == {s: v["tokens"] for s, v in local.published("shards").manifest["splits"].items()}
    a, b = weights(local), weights(remote)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    # Ray Train's checkpoints are in the bucket, next to the run record
    pretrain = remote.published("pretrain").manifest
    assert remote.ws.exists(f"{pretrain['checkpoints']}/checkpoint_manager_snapshot.json")
    generated = remote.published("generate").manifest
    assert generated["rows"] > 0 and generated["model_version"] != "none"


def test_a_killed_worker_on_s3_resumes_from_the_uploaded_checkpoint(chains, mlflow_server):
    local, remote = chains
    shards = remote.ws.full_uri(remote.output("shards"))
    args = [
        *OVERRIDES,
        f"workspace={remote.ws.full_uri('faulty')}",
        f"train.shards={shards}",
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment=object-store-faulty",
        "mlflow.registered_model=object-store-faulty",
        "train.max_failures=1",
    ]
    cmd = ["python", "jobs/pretrain.py", "--config", "configs/demo.yaml"]
    for item in args:
        cmd += ["--set", item]
    cmd[0] = sys.executable
    proc = run_in_repo(cmd, env={**os.environ, FAULT_ENV: "7"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 exits after step 7" in proc.stdout + proc.stderr
    runner = Runner(load_config("configs/demo.yaml", args), [pretrain_stage()], log=lambda line: None)
    manifest = runner.published("pretrain").manifest
    assert manifest["steps"] == 20
    a, b = weights(remote), weights(runner)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_the_node_cache_refetches_a_file_that_no_longer_matches(s3_bucket, monkeypatch, tmp_path):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    ws = Workspace(f"{s3_bucket}/ws")
    ws.write_bytes("d/a.bin", b"the published bytes")
    ref = cache.DirRef(ws.full_uri("d"), {"a.bin": hashlib.sha256(b"the published bytes").hexdigest()})
    local = ref.local() / "a.bin"
    assert local.read_bytes() == b"the published bytes"
    assert local.is_relative_to(tmp_path / "cache")
    local.write_bytes(b"damaged on the node")
    cache._verified.clear()  # a new process: nothing verified yet
    assert (ref.local() / "a.bin").read_bytes() == b"the published bytes"
    ws.write_bytes("d/a.bin", b"replaced in the bucket")
    (ref.local() / "a.bin").unlink()
    with pytest.raises(OSError, match="sha256 .* does not match"):
        ref.local()
    assert not list((tmp_path / "cache" / "dirs").glob("*/.a.bin.*.part"))  # no download left behind


def job_error(*sets: str):
    cmd = ["jobs/pipeline.py", "--config", "configs/demo.yaml", "--dry-run"]
    for item in sets:
        cmd += ["--set", item]
    return run_in_repo([sys.executable, *cmd], timeout=300)


@pytest.mark.parametrize(
    ("workspace", "message"),
    [
        ("s3://no-such-bucket-here/ws", "bucket 'no-such-bucket-here' .* does not exist"),
        ("s3://any/ws?endpoint_override=127.0.0.1:9&scheme=http", "cannot reach 's3://any/ws'"),
    ],
)
def test_an_unusable_workspace_is_one_line_naming_it(s3_server, workspace, message):
    proc = job_error(f"workspace={workspace}", "mlflow.tracking_uri=http://127.0.0.1:9")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config key 'workspace'" in lines[0], proc.stderr
    assert re.search(message, lines[0]), lines[0]


def test_sqlite_tracking_with_an_object_store_workspace_is_a_config_error(s3_bucket):
    proc = run_in_repo(
        [
            sys.executable,
            "jobs/pipeline.py",
            "--config",
            "configs/demo.yaml",
            "--set",
            f"workspace={s3_bucket}/ws",
            "--set",
            "mlflow.tracking_uri=sqlite:///mlflow.db",
            "--stages",
            "tokenizer",
        ],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "config key 'mlflow.tracking_uri'" in proc.stderr.strip().splitlines()[-1]


def test_a_publish_killed_before_its_manifest_is_never_read_and_is_rebuilt(s3_bucket, mlflow_server):
    """The tokenizer stage dies after uploading its files: the shards stage refuses to read them,
    and the next run rebuilds the tokenizer (the same bytes as a clean build)."""
    from pipelines.workflow import FAULT_PUBLISH_ENV

    ws = Workspace(f"{s3_bucket}/ws")
    ws.write_bytes("raw/docs.jsonl", ("\n".join(dump_lines()) + "\n").encode())
    sets = [*CHAIN, f"workspace={s3_bucket}/ws", f"corpus.inputs=['{s3_bucket}/ws/raw/*.jsonl']"]
    sets += [f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment=object-store-publish"]

    def pipeline(stages: str, env: dict | None = None):
        cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/demo.yaml", "--stages", stages]
        for item in sets:
            cmd += ["--set", item]
        return run_in_repo(cmd, env={**os.environ, **(env or {})})

    assert pipeline("corpus").returncode == 0
    killed = pipeline("tokenizer", {FAULT_PUBLISH_ENV: "tokenizer"})
    assert killed.returncode == 3, killed.stderr[-2000:]
    runner = Runner(load_config("configs/demo.yaml", sets), pipeline_stages(), log=lambda line: None)
    out = runner.output("tokenizer")
    assert ws.exists(f"{out}/spm.model") and not ws.exists(f"{out}/manifest.json")
    assert runner.published("tokenizer") is None
    reader = pipeline("shards")
    assert reader.returncode == 2 and "needs the output of stage 'tokenizer'" in reader.stderr
    rebuilt = pipeline("tokenizer")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "incomplete output (no manifest)" in rebuilt.stdout + rebuilt.stderr
    manifest = runner.published("tokenizer").manifest
    assert hashlib.sha256(ws.read_bytes(f"{out}/spm.model")).hexdigest() == manifest["tokenizer"]["sha256"]


def test_a_refresh_on_s3_makes_a_child_version_and_extends_the_shards(chains, mlflow_server):
    from pipelines.refresh import refresh

    _, remote = chains
    bucket = remote.ws.root.split("/", 1)[0]
    before = remote.published("shards").manifest["splits"]["train"]["tokens"]
    parent = remote.published("corpus")
    fresh = [json.dumps({"id": f"new-{i}", "text": text}) for i, text in enumerate(refresh_texts())]
    Workspace(f"s3://{bucket}").write_bytes("raw/more.jsonl", ("\n".join(fresh) + "\n").encode())
    result = refresh(remote.cfg, log=lambda line: None)
    assert result.status == "refreshed", result
    assert result.parent.dir == parent.dir and result.corpus.parent_dir == parent.dir
    assert result.new_files == [f"s3://{bucket}/raw/more.jsonl"]
    assert result.shards.manifest["splits"]["train"]["tokens"] > before
    assert remote.ws.exists(f"{result.shards.dir}/manifest.json")
    assert not remote.ws.exists("locks/refresh.lock")  # released


def refresh_texts() -> list[str]:
    """English prose that no input held: the module docstrings of a few more stdlib modules."""
    import importlib

    names = ("argparse", "asyncio", "calendar", "configparser", "difflib", "heapq", "logging", "optparse")
    return [
        importlib.import_module(n).__doc__
        for n in names
        if len(importlib.import_module(n).__doc__ or "") > 400
    ]
