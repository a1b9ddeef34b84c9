"""The demo chain on a small JSONL corpus (stdlib docstrings, some twice), run once per session as a
user runs it (`jobs/pipeline.py`, stdout and stderr not a terminal): what the console and lineage
tests read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prepared_workspace import OVERRIDES, docstring_documents

CHAIN = (
    *OVERRIDES,
    "train.max_steps=10",
    "train.eval_interval=5",
    "finetune.demo_pairs=200",
    "finetune.max_steps=6",
    "finetune.eval_interval=3",
    "finetune.micro_batch_size=4",
    "finetune.global_batch_size=16",
    "finetune.early_stop_patience=0",
    "generate.num_actors=1",
    "generate.max_new_tokens=8",
    "ray.num_cpus=2",
)


def pipeline_args(workspace: Path, corpus: Path, *flags: str, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["jobs/pipeline.py", "--config", "configs/demo.yaml", *flags]
    # The embedded default tracking store, named: a test before may have left MLFLOW_TRACKING_URI
    # set (mlflow.set_tracking_uri sets it), which would win over the default.
    tracking = f"mlflow.tracking_uri=sqlite:///{workspace}/mlflow.db"
    for item in (*CHAIN, f"workspace={workspace}", tracking, f"corpus.inputs=[{corpus}]", *sets):
        args += ["--set", item]
    return args


@pytest.fixture(scope="session")
def user_chain(tmp_path_factory):
    """The demo chain on a small JSONL corpus (stdlib docstrings, some twice), run as a user would,
    stdout and stderr not a terminal."""
    from tests.conftest import run_job  # (conftest imports this module)

    root = tmp_path_factory.mktemp("console")
    docs = docstring_documents()
    corpus = root / "docs.jsonl"
    with corpus.open("w") as f:
        for i, (name, text) in enumerate(docs + docs[:40]):  # 40 exact duplicates to drop
            f.write(json.dumps({"id": f"{name}-{i}", "text": text}) + "\n")
    ws = root / "ws"
    proc = run_job(*pipeline_args(ws, corpus), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return ws, corpus, proc
