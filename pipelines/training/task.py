"""What the shared training loop trains on: a Task names its data and its tokenizer.

The loop (pipelines/training/loop.py) knows nothing about shards or prompts; it asks its task for
  - train_source(rank, world_size, block_size, seed): a BatchSource, i.e. next_batch(n) -> (x, y)
    int64 [n, block_size] with -100 marking targets that do not count, plus state_dict() /
    load_state_dict() that restore exactly the next batch after a restart;
  - eval_batches(rank, world_size, block_size, batch_size, max_windows): this rank's share of the
    first max_windows validation windows or rows (the same set for any world size), the same
    count of batches on every rank (ZeRO-3 needs every rank in every forward);
  - eval_tokens_per_byte(): validation tokens per UTF-8 byte, for bits per byte (None: unknown).
Tasks are plain picklable objects: the launcher builds one and Ray ships it to every worker.

Pretraining reads token shards (PretrainTask). Fine-tuning adds a task over a JSONL prompt/completion
file whose prompt targets are -100; the loop, checkpoints, tracking and consolidation stay the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.core.cache import DirRef, as_local


class BatchSource(Protocol):
    def next_batch(self, batch_size: int) -> tuple[Any, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(Protocol):
    name: str  # "pretrain", "finetune": names the task in logs and the consolidated model's lineage
    tokenizer_dir: str | DirRef  # whose tokenizer files go into the model directory
    vocab_size: int

    def train_source(self, rank: int, world_size: int, block_size: int, seed: int) -> BatchSource: ...

    def eval_batches(
        self, rank: int, world_size: int, block_size: int, batch_size: int, max_windows: int
    ) -> Iterable[tuple[Any, Any]]: ...

    def eval_tokens_per_byte(self) -> float | None: ...


@dataclass
class PretrainTask:
    """Token shards: the train split through the resumable, world-size-independent WindowSampler,
    the val split through the fixed-order eval iterator (gpt2core/data.py). Files were checksummed by the launcher
    (local workspace) or by the node cache as it fetched them (object store), so workers open them
    without hashing again."""

    shards_dir: str | DirRef  # a local path, or a published directory fetched into the node cache
    tokenizer_dir: str | DirRef
    tokenizer_sha256: str
    vocab_size: int
    name: str = "pretrain"

    def _split(self, split: str):
        from gpt2core.data import TokenShards

        return TokenShards(
            as_local(self.shards_dir),
            split,
            expect_sha256=self.tokenizer_sha256,
            expect_vocab_size=self.vocab_size,
            verify=False,
        )

    def train_source(self, rank: int, world_size: int, block_size: int, seed: int) -> BatchSource:
        from gpt2core.data import WindowSampler

        return WindowSampler(self._split("train"), block_size, rank, world_size, seed)

    def eval_batches(self, rank: int, world_size: int, block_size: int, batch_size: int, max_windows: int):
        from gpt2core.data import eval_batches

        return eval_batches(self._split("val"), block_size, batch_size, rank, world_size, max_windows)

    def eval_tokens_per_byte(self) -> float | None:
        return self._split("val").tokens_per_byte
