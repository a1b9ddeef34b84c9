"""bf16 against fp32 in the product's pretraining path, and what `precision: auto` picks here.

    .venv/bin/python bench/bench_precision.py [--steps 24] [--n-layer 6 --n-head 6 --n-embd 384]

The `small` shape (6 x 384, a 32k vocabulary, 256-token context) trains the same steps from the same
seed on the same shards through Ray Train + DeepSpeed (2 workers x 1 CPU, bench_train.ray_deepspeed),
once in fp32 and once in bf16 (DeepSpeed's bf16 engine: fp32 masters, fp32 gradient accumulation).
Reported: tokens/s (median step), the val loss after the last step, and the ratios. The goal: bf16
>= 1.5x fp32 tokens/s at a val loss within 1%. Then `auto`'s own detection on this machine (the CPU's
bf16 flags, the probe's bf16/fp32 matmul ratio at the model's shape) and its choice. The CPU's bf16
flags and model name go into bench/results/bench_precision.json with the figures: the answer
depends on the CPU (AMX, AVX512-BF16 that is fast or slow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
RESULTS = ROOT / "bench" / "results" / "bench_precision.json"
VOCAB = 32000  # the small shape's vocabulary: the LM head's cost counts (the tokens use 512 of it)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--zero-stage", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4, help="per worker")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--checkpoint-interval", type=int, default=1000, help="only the final one")
    return parser.parse_args()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def auto_here(args) -> dict:
    """What `auto` detects and picks on this machine, 1 thread as a worker has it."""
    import torch

    from pipelines.training.precision import choose, detect

    torch.set_num_threads(1)
    capability = detect(torch.device("cpu"), args.n_embd, args.micro_batch * args.block_size)
    choice = choose("auto", capability, args.zero_stage)
    return {
        "flags": list(capability.flags),
        "matmul_speedup": capability.matmul_speedup,
        "probe_shape": capability.probe_shape,
        "choice": choice.precision,
        "reason": choice.reason,
    }


def main() -> int:
    import ray
    from bench_train import gpt_config, ray_deepspeed
    from prepared_workspace import build_prepared_workspace

    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        work = Path(tmp)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        pw = build_prepared_workspace(work / "data")
        ray.shutdown()
        gpt = gpt_config(args, VOCAB)
        runs = {precision: ray_deepspeed(args, gpt, pw, work, precision) for precision in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    result = {
        "command": "python bench/bench_precision.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(),
        "model": gpt,
        "steps": args.steps,
        "global_batch": args.global_batch,
        "runs": runs,
        "speedup": bf16["tokens_per_s"] / fp32["tokens_per_s"],
        "val_loss_difference": bf16["val_loss"] / fp32["val_loss"] - 1,
        "auto": auto_here(args),
        "load_avg_1min": os.getloadavg()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']}; bf16 flags: {', '.join(result['auto']['flags']) or 'none'}")
    print(f"{'':8}{'tokens/s':>10}{'val loss':>10}  (step {fp32['val_step']})")
    for name, run in runs.items():
        print(f"{name:8}{run['tokens_per_s']:>10,.0f}{run['val_loss']:>10.4f}")
    print(
        f"bf16 / fp32: {result['speedup']:.2f}x tokens/s (goal >= 1.5x), val loss "
        f"{100 * result['val_loss_difference']:+.2f}% (goal within 1%)"
    )
    print(f"precision auto here: {result['auto']['choice']} ({result['auto']['reason']})")
    print(f"written {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
