"""The GPU path's batch prefetcher hands out exactly the source's batches, and stays resumable:
its state is that of the next batch the loop has not taken, however far the reader is ahead."""

from __future__ import annotations

import pytest
import torch

from pipelines.training.prefetch import Prefetcher
from pipelines.training.task import PretrainTask

BATCH, BLOCK = 4, 64


@pytest.fixture
def make_source(prepared_workspace):
    pw = prepared_workspace
    task = PretrainTask(str(pw.shards_dir), str(pw.tokenizer_dir), pw.tokenizer_sha256, 512)
    return lambda: task.train_source(0, 1, BLOCK, seed=7)


def batches(source, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [source.next_batch(BATCH) for _ in range(n)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_prefetched_batches_are_the_sources_batches(make_source):
    assert same(batches(Prefetcher(make_source(), BATCH, pin=False), 6), batches(make_source(), 6))


def test_its_checkpoint_state_is_the_next_batch_not_the_readers(make_source):
    ahead = Prefetcher(make_source(), BATCH, pin=False, depth=3)
    batches(ahead, 2)
    state = ahead.state_dict()
    plain = make_source()
    batches(plain, 2)
    assert state == plain.state_dict()  # not the state 3 batches further, where the reader is
    resumed = Prefetcher(make_source(), BATCH, pin=False)
    resumed.load_state_dict(state)
    assert same(batches(resumed, 3), batches(plain, 3))


def test_a_read_error_reaches_the_loop_and_restoring_late_is_refused(make_source):
    wrong = Prefetcher(make_source(), BATCH, pin=False)
    with pytest.raises(ValueError, match="prefetching batches of 4"):
        wrong.next_batch(BATCH + 1)

    class Broken:
        def next_batch(self, n):
            raise OSError("shard file vanished")

    with pytest.raises(OSError, match="shard file vanished"):
        Prefetcher(Broken(), BATCH, pin=False).next_batch(BATCH)
    started = Prefetcher(make_source(), BATCH, pin=False)
    started.next_batch(BATCH)
    with pytest.raises(RuntimeError, match="restore its source before the first batch"):
        started.load_state_dict(make_source().state_dict())
