"""The incremental refresh on the session's Ray: three batches arriving in turn against a one-shot
build, untouched old files, lineage in manifests and MLflow, the no-op, a crash half-way, the lock."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpt2core.data import TokenShards
from gpt2core.tokenizer import load_sentencepiece
from pipelines.core.ngrams import read_ngrams
from pipelines.core.workflow import Runner
from pipelines.core.workspace import Workspace
from pipelines.corpus.build import build_corpus
from pipelines.corpus.schema import STAGES, doc_key, key_to_id
from pipelines.corpus.sources import InputFile, resolve
from pipelines.corpus.stage import corpus_stage
from pipelines.errors import UserError
from pipelines.refresh import shards as refresh_shards
from pipelines.refresh import version as refresh_version
from pipelines.refresh.lineage import Version, current_version, shards_of, survey_inputs
from pipelines.refresh.lock import LOCK_FILE, Owner, WorkspaceLock
from pipelines.refresh.stage import refresh
from pipelines.shards.stage import shards_stage
from pipelines.tokenizer.stage import tokenizer_stage
from tests.conftest import ROOT
from tests.refresh_inputs import (
    DEMO_CONFIG,
    REGISTERED_MODEL,
    clusters,
    file_states,
    job_args,
    read_rows,
    refresh_config,
    write_batches,
)

CHAIN_EXPERIMENT = "refresh-chain"  # the other tests' refreshes log elsewhere


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_module, mlflow_server):
    """The original corpus built by the pipeline's stages, then three refreshes (batch 3 found by a
    glob), each next to a one-shot corpus build over the same input files."""
    root = tmp_path_factory.mktemp("refresh")
    batches = write_batches(root / "in")
    ws = root / "ws"

    def cfg(*inputs):
        return refresh_config(ws, inputs, mlflow_server, f"mlflow.experiment={CHAIN_EXPERIMENT}")

    base_cfg = cfg(*batches[0])
    Runner(base_cfg, [corpus_stage(), tokenizer_stage(), shards_stage()], log=lambda m: None).run()
    shutil.copytree(ws, root / "base-snapshot")
    steps, logs = [], []
    for k in (1, 2, 3):
        files = [f for batch in batches[: k + 1] for f in batch]
        inputs = files if k < 3 else [root / "in" / "*.jsonl"]
        before = file_states(ws, "corpus", "shards")
        result = refresh(cfg(*inputs), log=logs.append, config_path=DEMO_CONFIG)
        oneshot = f"oneshot/{k}"
        build_corpus(
            Workspace(str(root)), resolve([str(f) for f in files]), base_cfg.corpus, oneshot, log=print
        )
        steps.append(SimpleNamespace(k=k, files=files, result=result, before=before, oneshot=oneshot))
    base = current_version(Workspace(str(root / "base-snapshot")), base_cfg)
    return SimpleNamespace(
        root=root, ws=ws, batches=batches, steps=steps, logs=logs, cfg=cfg, base=base, tracking=mlflow_server
    )


def shard_file_tokens(path: Path) -> np.ndarray:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all().column(0).to_numpy()


def batch_of(chain, source: str) -> int:
    return next(i for i, batch in enumerate(chain.batches) if source in [p.name for p in batch])


def test_each_refresh_keeps_what_a_one_shot_build_keeps_up_to_the_documented_difference(chain):
    differences = 0
    for step in chain.steps:
        version = step.result.corpus.dir
        kept, rejects = read_rows(chain.ws, f"{version}/data"), read_rows(chain.ws, f"{version}/rejects")
        one_kept = read_rows(chain.root, f"{step.oneshot}/data")
        one_rejects = read_rows(chain.root, f"{step.oneshot}/rejects")
        # every input document is in exactly one place, in both
        ids = [r["id"] for r in kept + rejects]
        assert len(ids) == len(set(ids)) and set(ids) == {r["id"] for r in one_kept + one_rejects}
        # the same documents are dropped for the same non-duplicate reasons
        other = {(r["id"], r["reason"]) for r in rejects if r["duplicate_of"] is None}
        assert other == {(r["id"], r["reason"]) for r in one_rejects if r["duplicate_of"] is None}
        junk = {key_to_id(doc_key(f.name, "junk")) for f in step.files if f.name != "b3a.jsonl"}
        assert junk <= {doc_id for doc_id, _ in other}  # the junk document of each file that has one
        # the same duplicate clusters ...
        refreshed, oneshot = clusters(kept, rejects), clusters(one_kept, one_rejects)
        assert set(refreshed.values()) == set(oneshot.values())
        assert any(len(c) > 1 for c in oneshot.values())
        batch = {r["id"]: batch_of(chain, r["source"]) for r in kept + rejects}
        for keeper, members in refreshed.items():
            # ... kept by the documented rule: the earliest batch's copy (its smallest id there);
            # a one-shot build keeps the smallest id of all
            earliest = min(batch[m] for m in members)
            assert keeper == min(m for m in members if batch[m] == earliest)
            one_keeper = next(k for k, c in oneshot.items() if c == members)
            assert one_keeper == min(members)
            differences += keeper != one_keeper
    assert differences >= 4, "the inputs make later copies with smaller ids (see refresh_inputs.py)"


def test_each_version_names_its_parent_and_counts_every_document(chain):
    parent = chain.base
    for step in chain.steps:
        version = step.result.corpus
        manifest = version.manifest
        assert step.result.status == "refreshed" and step.result.parent.dir == parent.dir
        assert manifest["parent"] == {
            "dir": parent.dir,
            "version": parent.id,
            "digest": refresh_version.manifest_digest(parent.manifest),
        }
        assert manifest["generation"] == step.k and version.dir == f"corpus/{manifest['fingerprint'][:12]}"
        new_uris = sorted(str(f) for f in chain.batches[step.k])
        assert sorted(f["uri"] for f in manifest["input_files"]) == new_uris == sorted(step.result.new_files)
        stats = manifest["stats"]
        kept = read_rows(chain.ws, f"{version.dir}/data")
        rejects = read_rows(chain.ws, f"{version.dir}/rejects")
        assert stats["kept_docs"] == len(kept) == manifest["kept_docs"]
        assert (
            stats["input_docs"]
            == len(kept) + len(rejects)
            == stats["kept_docs"] + sum(stats["dropped"].values())
        )
        assert stats["stages"][STAGES[0]]["in"] == stats["input_docs"]
        assert stats["stages"][STAGES[-1]]["out"] == stats["kept_docs"]
        increment = manifest["refresh"]["stats"]
        assert increment["input_docs"] == sum(
            1 for r in kept + rejects if batch_of(chain, r["source"]) == step.k
        )
        assert stats["input_docs"] == parent.manifest["stats"]["input_docs"] + increment["input_docs"]
        for rel, entry in manifest["files"].items():  # the manifest covers every file, truthfully
            path = chain.ws / version.dir / rel
            assert path.stat().st_size == entry["bytes"], rel
        root = chain.ws / version.dir
        listed = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        assert listed - {"manifest.json"} == set(manifest["files"])
        # index/ngrams: the parent's part files and this generation's, one row per kept document
        ngram_files = {p.name for p in (root / "index" / "ngrams").iterdir()}
        generations = {f"part-00000-g{g:04d}.parquet" for g in range(1, step.k + 1)}
        assert {"part-00000.parquet", *generations} <= ngram_files
        ng, _ = read_ngrams(Workspace(str(chain.ws)), version.dir)
        assert sorted(f"{d:016x}" for d in ng.docs) == sorted(r["id"] for r in kept)
        parent = version


def test_old_files_are_never_rewritten_and_new_shards_cover_old_plus_new(chain):
    sp = None
    for step in chain.steps:
        after = file_states(chain.ws, "corpus", "shards")
        for rel, (digest, _) in step.before.items():  # nothing that existed was changed or removed
            assert after[rel][0] == digest, rel
        shards = step.result.shards
        parent_shards = shards.manifest["parent"]["dir"]
        for split in ("train", "val"):
            old = TokenShards(chain.ws / parent_shards, split).manifest["splits"][split]["files"]
            files = shards.manifest["splits"][split]["files"]
            assert files[: len(old)] == old  # the parent's files come first, as they were
            for f in old:  # hard links: the same inode, so no byte was copied or rewritten
                assert (
                    os.stat(chain.ws / shards.dir / f["name"]).st_ino
                    == os.stat(chain.ws / parent_shards / f["name"]).st_ino
                )
        assert shards.manifest["inputs"]["corpus"]["dir"] == step.result.corpus.dir
        assert shards.manifest["tokenizer"] == chain.steps[0].result.shards.manifest["tokenizer"]
        # only the new documents were tokenized, with the same tokenizer, into the new files
        info = shards.manifest["tokenizer"]
        sp = sp or load_sentencepiece((chain.ws / info["dir"] / "spm.model").read_bytes())
        new_names = set(shards.manifest["refresh"]["new_files"])
        texts = []
        for split in ("train", "val"):
            reader = TokenShards(
                chain.ws / shards.dir, split, info["sha256"], info["vocab_size"], verify=True
            )
            assert reader.n_tokens == sum(f["tokens"] for f in shards.manifest["splits"][split]["files"])
            reader.close()
            for f in shards.manifest["splits"][split]["files"]:
                if f["name"] in new_names:
                    tokens = shard_file_tokens(chain.ws / shards.dir / f["name"])
                    ends = np.flatnonzero(tokens == info["eos_id"])
                    texts += [sp.decode(d.tolist()) for d in np.split(tokens, ends + 1)[:-1]]
        new_rows = read_rows(chain.ws, f"{step.result.corpus.dir}/data")
        new_texts = [r["text"] for r in new_rows if batch_of(chain, r["source"]) == step.k]
        assert sorted(texts) == sorted(new_texts) and new_texts


def test_the_refresh_is_logged_to_mlflow_with_its_lineage(chain):
    import mlflow

    client = mlflow.MlflowClient(chain.tracking)
    experiment = client.get_experiment_by_name(CHAIN_EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], "tags.mlflow.runName = 'refresh'", order_by=["attributes.start_time ASC"]
    )
    assert len(runs) == 3
    for run, step in zip(runs, chain.steps):
        assert run.info.status == "FINISHED"
        assert run.data.tags["refresh.parent"] == step.result.parent.id
        assert run.data.tags["refresh.version"] == step.result.corpus.id
        assert run.data.tags["refresh.shards"] == step.result.shards.id
        increment = step.result.corpus.manifest["refresh"]["stats"]
        assert run.data.metrics["new_files"] == len(chain.batches[step.k])
        assert run.data.metrics["new.input_docs"] == increment["input_docs"]
        assert run.data.metrics["new.kept_docs"] == increment["kept_docs"]
        assert run.data.metrics["kept_docs"] == step.result.corpus.manifest["kept_docs"]
        assert run.data.metrics["new_tokens"] > 0
        datasets = {
            {t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset.name
            for d in run.inputs.dataset_inputs
        }
        assert datasets == {
            "refresh_parent": step.result.parent.dir,
            "refresh_output": step.result.corpus.dir,
            "refresh_shards": step.result.shards.dir,
        }


def test_nothing_new_is_detected_and_nothing_is_written(chain, capsys):
    before = file_states(chain.ws, "corpus", "shards", "locks")
    last = chain.steps[-1].result
    os.utime(chain.batches[1][0])  # touched, same content: hashed, still known
    result = refresh(chain.cfg(chain.root / "in" / "*.jsonl"))
    assert result.status == "nothing_new" and result.corpus.dir == last.corpus.dir
    assert result.shards.dir == last.shards.dir
    assert file_states(chain.ws, "corpus", "shards", "locks") == before
    out = capsys.readouterr().out
    assert "nothing new" in out and f"train.shards={chain.ws / last.shards.dir}" in out


def test_the_current_version_is_the_lineage_head_unless_refresh_parent_names_one(chain):
    ws = Workspace(str(chain.ws))

    def cfg(*extra):
        return refresh_config(chain.ws, [], chain.tracking, *extra)

    assert current_version(ws, cfg()).dir == chain.steps[-1].result.corpus.dir  # the newest head
    assert current_version(ws, cfg(f"refresh.parent={chain.base.id}")).dir == chain.base.dir  # a branch
    with pytest.raises(UserError, match=r"no published corpus version .* differs in corpus\.ngram"):
        current_version(ws, cfg("corpus.ngram=4"))
    with pytest.raises(UserError, match=r"'refresh\.parent'.* other corpus settings \(corpus\.ngram\)"):
        current_version(ws, cfg("corpus.ngram=4", f"refresh.parent={chain.base.id}"))


def test_survey_tells_new_known_and_changed_files(tmp_path):
    """Quick check by size and mtime, else sha256; a processed file whose content changed is an error."""
    import hashlib

    paths = {n: tmp_path / f"{n}.jsonl" for n in ("known", "touched", "changed", "new")}
    for name, path in paths.items():
        path.write_text(f"{name}\n")
    record = {
        name: {"uri": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
        | {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for name, p in paths.items()
        if name != "new"
    }
    os.utime(paths["touched"], ns=(1, 1))
    paths["changed"].write_text("other content\n")
    hashed = []

    def hash_files(uris):
        hashed.extend(uris)
        return [hashlib.sha256(Path(u).read_bytes()).hexdigest() for u in uris]

    version = Version("corpus/v0", {"input_files": [record["known"], record["touched"]]})
    survey = survey_inputs(resolve([str(tmp_path)]), [version], hash_files)
    assert [f.uri for f in survey.new] == [str(paths["changed"]), str(paths["new"])]
    assert survey.processed == 2 and str(paths["known"]) not in hashed
    assert sorted(hashed) == sorted(str(paths[n]) for n in ("touched", "changed", "new"))

    older = Version("corpus/v0", {"input_files": [record["changed"]]})
    with pytest.raises(UserError, match=r"changed\.jsonl changed since corpus version v0"):
        survey_inputs([InputFile(str(paths["changed"]), 14, 5)], [version, older], hash_files)


def test_crash_half_way_then_rerun_gives_the_uninterrupted_result(chain, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(chain.root / "base-snapshot", ws)
    cfg = refresh_config(ws, chain.steps[0].files, chain.tracking)
    base_files = file_states(ws, "corpus", "shards")
    expected = chain.steps[0].result

    def crash(*args, **kwargs):
        raise RuntimeError("injected fault")

    # 1. the new version is written, its manifest not yet
    monkeypatch.setattr(refresh_version, "publish", crash)
    with pytest.raises(RuntimeError, match="injected fault"):
        refresh(cfg, log=lambda m: None)
    assert (ws / expected.corpus.dir / "data").is_dir() and not (
        ws / expected.corpus.dir / "manifest.json"
    ).exists()
    assert current_version(Workspace(str(ws)), cfg).dir == chain.base.dir  # the current version stays
    assert not (ws / LOCK_FILE).exists()
    monkeypatch.undo()

    # 2. the version is published, its shards crash while being written
    monkeypatch.setattr(refresh_shards, "write_shards", crash)
    with pytest.raises(RuntimeError, match="injected fault"):
        refresh(cfg, log=lambda m: None)
    assert (ws / expected.corpus.dir / "manifest.json").is_file()
    assert not (ws / expected.shards.dir / "manifest.json").exists()
    monkeypatch.undo()

    # 3. the rerun finds nothing new and completes the shards
    result = refresh(cfg, log=lambda m: None)
    assert result.status == "completed"
    assert after_unchanged(base_files, file_states(ws, "corpus", "shards"))
    same_result(chain.ws, expected, ws, result)


def after_unchanged(before: dict, after: dict) -> bool:
    return all(after[rel][0] == digest for rel, (digest, _) in before.items())


def same_result(ws_a: Path, a, ws_b: Path, b) -> None:
    """The same corpus version and shards, document for document."""
    assert a.corpus.dir == b.corpus.dir and a.shards.dir == b.shards.dir
    for sub in ("data", "rejects"):
        rows_a = sorted(map(str, read_rows(ws_a, f"{a.corpus.dir}/{sub}")))
        assert rows_a == sorted(map(str, read_rows(ws_b, f"{b.corpus.dir}/{sub}"))), sub
    assert a.corpus.manifest["stats"]["kept_docs"] == b.corpus.manifest["stats"]["kept_docs"]
    assert a.shards.manifest["splits"] == b.shards.manifest["splits"]


@pytest.mark.slow
def test_a_killed_refresh_is_completed_by_the_next_run_submitted_as_the_schedule_submits_it(
    chain, ray_head, tmp_path
):
    """SIGKILL the refresh job (and its Ray driver) while it processes the new files: the current
    version stays usable and the lock names the dead job. The next run, through `ray job submit`
    against a local head as the schedule runs it, takes over the stale lock and completes the
    refresh: the same result as an uninterrupted one."""
    import ray

    from tests.test_train_job import submit_job

    ws = tmp_path / "ws"
    shutil.copytree(chain.root / "base-snapshot", ws)
    expected = chain.steps[0].result
    address = f"ray.address={ray.get_runtime_context().gcs_address}"  # join the session's Ray
    args = [sys.executable, *job_args(ws, chain.steps[0].files, chain.tracking, address)]
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True)
    staging = ws / expected.corpus.dir / "_increment" / "_staging"
    deadline = time.monotonic() + 300
    while not list(staging.glob("*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], capture_output=True)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the job finished before it could be killed"
    assert Owner(**json.loads((ws / LOCK_FILE).read_text())).pid == proc.pid
    assert current_version(Workspace(str(ws)), chain.cfg()).dir == chain.base.dir
    assert not (ws / expected.corpus.dir / "manifest.json").exists()

    submitted = submit_job(ray_head, job_args(ws, chain.steps[0].files, chain.tracking))
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    output = submitted.stdout + submitted.stderr  # the job's stderr arrives in the submitter's stdout
    assert f"taking over the stale refresh lock {ws / LOCK_FILE} (host " in output
    assert f"pid {proc.pid} is not running on this host" in output
    assert f"[refresh] shards: {ws / expected.shards.dir}" in output
    assert f"--set train.shards={ws / expected.shards.dir}" in output
    assert not (ws / LOCK_FILE).exists()
    corpus = current_version(Workspace(str(ws)), chain.cfg())
    shards = shards_of(Workspace(str(ws)), corpus.dir)
    same_result(chain.ws, expected, ws, SimpleNamespace(corpus=corpus, shards=shards))


@pytest.mark.slow
def test_pretraining_continues_from_the_registered_model_on_the_refreshed_shards(chain, tmp_path):
    """The schedule's second step: the pretrain command the refresh printed (plus a tiny run's
    settings), through the pretrain job's own command line, from the model registered before."""
    import mlflow
    from prepared_workspace import make_model_dir

    from pipelines.cli import pipeline_main
    from pipelines.registry import models as registry

    shards = chain.steps[-1].result.shards
    info = shards.manifest["tokenizer"]
    model = make_model_dir(tmp_path / "model", chain.ws / info["dir"], info["vocab_size"], 0)
    client = mlflow.MlflowClient(chain.tracking)
    mlflow.set_tracking_uri(chain.tracking)
    mlflow.set_experiment(CHAIN_EXPERIMENT)
    with mlflow.start_run(run_name="the model before the refresh"):
        first = registry.register(registry.log_model(model), REGISTERED_MODEL)

    printed = [m for m in chain.logs if "continue pretraining" in m][-1].split("\n", 1)[1]
    args = shlex.split(printed)
    assert args[:4] == ["python", "jobs/pretrain.py", "--config", DEMO_CONFIG]
    assert f"train.shards={chain.ws / shards.dir}" in args
    assert f"train.init_from=models:/{REGISTERED_MODEL}/latest" in args
    tiny = (
        f"workspace={tmp_path / 'ws'}",  # the run's checkpoints and model: not in the corpus workspace
        f"mlflow.tracking_uri={chain.tracking}",
        f"mlflow.experiment={CHAIN_EXPERIMENT}",
        f"mlflow.registered_model={REGISTERED_MODEL}",
        "train.num_workers=1",
        "train.micro_batch_size=4",
        "train.global_batch_size=4",
        "train.max_steps=2",
        "train.warmup_steps=1",
        "train.eval_interval=2",
        "train.eval_batches=1",
        "train.log_interval=1",
        "train.checkpoint_interval=2",
        "train.precision=fp32",
    )
    argv = [*args[2:], *[a for item in tiny for a in ("--set", item)]]
    assert pipeline_main(argv, only="pretrain") == 0  # jobs/pretrain.py's main, on the session's Ray
    continued = max(
        client.search_model_versions(f"name = '{REGISTERED_MODEL}'"), key=lambda v: int(v.version)
    )
    assert int(continued.version) == int(first) + 1
    run = client.get_run(continued.run_id)
    assert run.data.params["train.init_from"] == f"models:/{REGISTERED_MODEL}/latest"
    assert f"shards/{shards.id}" in {d.dataset.name for d in run.inputs.dataset_inputs}


# --- the lock -----------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_lock_stops_a_second_refresh_with_a_clear_message(tmp_path):
    ws = Workspace(str(tmp_path))
    with WorkspaceLock(ws, 3600):
        proc = subprocess.run(
            [sys.executable, "jobs/refresh_corpus.py", "--set", f"workspace={tmp_path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: another refresh holds the workspace lock")
        assert f"pid {os.getpid()}" in lines[0] and "host " in lines[0] and "started " in lines[0]
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    ws = Workspace(str(tmp_path))
    warnings = []
    lock_path = tmp_path / LOCK_FILE
    lock_path.parent.mkdir(parents=True)

    def plant(**owner):
        lock_path.write_text(json.dumps({**asdict(Owner.me()), **owner}))

    plant(pid=dead_pid())  # its holder is gone from this host
    with WorkspaceLock(ws, 3600, warn=warnings.append) as lock:
        assert lock.read().pid == os.getpid()
    assert "is not running on this host" in warnings[-1] and not lock_path.exists()

    plant(host="elsewhere", pid=1, heartbeat=time.time() - 7200)  # another host's holder, silent for 2 h
    with WorkspaceLock(ws, 3600, warn=warnings.append):
        pass
    assert "no heartbeat for 7200s" in warnings[-1]

    plant(host="elsewhere", pid=1)  # another host's holder, alive
    with pytest.raises(UserError, match="host elsewhere, pid 1"):
        WorkspaceLock(ws, 3600).acquire()


def test_the_holder_keeps_its_lock_fresh_while_it_works(tmp_path):
    ws = Workspace(str(tmp_path))
    with WorkspaceLock(ws, 1) as lock:
        first = lock.read().heartbeat
        time.sleep(1.5)  # longer than lock_stale_seconds: only the heartbeat keeps the lock
        assert lock.read().heartbeat > first
        with pytest.raises(UserError, match="another refresh holds"):
            WorkspaceLock(ws, 1).acquire()
