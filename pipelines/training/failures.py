"""Which training failures a restart can cure, and a Ray Train failure policy that knows it.

Ray Train restarts the worker group on any worker error, up to `max_failures` times. That is right
for a lost node, a preempted VM or a peer's dropped NCCL connection, and wrong for an error that
the same code and config raise again on every attempt: a DeepSpeed config error, an import error,
a tensor shape mismatch, an invalid value. Retrying those costs `max_failures` x the start-up time
(minutes on a GPU cluster) and buries the cause under restarts. So a worker failure is
*incurable* when its exception (or one it was raised from) is of such a kind and no worker died:
then the run ends at once, and the launcher reports the first incurable error in one line.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import RunFailed, UserError, causes

# Raised again by the same code on the same input, wherever and however often it runs.
INCURABLE_TYPES: tuple[type[BaseException], ...] = (
    UserError,
    ImportError,  # ModuleNotFoundError too: a missing package on the worker image
    SyntaxError,
    NameError,
    AttributeError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AssertionError,
    NotImplementedError,  # e.g. DeepSpeed's unsupported dtype mixes
)
INCURABLE_NAMES = ("DeepSpeedConfigError", "OutOfMemoryError")  # by name: no deepspeed/torch import here
# torch reports shape mismatches as plain RuntimeErrors; these words say so.
SHAPE_WORDS = ("size mismatch", "shapes cannot be multiplied", "must match the size", "shape mismatch")


def worker_died(exc: BaseException) -> bool:
    """A lost worker process or node (Ray's actor errors, health-check failures)."""
    from ray.exceptions import RayActorError

    names = {type(e).__name__ for e in causes(exc)}
    return any(isinstance(e, RayActorError) for e in causes(exc)) or "WorkerHealthCheckFailedError" in names


def incurable(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that a restart would meet again, or None."""
    for e in causes(exc):
        if isinstance(e, INCURABLE_TYPES) or type(e).__name__ in INCURABLE_NAMES:
            return e
        if isinstance(e, RuntimeError) and any(w in str(e) for w in SHAPE_WORDS):
            return e
    return None


def first_incurable(worker_failures: dict[int, BaseException]) -> tuple[int, BaseException] | None:
    """(rank, error) when the failures are incurable: some rank's error is, and no worker died (a
    dead peer makes the others fail with collateral errors, and a restart is what cures that)."""
    if any(worker_died(e) for e in worker_failures.values()):
        return None
    for rank in sorted(worker_failures):
        found = incurable(worker_failures[rank])
        if found is not None:
            return rank, found
    return None


def run_failed(rank: int, error: BaseException, tracebacks: str = "") -> UserError:
    """What the driver raises: the user's own error as it was, else a RunFailed whose line names
    the error, under the workers' `tracebacks` (Ray Train's WorkerGroupError text)."""
    if isinstance(error, UserError):
        return error
    message = " ".join(str(error).split()) or "(no message)"
    return RunFailed(
        f"training failed on rank {rank} with {type(error).__name__}: {message} "
        "(not retried: a restart cannot cure it)",
        detail=tracebacks,
    )


def retry_only_curable_policy(failure_config: Any):
    """Ray Train's default policy, except that incurable worker failures end the run at once."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    class RetryOnlyCurable(DefaultFailurePolicy):
        def make_decision(self, training_failed_error):
            if isinstance(training_failed_error, WorkerGroupError) and first_incurable(
                training_failed_error.worker_failures
            ):
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return RetryOnlyCurable(failure_config)


def trainer_class():
    """TorchTrainer with the policy above. Ray Train 2.60 has no public hook for a failure policy:
    the trainer builds its default one and hands it to the controller, which is where we swap it."""
    from ray.train.torch import TorchTrainer

    class CurableRetryTrainer(TorchTrainer):
        def _initialize_and_run_controller(self, **controller_init_kwargs):
            controller_init_kwargs["failure_policy"] = retry_only_curable_policy(
                self.run_config.failure_config
            )
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return CurableRetryTrainer
