"""Training checkpoints: the DeepSpeed checkpoint plus each rank's training state, in one directory.

Every rank writes into its own local directory (DeepSpeed: rank 0 the module states, each rank its
ZeRO partition; here: `train_state/rank-NNNNN.json`), then all ranks call `ray.train.report` with
it, and Ray Train merges the ranks' directories into one checkpoint in storage. A rank's state holds
what the DeepSpeed checkpoint does not: the optimizer step, tokens seen, the data source position,
the torch/numpy/python RNG states, the early-stopping record and the MLflow run id, so that a restart
continues exactly (and stops early where the uninterrupted run would).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DS_TAG = "deepspeed"  # one tag per checkpoint directory: Ray Train gives each checkpoint its own
STATE_DIR = "train_state"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen, all ranks
    mlflow_run_id: str | None = None
    best_val_loss: float | None = None  # early stopping: the best val loss so far ...
    evals_since_best: int = 0  # ... and the evaluations since it

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


def save(engine: Any, directory: str | Path, rank: int, state: TrainState, source: Any, extra: dict) -> None:
    """Collective: every rank writes its part of the checkpoint into its own `directory`."""
    engine.save_checkpoint(str(directory), tag=DS_TAG)
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
        raise ValueError(
            f"checkpoint {directory} has no training state for rank {rank} "
            "(was it written by a run with fewer workers? resume with the same train.num_workers)"
        )
    return json.loads(path.read_text())


def restore(engine: Any, directory: str | Path, rank: int, source: Any) -> TrainState:
    """Collective: load the DeepSpeed checkpoint, this rank's data position and RNG states."""
    saved = read_rank_state(directory, rank)
    load_path, _ = engine.load_checkpoint(str(directory), tag=DS_TAG, load_lr_scheduler_states=False)
    if load_path is None:
        raise ValueError(f"checkpoint {directory}: DeepSpeed found no checkpoint with tag {DS_TAG!r}")
    source.load_state_dict(saved["source"])
    set_rng_state(saved["rng"])
    return train_state(saved)
