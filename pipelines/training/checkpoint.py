"""Training checkpoints: the portable model and optimizer state plus each rank's training state.

Every rank writes into its own local directory - its pieces of the fp32 weights and AdamW moments
(portable.py: loadable on any number of workers and any ZeRO stage) and `train_state/rank-NNNNN.json`
- then all ranks call `ray.train.report` with it, and Ray Train merges the ranks' directories into
one checkpoint in storage. A rank's state holds the rest: the training step, tokens seen, the data
position (the world's, the same on every rank), the torch/numpy/python RNG states, the early-stopping
record and the MLflow run id, so that a restart continues exactly (and stops early where the
uninterrupted run would). A run resumed on more workers than wrote the checkpoint gives the new
ranks rank 0's data position and a fresh start's RNG.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

STATE_DIR = "train_state"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen, all ranks
    mlflow_run_id: str | None = None
    best_val_loss: float | None = None  # early stopping: the best val loss so far ...
    evals_since_best: int = 0  # ... and the evaluations since it
    train_seconds: float = 0.0  # training time up to this checkpoint, all attempts (training/budget.py)

    def record_eval(self, val_loss: float) -> None:
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            self.best_val_loss, self.evals_since_best = val_loss, 0
        else:
            self.evals_since_best += 1

    def stalled(self, patience: int) -> bool:
        """Early stopping: `patience` evaluations without a better val loss (0 = never stop)."""
        return patience > 0 and self.evals_since_best >= patience


def rank_state_rel(rank: int) -> str:
    return f"{STATE_DIR}/rank-{rank:05d}.json"


def rank_state_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / rank_state_rel(rank)


def rng_state(cuda: Any = None) -> dict[str, Any]:
    """The RNG states of this process: torch's CPU generator, numpy, python, and the generator of
    this rank's own CUDA device only. A restarted rank may sit on another node, beside other
    workers, where Ray gives it one visible device: the states of devices by index would not fit."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": _jsonable(random.getstate()),
    }
    cuda = cuda or torch.cuda
    if cuda.is_available():
        state["cuda"] = cuda.get_rng_state(cuda.current_device()).tolist()
    return state


def set_rng_state(state: dict[str, Any], cuda: Any = None) -> None:
    """Restore rng_state()'s states; the CUDA one into this rank's current device."""
    import numpy as np
    import torch

    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = cuda or torch.cuda
    if "cuda" in state and cuda.is_available():
        cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), cuda.current_device())


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


def save(
    engine: Any,
    directory: str | Path,
    rank: int,
    world_size: int,
    state: TrainState,
    source: Any,
    extra: dict,
) -> None:
    """Every rank writes its part of the checkpoint into its own `directory` (no collective)."""
    from pipelines.training import portable

    portable.save(engine, directory, rank, world_size, state.step, extra.get("precision", ""))
    write_rank_state(directory, rank, state, source, extra)


def write_rank_state(directory: str | Path, rank: int, state: TrainState, source: Any, extra: dict) -> None:
    path = rank_state_file(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**asdict(state), "source": source.state_dict(), "rng": rng_state(), **extra}
    path.write_text(json.dumps(body))


def train_state(saved: dict[str, Any]) -> TrainState:
    """The TrainState of a rank's saved state (fields a checkpoint predates keep their defaults)."""
    return TrainState(**{f.name: saved[f.name] for f in fields(TrainState) if f.name in saved})


def read_rank_state(directory: str | Path, rank: int) -> dict[str, Any]:
    path = rank_state_file(directory, rank)
    if not path.is_file():
        raise IncompleteCheckpoint(f"checkpoint {directory} has no training state for rank {rank}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IncompleteCheckpoint(
            f"checkpoint {directory}: {rank_state_rel(rank)} is not JSON ({exc})"
        ) from None


class IncompleteCheckpoint(ValueError):
    """A checkpoint directory with a part missing, truncated or unreadable."""


def check_complete(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's meta when every rank's parts are there and readable; else IncompleteCheckpoint
    naming the first part that is not (a crashed upload, a deleted or truncated file)."""
    from safetensors import safe_open

    from pipelines.training import portable

    try:
        meta = portable.read_meta(directory)
    except (portable.PortableStateError, json.JSONDecodeError) as exc:
        raise IncompleteCheckpoint(str(exc)) from None
    for rank in range(meta["world_size"]):
        read_rank_state(directory, rank)
        path = Path(directory) / portable.rank_file(rank)
        try:  # safetensors checks at open that the header's extents lie inside the file
            with safe_open(str(path), framework="pt") as pieces:
                pieces.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise IncompleteCheckpoint(
                f"checkpoint {directory}: {portable.rank_file(rank)} is unreadable ({exc})"
            ) from None
    return meta


def restore(engine: Any, directory: str | Path, rank: int, source: Any) -> tuple[TrainState, dict[str, Any]]:
    """Collective: the engine's weights and optimizer state, this rank's data position and RNG states,
    whatever the world size and ZeRO stage that wrote the checkpoint. Returns (state, rank's saved
    state, which names the writer's world_size and zero_stage)."""
    from pipelines.training import portable

    meta = portable.load(engine, directory)
    own = rank < meta["world_size"]
    saved = read_rank_state(directory, rank if own else 0)
    source.load_state_dict(saved["source"])  # the world's position: any rank's serves
    if own:
        set_rng_state(saved["rng"])
    return train_state(saved), {**saved, "zero_stage": meta["zero_stage"], "world_size": meta["world_size"]}
