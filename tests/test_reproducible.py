"""The same config over the same input files gives byte-identical corpus rows and shard files,
whatever directory the workspace (and, for the demo, its generated crawl) lies in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.stages import pipeline_stages
from pipelines.workflow import Runner

pytestmark = pytest.mark.slow
FAST = ("tokenizer.vocab_size=512", "shards.num_actors=1")


def build(workspace: Path) -> Runner:
    cfg = load_config("configs/demo.yaml", [*FAST, f"workspace={workspace}"])
    runner = Runner(cfg, pipeline_stages(), log=lambda line: None)
    runner.run(stages=["corpus", "tokenizer", "shards"])
    return runner


def digests(runner: Runner, stage: str, subdirs: tuple[str, ...]) -> dict[str, str]:
    out = runner.published(stage).dir
    root = Path(runner.ws.path(out))
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in subdirs
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


@pytest.mark.xfail(
    strict=True,
    reason="the demo crawl generated into each workspace still differs in some pages (corpus "
    "data/rejects differ); ids and sources no longer depend on the location (tests/test_object_store.py)",
)
def test_two_workspaces_of_the_demo_hold_byte_identical_corpus_and_shards(ray_local, tmp_path):
    a, b = build(tmp_path / "one" / "ws"), build(tmp_path / "elsewhere" / "deeper" / "ws")
    assert a.output("corpus") == b.output("corpus") and a.output("shards") == b.output("shards")
    corpus = digests(a, "corpus", ("data", "rejects"))
    assert corpus and corpus == digests(b, "corpus", ("data", "rejects"))
    shards = {k: v for k, v in digests(a, "shards", (".",)).items() if k.endswith(".arrow")}
    assert len(shards) >= 2
    assert shards == {k: v for k, v in digests(b, "shards", (".",)).items() if k.endswith(".arrow")}
