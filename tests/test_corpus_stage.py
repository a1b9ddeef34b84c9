"""The corpus stage on the session's Ray: the workspace contract, counts that add up, reruns,
a killed run, dedup quality at controlled similarity, dedup against an earlier corpus's index,
and a 2-node cluster giving the same corpus."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.core.workflow import Runner
from pipelines.core.workspace import Workspace
from pipelines.corpus.build import build_corpus
from pipelines.corpus.schema import STAGES, doc_key, key_to_id
from pipelines.corpus.sources import resolve
from pipelines.corpus.stage import corpus_stage
from pipelines.errors import UserError
from tests.conftest import ROOT, run_job
from tests.corpus_inputs import (
    english_doc,
    html_page,
    jaccard,
    mixed_corpus,
    near_duplicate_corpus,
    write_jsonl,
    write_warc,
)


def config(ws: Path, inputs: list[str], *extra: str, tracking: str | None = None):
    overrides = [f"workspace={ws}", f"corpus.inputs={json.dumps(inputs)}", "mlflow.experiment=corpus-tests"]
    if tracking:
        overrides.append(f"mlflow.tracking_uri={tracking}")
    return load_config(None, [*overrides, *extra])


def read_dir(ws_root: Path, rel: str) -> pa.Table:
    files = sorted((ws_root / rel).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def check_counts(ws_root: Path, out: str) -> dict:
    """The stats invariant, against the files actually published."""
    stats = json.loads((ws_root / out / "stats.json").read_text())
    data, rejects = read_dir(ws_root, f"{out}/data"), read_dir(ws_root, f"{out}/rejects")
    assert stats["input_docs"] == stats["kept_docs"] + sum(stats["dropped"].values())
    assert stats["kept_docs"] == data.num_rows and sum(stats["dropped"].values()) == rejects.num_rows
    ids = data["id"].to_pylist() + rejects["id"].to_pylist()
    assert len(ids) == len(set(ids))  # every input document once, in exactly one place
    stages = [stats["stages"][name] for name in STAGES]  # stats.json keeps keys sorted
    assert all(a["out"] == b["in"] for a, b in zip(stages, stages[1:]))
    assert stages[0]["in"] == stats["input_docs"] and stages[-1]["out"] == stats["kept_docs"]
    return stats


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session, mlflow_server):
    root = tmp_path_factory.mktemp("corpus")
    expected = mixed_corpus(root / "in")
    cfg = config(root / "ws", [str(root / "in")], tracking=mlflow_server)
    logs: list[str] = []
    runner = Runner(cfg, [corpus_stage()], log=logs.append)
    runner.run()
    return SimpleNamespace(
        runner=runner,
        ws=root / "ws",
        out=runner.output("corpus"),
        expected=expected,
        cfg=cfg,
        root=root,
        logs=logs,
    )


def file_digests(ws_root: Path, out: str) -> dict[str, str]:
    """sha256 of every data/ and rejects/ file of a corpus version."""
    files = sorted([*(ws_root / out / "data").glob("*"), *(ws_root / out / "rejects").glob("*")])
    assert files
    return {str(f.relative_to(ws_root / out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def kept_ids(ws_root: Path, out: str) -> list[str]:
    return sorted(read_dir(ws_root, f"{out}/data")["id"].to_pylist())


def test_publishes_the_workspace_contract(built):
    out = built.ws / built.out
    assert built.out == f"corpus/{built.runner.fingerprint('corpus')[:12]}"
    for rel in ("stats.json", "funnel.png", "manifest.json", "index/index.json"):
        assert (out / rel).is_file(), rel
    for kind in ("exact", "bands", "signatures"):
        assert list((out / "index" / kind).glob("part-*.parquet")), kind
    assert not (out / "_staging").exists()
    stats = check_counts(built.ws, built.out)
    assert stats["input_docs"] == built.expected["input_docs"]
    assert stats["kept_docs"] == built.expected["kept_docs"]
    dropped = dict(stats["dropped"])
    junk = [
        r
        for r, n in dropped.items()
        if r.split(".")[0] in ("gopher_quality", "gopher_repetition", "c4", "length")
    ]
    assert len(junk) == 1 and dropped.pop(junk[0]) == 1
    assert dropped == built.expected["dropped"]

    data = read_dir(built.ws, f"{built.out}/data")
    assert data.schema.names[:6] == ["id", "text", "url", "source", "source_id", "lang"]
    assert set(data["lang"].to_pylist()) == {"en"} and min(data["lang_score"].to_pylist()) > 0.65
    assert all(len(i) == 16 for i in data["id"].to_pylist())
    rejects = read_dir(built.ws, f"{built.out}/rejects").to_pylist()
    kept = set(data["id"].to_pylist())
    for row in rejects:
        if row["reason"] in ("exact_duplicate", "near_duplicate"):
            assert row["duplicate_of"] in kept and row["stage"].startswith("dedup_")
        else:
            assert row["duplicate_of"] is None
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["malformed_json"]["detail"].startswith("a.jsonl:4: ")
    assert by_reason["language"]["detail"].startswith("de ")
    assert by_reason["empty"]["source"].endswith("i-empty.txt")

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_docs"] == stats["kept_docs"] and manifest["stats"] == stats
    assert manifest["index"]["bands"] == 14 and manifest["index"]["rows"] == 8
    files = {f["uri"]: f for f in manifest["input_files"]}
    assert len(files) == 11
    for uri, entry in files.items():
        data_bytes = Path(uri).read_bytes()
        assert entry["bytes"] == len(data_bytes) and entry["sha256"] == hashlib.sha256(data_bytes).hexdigest()


def input_record_ids(root: Path) -> dict[str, list[str | None]]:
    """Per input file, the ids of its records as the file itself has them, read here without the
    product's readers: the JSONL/Parquet id field (else the line number), a WARC response's
    WARC-Record-ID, 0 for a one-document file."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    from pipelines.corpus.streams import InputStream

    ids: dict[str, list[str | None]] = {}
    for path in sorted(root.iterdir()):
        if path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
            compression = {"gz": "gzip", "zst": "zstd"}.get(path.suffix[1:])
            with InputStream(str(path), compression) as src:
                lines = src.stream.read().decode().splitlines()
            ids[path.name] = []
            for lineno, line in enumerate(lines, start=1):
                try:
                    ids[path.name].append(json.loads(line).get("id") or str(lineno))
                except json.JSONDecodeError:
                    ids[path.name].append(str(lineno))
        elif path.suffix == ".parquet":
            ids[path.name] = pq.read_table(path)["id"].to_pylist()
        elif path.name.endswith(".warc.gz"):
            with InputStream(str(path), "gzip") as src:
                records = ArchiveIterator(src.stream, record_types=WarcRecordType.response)
                ids[path.name] = [r.headers["WARC-Record-ID"] for r in records]
        else:
            ids[path.name] = ["0"]
    return ids


def test_every_row_names_its_input_record(built):
    """Kept and rejected rows join back to the input files row for row by (source, source_id), and
    a duplicate names the document it copies in both forms."""
    data = read_dir(built.ws, f"{built.out}/data").to_pylist()
    rejects = read_dir(built.ws, f"{built.out}/rejects").to_pylist()
    published = sorted((r["source"], r["source_id"]) for r in data + rejects)
    expected = sorted((name, i) for name, ids in input_record_ids(built.root / "in").items() for i in ids)
    assert published == expected
    for row in data + rejects:  # the id is the hash of the same two
        assert row["id"] == key_to_id(doc_key(row["source"], row["source_id"]))
    kept = {r["id"]: r for r in data}
    duplicates = [r for r in rejects if r["duplicate_of"] is not None]
    warc_ids = input_record_ids(built.root / "in")["g.warc.gz"]
    assert {r["source_id"] for r in duplicates} == {"a-copy", warc_ids[1]}  # a0's copy, f.html's
    for row in duplicates:
        original = kept[row["duplicate_of"]]
        assert (row["duplicate_of_source"], row["duplicate_of_source_id"]) == (
            original["source"],
            original["source_id"],
        )
    copy = next(r for r in duplicates if r["source_id"] == "a-copy")
    assert (copy["duplicate_of_source"], copy["duplicate_of_source_id"]) == ("a.jsonl", "a0")
    assert all(r["duplicate_of_source"] is None for r in rejects if r["duplicate_of"] is None)


def test_stats_count_records_per_input_file(built):
    stats = check_counts(built.ws, built.out)
    data = read_dir(built.ws, f"{built.out}/data")["source"].to_pylist()
    ids = input_record_ids(built.root / "in")
    assert stats["by_source"] == {
        name: {"records": len(ids[name]), "kept": data.count(name)} for name in sorted(ids)
    }


def test_funnel_is_logged_to_mlflow(built, mlflow_server):
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("corpus-tests")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'corpus'", max_results=1)
    history = client.get_metric_history(run.info.run_id, "funnel_docs")
    stats = json.loads((built.ws / built.out / "stats.json").read_text())
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [
        stats["input_docs"],
        *[stats["stages"][name]["out"] for name in STAGES],
    ]
    assert run.data.metrics["stats.kept_docs"] == stats["kept_docs"]
    assert run.data.metrics["stats.dropped.near_duplicate"] == 1
    assert "funnel.png" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_rerun_of_the_same_config_is_skipped(built):
    logs: list[str] = []
    runner = Runner(built.cfg, [corpus_stage()], log=logs.append)
    steps = runner.run()
    assert [s.action for s in steps] == ["skip"] and any(m.startswith("[skip] corpus") for m in logs)


def test_changed_input_file_changes_the_version(built, tmp_path):
    inputs = tmp_path / "in"
    mixed_corpus(inputs)
    cfg = config(tmp_path / "ws", [str(inputs)])
    before = Runner(cfg, [corpus_stage()]).fingerprint("corpus")
    (inputs / "e.txt").write_text((inputs / "e.txt").read_text() + " One more sentence here.")
    assert Runner(cfg, [corpus_stage()]).fingerprint("corpus") != before


def test_missing_or_empty_inputs_are_user_errors(tmp_path, mlflow_server):
    missing = str(tmp_path / "nowhere" / "*.jsonl")
    runner = Runner(config(tmp_path / "ws", [missing]), [corpus_stage()], log=lambda m: None)
    with pytest.raises(UserError, match=r"config key 'corpus.inputs': .* matches no file"):
        runner.run()
    proc = run_job(
        "jobs/prepare_corpus.py",
        "--set",
        f"workspace={tmp_path / 'ws'}",
        "--set",
        "corpus.inputs=[]",
        env={"MLFLOW_TRACKING_URI": mlflow_server},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config key 'corpus.inputs' is empty: give paths, globs or URIs of the raw corpus"
    ]


@pytest.mark.slow
def test_killed_mid_way_then_rerun_gives_the_same_kept_ids(built, tmp_path, mlflow_server):
    """SIGKILL the job (and every Ray process it started) once documents are being written, rerun."""
    ws = tmp_path / "ws"
    args = [
        "jobs/prepare_corpus.py",
        "--set",
        f"workspace={ws}",
        "--set",
        f"corpus.inputs=[{built.root / 'in'}]",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, start_new_session=True)
    out = ws / built.out
    deadline = time.monotonic() + 300
    while (
        not list((out / "_staging").glob("*.parquet")) and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], capture_output=True)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the job finished before it could be killed"
    assert out.exists() and not (out / "manifest.json").exists()

    logs: list[str] = []
    runner = Runner(config(ws, [str(built.root / "in")]), [corpus_stage()], log=logs.append)
    assert runner.plan()[0].reason == "incomplete output (no manifest)"
    runner.run()
    assert kept_ids(ws, built.out) == kept_ids(built.ws, built.out)
    # the same config over the same files, in another workspace: the same corpus, byte for byte
    assert file_digests(ws, built.out) == file_digests(built.ws, built.out)
    check_counts(ws, built.out)


def test_dedup_quality_at_controlled_similarity(ray_local, tmp_path):
    docs = near_duplicate_corpus(seed=0)
    write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t, _ in docs])
    cfg = config(tmp_path, [str(tmp_path / "docs.jsonl")], "corpus.filters=[]", "corpus.languages=[]").corpus
    stats = build_corpus(_ws(tmp_path), resolve(cfg.inputs), cfg, "c", log=lambda m: None)
    data = read_dir(tmp_path, "c/data").to_pylist()
    rejects = read_dir(tmp_path, "c/rejects").to_pylist()
    key_of = {r["id"]: r["id"] for r in data}
    key_of.update({r["id"]: r["duplicate_of"] for r in rejects})
    source = "docs.jsonl"  # the name below the inputs' root: ids do not depend on where files lie
    cluster = [key_of[key_to_id(doc_key(source, name))] for name, _, _ in docs]
    high = low = high_merged = low_merged = 0
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            if docs[i][2] != docs[j][2]:
                low += 1  # different base documents: word-5-gram Jaccard is ~0
                low_merged += cluster[i] == cluster[j]
                continue
            sim = jaccard(docs[i][1], docs[j][1])
            if sim >= 0.85:
                high += 1
                high_merged += cluster[i] == cluster[j]
            elif sim <= 0.5:
                low += 1
                low_merged += cluster[i] == cluster[j]
    assert high > 100 and low > 10_000
    assert high_merged / high >= 0.95
    assert low_merged / low < 0.01
    exact = [r for r in rejects if r["reason"] == "exact_duplicate"]
    assert len(exact) == len(docs) - len({t for _, t, _ in docs})  # exact recall 1.0, and nothing more
    # duplicate_of is always a kept document of the same cluster (the exact copy's keeper, or the
    # document that keeper was merged into when it was itself a near-duplicate)
    truth = {key_to_id(doc_key(source, name)): c for name, _, c in docs}
    kept = {r["id"] for r in data}
    dups = [r for r in rejects if r["duplicate_of"]]
    assert len(dups) == len(rejects) and all(r["duplicate_of"] in kept for r in dups)
    assert all(truth[r["id"]] == truth[r["duplicate_of"]] for r in exact)
    assert stats["dedup"]["fuzzy"]["verified_pairs"] <= stats["dedup"]["fuzzy"]["candidate_pairs"]


def _ws(root: Path) -> Workspace:
    return Workspace(str(root))


def test_one_large_input_file_is_processed_by_several_tasks(ray_local, tmp_path):
    """Reading is its own Ray Data step, not fused into processing: the batches of a single file go
    to several processing tasks (one staging file each), so one big dump still uses every CPU."""
    docs = near_duplicate_corpus(seed=1, clusters=20)
    write_jsonl(tmp_path / "dump.jsonl", [{"id": i, "text": t} for i, t, _ in docs])
    cfg = config(tmp_path, [str(tmp_path / "dump.jsonl")], "corpus.batch_docs=8").corpus
    messages = []
    stats = build_corpus(_ws(tmp_path), resolve(cfg.inputs), cfg, "c", log=messages.append)
    staged = int(re.search(r"1 input files -> (\d+) staging files", messages[0]).group(1))
    assert staged > 1 and stats["input_docs"] == len(docs)


def test_dedup_against_an_earlier_corpus_uses_only_its_index(ray_local, tmp_path):
    import random

    rng = random.Random(5)
    old_docs, new_docs = [english_doc(rng) for _ in range(6)], [english_doc(rng) for _ in range(3)]
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    write_jsonl(tmp_path / "old" / "old.jsonl", [{"id": i, "text": t} for i, t in enumerate(old_docs)])
    write_warc(
        tmp_path / "new" / "new.warc.gz",
        [(f"https://new/{i}", html_page(t).encode()) for i, t in enumerate(new_docs)]
        + [("https://new/copy", html_page(old_docs[0]).encode())]  # same text as an old document
        + [("https://new/edit", html_page(old_docs[1].replace(" the ", " a ", 2)).encode())],
    )
    ws = _ws(tmp_path / "ws")
    cfg = config(tmp_path / "ws", ["x"]).corpus
    build_corpus(ws, resolve([str(tmp_path / "old")]), cfg, "corpus/old", log=lambda m: None)
    old = read_dir(tmp_path / "ws", "corpus/old/data")
    old_id = {r["text"]: r["id"] for r in old.to_pylist()}
    for rel in ("data", "rejects"):  # a refresh must not need the old documents
        for f in (tmp_path / "ws" / "corpus" / "old" / rel).iterdir():
            f.unlink()
    stats = build_corpus(
        ws, resolve([str(tmp_path / "new")]), cfg, "corpus/new", against=["corpus/old"], log=lambda m: None
    )
    rejects = {r["source"] + r["id"]: r for r in read_dir(tmp_path / "ws", "corpus/new/rejects").to_pylist()}
    assert stats["kept_docs"] == 3
    assert sorted((r["reason"], r["duplicate_of"]) for r in rejects.values()) == sorted(
        [("exact_duplicate", old_id[old_docs[0]]), ("near_duplicate", old_id[old_docs[1]])]
    )
    with pytest.raises(UserError, match="other settings"):
        other = config(tmp_path / "ws", ["x"], "corpus.bands=7", "corpus.rows=16").corpus
        build_corpus(ws, resolve([str(tmp_path / "new")]), other, "corpus/x", against=["corpus/old"])


CLUSTER_SCRIPT = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from pipelines.config import load_config
from pipelines.corpus.build import build_corpus
from pipelines.corpus.schema import STAGES, doc_key, key_to_id
from pipelines.corpus.sources import resolve
from pipelines.core.workspace import Workspace

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 * 2**20})
cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20)
ray.init(address=cluster.address)
assert len([n for n in ray.nodes() if n["Alive"]]) == 2
cfg = load_config(None, ["corpus.partitions=3"]).corpus
build_corpus(Workspace(sys.argv[1]), resolve([sys.argv[2]]), cfg, "corpus/two-nodes", log=lambda m: None)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_two_node_cluster_gives_the_same_kept_ids(built, tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT, str(ws), str(built.root / "in")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert kept_ids(ws, "corpus/two-nodes") == kept_ids(built.ws, built.out)
    check_counts(ws, "corpus/two-nodes")
