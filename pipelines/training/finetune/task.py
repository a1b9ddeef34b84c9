"""The fine-tuning Task for the shared training loop (see pipelines/training/task.py): rows of
pipelines/training/finetune/data.py in one global order of the seed (any world size sees the same rows per step), resumable at exactly the next row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2core.data import GlobalOrder
from pipelines.core.cache import DirRef, as_local
from pipelines.registry.models import GateResources
from pipelines.training.finetune.data import IGNORE, load_rows


class RowSampler(GlobalOrder):
    """Prompt/completion rows in one global order of the seed and the rows alone (GlobalOrder):
    the rows of an optimizer step are the same for any number of workers, and resumable on another."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rank: int, world_size: int, seed: int):
        self.x, self.y = x, y
        super().__init__(len(x), rank, world_size, seed)

    def next_batch(self, batch_size: int):
        import torch

        index = self.next_items(batch_size)
        return torch.from_numpy(self.x[index].astype(np.int64)), torch.from_numpy(
            self.y[index].astype(np.int64)
        )

    def identity(self) -> dict[str, int]:
        return {"seed": self.seed, "n_rows": self.n_items}


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

    def eval_batches(self, rank: int, world_size: int, block_size: int, batch_size: int, max_windows: int):
        """This rank's share of the first `max_windows` val rows (gpt2core.data.eval_shares), an
        exhausted share padded with a row without targets."""
        import torch

        from gpt2core.data import eval_shares

        x, y = load_rows(as_local(self.data_dir), "val")
        for rows in eval_shares(len(x), rank, world_size, batch_size, max_windows):
            if len(rows):
                bx, by = x[rows], y[rows]
            else:
                bx, by = (
                    np.zeros((1, x.shape[1]), dtype=x.dtype),
                    np.full((1, y.shape[1]), IGNORE, dtype=y.dtype),
                )
            yield torch.from_numpy(bx.astype(np.int64)), torch.from_numpy(by.astype(np.int64))

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
