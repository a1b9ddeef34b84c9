"""publish(): the finished run's model out of its final checkpoint into the stage's output dir,
into MLflow as a pyfunc model (the run with the curves and the data lineage), into the registry,
and through the champion gate; returns the manifest entries, with the time each phase took.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from pipelines.core.cache import DirRef
from pipelines.core.stopwatch import Stopwatch
from pipelines.core.workflow import StageContext
from pipelines.training.launch import Launch


def collect(checkpoint: Any, out_dir: Path) -> dict[str, Any]:
    """Copy the consolidated model out of the final checkpoint (only that: not the optimizer
    states) into a local directory; rank 0's final training state."""
    import json

    import pyarrow.fs as pafs

    from pipelines.training.checkpoint import rank_state_rel
    from pipelines.training.engine import MODEL_DIR

    fs, root = checkpoint.filesystem, checkpoint.path
    if fs.get_file_info(f"{root}/{MODEL_DIR}/config.json").type != pafs.FileType.File:
        raise RuntimeError(f"checkpoint {root} holds no consolidated model ({MODEL_DIR}/)")
    out_dir.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(f"{root}/{MODEL_DIR}", str(out_dir), source_filesystem=fs)
    with fs.open_input_stream(f"{root}/{rank_state_rel(0)}", compression=None) as f:
        return json.loads(f.read())


def publish(
    ctx: StageContext,
    launch: Launch,
    summary: dict,
    checkpoint: Any,
    gate: Any | None,
    tags: dict[str, str] | None = None,
    contamination: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model into models/<run>/, MLflow (training run), the registry (with `tags` on the new
    version, e.g. fine-tuning's lineage), and - with a registry.GateData - the champion gate, which
    also weighs `contamination` (lineage.contamination.gate_input's) when given."""
    from pipelines.core.cache import staging_dir

    watch = Stopwatch()
    model_dir = Path(staging_dir("model-"))
    try:
        with watch.phase("collect"):
            final = collect(checkpoint, model_dir)
        with watch.phase("upload"):
            files = ctx.ws.upload_dir(model_dir, ctx.out)  # files first; the runner writes the manifest last
        published = DirRef(ctx.ws.full_uri(ctx.out), files)
        result = _register(ctx, launch, model_dir, published, gate, tags, contamination, watch)
        # The manifest's checksums, from the local copy: the runner need not read the upload back.
        result["files"] = {
            n: {"bytes": (model_dir / n).stat().st_size, "sha256": h} for n, h in files.items()
        }
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return {
        **result,
        "run_name": launch.name,
        "checkpoints": launch.rel,
        "resumed_from_step": summary["start_step"],
        "skipped_checkpoints": summary.get("skipped_checkpoints", []),
        "steps": final["step"],
        "tokens": final["tokens"],
        "val": final["val"],
        "precision": final["precision"],
        "world_size": final["world_size"],
        "grad_accum_steps": final["grad_accum_steps"],
        "timing": {**{k: round(v, 3) for k, v in summary["timing"].items()}, **watch.seconds},
    }


def _register(
    ctx, launch: Launch, model_dir: Path, published: DirRef, gate, tags, contamination, watch
) -> dict:
    """Log the model (and the contamination figures) to the training run, register a version, run
    the gate on the published copy."""
    import mlflow

    from pipelines.registry import models as registry

    name = ctx.cfg.mlflow.registered_model
    # The gate's evaluation (a Ray task: a worker process, two models) runs while the model is
    # logged and registered here: the published files are all it needs.
    started = registry.start_gate(name, published, gate) if gate is not None else None
    run_id = launch.spec.mlflow_run_id
    active = mlflow.active_run()
    switch = active is None or active.info.run_id != run_id
    with (
        mlflow.start_run(run_id=run_id, nested=active is not None) if switch else contextlib.nullcontext(),
        watch.phase("log_model"),
    ):
        model_uri = registry.log_model(model_dir)
        if contamination is not None:
            mlflow.log_metrics(contamination_metrics(contamination["figures"]))
    tags = {
        "run_name": launch.name,
        "stage": ctx.stage,
        "mlflow_run_id": run_id or "",
        registry.OUTPUT_TAG: published.uri,  # its manifest.json is there once the stage is done
        **(tags or {}),
    }
    with watch.phase("register"):
        version = registry.register(model_uri, name, tags)
    with watch.phase("gate_wait"):  # what is left of the gate's evaluation, and its decision
        decision = (
            registry.champion_gate(name, version, published, gate, contamination, started)
            if gate is not None
            else None
        )
    ctx.log(
        f"[{ctx.stage}] registered {name} version {version} ({registry.latest_uri(name)}){_verdict(decision)}"
    )
    return {
        "mlflow_run_id": run_id,
        "model_uri": model_uri,
        "registered_model": name,
        "version": version,
        "registered_uri": f"models:/{name}/{version}",
        "champion": decision,
    }


def contamination_metrics(figures: dict[str, Any]) -> dict[str, float]:
    """MLflow metric names for lineage.contamination.measure's figures."""
    sets = {f"contamination.set.{name}": share for name, share in figures["sets"].items()}
    return {"contamination.val": figures["val"], "contamination.max": figures["max"], **sets}


def _verdict(decision: dict | None) -> str:
    if decision is None:
        return ""
    champion = "none" if decision["champion_bpb"] is None else f"{decision['champion_bpb']:.4f}"
    if decision["refused"]:
        return f"; champion not moved: {decision['refused']}"
    verdict = "is the new champion" if decision["promoted"] else "did not beat the champion"
    return f"; it {verdict} (val bpb {decision['candidate_bpb']:.4f} vs {champion})"
