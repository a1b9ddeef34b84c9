"""A small published workspace for training tests: corpus -> tokenizer -> shards, built once per session.

The corpus is real-looking English: the docstrings of Python's standard library (the same text on
every machine). It is published by a small test stage named "corpus" in the workspace contract's
format (data/*.parquet with id, text, url, source; manifest last); the tokenizer and shards are the
real stages. `OVERRIDES` are the config keys that make the whole chain and a tiny model fast.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Config, load_config
from pipelines.core.workflow import Runner, Stage, StageContext

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
MODULES = (
    "argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email", "functools", "http.client",
    "inspect", "json", "logging", "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "sqlite3",
    "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest",
    "urllib.parse", "zipfile",
)  # fmt: skip
MIN_DOC_CHARS = 200

# Tiny everything: a 512-piece tokenizer, ~60k-token shards files, a 2-layer model on 64-token windows.
OVERRIDES = (
    "tokenizer.vocab_size=512",
    "tokenizer.sample_docs=100000",
    "shards.val_fraction=0.08",
    "shards.shard_tokens=40000",
    "shards.num_actors=1",
    "model.preset=tiny",
    "model.block_size=64",
    "train.num_workers=2",
    "train.micro_batch_size=4",
    "train.global_batch_size=16",
    "train.max_steps=20",
    "train.warmup_steps=4",
    "train.lr=0.003",
    "train.eval_interval=10",
    "train.eval_batches=4",
    "train.log_interval=5",
    "train.checkpoint_interval=5",
    "train.keep_checkpoints=2",
    "train.zero_stage=1",
    "train.precision=fp32",
)


def docstring_documents() -> list[tuple[str, str]]:
    """(name, docstring) of public classes and functions in MODULES, in a fixed order."""
    docs = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            text = inspect.getdoc(obj) or ""
            if len(text) >= MIN_DOC_CHARS:
                docs.append((f"{module_name}.{name}", text))
    return docs


def run_test_corpus(ctx: StageContext) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = docstring_documents()
    ids = [hashlib.sha256(name.encode()).hexdigest()[:16] for name, _ in docs]
    table = pa.table(
        {
            "id": ids,
            "text": [text for _, text in docs],
            "url": [f"https://docs.python.org/3/library/{name}" for name, _ in docs],
            "source": ["stdlib-docstrings"] * len(docs),
        }
    )
    ctx.ws.makedirs(f"{ctx.out}/data")
    with ctx.ws.fs.open_output_stream(ctx.ws.path(f"{ctx.out}/data/part-00000.parquet")) as f:
        pq.write_table(table, f)
    return {"kept_docs": len(docs)}


def test_corpus_stage() -> Stage:
    return Stage("corpus", run_test_corpus, sections=("corpus",), needs_ray=False)


test_corpus_stage.__test__ = False  # a factory, not a pytest test


@dataclass(frozen=True)
class PreparedWorkspace:
    workspace: Path
    overrides: tuple[str, ...]  # the chain's config, with workspace= set
    shards_dir: Path
    tokenizer_dir: Path
    tokenizer_sha256: str

    def config(self, *extra: str) -> Config:
        return load_config(DEMO_CONFIG, [*self.overrides, *extra])

    def train_overrides(self, workspace: Path, *extra: str) -> list[str]:
        """Overrides for a pretrain run in its own workspace that reads these shards explicitly."""
        return [*OVERRIDES, f"workspace={workspace}", f"train.shards={self.shards_dir}", *extra]


def build_prepared_workspace(workspace: Path) -> PreparedWorkspace:
    """Publish corpus, tokenizer and shards into `workspace` (the session Ray must be up)."""
    from pipelines.shards.stage import shards_stage
    from pipelines.tokenizer.stage import tokenizer_stage

    overrides = (*OVERRIDES, f"workspace={workspace}")
    cfg = load_config(DEMO_CONFIG, list(overrides))
    runner = Runner(cfg, [test_corpus_stage(), tokenizer_stage(), shards_stage()], log=lambda m: None)
    runner.run()
    shards, tokenizer = runner.published("shards"), runner.published("tokenizer")
    return PreparedWorkspace(
        workspace=workspace,
        overrides=overrides,
        shards_dir=workspace / shards.dir,
        tokenizer_dir=workspace / tokenizer.dir,
        tokenizer_sha256=tokenizer.manifest["tokenizer"]["sha256"],
    )


def pretrain_job_args(pw: PreparedWorkspace, workspace: Path, *overrides: str) -> list[str]:
    """`jobs/pretrain.py --config configs/demo.yaml --set ...` for a run on the prepared shards."""
    args = ["jobs/pretrain.py", "--config", "configs/demo.yaml"]
    for item in pw.train_overrides(workspace, *overrides):
        args += ["--set", item]
    return args


def run_in_repo(args: list[str], env: dict | None = None, timeout: float = 900):
    """A command run from the repository root as a user would (text output captured)."""
    import subprocess

    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_pretrain_job(pw: PreparedWorkspace, workspace: Path, *overrides: str, timeout: float = 600):
    """The pretrain job as a user runs it: `python jobs/pretrain.py ...` in a subprocess."""
    import sys

    return run_in_repo([sys.executable, *pretrain_job_args(pw, workspace, *overrides)], timeout=timeout)


def make_model_dir(
    path: Path, tokenizer_dir: Path, vocab_size: int, train_steps: int, shards_dir=None
) -> Path:
    """A tiny model directory (64-token context): GPT-2 init, optionally trained a little with plain
    PyTorch on the shards, saved with gpt2core and the tokenizer files."""
    import torch

    from gpt2core.checkpoint import save_model
    from gpt2core.config import preset
    from gpt2core.data import TokenShards, WindowSampler
    from gpt2core.model import GPT
    from gpt2core.optim import param_groups
    from gpt2core.tokenizer import load_tokenizer

    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size, block_size=64))
    if train_steps:
        sampler = WindowSampler(TokenShards(shards_dir, "train"), 64, seed=0)
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3)
        for _ in range(train_steps):
            x, y = sampler.next_batch(16)
            model(x, y)[1].backward()
            optimizer.step()
            optimizer.zero_grad()
    save_model(model, path)
    load_tokenizer(tokenizer_dir).save_to(path)
    return path


TWO_NODES = """
import json, os, sys, threading, time
import ray
from ray.cluster_utils import Cluster

from pipelines.config import load_config
from pipelines.training.pretrain import pretrain_stage
from pipelines.core.workflow import Runner

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
worker_node = cluster.add_node(num_cpus=1)
ray.init(address=cluster.address)


def remove_worker_node_when(marker):  # a lost node: once a training rank holds at `marker`
    while not os.path.exists(marker):
        time.sleep(0.2)
    cluster.remove_node(worker_node)
    print("REMOVED NODE", flush=True)


if os.environ.get("PIPELINES_TEST_REMOVE_NODE_ON"):
    args = (os.environ["PIPELINES_TEST_REMOVE_NODE_ON"],)
    threading.Thread(target=remove_worker_node_when, args=args, daemon=True).start()
try:
    print("NODES", len([n for n in ray.nodes() if n["Alive"]]), flush=True)
    runner = Runner(load_config("configs/demo.yaml", json.loads(sys.argv[1])), [pretrain_stage()])
    runner.run()
    print("MANIFEST", json.dumps(runner.published("pretrain").manifest), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def pretrain_on_two_nodes(overrides: list[str], env: dict | None = None):
    """The pretrain stage of configs/demo.yaml + `overrides` on a fresh 2-node
    ray.cluster_utils.Cluster, 1 CPU per node (so one training worker per node), in a subprocess so
    the session's Ray keeps running. Returns (the published manifest, the finished process)."""
    import json
    import os
    import sys

    proc = run_in_repo(
        [sys.executable, "-c", TWO_NODES, json.dumps(list(overrides))], env={**os.environ, **(env or {})}
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "NODES 2" in proc.stdout
    [manifest] = [json.loads(line[9:]) for line in proc.stdout.splitlines() if line.startswith("MANIFEST ")]
    return manifest, proc
