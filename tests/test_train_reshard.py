"""Checkpoints that load on another number of workers and another ZeRO stage (portable.py).

Real DeepSpeed engines in real gloo process groups (torch.multiprocessing, no Ray: the layouts
change between runs, and each run is a few seconds). A run trains a tiny GPT on fixed global batches
- rank r takes the r-th slice of each world x micro-batch block, as the training samplers do - and
writes the portable state at given steps. A second run in another layout loads the step-3 state,
writes it straight back, and trains on to step 5.

  - what the second layout loaded is the first layout's state, bit for bit (weights, both AdamW
    moments), whatever the two layouts are;
  - in the same layout, the resumed run continues bit for bit as the uninterrupted one;
  - in fp32, across layouts, it continues within the reduction-order noise of another world size.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import torch

from pipelines.training import portable
from pipelines.training.checkpoint import IncompleteCheckpoint, check_complete, write_rank_state

GPT = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}
GLOBAL, MICRO, LR = 8, 2, 1e-2


def step_batch(step: int):
    x = torch.randint(
        0, GPT["vocab_size"], (GLOBAL, GPT["block_size"] + 1), generator=torch.Generator().manual_seed(step)
    )
    return x[:, :-1], x[:, 1:]


class StepSource:
    """This rank's micro-batches of one step's global batch, in the samplers' slicing."""

    def __init__(self, step: int, rank: int, world: int):
        self.x, self.y = step_batch(step)
        self.rank, self.world, self.taken = rank, world, 0

    def next_batch(self, n: int):
        start = self.taken * self.world * n + self.rank * n
        self.taken += 1
        return self.x[start : start + n], self.y[start : start + n]


def _worker(rank, world, port, stage, precision, load_from, save_at, out, done):
    import deepspeed
    import torch.distributed as dist

    from pipelines.config import LoopConfig
    from pipelines.training.engine import LoopSpec, make_engine, train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    deepspeed.init_distributed("gloo")
    loop = LoopConfig(
        num_workers=world,
        zero_stage=stage,
        precision=precision,
        micro_batch_size=MICRO,
        global_batch_size=GLOBAL,
        lr=LR,
        seed=1,
    )
    engine, choice = make_engine(LoopSpec(loop=loop, gpt=GPT, task=None), world, torch.device("cpu"))
    resolved = choice.precision
    step = 0
    if load_from:
        step = portable.load(engine, load_from)["step"]
        portable.save(engine, f"{out}/reloaded", rank, world, step, resolved)
    while step < done:
        train_step(engine, StepSource(step, rank, world), MICRO, LR, torch.device("cpu"))
        step += 1
        if step in save_at:
            portable.save(engine, f"{out}/step{step}", rank, world, step, resolved)
    dist.barrier()
    dist.destroy_process_group()


def run(out, world: int, stage: int, precision: str = "fp32", load_from=None, save_at=(3, 5)) -> str:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (world, port, stage, precision, load_from and str(load_from), tuple(save_at), str(out), 5)
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    return str(out)


def state(directory) -> dict:
    return portable.full_state(directory, portable.read_meta(directory))


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in portable.KEYS)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The first layouts' runs: checkpoints at steps 3 and 5."""
    root = tmp_path_factory.mktemp("reshard")
    return {
        ("fp32", 2, 1): run(root / "fp32-2w-z1", 2, 1),
        ("bf16", 1, 1): run(root / "bf16-1w-z1", 1, 1, "bf16"),
    }


@pytest.mark.parametrize(
    ("source", "world", "stage"),
    [
        (("fp32", 2, 1), 1, 0),  # fewer workers, no ZeRO
        (("fp32", 2, 1), 2, 3),  # the same workers, parameters partitioned too
        (("bf16", 1, 1), 2, 2),  # more workers; DeepSpeed's BF16_Optimizer (fp32 masters) to ZeRO's
    ],
)
def test_another_layout_loads_the_very_same_state_and_trains_on(written, tmp_path, source, world, stage):
    precision = source[0]
    resumed = run(tmp_path, world, stage, precision, load_from=f"{written[source]}/step3", save_at=(5,))
    assert largest_difference(state(f"{resumed}/reloaded"), state(f"{written[source]}/step3")) == 0.0
    meta = portable.read_meta(f"{resumed}/step5")
    assert (meta["world_size"], meta["zero_stage"]) == (world, stage)
    assert meta["optimizer_step"] == portable.read_meta(f"{written[source]}/step5")["optimizer_step"]
    if precision == "fp32":  # other reduction orders; bf16 rounds differently per layout
        assert largest_difference(state(f"{resumed}/step5"), state(f"{written[source]}/step5")) < 1e-4


@pytest.mark.parametrize(("source", "world", "stage"), [(("fp32", 2, 1), 2, 1), (("bf16", 1, 1), 1, 1)])
def test_the_same_layout_resumes_bit_for_bit(written, tmp_path, source, world, stage):
    resumed = run(tmp_path, world, stage, source[0], load_from=f"{written[source]}/step3", save_at=(5,))
    assert largest_difference(state(f"{resumed}/step5"), state(f"{written[source]}/step5")) == 0.0


def test_a_checkpoint_with_a_part_missing_or_truncated_is_incomplete(written, tmp_path):
    from gpt2core.data import GlobalOrder
    from pipelines.training.checkpoint import TrainState

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(f"{written[('fp32', 2, 1)]}/step3", checkpoint)
    for rank in (0, 1):
        write_rank_state(checkpoint, rank, TrainState(step=3), GlobalOrder(10), {})
    assert check_complete(checkpoint)["world_size"] == 2
    part = checkpoint / portable.rank_file(1)
    whole = part.read_bytes()
    part.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IncompleteCheckpoint, match="rank-00001.safetensors"):
        check_complete(checkpoint)
    part.unlink()
    with pytest.raises(IncompleteCheckpoint, match="rank-00001.safetensors"):
        check_complete(checkpoint)
    part.write_bytes(whole)
    (checkpoint / "train_state" / "rank-00001.json").write_text('{"step": 3')
    with pytest.raises(IncompleteCheckpoint, match="not JSON"):
        check_complete(checkpoint)
