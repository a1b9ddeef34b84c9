"""Object-store workspaces, end to end on a real S3 API server (moto) on 127.0.0.1.

The whole chain (corpus, tokenizer, shards, pretrain, finetune, generate) runs once with a local
workspace and once with `workspace=s3://<bucket>/ws`, over the same JSONL dump (in a local
directory, and in the bucket): the same kept documents, the same shard files, the same final
weights. Then a pretraining run on the bucket's shards, on a 2-node cluster whose nodes keep their own
caches, whose worker is killed mid-run, resumes from the uploaded checkpoint and ends on the clean
run's weights. The node cache and the one-line
errors for an unusable workspace are checked on their own.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys

import pyarrow.parquet as pq
import pytest
import torch
from prepared_workspace import OVERRIDES, docstring_documents, pretrain_on_two_nodes, run_in_repo
from safetensors.torch import load

from pipelines.config import load_config
from pipelines.core import cache
from pipelines.core.faults import FAULT_ENV
from pipelines.core.workflow import Runner
from pipelines.core.workspace import Workspace
from pipelines.stages import pipeline_stages
from pipelines.training.finetune import data as finetune_data
from pipelines.training.pretrain import pretrain_stage

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


PROMPTS = 12  # generation prompts in the bucket


def dump_lines() -> list[str]:
    return [json.dumps({"id": name, "text": text}) for name, text in docstring_documents()]


def run_chain(workspace: str, inputs: str, server: str, tag: str, stages=None, more=()):
    cfg = load_config(
        "configs/demo.yaml",
        [
            *CHAIN,
            *more,
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
    # The bucket side's fine-tuning pairs and generation prompts are files in the bucket too.
    pairs = finetune_data.demo_pairs([text for _, text in docstring_documents()], 200)
    s3.write_bytes("tasks/pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs).encode())
    prompts = [{"id": f"p{i}", "prompt": p["prompt"]} for i, p in enumerate(pairs[:PROMPTS])]
    s3.write_bytes("tasks/prompts.jsonl", "".join(json.dumps(p) + "\n" for p in prompts).encode())
    more = [
        f"finetune.data=s3://{bucket}/tasks/pairs.jsonl",
        f"generate.prompts=s3://{bucket}/tasks/prompts.jsonl",
    ]
    remote = run_chain(f"s3://{bucket}/ws", f"s3://{bucket}/raw/*.jsonl", mlflow_server, "s3", more=more)
    return local, remote


def test_the_chain_on_s3_equals_the_local_chain(chains):
    local, remote = chains
    assert not remote.ws.is_local
    for stage in ("corpus", "tokenizer", "shards", "pretrain", "finetune", "generate"):
        assert remote.published(stage) is not None, stage
    assert kept_ids(remote) == kept_ids(local)
    corpus = files_sha256(local, "corpus")
    assert any(n.startswith("data/") for n in corpus) and any(n.startswith("rejects/") for n in corpus)
    assert files_sha256(remote, "corpus") == corpus  # the corpus rows, byte for byte
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
    assert generated["rows"] == PROMPTS and generated["model_version"] != "none"


def test_a_killed_worker_on_two_nodes_resumes_from_the_uploaded_checkpoint(chains, mlflow_server, tmp_path):
    """On a 2-node cluster whose nodes have their own caches and share only the bucket: rank 1 exits
    after step 7, Ray Train restarts both workers from the checkpoint it uploaded at step 5, and the
    run ends on the clean (one-node) run's weights."""
    local, remote = chains
    args = [
        *OVERRIDES,
        f"workspace={remote.ws.full_uri('faulty')}",
        f"train.shards={remote.ws.full_uri(remote.output('shards'))}",
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment=object-store-faulty",
        "mlflow.registered_model=object-store-faulty",
        "train.max_failures=1",
    ]
    caches = tmp_path / "caches"
    manifest, proc = pretrain_on_two_nodes(args, env={FAULT_ENV: "7", cache.CACHE_ENV: f"{caches}/{{node}}"})
    assert "rank 1 exits after step 7" in proc.stdout + proc.stderr
    assert manifest["steps"] == 20
    runner = Runner(load_config("configs/demo.yaml", args), [pretrain_stage()], log=lambda line: None)
    a, b = weights(remote), weights(runner)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    # one rank per node, each reading the shards from its own node's cache
    final = max(d for d in runner.ws.list_files(manifest["checkpoints"]) if d.endswith("rank-00001.json"))
    ranks = [f"{final.rsplit('/', 1)[0]}/rank-{r:05d}.json" for r in (0, 1)]
    nodes = {runner.ws.read_json(f"{manifest['checkpoints']}/{rank}")["node_id"] for rank in ranks}
    assert len(nodes) == 2
    node_caches = [d for d in caches.iterdir() if d.is_dir()]
    assert len(node_caches) == 2 and all(list(d.rglob("*.arrow")) for d in node_caches), node_caches


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


def test_compressed_file_names_are_stored_and_read_as_given(s3_bucket, tmp_path):
    """pyarrow (de)compresses streams by file extension unless told not to: a crawl.warc.gz must
    reach the bucket and come back as the same bytes, not gzipped twice or unpacked."""
    import boto3

    payload = gzip.compress(b"a gzip member", mtime=0)
    for ws in (Workspace(f"{s3_bucket}/ws"), Workspace(str(tmp_path / "ws"))):
        ws.write_bytes("in/crawl.warc.gz", payload)
        assert ws.read_bytes("in/crawl.warc.gz") == payload
    stored = boto3.client("s3").get_object(Bucket=s3_bucket[len("s3://") :], Key="ws/in/crawl.warc.gz")
    assert stored["Body"].read() == payload


def test_an_exclusive_create_has_one_winner_among_racing_writers(s3_bucket, tmp_path):
    """What the refresh lock stands on: of eight writers racing to create one file, one wins, and
    the file holds the winner's bytes (a conditional PUT on S3, O_EXCL locally)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for ws in (Workspace(f"{s3_bucket}/ws"), Workspace(str(tmp_path / "ws"))):
        start = threading.Barrier(8)

        def take(i: int, ws=ws, start=start) -> bool:
            start.wait()
            return ws.create_exclusive("locks/refresh.lock", f"writer {i}".encode())

        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(take, range(8)))
        assert won.count(True) == 1, (ws, won)
        assert ws.read_bytes("locks/refresh.lock") == f"writer {won.index(True)}".encode()


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


@pytest.fixture(scope="module")
def checked_s3(tmp_path_factory):
    """A second S3 server that checks credentials (moto lets one unsigned request through: the
    bucket is made with it); yields (endpoint, bucket)."""
    import boto3
    from conftest import stop_process_group
    from s3_server import start_s3_server

    log = tmp_path_factory.mktemp("checked-s3") / "server.log"
    proc, endpoint = start_s3_server(log, env={"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="checked")
    yield endpoint, "checked"
    stop_process_group(proc)


@pytest.mark.parametrize(
    "credentials",
    [
        {"AWS_ACCESS_KEY_ID": "AKIA-NOT-KNOWN-HERE", "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"},
        {"AWS_EC2_METADATA_DISABLED": "true"},  # none at all (and no instance metadata to ask)
    ],
    ids=["refused", "none"],
)
def test_refused_or_missing_credentials_are_one_line_naming_the_workspace(checked_s3, credentials):
    endpoint, bucket = checked_s3
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ENDPOINT_URL": endpoint, "AWS_CONFIG_FILE": os.devnull, **credentials}
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "configs/demo.yaml", "--dry-run"]
    cmd += ["--set", f"workspace=s3://{bucket}/ws", "--set", "mlflow.tracking_uri=http://127.0.0.1:9"]
    proc = run_in_repo(cmd, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config key 'workspace'" in lines[0], proc.stderr
    assert f"cannot reach 's3://{bucket}/ws'" in lines[0] and "credentials" in lines[0], lines[0]
    assert "wrong-secret-value" not in proc.stderr + proc.stdout


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
    from pipelines.core.faults import FAULT_PUBLISH_ENV

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
    (log,) = ws.list_files("logs/corpus")  # the stage's log, put into the object store at its end
    assert "[done] corpus" in ws.read_bytes(f"logs/corpus/{log}").decode()
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
    from pipelines.refresh.stage import refresh

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
