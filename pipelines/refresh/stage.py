"""Incremental corpus refresh: process only the input files the corpus has not seen yet.

    python jobs/refresh_corpus.py --config F [--set corpus.inputs='[...]'] [--set refresh.parent=ID]

1. Under the workspace lock (lock.py), take the current corpus version (lineage.py:
   the newest of the lineage, or `refresh.parent`) and resolve `corpus.inputs`. A file is processed
   when a version of the chain recorded its URI with its sha256 (size + mtime match: not re-hashed).
2. Nothing new: do nothing and say so (exit 0).
3. Otherwise run only the new files through the corpus build, deduplicated against each other and
   against the current version's index/ (exact hashes, MinHash bands, the same verification of
   candidate pairs), never reading its documents; publish a new corpus version that names its
   parent (version.py), then shards that extend the parent's shards with the new
   documents, tokenized with the same tokenizer (shards.py).
4. Log the refresh to MLflow (a run "refresh": parent and new version, new files, counts, datasets).

Crash safety: nothing of the current version is ever written, and a new version or shards directory
is usable only once its manifest exists (written last). A rerun rebuilds an unpublished version from
scratch in the same directory, and builds the shards of a published version that has none.

The kept documents equal those of a one-shot corpus build over all inputs, with two deterministic
differences, both because an older version is never revisited:
  - In a cluster of duplicates that spans versions, the copy in the earliest version is kept (a
    one-shot build keeps the smallest id in the cluster, which may be a later copy's).
  - Only kept documents are indexed, so a new document that is a near-duplicate of a document an
    earlier version dropped, but not of that one's keeper, is kept (a one-shot build would link
    them through the dropped one). Exact duplicates are unaffected: copies have the keeper's hash.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.config import Config, section_dict
from pipelines.core.workspace import Workspace
from pipelines.refresh.lineage import Version, chain, current_version, shards_of, survey_inputs
from pipelines.runtime.console import say


@dataclass
class RefreshResult:
    status: str  # "nothing_new" | "refreshed" | "completed" (shards of an earlier refresh) | "dry_run"
    corpus: Version  # the current version after the refresh
    shards: Version | None  # its shards (None when no shards were ever built in its chain)
    parent: Version | None = None  # the version refreshed, when a new one was built
    new_files: list[str] = field(default_factory=list)
    processed_files: int = 0


def refresh(
    cfg: Config, log: Callable[[str], None] = say, dry_run: bool = False, config_path: str | None = None
) -> RefreshResult:
    from pipelines.refresh.lock import WorkspaceLock

    ws = Workspace(cfg.workspace)
    if dry_run:
        return _refresh(cfg, ws, log, dry_run=True)
    with WorkspaceLock(ws, cfg.refresh.lock_stale_seconds):
        result = _refresh(cfg, ws, log)
    if result.shards is not None:
        log(f"[refresh] shards: {ws.full_uri(result.shards.dir)}")
        log(
            "[refresh] continue pretraining on them with:\n  "
            + pretrain_command(cfg, ws, result, config_path)
        )
    return result


def pretrain_command(cfg: Config, ws: Workspace, result: RefreshResult, config_path: str | None) -> str:
    args = ["python", "jobs/pretrain.py"]
    if config_path:
        args += ["--config", config_path]
    args += ["--set", f"workspace={cfg.workspace}"] if cfg.workspace != "./workspace" else []
    args += ["--set", f"train.shards={ws.full_uri(result.shards.dir)}"]
    # MLflow reserves the alias "latest": models:/<name>/latest is the newest registered version.
    args += ["--set", f"train.init_from=models:/{cfg.mlflow.registered_model}/latest"]
    return shlex.join(args)


def _refresh(cfg: Config, ws: Workspace, log: Callable[[str], None], dry_run: bool = False) -> RefreshResult:
    from pipelines.corpus.stage import resolve_inputs

    parent = current_version(ws, cfg)
    versions = chain(ws, parent)
    survey = survey_inputs(resolve_inputs(cfg, ws, log), versions, lambda uris: hash_files(cfg, uris))
    base_shards, unsharded = shards_to_complete(ws, versions)
    log(
        f"[refresh] corpus version {parent.id} (generation {parent.generation}): "
        f"{survey.processed} input files processed, {len(survey.new)} new"
    )
    if dry_run:
        for f in survey.new:
            log(f"  new: {f.uri} ({f.size} bytes)")
        for v in unsharded:
            log(f"  shards to build for corpus version {v.id}")
        return RefreshResult(
            "dry_run", parent, base_shards, None, [f.uri for f in survey.new], survey.processed
        )
    if not survey.new and not unsharded:
        log(f"[refresh] nothing new: corpus version {parent.id} is current; nothing was written")
        return RefreshResult("nothing_new", parent, base_shards, None, [], survey.processed)
    if base_shards is None:
        log(
            f"[refresh] no shards were built from corpus version {versions[-1].id} or a later version of "
            "its chain, so none are built now; the corpus version is refreshed alone"
        )

    from pipelines.refresh.shards import extend_shards
    from pipelines.refresh.version import build_version
    from pipelines.runtime import tracking
    from pipelines.runtime.ray import init_ray

    tracking.configure(cfg, ws)
    started = time.perf_counter()
    with tracking.run("refresh", tags={"refresh.parent": parent.id}):
        tracking.log_params({s: section_dict(cfg, s) for s in ("refresh", "corpus")})
        init_ray(cfg)
        shards = base_shards
        for version in unsharded:  # published by a refresh that stopped before its shards
            shards = extend_shards(ws, cfg, shards, version, log)
        corpus, status = parent, "completed"
        if survey.new:
            log(f"[refresh] processing {len(survey.new)} new files against corpus version {parent.id}")
            corpus = build_version(ws, cfg, parent, survey.new, survey.digests, log)
            if shards is not None:
                shards = extend_shards(ws, cfg, shards, corpus, log)
            status = "refreshed"
        result = RefreshResult(status, corpus, shards, parent, [f.uri for f in survey.new], survey.processed)
        log_refresh(ws, result, time.perf_counter() - started, log)
    return result


def shards_to_complete(ws: Workspace, versions: list[Version]) -> tuple[Version | None, list[Version]]:
    """(the newest shards in the chain, the versions after it that have none, oldest first). No
    shards anywhere in the chain: (None, []) - building the first shards is the shards stage's job."""
    for depth, version in enumerate(versions):
        shards = shards_of(ws, version.dir)
        if shards is not None:
            return shards, versions[:depth][::-1]
    return None, []


def hash_files(cfg: Config, uris: list[str]) -> list[str]:
    import ray

    from pipelines.corpus.build import sha256_refs
    from pipelines.runtime.ray import init_ray

    init_ray(cfg)
    return ray.get(sha256_refs(uris))


def log_refresh(ws: Workspace, result: RefreshResult, seconds: float, log: Callable[[str], None]) -> None:
    """Lineage and counts on the active MLflow run; the summary to the job log."""
    import mlflow

    from pipelines.runtime import tracking

    corpus, shards = result.corpus, result.shards
    increment = corpus.manifest.get("refresh", {}).get("stats", {}) if result.status == "refreshed" else {}
    metrics = {
        "new_files": len(result.new_files),
        "processed_files": result.processed_files,
        "kept_docs": corpus.manifest["kept_docs"],
        "seconds": seconds,
        **tracking.numeric_metrics(
            {k: increment[k] for k in ("input_docs", "kept_docs", "dropped") if k in increment}, "new."
        ),
    }
    if shards is not None:
        metrics["tokens"] = sum(s["tokens"] for s in shards.manifest["splits"].values())
        metrics["new_tokens"] = shards.manifest.get("refresh", {}).get("new_tokens", 0)
    mlflow.log_metrics(metrics)
    mlflow.set_tags(
        {
            "refresh.status": result.status,
            "refresh.version": corpus.id,
            "refresh.shards": shards.id if shards else "",
        }
    )
    mlflow.log_input(dataset(ws, result.parent, "data"), context="refresh_parent")
    mlflow.log_input(dataset(ws, corpus, "data"), context="refresh_output")
    if shards is not None:
        mlflow.log_input(dataset(ws, shards), context="refresh_shards")
    tracking.log_dict(
        {
            "status": result.status,
            "parent": {"version": result.parent.id, "dir": result.parent.dir},
            "version": {"version": corpus.id, "dir": corpus.dir, "generation": corpus.generation},
            "shards": shards.dir if shards else None,
            "new_files": result.new_files,
            "new": increment,
        },
        "refresh.json",
    )
    new = increment.get("kept_docs", 0)
    log(
        f"[refresh] corpus version {corpus.id} (parent {result.parent.id}): {len(result.new_files)} new files, "
        f"+{new} kept documents, {corpus.manifest['kept_docs']} in all"
    )


def dataset(ws: Workspace, version: Version, sub: str = ""):
    """A published corpus version or shards as an MLflow dataset: named by its directory, with the
    digest of its manifest, its source the directory (or its `sub` directory)."""
    from pipelines.core.manifest import manifest_digest
    from pipelines.runtime import tracking

    uri = ws.full_uri(f"{version.dir}/{sub}".rstrip("/"))
    return tracking.meta_dataset(uri, version.dir, manifest_digest(version.manifest))
