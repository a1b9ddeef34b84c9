"""Resharding a training checkpoint to another world size: this product's portable state against
DeepSpeed's own route (its native checkpoint, then `ds_to_universal`), side by side in one run.

    .venv/bin/python bench/bench_reshard.py [--shapes demo gpt2-124m]

For each model shape a real DeepSpeed engine trains one step on 2 gloo ranks at ZeRO 1 (fp32),
then:
  - ours: every rank writes its pieces of the portable state (pipelines/training/portable.py, the
    checkpoint the product writes), and 1 rank at ZeRO 2 loads them - the reshard;
  - DeepSpeed's: `engine.save_checkpoint` (its ZeRO partition files), then the offline
    `ds_to_universal` conversion that a layout change needs before `load_universal` can read it.
Reported: seconds for each, and the reshard as a multiple of one checkpoint save. Writes
bench/results/bench_reshard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
RESULTS = ROOT / "bench" / "results" / "bench_reshard.json"
SHAPES = {  # the demo preset (configs/demo.yaml) and GPT-2 small
    "demo": {"vocab_size": 2048, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0},
    "gpt2-124m": {
        "vocab_size": 50257,
        "block_size": 1024,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "dropout": 0.0,
    },
}
TOKENS = 64  # per sequence: the step only has to create the optimizer state


def _engine(gpt: dict, world: int, stage: int):
    import torch

    from pipelines.config import LoopConfig
    from pipelines.training.engine import LoopSpec, make_engine

    loop = LoopConfig(
        num_workers=world, zero_stage=stage, precision="fp32", micro_batch_size=1, global_batch_size=2
    )
    return make_engine(LoopSpec(loop=loop, gpt=gpt, task=None), world, torch.device("cpu"))[0]


def _timed(fn) -> float:
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - start


def _rank(rank, world, port, phase, gpt, work, out):
    import deepspeed
    import torch
    import torch.distributed as dist

    from pipelines.training import portable
    from pipelines.training.engine import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    deepspeed.init_distributed("gloo")
    times = {}
    if phase == "write":
        engine = _engine(gpt, world, 1)

        class Batches:
            def next_batch(self, n):
                x = torch.randint(
                    0, gpt["vocab_size"], (n, TOKENS + 1), generator=torch.Generator().manual_seed(rank)
                )
                return x[:, :-1], x[:, 1:]

        train_step(engine, Batches(), 1, 1e-4, torch.device("cpu"))
        times["portable_save_s"] = _timed(
            lambda: portable.save(engine, f"{work}/portable", rank, world, 1, "fp32")
        )
        times["deepspeed_save_s"] = _timed(lambda: engine.save_checkpoint(f"{work}/deepspeed", tag="step1"))
    else:
        engine = _engine(gpt, world, 2)
        times["portable_reshard_s"] = _timed(lambda: portable.load(engine, f"{work}/portable"))
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def _spawn(world: int, phase: str, gpt: dict, work: str) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"{work}/{phase}.json"
    mp.spawn(_rank, args=(world, port, phase, gpt, work, out), nprocs=world, join=True)
    return json.loads(Path(out).read_text())


def _ds_to_universal(work: str) -> float:
    from deepspeed.checkpoint.ds_to_universal import main as convert

    args = argparse.Namespace(
        input_folder=f"{work}/deepspeed/step1",
        output_folder=f"{work}/universal",
        num_extract_workers=2,
        num_merge_workers=2,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # the client state Megatron-DeepSpeed writes and ours lacks
    )
    start = time.perf_counter()
    convert(args)
    return time.perf_counter() - start


def _size_mb(path: str) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def bench_shape(name: str) -> dict:
    gpt = SHAPES[name]
    with tempfile.TemporaryDirectory(prefix="bench-reshard-") as work:
        row = {"shape": name, **_spawn(2, "write", gpt, work), **_spawn(1, "load", gpt, work)}
        try:
            row["ds_to_universal_s"] = _ds_to_universal(work)
        except Exception as exc:  # noqa: BLE001 - report the peer's failure instead of hiding the row
            row["ds_to_universal_error"] = f"{type(exc).__name__}: {exc}"
        row["portable_mb"], row["deepspeed_mb"] = _size_mb(f"{work}/portable"), _size_mb(f"{work}/deepspeed")
    row["reshard_x_save"] = row["portable_reshard_s"] / row["portable_save_s"]
    if "ds_to_universal_s" in row:
        row["deepspeed_reshard_x_save"] = row["ds_to_universal_s"] / row["deepspeed_save_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    rows = [bench_shape(name) for name in parser.parse_args().shapes]
    print(
        f"{'shape':<10} {'save s':>8} {'reshard s':>10} {'x save':>7} {'DS save s':>10} {'DS->univ s':>11} {'x save':>7}"
    )
    for r in rows:
        universal = (
            f"{r['ds_to_universal_s']:>11.2f} {r['deepspeed_reshard_x_save']:>7.1f}"
            if "ds_to_universal_s" in r
            else "  failed"
        )
        print(
            f"{r['shape']:<10} {r['portable_save_s']:>8.2f} {r['portable_reshard_s']:>10.2f} "
            f"{r['reshard_x_save']:>7.1f} {r['deepspeed_save_s']:>10.2f} {universal}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
