"""Decontamination against evaluation texts, and the sampled n-gram index of the kept documents:
copies of eval documents (and a 13-gram in other case and punctuation) are counted rejects naming
the eval file, a shared 12-gram is not; the eval files are in the fingerprint and checked at
planning time; index/ngrams holds each kept document's sample, which finds a copied passage."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.core.ngrams import contains, distinct, ngram_hashes, read_ngrams, sampled
from pipelines.core.workflow import Runner
from pipelines.core.workspace import Workspace
from pipelines.corpus import decontaminate
from pipelines.corpus.index import NGRAM_KEEP_BITS
from pipelines.corpus.schema import doc_key
from pipelines.corpus.stage import corpus_stage
from pipelines.errors import UserError
from tests.conftest import run_job
from tests.corpus_inputs import write_jsonl
from tests.test_corpus_stage import check_counts, config, read_dir

N = 13
# Random words: template prose (tests/corpus_inputs.py) shares 13-grams between documents by chance,
# and this corpus must share exactly what the tests put in. Hence no quality filters or language ids.
VOCAB = [f"w{i:05d}" for i in range(20_000)]
NO_FILTERS = ("corpus.filters=[]", "corpus.languages=[]")


def random_doc(rng: random.Random, lines: int = 8, words: int = 20) -> str:
    return "\n".join(" ".join(rng.choice(VOCAB) for _ in range(words)) + "." for _ in range(lines))


def _words(text: str) -> list[str]:
    return text.replace("\n", " ").split()


def _with_line(doc: str, line: str) -> str:
    """`doc` with `line` inserted as a line of its own, between words no eval text has."""
    lines = doc.splitlines()
    return "\n".join([*lines[:2], f"Meanwhile xylophones {line} zanzibar quokkas.", *lines[2:]])


def corpus(root) -> dict:
    rng = random.Random(7)
    evals = [random_doc(rng) for _ in range(3)]
    clean = [random_doc(rng) for _ in range(6)]
    (root / "evals").mkdir(parents=True)
    write_jsonl(root / "evals" / "eval.jsonl", [{"text": t} for t in evals[:2]])
    (root / "evals" / "story.txt").write_text(evals[2])
    words = _words(evals[0])
    twelve = _with_line(clean[0], " ".join(words[20:32]))
    # the 13 words of another stretch, in upper case, with commas and dashes in between
    altered = [w.upper().strip(".") + ("," if i % 4 == 0 else "") for i, w in enumerate(words[40:53])]
    thirteen = _with_line(clean[1], " - ".join(altered))
    shared = "\n".join(clean[2].splitlines()[:4] + clean[3].splitlines()[4:])  # half of each
    records = [{"id": f"clean{i}", "text": t} for i, t in enumerate(clean[2:], start=2)]
    records += [{"id": "twelve", "text": twelve}, {"id": "thirteen", "text": thirteen}]
    records += [{"id": "shared", "text": shared}]
    records += [{"id": f"copy{i}", "text": t} for i, t in enumerate(evals)]
    (root / "in").mkdir()
    write_jsonl(root / "in" / "docs.jsonl", records)
    return {"evals": evals, "twelve": twelve, "thirteen": thirteen, "clean": clean}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session, mlflow_server):
    root = tmp_path_factory.mktemp("decontaminate")
    docs = corpus(root)
    patterns = [str(root / "evals" / "*.jsonl"), str(root / "evals" / "*.txt")]
    cfg = config(
        root / "ws",
        [str(root / "in")],
        f"corpus.decontaminate={json.dumps(patterns)}",
        *NO_FILTERS,
        tracking=mlflow_server,
    )
    logs: list[str] = []
    runner = Runner(cfg, [corpus_stage()], log=logs.append)
    runner.run()
    out = runner.output("corpus")
    return SimpleNamespace(root=root, ws=root / "ws", out=out, cfg=cfg, docs=docs, logs=logs)


def test_the_inputs_share_what_they_claim(built):
    table = distinct(np.concatenate([ngram_hashes(t, N) for t in built.docs["evals"]]))
    table12 = distinct(np.concatenate([ngram_hashes(t, 12) for t in built.docs["evals"]]))
    assert not contains(table, ngram_hashes(built.docs["twelve"], N)).any()
    assert contains(table12, ngram_hashes(built.docs["twelve"], 12)).sum() == 1
    assert contains(table, ngram_hashes(built.docs["thirteen"], N)).sum() == 1
    for clean in built.docs["clean"]:
        assert not contains(table, ngram_hashes(clean, N)).any()


def test_copies_of_eval_texts_are_counted_rejects(built):
    stats = check_counts(built.ws, built.out)
    rejects = {r["id"]: r for r in read_dir(built.ws, f"{built.out}/rejects").to_pylist()}
    data = read_dir(built.ws, f"{built.out}/data").to_pylist()
    contaminated = [r for r in rejects.values() if r["reason"] == "contaminated"]
    assert len(contaminated) == 4 and len(rejects) == 4 and len(data) == 6  # clean x4, twelve, shared
    assert all(r["stage"] == "decontaminate" and r["duplicate_of"] is None for r in contaminated)
    details = sorted(r["detail"] for r in contaminated)
    assert sum(d.startswith("eval.jsonl: ") for d in details) == 3  # two copies and the 13-gram
    assert sum(d.startswith("story.txt: ") for d in details) == 1
    assert any(d.startswith("eval.jsonl: 1 of ") and d.endswith(" 13-grams") for d in details)
    assert any("xylophones" in r["text"] for r in data)  # the 12-gram document is kept
    assert stats["dropped"] == {"contaminated": 4}
    assert stats["stages"]["decontaminate"]["in"] - stats["stages"]["decontaminate"]["out"] == 4
    assert any(m.startswith("[corpus] dropped 4: contaminated 4 (") for m in built.logs)
    assert any("decontaminate against 2 eval files: 3 documents" in m for m in built.logs)


def test_ngram_index_holds_each_kept_documents_sample(built):
    ng, _ = read_ngrams(Workspace(str(built.ws)), built.out)
    meta = json.loads((built.ws / built.out / "index" / "index.json").read_text())
    assert meta["ngrams"] == {"n": N, "keep_bits": NGRAM_KEEP_BITS}
    data = read_dir(built.ws, f"{built.out}/data").to_pylist()
    assert sorted(ng.docs.tolist()) == sorted(int(r["id"], 16) for r in data)
    by_id = {r["id"]: r["text"] for r in data}
    for i, doc in enumerate(ng.docs):
        stored = ng.hashes[ng.offsets[i] : ng.offsets[i + 1]]
        assert np.array_equal(stored, sampled(ngram_hashes(by_id[f"{doc:016x}"], N), NGRAM_KEEP_BITS))
    # "shared" holds half of clean2's lines: their samples find it, and no other document
    clean2, shared = doc_key("docs.jsonl", "clean2"), doc_key("docs.jsonl", "shared")
    assert {clean2, shared} <= set(ng.docs.tolist())
    others = distinct(ng.of(ng.docs != clean2))
    hits = contains(others, ng.of(ng.docs == clean2))
    assert (
        hits.any()
        and contains(distinct(ng.of(ng.docs == shared)), ng.of(ng.docs == clean2)).sum() == hits.sum()
    )


def test_eval_files_are_in_the_fingerprint(tmp_path):
    eval_file, text = tmp_path / "eval.jsonl", random_doc(random.Random(1))
    write_jsonl(eval_file, [{"text": text}])
    write_jsonl(tmp_path / "docs.jsonl", [{"text": text}])
    plain = config(tmp_path / "ws", [str(tmp_path / "docs.jsonl")])
    cfg = config(tmp_path / "ws", [str(tmp_path / "docs.jsonl")], f"corpus.decontaminate=[{eval_file}]")
    before = Runner(cfg, [corpus_stage()]).fingerprint("corpus")
    assert before != Runner(plain, [corpus_stage()]).fingerprint("corpus")
    write_jsonl(eval_file, [{"text": text}, {"text": "One more evaluation text."}])
    assert Runner(cfg, [corpus_stage()]).fingerprint("corpus") != before


def test_unreadable_eval_file_names_key_and_file(tmp_path):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"this is not gzip")
    cfg = config(tmp_path / "ws", ["x"], f"corpus.decontaminate=[{tmp_path / 'bad.jsonl.gz'}]").corpus
    with pytest.raises(UserError, match=r"^corpus.decontaminate: cannot read .*bad.jsonl.gz"):
        decontaminate.build_table(decontaminate.resolve_files(cfg), cfg)
    (tmp_path / "page.html").write_text("<p>not an eval file</p>")
    cfg = config(tmp_path / "ws", ["x"], f"corpus.decontaminate=[{tmp_path / 'page.html'}]").corpus
    with pytest.raises(UserError, match=r"^corpus.decontaminate: .*page.html: not an eval file"):
        decontaminate.check_readable(cfg)


def test_missing_eval_glob_is_exit_2_at_planning(tmp_path):
    missing = tmp_path / "nowhere" / "*.jsonl"
    proc = run_job(
        "jobs/pipeline.py",
        "--config",
        "configs/demo.yaml",
        "--set",
        f"workspace={tmp_path / 'ws'}",
        "--set",
        f"corpus.decontaminate=[{missing}]",
        "--dry-run",
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: config key 'corpus.decontaminate': '{missing}' matches no file"
    ]
