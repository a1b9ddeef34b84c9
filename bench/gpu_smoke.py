"""GPU smoke check: gpt2core against transformers on one CUDA device, the chunked loss in bf16 and
fp16 against fp32, a single-process DeepSpeed engine (ZeRO 1 and 2, bf16) and bench_model's rows.

    python bench/gpu_smoke.py [--device cuda|cpu] [--wheelhouse DIR] [--checks logits,greedy,...]
    make gpu-smoke PYTHON=python3     on a bare GPU machine: its own python, build/wheelhouse carried in

Needs torch, transformers, safetensors, numpy and this checkout. The DeepSpeed rows also need
DeepSpeed and pydantic (pipelines' DeepSpeed config): from --wheelhouse (`make gpu-wheelhouse`),
installed with pip --no-index into a temporary directory, else as installed, else they are skipped.
Prints one table (progress goes to stderr) and exits 1 when any check fails. Without CUDA it says so
in one line and exits 0; --device cpu runs the same checks on a small shape.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

# Per device: the GPT-2 the numerics run on (GPT2Config keys), its batches (rows, tokens), the new
# tokens of the greedy check, bench_model's shape and timed rounds, the matmul size of the peak.
# The CUDA training batch is a 16 x 1024 micro-batch: 4 loss chunks at vocab 50304 (gpt2core/loss.py).
SHAPES = {
    "cuda": dict(
        model=dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        logits=(4, 1024), train=(16, 1024), new_tokens=128, bench="gpt2", rounds=5, peak_size=8192,
    ),
    "cpu": dict(
        model=dict(vocab_size=50257, n_positions=128, n_embd=64, n_layer=2, n_head=4),
        logits=(2, 64), train=(8, 64), new_tokens=16, bench="small", rounds=1, peak_size=2048,
    ),
}  # fmt: skip
FP16_LOSS_SCALE = 2.0**16  # DeepSpeed's first dynamic loss scale here (initial_scale_power=16)
DEEPSPEED_STEPS = 8
# Tolerances. bf16 keeps 8 significant bits (relative rounding 2**-9 = 2e-3 per operation), fp16 11.
# max |logit difference| / max |logit|: 1e-6 on CPU; on an H200 1.05e-5 (other fp32 kernels and
# summation orders at 12 x 768: the gradients still agree to 6e-6, greedy decoding token for token).
LOGITS_FP32 = {"cpu": 1e-5, "cuda": 3e-5}
# Two bf16 implementations (HF's too) sit a few percent RMS from the fp32 logits of this 0.1-init
# model and differ from each other by as much, so no 1e-3 holds between them: gpt2core's error must
# instead stay within 1.25x of transformers' own.
LOGITS_BF16 = 1.25
# |grad - reference| / |reference| over all parameters. Measured at 12 x 768 on 1024 tokens (CPU):
# fp32 1e-6, bf16 1.2e-2, fp16 1.6e-3; the pre-fix loss gave inf in fp16 at 2**16 and, at 16k tokens
# a micro-batch, per-element noise of 1e-2 on every gradient behind the head at 2**15.
GRADS = {"fp32": 1e-5, "bf16": 5e-2, "fp16": 5e-3}
# max |bf16 engine's loss - a plain fp32 AdamW's| over the steps, as a fraction of fp32's loss drop.
# ZeRO 1 (BF16_Optimizer) and 2 keep fp32 masters: 0.02 on an H200. ZeRO 0 is not a product path
# in bf16 (the config refuses it): DeepSpeed then steps the bf16 weights themselves, 1.74 there.
DEEPSPEED_CURVE = 0.25
DEEPSPEED_STAGES = (1, 2)
FAULT: str | None = None  # --inject-fault: the check whose measurement gets corrupted


@dataclass
class Row:
    check: str
    status: str  # pass, FAIL or skip
    measured: str
    tolerance: str
    note: str = ""


def judged(check: str, value: float, limit: float, note: str = "") -> Row:
    ok = value <= limit  # False for NaN
    return Row(check, "pass" if ok else "FAIL", f"{value:.3g}", f"<= {limit:g}", note)


def faulty(check: str, value):
    """The measurement, corrupted when --inject-fault names this check (proves the check can fail)."""
    if FAULT != check:
        return value
    if isinstance(value, torch.Tensor):
        return value + 1.0
    return [[t + 1 for t in seq] for seq in value] if isinstance(value[0], list) else [v + 1.0 for v in value]


class Setup:
    """The device, its shapes and the models the checks share (built once, on first use)."""

    def __init__(self, device: str, tmp: Path, wheelhouse: str | None):
        self.device = torch.device(device)
        self.shape = SHAPES[self.device.type]
        self.tmp, self.wheelhouse = tmp, wheelhouse

    def pair(self, name: str, init: float):
        """(transformers model, gpt2core model) with the same weights, on the device, fp32."""
        from gpt2_reference import make_hf_model

        from gpt2core.hf import load_hf_model

        hf = make_hf_model(0, initializer_range=init, **self.shape["model"])
        hf.save_pretrained(self.tmp / name)
        return hf.to(self.device), load_hf_model(self.tmp / name).to(self.device)

    @cached_property
    def wide(self):  # tests/gpt2_reference's init: clear argmaxes, so greedy decoding is stable
        return self.pair("wide", 0.1)

    @cached_property
    def gpt2_init(self):  # GPT-2's init: the gradient sizes of real training (defect 4 lives there)
        return self.pair("gpt2-init", 0.02)

    def batch(self, kind: str, seed: int) -> torch.Tensor:
        from gpt2_reference import random_batch

        rows, tokens = self.shape[kind]
        return random_batch(rows, tokens, self.shape["model"]["vocab_size"], seed).to(self.device)


# --- gpt2core against transformers ------------------------------------------------------------


def check_logits(setup: Setup) -> list[Row]:
    hf, ours = setup.wide
    idx = setup.batch("logits", seed=1)
    with torch.no_grad():
        ref, got = hf(idx).logits.float(), faulty("logits fp32", ours(idx)[0].float())
        fp32 = ((got - ref).abs().max() / ref.abs().max()).item()
        del got
        hf16, ours16 = (copy.deepcopy(m).to(torch.bfloat16) for m in (hf, ours))
        theirs, mine = hf16(idx).logits.float(), faulty("logits bf16", ours16(idx)[0].float())
        # Each implementation's rounding error: RMS distance from the fp32 logits, relative.
        errors = [((x - ref).norm() / ref.norm()).item() for x in (mine, theirs)]
        softmax = (mine.softmax(-1) - theirs.softmax(-1)).abs().max().item()
    bf16_note = f"RMS vs fp32 logits {errors[0]:.1e} / {errors[1]:.1e}; max abs d softmax {softmax:.0e}"
    return [
        judged(
            "logits fp32",
            fp32,
            LOGITS_FP32[setup.device.type],
            "max abs d logit / max abs logit, gpt2core vs transformers",
        ),
        judged(
            "logits bf16", errors[0] / errors[1], LOGITS_BF16, f"error gpt2core / transformers; {bf16_note}"
        ),
    ]


def check_greedy(setup: Setup) -> list[Row]:
    import bench_model

    hf, ours = setup.wide
    n = setup.shape["new_tokens"]
    mine = faulty("greedy fp32", bench_model.generate_fn("gpt2core", ours, setup.device)(n))
    theirs = bench_model.generate_fn("transformers", hf, setup.device)(n)
    same = sum(a == b for x, y in zip(mine, theirs) for a, b in zip(x, y)) / sum(map(len, theirs))
    status = "pass" if mine == theirs else "FAIL"
    note = f"{len(theirs)} left-padded prompts x {n} new tokens, gpt2core vs transformers"
    return [Row("greedy fp32", status, f"{same:.1%} same", "identical", note)]


# --- training: gradients of the chunked loss ---------------------------------------------------


def our_gradients(model, x, targets, dtype, loss_scale: float = 1.0):
    """Loss and fp32 gradients of a copy of the model in dtype, backward from loss * loss_scale (as
    DeepSpeed's fp16 path does), unscaled again."""
    m = copy.deepcopy(model).to(dtype).train()
    _, loss = m(x, targets)
    (loss * loss_scale).backward()
    return loss.item(), {n: p.grad.float() / loss_scale for n, p in m.named_parameters()}


def hf_gradients(hf, x, config):
    """transformers' loss and gradients in fp32, renamed and laid out as gpt2core's."""
    from gpt2core.hf import hf_to_gpt2core

    m = copy.deepcopy(hf).train()
    (loss := m(x, labels=x).loss).backward()
    return loss.item(), hf_to_gpt2core({n: p.grad for n, p in m.named_parameters()}, config)


def gradient_errors(grads: dict, reference: dict) -> tuple[float, float, str]:
    """|g - ref| / |ref| over all parameters together, and the worst single tensor's (NaN as inf)."""
    total = sum(((grads[n] - r) ** 2).sum() for n, r in reference.items())
    overall = (total / sum((r**2).sum() for r in reference.values())).sqrt().item()
    tensors = {n: ((grads[n] - r).norm() / r.norm()).item() for n, r in reference.items() if r.norm() > 0}
    worst = max(tensors, key=lambda n: math.inf if math.isnan(tensors[n]) else tensors[n])
    return (math.inf if math.isnan(overall) else overall), tensors[worst], worst


def check_training(setup: Setup) -> list[Row]:
    hf, ours = setup.gpt2_init
    x = setup.batch("train", seed=2)
    # transformers shifts its labels inside; gpt2core takes the next tokens, the last one ignored.
    targets = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
    hf_loss, reference = hf_gradients(hf, x, ours.config)
    rows, against = [], f"transformers fp32 (loss {hf_loss:.4f})"
    for name, dtype, scale in (
        ("fp32", torch.float32, 1.0),
        ("bf16", torch.bfloat16, 1.0),
        ("fp16", torch.float16, FP16_LOSS_SCALE),
    ):
        loss, grads = our_gradients(ours, x, targets, dtype, scale)
        grads = {n: faulty(f"train {name} grads", g) for n, g in grads.items()}
        error, worst_error, worst = gradient_errors(grads, reference)
        scaled = f", loss x 2^{int(math.log2(scale))}" if scale != 1 else ""
        note = f"vs {against}{scaled}; loss {loss:.4f}; worst tensor {worst_error:.1e} ({worst})"
        rows.append(judged(f"train {name} grads", error, GRADS[name], note))
        if name == "fp32":  # gpt2core's fp32 gradients: the reference of the lower precisions
            reference, against = grads, "gpt2core fp32"
    return rows


# --- a single-process DeepSpeed engine ---------------------------------------------------------


def import_deepspeed(setup: Setup):
    """DeepSpeed and the pipelines code that builds and steps its engine; from the wheelhouse, if any."""
    if setup.wheelhouse:
        site = setup.tmp / "site"
        names = (Path(setup.wheelhouse) / "requirements.txt").read_text().split()
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        pip += ["--find-links", setup.wheelhouse, "--target", str(site), *names]
        out = subprocess.run(pip, capture_output=True, text=True)
        if out.returncode:
            raise ImportError(f"pip --no-index from {setup.wheelhouse}: {out.stderr.strip()[-300:]}")
        sys.path.insert(0, str(site))
    import deepspeed
    from deepspeed.utils import logger

    from pipelines.config import LoopConfig
    from pipelines.training.deepspeed import deepspeed_config
    from pipelines.training.engine import make_optimizer, train_step

    logger.setLevel("WARNING")
    return deepspeed, LoopConfig, deepspeed_config, make_optimizer, train_step


@contextlib.contextmanager
def process_group(device: torch.device):
    """A one-process group, as Ray Train would have set up before deepspeed.initialize."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(env)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def reference_curve(model, loop, make_optimizer, x, y) -> list[float]:
    """What the engine should do, in fp32 without DeepSpeed: AdamW on the same groups, clipping."""
    m = copy.deepcopy(model).train()
    opt = make_optimizer(m, loop)
    losses = []
    for _ in range(DEEPSPEED_STEPS):
        _, loss = m(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), loop.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def check_deepspeed(setup: Setup) -> list[Row]:
    names = [f"DeepSpeed ZeRO {stage} bf16" for stage in DEEPSPEED_STAGES]
    try:
        deepspeed, LoopConfig, deepspeed_config, make_optimizer, train_step = import_deepspeed(setup)
    except ImportError as exc:
        return [Row(name, "skip", "-", "-", f"not importable: {exc}") for name in names]
    model = setup.gpt2_init[1]
    x = setup.batch("train", seed=3)
    y = torch.cat([x[:, 1:], x[:, :1]], dim=1)
    rows, micro, cuda = [], x.size(0), setup.device.type == "cuda"
    loop = LoopConfig(num_workers=1, use_gpu=cuda, micro_batch_size=micro, global_batch_size=micro, lr=1e-3)
    reference = reference_curve(model, loop, make_optimizer, x, y)
    with process_group(setup.device):
        for name, stage in zip(names, DEEPSPEED_STAGES):
            bf16_loop = loop.model_copy(update=dict(zero_stage=stage, precision="bf16"))
            m = copy.deepcopy(model).train()
            config = deepspeed_config(bf16_loop, 1, "bf16", setup.device.type)
            engine, *_ = deepspeed.initialize(model=m, optimizer=make_optimizer(m, bf16_loop), config=config)
            source = SimpleNamespace(next_batch=lambda _: (x, y))  # one batch, memorised
            losses = [train_step(engine, source, micro, loop.lr, setup.device)[0] for _ in reference]
            losses = faulty(name, losses)
            drop = reference[0] - reference[-1]  # none: the fp32 reference itself did not learn
            gap = max(abs(a - b) for a, b in zip(losses, reference)) / drop if drop > 0 else math.inf
            note = f"{len(losses)} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}, fp32 {reference[-1]:.3f}"
            rows.append(judged(name, gap, DEEPSPEED_CURVE, note))
            engine.destroy()
            del engine, m
    return rows


# --- bench_model's rows on this device ---------------------------------------------------------


def bench_speed(setup: Setup, impl: str, task: str, bf16: bool, dirs: dict) -> float:
    """bench_model's tokens/s of one implementation: its model, its unit of work, the best round."""
    import bench_model

    weights = torch.bfloat16 if bf16 and task == "generate" else None  # training: bf16 autocast
    model = bench_model.load(impl, dirs, weights).to(setup.device)
    if task == "train":
        runner = bench_model.train_step_fn(impl, model, bf16, str(setup.device))
        runner()  # warm-up: allocator, kernels, optimizer state
    else:
        runner = bench_model.generate_fn(impl, model, setup.device)
        runner(4)
    return max(bench_model.measure_once(task, runner)[0] for _ in range(setup.shape["rounds"]))


def check_bench(setup: Setup) -> list[Row]:
    import bench_model

    from gpt2core.flops import measure_peak_flops

    shape = setup.shape["bench"]
    dirs = bench_model.make_weights(shape, setup.tmp / "bench")
    rows = []
    for dtype, bf16 in (("fp32", False), ("bf16", True)):
        peak = measure_peak_flops(
            torch.bfloat16 if bf16 else None, str(setup.device), setup.shape["peak_size"]
        )
        for task in ("train", "generate"):
            ours, theirs = (bench_speed(setup, impl, task, bf16, dirs) for impl in bench_model.IMPLS)
            mfu = [s * bench_model.task_flops_per_token(shape, task) / peak for s in (ours, theirs)]
            measured = f"{ours:.0f} / {theirs:.0f} tok/s ({ours / theirs:.2f}x)"
            note = f"gpt2core / transformers; MFU {mfu[0]:.1%} / {mfu[1]:.1%} of {peak / 1e12:.2f} TFLOP/s"
            rows.append(Row(f"bench_model {shape} {task} {dtype}", "pass", measured, "-", note))
    return rows


# --- the run -------------------------------------------------------------------------------------

CHECKS = dict(logits=check_logits, greedy=check_greedy, train=check_training)
CHECKS.update(deepspeed=check_deepspeed, bench=check_bench)


def run_check(name: str, setup: Setup) -> list[Row]:
    print(f"gpu_smoke: {name} ...", file=sys.stderr, flush=True)
    try:
        rows = CHECKS[name](setup)
    except Exception as exc:  # one broken check must not hide the others' results
        rows = [Row(name, "FAIL", "error", "-", f"{type(exc).__name__}: {exc}"[:300].replace("\n", " "))]
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| check | status | measured | tolerance | note |", "|---|---|---:|---|---|"]
    for r in rows:  # a "|" inside a cell (an error message) would split it
        cells = (str(c).replace("|", "/") for c in (r.check, r.status, r.measured, r.tolerance, r.note))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=sorted(SHAPES), default="cuda")
    parser.add_argument("--wheelhouse", help="DeepSpeed's wheels (make gpu-wheelhouse), installed --no-index")
    parser.add_argument("--checks", default=",".join(CHECKS), type=lambda s: s.split(","))
    parser.add_argument(
        "--inject-fault", metavar="CHECK", help="corrupt that row's measurement (it must fail)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.checks) - set(CHECKS)
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; choose from {list(CHECKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    global FAULT
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_smoke: no CUDA device here (torch {torch.__version__}); nothing checked")
        return 0
    FAULT = args.inject_fault
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        setup = Setup(args.device, Path(tmp), args.wheelhouse)
        rows = [row for name in args.checks for row in run_check(name, setup)]
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "FAIL", "skip")}
    where = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}" if args.device == "cuda" else "CPU"
    print(f"gpu_smoke on {where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(table(rows))
    elapsed = time.perf_counter() - start
    print(f"{counts['pass']} passed, {counts['FAIL']} failed, {counts['skip']} skipped in {elapsed:.0f} s")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
