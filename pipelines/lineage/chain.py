"""A model's chain, from the registry and the manifests only (no document is read):

    model version -> its MLflow run -> (a fine-tuned model: its parent model, the same way)
    -> shards -> tokenizer -> corpus version -> its refresh parents -> their input files, with counts

A model is named as `models:/NAME@ALIAS`, `models:/NAME/VERSION`, or its directory (a path or URI,
`<workspace>/models/<run>`). A registered version names its directory in the tag `output` (set at
registration); the directory's manifest.json names its inputs relative to the workspace, which is
the directory's URI less the manifest's `output`.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

from pipelines.core.manifest import read_manifest
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError
from pipelines.refresh.lineage import Version, chain
from pipelines.registry.models import OUTPUT_TAG


@dataclass(frozen=True)
class Model:
    """A model directory and its manifest, with its registry version when it was named by one."""

    ws: Workspace
    dir: str  # workspace-relative
    manifest: dict[str, Any]
    registered: dict[str, Any] | None = None


def resolve(target: str) -> Model:
    if target.startswith("models:/"):
        version = _version(target)
        output = version.tags.get(OUTPUT_TAG)
        if not output:
            raise UserError(
                f"{target}: version {version.version} has no {OUTPUT_TAG!r} tag; name its model directory"
            )
        model = _directory(output, target)
    else:
        model = _directory(target if "://" in target else os.path.abspath(target), target)
        registered = model.manifest.get("registered_uri")
        version = _version(registered) if registered else None
    return Model(model.ws, model.dir, model.manifest, version and _registered(version))


def _version(uri: str):
    """The registry's ModelVersion named by models:/NAME@ALIAS or models:/NAME/VERSION."""
    import mlflow
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    name, at, alias = body.partition("@")
    if not at:
        name, _, number = body.partition("/")
    client = mlflow.MlflowClient()
    try:
        return (
            client.get_model_version_by_alias(name, alias) if at else client.get_model_version(name, number)
        )
    except MlflowException as exc:
        raise UserError(
            f"{uri}: no such model version in {mlflow.get_tracking_uri()} ({exc.error_code})"
        ) from None


def _registered(version) -> dict[str, Any]:
    import mlflow

    aliases = mlflow.MlflowClient().get_registered_model(version.name).aliases  # {alias: version}
    return {
        "name": version.name,
        "version": str(version.version),
        "uri": f"models:/{version.name}/{version.version}",
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(version.version)),
        "run_id": version.run_id,
        "gate": {k.removeprefix("gate."): v for k, v in version.tags.items() if k.startswith("gate.")},
    }


def _directory(uri: str, named: str) -> Model:
    uri = uri.rstrip("/")
    manifest = read_manifest(Workspace(uri, key="model"), "")
    if manifest is None or "output" not in manifest:
        raise UserError(f"{named}: {uri} holds no published model (no manifest.json)")
    out = manifest["output"]
    if not uri.endswith("/" + out):
        raise UserError(f"{named}: {uri} is not where its manifest says it was published ({out})")
    return Model(Workspace(uri[: -len(out) - 1]), out, manifest)


def model_lineage(model: Model) -> dict[str, Any]:
    """The chain as a JSON-able dict (what --json prints)."""
    m = model.manifest
    out: dict[str, Any] = {
        "model": {
            "dir": model.ws.full_uri(model.dir),
            "stage": m.get("stage"),
            "steps": m.get("steps"),
            "val": m.get("val"),
            "registered": model.registered,
        },
        "run": _run(m.get("mlflow_run_id")),
        "workspace": model.ws.full_uri(),
    }
    parent = (m.get("lineage") or {}).get("parent_model_uri")
    if parent:  # fine-tuned: the model it started from, followed the same way
        out["parent_model"] = model_lineage(resolve(parent))
        out["data"] = m.get("data")
    inputs = m.get("inputs", {})
    if "shards" in inputs:
        out.update(data_lineage(model.ws, inputs["shards"]["dir"]))
    return out


def data_lineage(ws: Workspace, shards_dir: str) -> dict[str, Any]:
    shards = _published(ws, shards_dir, "shards")
    tokenizer_dir = shards["inputs"]["tokenizer"]["dir"]
    tokenizer = _published(ws, tokenizer_dir, "tokenizer")
    corpus_dir = shards["inputs"]["corpus"]["dir"]
    versions = chain(ws, Version(corpus_dir, _published(ws, corpus_dir, "corpus")))
    return {
        "shards": {
            "dir": ws.full_uri(shards_dir),
            "splits": {s: {k: v[k] for k in ("docs", "tokens")} for s, v in shards["splits"].items()},
        },
        "tokenizer": {
            "dir": ws.full_uri(tokenizer_dir),
            "sha256": tokenizer["tokenizer"]["sha256"],
            "model_type": tokenizer["tokenizer"]["model_type"],
            "vocab_size": shards["tokenizer"]["vocab_size"],
        },
        "corpus": [_corpus_version(ws, v) for v in versions],
    }


def _corpus_version(ws: Workspace, version: Version) -> dict[str, Any]:
    stats = version.manifest.get("stats", {})
    by_source = stats.get("by_source", {})
    files = [
        {
            "uri": f["uri"],
            "source": f["source"],
            "sha256": f["sha256"],
            **by_source.get(f["source"], {"records": None, "kept": None}),
        }
        for f in version.manifest.get("input_files", [])
    ]
    return {
        "dir": ws.full_uri(version.dir),
        "version": version.id,
        "generation": version.generation,
        "parent": version.parent_dir and ws.full_uri(version.parent_dir),
        "input_docs": stats.get("input_docs"),
        "kept_docs": version.manifest.get("kept_docs"),
        "dropped": stats.get("dropped", {}),
        "input_files": files,
    }


def _published(ws: Workspace, rel: str, stage: str) -> dict[str, Any]:
    manifest = read_manifest(ws, rel)
    if manifest is None or manifest.get("stage") != stage:
        raise UserError(f"the {stage} output {ws.full_uri(rel)} the model names is not published any more")
    return manifest


def _run(run_id: str | None) -> dict[str, Any] | None:
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return {"id": run_id, "missing": True}
    return {
        "id": run_id,
        "name": run.info.run_name,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "status": run.info.status,
    }


def render(lineage: dict[str, Any], indent: str = "") -> list[str]:
    """A person's lines, one per link of the chain."""
    model, run = lineage["model"], lineage["run"]
    reg = model["registered"]
    named = (
        f"{reg['uri']}{' @' + ', @'.join(reg['aliases']) if reg['aliases'] else ''}"
        if reg
        else "not registered"
    )
    val = model.get("val") or {}
    lines = [
        f"{indent}model      {named}: {model['stage']}, {model['steps']} steps, val {val.get('bits_per_byte', float('nan')):.4f} bpb, {model['dir']}"
    ]
    gate = (reg or {}).get("gate") or {}
    if gate.get("decision"):
        measured = f" (contamination {float(gate['contamination']):.1%})" if "contamination" in gate else ""
        lines.append(f"{indent}gate       {gate['decision']}{measured}")
    if run:
        lines.append(
            f"{indent}run        {run['id']} ({run.get('name')}) in experiment {run.get('experiment')!r}, {run.get('status')}"
        )
    if "parent_model" in lineage:
        data = lineage.get("data") or {}
        lines.append(f"{indent}data       {data.get('uri', data)}")
        lines.append(f"{indent}started from:")
        lines += render(lineage["parent_model"], indent + "  ")
    if "shards" in lineage:
        lines += _render_data(lineage, indent)
    return lines


def _render_data(lineage: dict[str, Any], indent: str) -> list[str]:
    shards, tok = lineage["shards"], lineage["tokenizer"]
    splits = ", ".join(f"{s} {v['tokens']:,} tokens ({v['docs']} docs)" for s, v in shards["splits"].items())
    lines = [
        f"{indent}shards     {shards['dir']}: {splits}",
        f"{indent}tokenizer  {tok['dir']}: {tok['model_type']}, vocab {tok['vocab_size']}, sha256 {tok['sha256'][:12]}",
    ]
    for version in lineage["corpus"]:
        parent = f", parent {posixpath.basename(version['parent'])}" if version["parent"] else ""
        lines.append(
            f"{indent}corpus     {version['dir']} (generation {version['generation']}{parent}): "
            f"kept {version['kept_docs']} of {version['input_docs']} documents"
        )
        for f in version["input_files"]:
            counts = f"{f['records']} records, {f['kept']} kept, " if f.get("records") is not None else ""
            lines.append(f"{indent}  input    {f['uri']}: {counts}sha256 {f['sha256'][:12]}")
    return lines
