"""The contamination gate on real stages: a corpus whose documents each have a twin under another
id (dedup off) gets, with the shards' val clean-up off, a val split that the training split holds,
measured from index/ngrams and the shards' document index; its model version is registered but
`champion` stays where it was. With the clean-up on (the default) those val documents go to train
and the split measures 0. A clean corpus measures 0 although its documents share a boilerplate
paragraph, and a contamination set counts its copied documents."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import mlflow
import pytest
from prepared_workspace import make_model_dir

from pipelines.config import CorpusConfig, RegistryConfig
from pipelines.core.manifest import read_manifest
from pipelines.core.workflow import Runner
from pipelines.core.workspace import Workspace
from pipelines.corpus.stage import corpus_stage
from pipelines.lineage.contamination import gate_input, measure
from pipelines.registry import models as registry
from pipelines.shards.doc_index import read_doc_index
from pipelines.shards.stage import shards_stage
from pipelines.tokenizer.stage import tokenizer_stage
from tests.corpus_inputs import write_jsonl
from tests.test_corpus_stage import config
from tests.test_decontaminate import NO_FILTERS, random_doc

NAME = "contamination-test"
# 60 words: some of its 13-grams are in every sample (one in 8 is kept; none kept: 0.2% odds)
BOILERPLATE = " ".join(
    "this page is part of the reference manual of the project and was generated from its source files "
    "by the documentation builder on the build server every night so please do not edit it by hand but "
    "send your changes to the source repository where the maintainers review them and merge them "
    "into the next release of the manual".split()[:60]
)
SMALL = (
    "corpus.exact_dedup=false",
    "corpus.fuzzy_dedup=false",
    "tokenizer.vocab_size=400",
    "shards.val_fraction=0.3",
    "shards.num_actors=1",
)


def build(root, docs: list[tuple[str, str]], mlflow_server, *extra: str) -> SimpleNamespace:
    (root / "in").mkdir(parents=True)
    write_jsonl(root / "in" / "docs.jsonl", [{"id": i, "text": t} for i, t in docs])
    cfg = config(root / "ws", [str(root / "in")], *NO_FILTERS, *SMALL, *extra, tracking=mlflow_server)
    runner = Runner(cfg, [corpus_stage(), tokenizer_stage(), shards_stage()], log=lambda m: None)
    runner.run()
    ws, out = Workspace(str(root / "ws")), runner.output("shards")
    return SimpleNamespace(cfg=cfg, ws=ws, shards=out, manifest=read_manifest(ws, out), root=root)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, ray_session, mlflow_server):
    rng = random.Random(11)
    # Every document once, each with a paragraph of boilerplate that all of them share.
    texts = [random_doc(rng, lines=6) + "\n" + BOILERPLATE for _ in range(60)]
    clean = [(f"d{i}", t) for i, t in enumerate(texts)]
    twins = clean + [(f"d{i}-mirror", t) for i, t in enumerate(texts)]  # each twice, under two ids
    root = tmp_path_factory.mktemp("contamination")
    return SimpleNamespace(
        texts=texts,
        clean=build(root / "clean", clean, mlflow_server),
        twins=build(root / "twins", twins, mlflow_server, "shards.val_max_overlap=null"),
        cleaned=build(root / "cleaned", twins, mlflow_server),
    )


def expected_val_share(built) -> float:
    """The share of val documents whose text is also a train document's: counted from the shards'
    document index and the input, not from any n-gram."""
    index = read_doc_index(built.ws, built.shards).to_pylist()
    records = [json.loads(line) for line in (built.root / "in" / "docs.jsonl").open()]
    text_of = {r["id"]: r["text"] for r in records}
    train = {text_of[r["source_id"]] for r in index if r["split"] == "train"}
    val = [text_of[r["source_id"]] for r in index if r["split"] == "val"]
    return sum(t in train for t in val) / len(val)


def test_val_twins_in_the_training_split_are_measured(corpora):
    twins = measure(corpora.twins.ws, corpora.twins.shards, RegistryConfig(), corpora.twins.cfg.corpus)
    assert twins["n"] == 13 and twins["val_docs"] > 10
    assert twins["val"] == pytest.approx(expected_val_share(corpora.twins)) and twins["val"] > 0.3
    assert twins["max"] == twins["val"] and twins["sets"] == {}
    clean = measure(corpora.clean.ws, corpora.clean.shards, RegistryConfig(), corpora.clean.cfg.corpus)
    assert expected_val_share(corpora.clean) == 0.0 and clean["val"] == 0.0  # boilerplate is a small share
    # ...that counts once a document needs less than its share to be contaminated
    strict = RegistryConfig(contaminated_doc_share=0.1)
    assert measure(corpora.clean.ws, corpora.clean.shards, strict, corpora.clean.cfg.corpus)["val"] == 1.0


def test_the_shards_stage_sends_val_twins_of_training_documents_to_train(corpora):
    cleaned = corpora.cleaned
    figures = measure(cleaned.ws, cleaned.shards, RegistryConfig(), cleaned.cfg.corpus)
    assert figures["val"] == 0.0 and expected_val_share(cleaned) == 0.0 and figures["val_docs"] > 0
    moved = cleaned.manifest["val_to_train"]
    # the same documents by hash: the twins' val documents whose twin is train
    twins_val = corpora.twins.manifest["splits"]["val"]["docs"]
    assert moved == round(expected_val_share(corpora.twins) * twins_val) and moved > 0
    assert cleaned.manifest["splits"]["val"]["docs"] == twins_val - moved
    assert corpora.twins.manifest["val_to_train"] == 0


def test_a_contamination_set_counts_its_documents_found_in_training(corpora, tmp_path):
    index = read_doc_index(corpora.clean.ws, corpora.clean.shards).to_pylist()
    train = [int(r["source_id"][1:]) for r in index if r["split"] == "train"][:4]
    rng = random.Random(5)
    fresh = [random_doc(rng) for _ in range(4)]
    write_jsonl(
        tmp_path / "eval.jsonl", [{"text": corpora.texts[i]} for i in train] + [{"text": t} for t in fresh]
    )
    sets = RegistryConfig(contamination_sets=[str(tmp_path / "*.jsonl")])
    figures = measure(corpora.clean.ws, corpora.clean.shards, sets, corpora.clean.cfg.corpus)
    assert figures["sets"] == {"eval.jsonl": 0.5} and figures["max"] == 0.5


def test_a_contaminated_version_is_registered_and_the_champion_stays(
    corpora, mlflow_env, ray_local, tmp_path
):
    twins = corpora.twins
    manifest = twins.manifest
    tokenizer = twins.ws.path(manifest["inputs"]["tokenizer"]["dir"])
    shards_dir = twins.ws.path(twins.shards)
    vocab = manifest["tokenizer"]["vocab_size"]
    gate = registry.GateData(shards_dir, tokenizer, batch_size=8, max_batches=2)
    champion_dir = make_model_dir(tmp_path / "champion", tokenizer, vocab, 0)
    candidate_dir = make_model_dir(tmp_path / "candidate", tokenizer, vocab, 20, shards_dir)
    mlflow.set_experiment("contamination-tests")

    def register(model_dir):
        with mlflow.start_run(run_name="contamination-test"):
            return registry.register(registry.log_model(model_dir), NAME, {})

    first = register(champion_dir)
    assert registry.champion_gate(NAME, first, champion_dir, gate)["promoted"]
    lines: list[str] = []
    contamination = gate_input(
        twins.ws.full_uri(twins.shards), manifest, RegistryConfig(), twins.cfg.corpus, lines.append
    )
    assert lines == [] and contamination["refused"].endswith("(registry.max_contamination=0.01)")
    assert contamination["refused"].startswith(
        f"{contamination['figures']['val']:.1%} of val documents have most of their 13-grams in the training split"
    )
    second = register(candidate_dir)
    decision = registry.champion_gate(NAME, second, candidate_dir, gate, contamination)
    assert decision["candidate_bpb"] < decision["champion_bpb"]  # better, and still refused
    assert not decision["promoted"] and decision["refused"] == contamination["refused"]
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(NAME, "champion").version == first
    tags = client.get_model_version(NAME, second).tags
    assert tags["gate.decision"] == f"kept the champion: {contamination['refused']}"
    assert float(tags["gate.contamination"]) == pytest.approx(contamination["figures"]["max"], abs=1e-6)
    # the same candidate on the clean figures moves it
    clean = {"figures": {**contamination["figures"], "val": 0.0, "max": 0.0}, "refused": None}
    assert registry.champion_gate(NAME, second, candidate_dir, gate, clean)["promoted"]
    assert client.get_model_version_by_alias(NAME, "champion").version == second


def test_shards_without_the_indexes_are_not_measured_and_say_so(prepared_workspace):
    pw = prepared_workspace
    manifest = read_manifest(Workspace(str(pw.shards_dir)), "")
    lines: list[str] = []
    cfg = RegistryConfig()
    assert gate_input(str(pw.shards_dir), manifest, cfg, CorpusConfig(), lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("contamination not measured: corpus ")
