"""jobs/lineage.py after the demo chain: from the champion alias down to the input file, with the
counts of the manifests, as lines and as JSON; one input record (--doc) down to its tokens in a shard
file, or to why it was dropped; and a one-line error for a name or record it cannot follow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
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
    [source] = corpus["input_files"]
    assert (source["records"], source["kept"]) == (stats["input_docs"], stats["kept_docs"])
    assert stats["by_source"] == {source["source"]: {"records": source["records"], "kept": source["kept"]}}
    # the gate measured the val split's contamination (none: the shards sent copies to train)
    import mlflow

    gate = pretrained["model"]["registered"]["gate"]
    assert gate["decision"] == "promoted to champion" and float(gate["contamination"]) == 0.0
    metrics = mlflow.MlflowClient(f"sqlite:///{ws}/mlflow.db").get_run(pretrain["mlflow_run_id"]).data.metrics
    assert metrics["contamination.val"] == 0.0 and metrics["contamination.max"] == 0.0

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


# --- one input record: --doc -----------------------------------------------------------------------
def data_chain(ws: Path) -> dict:
    """The champion's lineage down to its data (a fine-tuned champion's: its parent's)."""
    proc = lineage(ws, "models:/gpt2-demo@champion", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chain = json.loads(proc.stdout)
    return chain if "corpus" in chain else chain["parent_model"]


def corpus_rows(chain: dict, part: str) -> list[dict]:
    """The rows of the chain's corpus version's data/ or rejects/, smallest id first."""
    rows = pq.read_table(Path(chain["corpus"][0]["dir"]) / part).to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def test_doc_names_the_shard_file_and_token_range_of_a_kept_record(user_chain):
    from gpt2core.tokenizer import load_sentencepiece
    from pipelines.core.workspace import Workspace
    from pipelines.shards.doc_index import doc_tokens

    ws, _, _ = user_chain
    chain = data_chain(ws)
    rows = corpus_rows(chain, "data")
    assert "source_id" in rows[0], "the corpus data has no source_id column (pipelines/corpus/ not landed)"
    doc = next(r for r in rows if r["source_id"] is not None)
    proc = lineage(ws, "models:/gpt2-demo@champion", "--doc", doc["source_id"], "--source", doc["source"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    head, kept = proc.stdout.splitlines()[-2:]
    assert head.startswith(f"document   {doc['source']}#{doc['source_id']} (id {doc['id']}) in ")
    found = re.fullmatch(
        r"  kept: tokens \[(\d+), (\d+)\) of ((train|val)-\d{5}\.arrow) \((\w+) split\)", kept
    )
    assert found and found[4] == found[5], kept
    start, stop, file = int(found[1]), int(found[2]), found[3]

    tokens = doc_tokens(Workspace(chain["shards"]["dir"]), "", file, start, stop)
    sp = load_sentencepiece((Path(chain["tokenizer"]["dir"]) / "spm.model").read_bytes())
    assert tokens[-1] == sp.eos_id() and sp.decode(tokens[:-1].tolist()) == doc["text"]
    as_json = lineage(ws, "models:/gpt2-demo@champion", "--doc", doc["source_id"], "--json")
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    document = json.loads(as_json.stdout)["document"]
    assert document["kept"] and document["id"] == doc["id"]
    assert document["shards"] == {"split": found[4], "file": file, "start": start, "stop": stop}


def test_doc_says_why_a_record_was_dropped(user_chain):
    ws, _, _ = user_chain
    chain = data_chain(ws)
    copies = [r for r in corpus_rows(chain, "rejects") if r["stage"] == "dedup_exact"]
    assert copies  # the chain's corpus repeats 40 records (those the filters kept are exact copies)
    copy = copies[0]
    proc = lineage(ws, "models:/gpt2-demo@champion", "--doc", copy["source_id"], "--source", copy["source"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    dropped = proc.stdout.splitlines()[-1]
    original = f"{copy['duplicate_of_source']}#{copy['duplicate_of_source_id']} (id {copy['duplicate_of']})"
    assert dropped == f"  dropped at dedup_exact: {copy['reason']}, a copy of {original}", dropped
    kept = {r["id"]: r for r in corpus_rows(chain, "data")}[copy["duplicate_of"]]
    assert (kept["source"], kept["source_id"]) == (
        copy["duplicate_of_source"],
        copy["duplicate_of_source_id"],
    )


def test_doc_for_a_record_that_is_nowhere_is_one_line(user_chain):
    ws, _, _ = user_chain
    proc = lineage(ws, "models:/gpt2-demo@champion", "--doc", "no-such-record")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --doc: no input record with id 'no-such-record' in the model's corpus versions"
    ], proc.stderr
