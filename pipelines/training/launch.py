"""Launching a training run on Ray Train V2, shared by pretraining and fine-tuning.

prepare()  checks DeepSpeed options and what the cluster can place, names the run stably
           (`<loop>.run_name`, or `<stage>-<fingerprint[:12]>`) with storage
           `<workspace>/checkpoints/`, refuses to resume checkpoints of another model shape or
           tokenizer (another layout reshards, and is logged), and picks the MLflow run that
           continues the curves;
train()    runs the TorchTrainer (FailureConfig restarts lost workers from the last checkpoint, on
           fewer workers when `num_workers` is an elastic [min, max]) -
           or nothing, when the run's last checkpoint is already the finished one;
then publish.py's publish() puts the model into the workspace, MLflow and the registry.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.config import LoopConfig
from pipelines.core.cache import DirRef
from pipelines.core.workflow import StageContext
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError, user_error_in

if TYPE_CHECKING:
    from pipelines.training.engine import LoopSpec

CHECKPOINTS = "checkpoints"
RUN_RECORD = "run.json"  # next to Ray Train's files in checkpoints/<run>/: what the run was started with
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# What must not change when a run resumes from its checkpoints: the model's shape and its tokenizer.
# The rest may (checkpoints reshard to any number of workers and ZeRO stage); a change is logged.
RESUME_KEYS = ("gpt", "tokenizer_sha256")
LAYOUT_KEYS = ("num_workers", "zero_stage", "micro_batch_size", "global_batch_size")


def run_name(loop: LoopConfig, stage: str, fingerprint: str) -> str:
    """Stable across resubmissions of the same config, so Ray Train finds the run's checkpoints."""
    return loop.run_name or f"{stage}-{fingerprint[:12]}"


def run_rel(ctx: StageContext, loop: LoopConfig) -> str:
    """The run's directory in the workspace: Ray Train's storage for it, and the run's own files."""
    return f"{CHECKPOINTS}/{run_name(loop, ctx.stage, ctx.fingerprint)}"


# --- the run's past: checkpoints and record ------------------------------------------------------
def latest_checkpoint(ws: Workspace, rel: str) -> tuple[Any, int] | None:
    """(Ray Checkpoint, its step) of the run's latest checkpoint, or None when it has none."""
    from ray.train import Result

    if not ws.exists(f"{rel}/checkpoint_manager_snapshot.json"):
        return None
    try:
        result = Result.from_path(ws.path(rel), storage_filesystem=ws.fs)
    except RuntimeError:
        return None
    if result.checkpoint is None or not result.metrics:
        return None
    return result.checkpoint, int(result.metrics["step"])


def check_resumable(record: dict | None, current: dict, run: str, section: str) -> dict[str, tuple]:
    """Refuse a resume with another model shape or tokenizer; return the layout keys that changed,
    {key: (before, now)}."""
    changed = [k for k in RESUME_KEYS if record is not None and record.get(k) != current.get(k)]
    if changed:
        raise UserError(
            f"config key '{section}.run_name': run {run!r} has checkpoints of another "
            f"{' and '.join(_RESUME_NAMES[k] for k in changed)}; choose a new {section}.run_name "
            "or restore those settings"
        )
    before = record or {}
    return {k: (before[k], current[k]) for k in LAYOUT_KEYS if k in before and before[k] != current[k]}


_RESUME_NAMES = {"gpt": "model shape", "tokenizer_sha256": "tokenizer"}


def training_run_id(record: dict | None, resuming: bool, stage_run_id: str | None) -> str | None:
    """The MLflow run that holds the training curves: the run's own when it resumes (and that run
    still exists on this tracking server), else this stage's run."""
    previous = (record or {}).get("mlflow_run_id")
    if not resuming or not previous or previous == stage_run_id:
        return stage_run_id
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient().get_run(previous)
    except MlflowException:
        return stage_run_id
    return previous


# --- launch --------------------------------------------------------------------------------------
@dataclass
class Launch:
    """A training run ready to start: the loop's spec, where its checkpoints live, where it stands."""

    spec: LoopSpec
    name: str
    ws: Workspace
    rel: str  # checkpoints/<run> in the workspace
    latest: tuple[Any, int] | None  # (checkpoint, step) to resume from

    @property
    def finished(self) -> bool:
        """The last checkpoint is the final one and holds the consolidated model: nothing to train."""
        import pyarrow.fs as pafs

        from pipelines.training.engine import MODEL_DIR

        loop = self.spec.loop
        if self.latest is None or (loop.time_budget is None and self.latest[1] < loop.max_steps):
            return False  # (a run on a time budget ends at a step no config names)
        checkpoint = self.latest[0]
        info = checkpoint.filesystem.get_file_info(f"{checkpoint.path}/{MODEL_DIR}/config.json")
        return info.type == pafs.FileType.File


def prepare(
    ctx: StageContext,
    loop: LoopConfig,
    section: str,
    task: Any,
    gpt: dict,
    init_model: DirRef | None,
    dataset: tuple | None = None,
    **spec_options: Any,
) -> Launch:
    """Everything before the workers start: checks, run name, run record, MLflow run. `dataset`
    (an mlflow.data dataset, its tags) is logged as the run's training input when the run starts;
    `spec_options` are further LoopSpec fields (fine-tuning: lora, early_stop_patience)."""
    import mlflow

    from pipelines.core.faults import step_fault
    from pipelines.runtime import tracking
    from pipelines.training.deepspeed import check_combination
    from pipelines.training.engine import LoopSpec
    from pipelines.training.placement import check_cluster

    check_combination(loop, section)
    check_cluster(loop, section, log=ctx.log)
    name, rel = run_name(loop, ctx.stage, ctx.fingerprint), run_rel(ctx, loop)
    record_rel = f"{rel}/{RUN_RECORD}"
    record = ctx.ws.read_json(record_rel) if ctx.ws.exists(record_rel) else None
    current = {
        "gpt": gpt,
        "num_workers": loop.num_workers if isinstance(loop.num_workers, int) else list(loop.num_workers),
        "zero_stage": loop.zero_stage,
        "micro_batch_size": loop.micro_batch_size,
        "global_batch_size": loop.global_batch_size,
        "tokenizer_sha256": getattr(task, "tokenizer_sha256", None),
    }
    latest = latest_checkpoint(ctx.ws, rel)
    changes = check_resumable(record, current, name, section) if latest is not None else {}
    run_id = training_run_id(record, latest is not None, ctx.mlflow_run_id)
    ctx.ws.write_json(record_rel, {**current, "mlflow_run_id": run_id})
    if ctx.mlflow_run_id and run_id != ctx.mlflow_run_id:
        mlflow.set_tag("training_run_id", run_id)  # this stage run continues an earlier run's curves
    if changes:
        said = ", ".join(f"{section}.{k} {a} -> {b}" for k, (a, b) in changes.items())
        ctx.log(f"[{ctx.stage}] run {name!r} resumes with {said}")
        if run_id:
            mlflow.MlflowClient().set_tag(run_id, f"resumed.step_{latest[1]}", said)
    if dataset is not None and latest is None:
        mlflow.log_input(dataset[0], context="training", tags=dataset[1])  # lineage, once per run
    spec = LoopSpec(
        loop=loop,
        gpt=gpt,
        task=task,
        init_model_dir=init_model,
        compile=ctx.cfg.model.compile,
        tracking_uri=mlflow.get_tracking_uri(),
        mlflow_run_id=run_id,
        params=tracking.safe_params(ctx.cfg.model_dump(mode="json")),
        fault=step_fault(ctx.ws.full_uri(rel)),
        label=ctx.stage,
        section=section,
        async_upload=not ctx.ws.is_local,
        **spec_options,
    )
    where = f"resuming from the checkpoint of step {latest[1]}" if latest else "starting"
    ctx.log(f"[{ctx.stage}] run {name!r} {where}; checkpoints in {ctx.ws.full_uri(rel)}")
    return Launch(spec, name, ctx.ws, rel, latest)


def train(launch: Launch, log=print) -> tuple[dict[str, Any], Any]:
    """(rank 0's summary, the final checkpoint): train to max_steps or the time budget, unless that
    was done before."""
    if launch.finished:
        checkpoint, step = launch.latest
        log(f"[{launch.spec.label}] run {launch.name!r} finished at step {step} before: not training again")
        return {"start_step": step, "timing": {}}, checkpoint
    return fit(launch, log)


def fit(launch: Launch, log=print) -> tuple[dict[str, Any], Any]:
    """Run the TorchTrainer to the end. A worker-side UserError stays a one-line UserError; an error
    no restart can cure ends the run at once (training/failures.py), as a one-line RunFailed."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipelines.training.failures import trainer_class
    from pipelines.training.loop import train_worker
    from pipelines.training.placement import worker_resources
    from pipelines.training.preemption import torch_config

    loop = launch.spec.loop
    trainer = trainer_class()(
        train_worker,
        train_loop_config={"spec": launch.spec},
        torch_config=torch_config(),  # also installs each worker's SIGTERM handler
        scaling_config=ScalingConfig(
            num_workers=loop.num_workers,  # (min, max): Ray Train's elastic form
            use_gpu=loop.use_gpu,
            resources_per_worker=worker_resources(loop),
        ),
        run_config=RunConfig(
            name=launch.name,
            storage_path=launch.ws.path(CHECKPOINTS),
            storage_filesystem=None if launch.ws.is_local else launch.ws.fs,
            failure_config=FailureConfig(max_failures=loop.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=loop.keep_checkpoints),
        ),
    )
    # Ray Train's controller sees a finished, failed or restarted worker group at its next poll, and
    # its shutdown takes several: at the default 2 s a run's end costs ~4 s more than at 0.5 s.
    # (Ray Train propagates the variable from the driver to the controller; one set wins.)
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, "0.5")
    submitted = time.time()
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a worker's UserError or incurable error: one line
        cause = _one_line_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    summary = result.return_value
    if not summary or result.checkpoint is None:
        raise RuntimeError(f"training run {launch.name!r} ended without its final checkpoint")
    for path in summary.get("skipped_checkpoints", []):
        log(f"[{launch.spec.label}] warning: skipped the incomplete checkpoint {path} for the one before it")
    timing = summary["timing"]
    first_step = timing.pop("first_step_end", None)  # absent when nothing was left to train
    timing["submit_to_worker_s"] = timing.pop("worker_start") - submitted
    if first_step is not None:
        timing["submit_to_first_step_s"] = first_step - submitted
    timing["fit_s"] = time.time() - submitted
    return summary, result.checkpoint


def _one_line_cause(exc: BaseException) -> UserError | None:
    from pipelines.errors import RunFailed, causes
    from pipelines.training.failures import first_incurable, run_failed
    from pipelines.training.preemption import Preempted

    failures = getattr(exc, "worker_failures", {})
    for failure in failures.values():
        if found := user_error_in(failure):
            return found
    for failure in failures.values():
        preempted = next((e for e in causes(failure) if isinstance(e, Preempted)), None)
        if preempted is not None:
            return RunFailed(f"training was preempted: {preempted}; submit the job again to resume from it")
    found = first_incurable(failures)
    return run_failed(*found, tracebacks=str(exc)) if found else None
