"""jobs/lineage.py after the demo chain: from the champion alias down to the input file, with the
counts of the manifests, as lines and as JSON; and a one-line error for a name it cannot follow."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_job

pytestmark = pytest.mark.slow


def lineage(ws, *args: str):
    # the chain tracked into the workspace's SQLite database; another test may have left
    # MLFLOW_TRACKING_URI pointing at the session's server
    sets = [f"workspace={ws}", f"mlflow.tracking_uri=sqlite:///{ws}/mlflow.db"]
    return run_job(
        "jobs/lineage.py", *args, "--config", "configs/demo.yaml", *(x for s in sets for x in ("--set", s))
    )


def test_the_champion_names_its_run_shards_tokenizer_corpus_and_input_file(user_chain):
    ws, corpus_file, _ = user_chain
    proc = lineage(ws, "models:/gpt2-demo@champion", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chain = json.loads(proc.stdout)
    assert "champion" in chain["model"]["registered"]["aliases"]
    # the champion may be the fine-tuned version: the data chain is then its parent's
    pretrained = chain if "corpus" in chain else chain["parent_model"]
    # the chain's own pretrain run (the console tests train more on this workspace: versions 3, ...)
    manifests = [json.loads(p.read_text()) for p in (ws / "models").glob("pretrain-*/manifest.json")]
    [pretrain] = [m for m in manifests if m["registered_uri"] == pretrained["model"]["registered"]["uri"]]
    assert pretrained["run"]["id"] == pretrain["mlflow_run_id"] and pretrained["run"]["status"] == "FINISHED"
    shards = json.loads((ws / pretrain["inputs"]["shards"]["dir"] / "manifest.json").read_text())
    assert pretrained["shards"]["splits"]["val"]["tokens"] == shards["splits"]["val"]["tokens"]
    assert pretrained["tokenizer"]["sha256"] == shards["tokenizer"]["sha256"]
    [corpus] = pretrained["corpus"]
    stats = json.loads((ws / shards["inputs"]["corpus"]["dir"] / "stats.json").read_text())
    assert (corpus["input_docs"], corpus["kept_docs"]) == (stats["input_docs"], stats["kept_docs"])
    assert [f["uri"] for f in corpus["input_files"]] == [str(corpus_file)]

    text = lineage(ws, "models:/gpt2-demo@champion")
    assert text.returncode == 0, text.stderr[-3000:]
    lines = [line.strip() for line in text.stdout.splitlines()]
    assert lines[0].startswith(f"model      {chain['model']['registered']['uri']} @champion")
    assert any(line.startswith("corpus ") and f"kept {stats['kept_docs']} of" in line for line in lines)
    assert lines[-1].startswith(f"input    {corpus_file}:")


def test_a_fine_tuned_version_leads_to_the_model_it_started_from(user_chain):
    ws, _, _ = user_chain
    proc = lineage(ws, "models:/gpt2-demo/2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chain = json.loads(proc.stdout)
    assert chain["model"]["stage"] == "finetune"
    assert chain["parent_model"]["model"]["registered"]["version"] == "1"
    assert chain["parent_model"]["corpus"][0]["kept_docs"] > 0


@pytest.mark.parametrize(
    "name, message",
    [
        ("models:/gpt2-demo/99", "models:/gpt2-demo/99: no such model version"),
        ("no/such/dir", "no/such/dir: "),
    ],
)
def test_a_name_it_cannot_follow_is_one_line(user_chain, name, message):
    ws, _, _ = user_chain
    proc = lineage(ws, name)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), proc.stderr
