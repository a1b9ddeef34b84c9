"""The fine-tuning Task for the shared training loop (see pipelines/training/task.py): rows of
pipelines/training/finetune/data.py, shuffled per epoch, rank-disjoint, resumable at exactly the next row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core.cache import DirRef, as_local
from pipelines.registry.models import GateResources
from pipelines.training.finetune.data import IGNORE, load_rows


class RowSampler:
    """Rows in a seeded permutation per epoch; rank r takes every world_size-th of each permutation."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rank: int, world_size: int, seed: int):
        self.x, self.y = x, y
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))
        share = len(perm) // self.world_size  # the same number of rows per rank and epoch
        return perm[self.rank :: self.world_size][:share]

    def next_batch(self, batch_size: int):
        import torch

        picked = []
        while len(picked) < batch_size:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order()
            take = self._order[self.pos : self.pos + batch_size - len(picked)]
            picked.extend(take.tolist())
            self.pos += len(take)
        index = np.asarray(picked)
        return torch.from_numpy(self.x[index].astype(np.int64)), torch.from_numpy(
            self.y[index].astype(np.int64)
        )

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._epoch_order()


@dataclass
class FinetuneTask:
    data_dir: str | DirRef  # train.npz / val.npz (pipelines/training/finetune/data.py)
    tokenizer_dir: str | DirRef  # the initial model's directory: its tokenizer goes with the fine-tuned model
    tokenizer_sha256: str  # identity of the tokenizer files (resume checks)
    vocab_size: int
    val_tokens_per_byte: float
    name: str = "finetune"

    def train_source(self, rank: int, world_size: int, block_size: int, seed: int) -> RowSampler:
        x, y = load_rows(as_local(self.data_dir), "train")
        return RowSampler(x, y, rank, world_size, seed)

    def eval_batches(self, rank: int, world_size: int, block_size: int, batch_size: int, max_batches: int):
        """This rank's share of the val rows, padded with rows without targets so that every rank
        runs the same number of batches."""
        import torch

        x, y = load_rows(as_local(self.data_dir), "val")
        share = -(-len(x) // world_size)
        n_batches = min(max_batches, -(-share // batch_size))
        mine_x, mine_y = x[rank::world_size], y[rank::world_size]
        pad = n_batches * batch_size - len(mine_x)
        if pad > 0:
            mine_x = np.concatenate([mine_x, np.zeros((pad, x.shape[1]), dtype=x.dtype)])
            mine_y = np.concatenate([mine_y, np.full((pad, y.shape[1]), IGNORE, dtype=y.dtype)])
        for b in range(n_batches):
            rows = slice(b * batch_size, (b + 1) * batch_size)
            yield (
                torch.from_numpy(mine_x[rows].astype(np.int64)),
                torch.from_numpy(mine_y[rows].astype(np.int64)),
            )

    def eval_tokens_per_byte(self) -> float | None:
        return self.val_tokens_per_byte


@dataclass(frozen=True)
class PairsGate(GateResources):
    """Champion-gate data for fine-tuning (registry.champion_gate): the val pairs as text, encoded by
    each model with its own tokenizer and context; bits per byte of the completions compare models
    whatever their tokenizers."""

    data_dir: str | DirRef

    @property
    def val_data(self) -> str:
        from pipelines.registry.models import location
        from pipelines.training.finetune.data import VAL_PAIRS

        return f"{location(self.data_dir)}/{VAL_PAIRS}"

    def figures(self, candidate_dir: str, champion_dir: str | None) -> dict[str, float | None]:
        import torch

        from pipelines.training.finetune.data import VAL_PAIRS, read_pairs

        device = "cuda" if self.num_gpus and torch.cuda.is_available() else "cpu"
        pairs = read_pairs(Path(as_local(self.data_dir)) / VAL_PAIRS).pairs[
            : self.batch_size * self.max_batches
        ]
        figures: dict[str, float | None] = {"champion_bpb": None, "champion_loss": None}
        for who, model_dir in (("candidate", candidate_dir), ("champion", champion_dir)):
            if model_dir is not None:
                result = evaluate_pairs(model_dir, pairs, self.batch_size, device)
                figures[f"{who}_bpb"], figures[f"{who}_loss"] = result.bits_per_byte, result.loss
        return figures


def evaluate_pairs(model_dir: str, pairs: list[tuple[str, str]], batch_size: int, device: str = "cpu"):
    """Completion loss and bits per byte of a saved model on prompt/completion pairs."""
    import torch

    from gpt2core.checkpoint import load_model
    from gpt2core.evaluate import evaluate, model_loss_fn
    from gpt2core.tokenizer import load_tokenizer
    from pipelines.training.finetune.data import encode_pairs

    model = load_model(model_dir, device=device).float()
    rows, _ = encode_pairs(pairs, load_tokenizer(model_dir), model.config.block_size)
    x, y = torch.from_numpy(np.stack(rows.x)).long(), torch.from_numpy(np.stack(rows.y)).long()
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    tokens_per_byte = int((y != IGNORE).sum()) / max(rows.target_bytes, 1)
    return evaluate(model_loss_fn(model), batches, tokens_per_byte, device)
