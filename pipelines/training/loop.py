"""The per-worker training loop, shared by pretraining and fine-tuning: one copy, driven by a Task.

Each Ray Train worker builds the gpt2core model (fresh, or initialised from a model directory),
wraps it in a DeepSpeed engine (ZeRO 0-3, offload, precision, micro batch, gradient accumulation,
clipping: pipelines/training/deepspeed.py) that reuses Ray's process group, and trains with AdamW on
gpt2core's parameter groups and warmup + cosine learning rate. Every N steps it evaluates, every N
steps it checkpoints (pipelines/training/checkpoint.py) and reports to Ray Train; a restarted worker
resumes from `ray.train.get_checkpoint()` at exactly the next batch. Rank 0 logs to MLflow and
prints progress. At the last step all ranks gather the full fp32 weights (any ZeRO stage) and rank
0 puts the consolidated model directory into the final checkpoint, from which the launcher
publishes it; so a finished run never needs its workers again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipelines.core.cache import staging_dir
from pipelines.runtime.console import emit
from pipelines.training import preemption
from pipelines.training.budget import TimeBudget, budget_line, plan_for
from pipelines.training.checkpoint import TrainState
from pipelines.training.collectives import agree, everyone, rank0_says
from pipelines.training.engine import (
    MODEL_DIR,
    LoopSpec,
    consolidated_weights,
    evaluate_engine,
    make_engine,
    train_step,
    write_model,
)
from pipelines.training.metrics import MetricsLog, Progress, memory_mb
from pipelines.training.prefetch import prefetched

METRIC_KEYS = (
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "memory_mb",
    "tokens",
    "data_digest",
)
EVAL_KEYS = ("val_loss", "val_ppl", "val_bpb")
WARMUP_STEPS = 3  # steps after a (re)start that the steady-state timing leaves out
KEEP_STEP_TIMES = 2000  # per-step seconds returned to the launcher (benchmarks take their median)


# --- the loop ------------------------------------------------------------------------------------
def train_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train's train_loop_per_worker: config = {"spec": LoopSpec}. Returns rank 0's timings; the
    results (consolidated model, final state) are in the run's last checkpoint."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    return Worker(config["spec"], rank, world_size, ray.train.torch.get_device()).run()


class Worker:
    def __init__(self, spec: LoopSpec, rank: int, world_size: int, device):
        self.spec, self.loop, self.rank, self.world_size, self.device = (
            spec,
            spec.loop,
            rank,
            world_size,
            device,
        )
        self.block_size = spec.gpt["block_size"]
        self.tokens_per_step = self.loop.global_batch_size * self.block_size
        self.timing: dict[str, float] = {"worker_start": time.time()}
        self.last_eval: dict[str, Any] | None = None
        self.step_metrics: dict[str, float] = {}
        self.step_seconds: list[float] = []
        self.state = TrainState()  # replaced by the fresh or restored state in run()
        self.resumed_layout: tuple[int, int] | None = None  # (workers, ZeRO stage) of the checkpoint resumed
        self.skipped: list[str] = []  # incomplete checkpoints passed over for an older one

    def run(self) -> dict[str, Any] | None:
        started = time.perf_counter()
        spec, loop, rank = self.spec, self.loop, self.rank
        self.engine, choice = make_engine(spec, self.world_size, self.device)
        self.precision, self.precision_reason = choice.precision, choice.reason
        if rank == 0 and loop.precision == "auto":  # it may differ between machines: say which
            emit(f"[{spec.label}] precision {self.precision} ({choice.reason})")
        self.timing["engine_s"] = time.perf_counter() - started
        self.timing["torch_threads"] = _torch_threads()
        source = spec.task.train_source(rank, self.world_size, self.block_size, loop.seed)
        self.source = prefetched(source, self.device, loop.micro_batch_size)
        self.tokens_per_byte = spec.task.eval_tokens_per_byte()
        state, resumed = self._restore()
        self.state = state  # evaluations record early stopping in it, checkpoints save it
        self.plan = plan_for(loop, state.train_seconds, started)  # when to stop; the rate
        start_step = state.step
        tick = time.perf_counter()
        self.metrics = self._metrics_log(state, fresh=not resumed) if rank == 0 else _NoMetrics()
        self.timing["mlflow_setup_s"] = time.perf_counter() - tick
        self._record_layout(state.step)
        if not resumed:
            self._eval_and_log(state.step)  # the starting point of the val curve
        self.timing["setup_s"] = time.perf_counter() - started - self.timing.get("eval_s", 0.0)
        if not rank0_says(self.plan.done(state.step), self.device) and not self._stop_early():
            self._train(state, start_step)
        else:  # finished (or stopped early) before, but its last checkpoint lacks the model: write it now
            self._checkpoint(state, final=True)
        self.timing["worker_s"] = time.perf_counter() - started
        if rank == 0 and isinstance(self.plan, TimeBudget):
            emit(f"[{spec.label}] {budget_line(self.plan, self.timing)}")
        if rank != 0:
            return None
        return {
            "start_step": start_step,
            "skipped_checkpoints": self.skipped,
            "precision": self.precision,
            "last_eval": self.last_eval,
            "timing": self.timing,
            "step_seconds": self.step_seconds,
        }

    def _restore(self) -> tuple[TrainState, bool]:
        """(state, resumed): from the run's newest complete checkpoint, when it has one. An
        incomplete one (a part missing or unreadable) is skipped, with a warning naming it."""
        from pipelines.errors import UserError
        from pipelines.training import checkpoint as train_checkpoint

        candidates = _checkpoints_newest_first()
        for checkpoint in candidates:
            with checkpoint.as_directory() as directory:
                try:
                    train_checkpoint.check_complete(directory)
                    problem = None
                except train_checkpoint.IncompleteCheckpoint as exc:
                    problem = str(exc)
                if everyone(problem is None, self.device):  # the ranks load the same checkpoint
                    state, saved = train_checkpoint.restore(self.engine, directory, self.rank, self.source)
                    break
            self.skipped.append(checkpoint.path)
            if self.rank == 0:
                why = problem or "incomplete on another rank"
                emit(f"[{self.spec.label}] warning: skipping checkpoint {checkpoint.path}: {why}")
        else:
            if candidates:
                raise UserError(
                    f"config key '{self.spec.section}.run_name': run has no complete checkpoint to resume "
                    f"(newest: {candidates[0].path}); choose a new {self.spec.section}.run_name"
                )
            return TrainState(mlflow_run_id=self.spec.mlflow_run_id), False
        self.last_eval = saved.get("val")
        self.resumed_layout = (saved["world_size"], saved["zero_stage"])
        state.mlflow_run_id = self.spec.mlflow_run_id  # the launcher decides which run continues
        if self.rank == 0:
            change = self._layout_change()
            resharded = f", resharded {change}" if change else ""
            emit(f"[{self.spec.label}] resumed from the checkpoint of step {state.step}{resharded}")
        return state, True

    def _layout_change(self) -> str:
        """How this layout differs from the resumed checkpoint's ('' when it does not, or fresh)."""
        if self.resumed_layout is None or self.resumed_layout == (self.world_size, self.loop.zero_stage):
            return ""
        workers, stage = self.resumed_layout
        accum = self.engine.gradient_accumulation_steps()
        return (
            f"from {workers} workers at ZeRO {stage} to {self.world_size} at ZeRO "
            f"{self.loop.zero_stage} (gradient accumulation {accum})"
        )

    def _train(self, state: TrainState, start_step: int) -> None:
        from gpt2core.config import GPTConfig
        from gpt2core.flops import flops_per_token

        loop, rank = self.loop, self.rank
        flops = flops_per_token(GPTConfig.from_dict(self.spec.gpt), self.block_size)
        peak = self._peak_flops() if rank == 0 else None
        plan = self.plan
        progress = Progress(plan.total_steps, start_step, self.spec.label)
        preemption.training_from(state.step)
        drained = False  # a drain notice checkpoints once; the run trains on until Ray restarts it
        stop, share = False, plan.progress(state.step)
        while not stop and not self._stop_early():
            tick = time.perf_counter()
            lr = plan.lr(state.step, share)
            loss, norm, digest = train_step(self.engine, self.source, loop.micro_batch_size, lr, self.device)
            state.step += 1
            state.tokens += self.tokens_per_step
            self._time_step(time.perf_counter() - tick, state.step - start_step)
            if self.spec.fault is not None:
                self.spec.fault.maybe_fire(state.step, rank, preemption.wait_for_sigterm)
            verdict = (plan.done(state.step), plan.progress(state.step)) if rank == 0 else (False, 0.0)
            notice, digest, stop, share = agree(
                preemption.step_done(state.step), digest, self.device, *verdict
            )
            if rank == 0:
                speed = self.tokens_per_step / (time.perf_counter() - tick)
                self.step_metrics = {"loss": loss, "lr": lr, "tokens_per_s": speed}
                if peak:
                    self.step_metrics["mfu"] = speed * flops / (peak * self.world_size)
                extra = {
                    "grad_norm": norm,
                    "memory_mb": memory_mb(self.device),
                    "tokens": state.tokens,
                    "data_digest": digest,  # which windows this step saw: equal across layouts
                }
                self.metrics.log(state.step, {**self.step_metrics, **extra})
            evaluated = state.step % loop.eval_interval == 0 or stop
            if evaluated:
                self._eval_and_log(state.step)
            last = stop or self._stop_early()
            if rank == 0 and last and not stop:
                emit(f"[{self.spec.label}] early stop at step {state.step}: val loss did not improve")
            if rank == 0 and (state.step % loop.log_interval == 0 or evaluated):
                progress.max_steps = plan.total_steps if not last else state.step
                progress.report(state.step, {**self.step_metrics, **self._eval_metrics(evaluated)})
                self.metrics.flush()
            preempted = notice == preemption.TERMINATING or (notice == preemption.DRAINING and not drained)
            if state.step % loop.checkpoint_interval == 0 or last or preempted:
                self._checkpoint(state, final=last)
            if preempted and rank == 0:
                why = "a worker got SIGTERM" if notice == preemption.TERMINATING else "a node is draining"
                emit(f"[{self.spec.label}] {why}: checkpointed at step {state.step}")
            drained = drained or notice == preemption.DRAINING
            if notice == preemption.TERMINATING and not last:
                raise preemption.Preempted.at(state.step)

    def _time_step(self, seconds: float, steps_done: int) -> None:
        """Step timings for throughput: the first steps (warm-up: allocator, thread pools) apart."""
        self.timing.setdefault("first_step_end", time.time())
        self.timing["steps_s"] = self.timing.get("steps_s", 0.0) + seconds
        self.plan.step_took(seconds)
        if steps_done > WARMUP_STEPS:
            self.timing["steady_steps"] = self.timing.get("steady_steps", 0) + 1
            self.timing["steady_step_s"] = self.timing.get("steady_step_s", 0.0) + seconds
            if len(self.step_seconds) < KEEP_STEP_TIMES:
                self.step_seconds.append(seconds)

    def _eval_and_log(self, step: int) -> None:
        tick = time.perf_counter()
        result = evaluate_engine(
            self.engine, self.spec, self.rank, self.world_size, self.device, self.tokens_per_byte
        )
        seconds = time.perf_counter() - tick
        self.timing["eval_s"] = self.timing.get("eval_s", 0.0) + seconds
        if hasattr(self, "plan"):
            self.plan.evaluated(seconds)
        self.last_eval = {"step": step, **result.as_dict()}
        self.state.record_eval(result.loss)  # the same all-reduced loss on every rank
        self.metrics.log(step, result.metrics())
        if self.rank == 0 and step == 0:
            emit(f"[{self.spec.label}] step 0 {result.summary()}")
            self.metrics.flush()

    def _eval_metrics(self, current: bool = True) -> dict[str, float]:
        from gpt2core.evaluate import EvalResult

        if not (current and self.last_eval):
            return {}
        return EvalResult(**{k: v for k, v in self.last_eval.items() if k != "step"}).metrics()

    def _stop_early(self) -> bool:
        return self.state.stalled(self.spec.early_stop_patience)

    def _checkpoint(self, state: TrainState, final: bool) -> None:
        """Collective. The final checkpoint also holds the consolidated model (rank 0's part)."""
        import ray.train

        from pipelines.training import checkpoint as train_checkpoint

        tick = time.perf_counter()
        state.train_seconds = self.plan.clock()  # a resumed run's budget goes on from here
        extra = {
            "val": self.last_eval,
            "world_size": self.world_size,
            "precision": self.precision,
            "grad_accum_steps": self.engine.gradient_accumulation_steps(),
            "node_id": _node_id(),
            "sigterm_during_step": preemption.signalled_during(),
        }
        # A local staging directory that Ray Train deletes once the checkpoint is in storage.
        directory = staging_dir("ckpt-")
        train_checkpoint.save(self.engine, directory, self.rank, self.world_size, state, self.source, extra)
        if final:
            # every rank: gathers partitions
            weights = consolidated_weights(self.engine, self.spec, self.rank)
            if self.rank == 0:
                emit(f"[{self.spec.label}] consolidated the weights (ZeRO stage {self.loop.zero_stage})")
                write_model(weights, self.spec, Path(directory) / MODEL_DIR)
        self.metrics.flush()  # every step up to the checkpoint is in MLflow before it counts
        fresh_eval = self.last_eval is not None and self.last_eval["step"] == state.step  # not stale
        metrics = {"step": state.step, "tokens": state.tokens, **self._eval_metrics(fresh_eval)}
        # The final checkpoint holds the model the launcher publishes: it is in storage when fit ends.
        mode = "ASYNC" if self.spec.async_upload and not final else "SYNC"
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_upload_mode=ray.train.CheckpointUploadMode[mode],
            delete_local_checkpoint_after_upload=True,
        )
        kind = "final_checkpoint" if final else "checkpoint"  # the final one also consolidates
        seconds = time.perf_counter() - tick
        self.timing[f"{kind}_s"] = self.timing.get(f"{kind}_s", 0.0) + seconds
        if not final:
            self.plan.checkpointed(seconds)
        self.timing[f"{kind}s"] = self.timing.get(f"{kind}s", 0) + 1

    def _record_layout(self, step: int) -> None:
        """Every (re)start's world size into MLflow: a `restart_world_size` metric history over the steps
        (an elastic run that grows before its first checkpoint restarts at step 0 again), and a tag
        for each change of layout at a resume."""
        self.metrics.log_event(step, "restart_world_size", self.world_size)
        change = self._layout_change()
        if change:
            self.metrics.set_tag(f"resharded.step_{step}", change)
        self.metrics.flush()

    def _metrics_log(self, state: TrainState, fresh: bool):
        if not (self.spec.tracking_uri and state.mlflow_run_id):
            return _NoMetrics()
        metrics = MetricsLog(self.spec.tracking_uri, state.mlflow_run_id, (*METRIC_KEYS, *EVAL_KEYS))
        if fresh and self.spec.params:
            resolved = {
                "precision": self.precision,
                "precision_reason": self.precision_reason,
                "world_size": self.world_size,
                "grad_accum_steps": self.engine.gradient_accumulation_steps(),
                "tokens_per_step": self.tokens_per_step,
                "n_params": sum(p.numel() for p in self.engine.module.parameters()),
                "device": self.device.type,
            }
            metrics.log_params({**self.spec.params, **{f"resolved.{k}": str(v) for k, v in resolved.items()}})
        return metrics

    def _peak_flops(self) -> float:
        """The device's matmul FLOP/s in the training dtype, measured once per (re)start on rank 0."""
        from gpt2core.checkpoint import DTYPES
        from gpt2core.flops import measure_peak_flops

        dtype = DTYPES[self.precision]  # resolved: fp32, bf16 or fp16
        size = 1024 if self.device.type == "cpu" else 4096
        return measure_peak_flops(dtype, device=str(self.device), size=size)


class _NoMetrics:
    """Stands in for MetricsLog on ranks other than 0 and in runs without MLflow tracking."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_event(self, step: int, key: str, value: float) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _checkpoints_newest_first() -> list[Any]:
    """The run's checkpoints that Ray Train keeps, newest first (across resubmissions)."""
    import ray.train

    reported = ray.train.get_all_reported_checkpoints()
    ordered = sorted(reported, key=lambda r: r.metrics.get("step", -1), reverse=True)
    found = [r.checkpoint for r in ordered]
    latest = ray.train.get_checkpoint()
    if latest is not None and all(c.path != latest.path for c in found):
        found.insert(0, latest)
    return found


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (benchmarks): no node id
        return None
