"""What `precision: auto` trains in: bf16 where this hardware runs bf16 matmuls faster, else fp32.

Detected, not assumed. GPUs: bf16 where CUDA has it. CPUs: only a CPU with bf16 matrix
instructions (its /proc/cpuinfo flags `amx_bf16` or `avx512_bf16`) is a candidate, and the flag alone
does not decide: AMX ran 2048^2 bf16 matmuls at ~4x fp32, an AMD EPYC's AVX512-BF16 at 2.5x, yet
another AVX512-BF16 machine at 0.55x (../shared/notes/measurements-2026-12-02.md). So a candidate
CPU times a matmul of the model's own MLP shape in both dtypes (0.1-1 s), and bf16 needs MIN_SPEEDUP
there: bf16 adds casts and non-matmul work that the faster matmuls must pay for.

bf16 is DeepSpeed's bf16 engine (ZeRO >= 1: fp32 master weights in BF16_Optimizer or ZeRO's
optimizer, gradients accumulated in fp32), the same path as on GPUs. On this machine's CPU it beat
autocast over fp32 weights: 9,040 against 8,010 tokens/s on the demo model, 1,546 and 1,527 on the
small shape (fp32: 7,050 and 1,026). ZeRO stage 0 stays fp32 under auto: DeepSpeed trains the bf16
weights there without fp32 masters (the config refuses it when asked for explicitly).

Rank 0 measures and every rank trains in its choice (collectives.rank0_says), and the run logs the
choice with its reason: `auto` can differ between machines, which a run that must reproduce bytes
across node types avoids by naming the precision.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the x86 flags of native bf16 dot products
# bf16 over fp32 matmul throughput at the model's shape that bf16 training needs. Measured steps
# (bench_precision, 2 workers x 1 CPU): a probe of 1.6x gave 1.34x faster steps (2 x 64, 32k vocab),
# 2.25x gave 1.5x (the small shape); slow AVX512-BF16 measured 0.55x.
MIN_SPEEDUP = 1.3
PROBE_ROWS = 2048  # at most this many token rows in the probe's matmul (a micro-batch's worth)
ROUND_S = 0.01  # one timed round of the probe: 5 rounds per dtype, ~0.1 s in all


@dataclass(frozen=True)
class Capability:
    """What the device can do in bf16, as measured; tests state one to check the choice."""

    device_type: str  # "cpu" or "cuda"
    bf16: bool  # CUDA: torch.cuda.is_bf16_supported(); CPU: one of BF16_FLAGS is present
    flags: tuple[str, ...] = ()  # the CPU's BF16_FLAGS found
    matmul_speedup: float | None = None  # CPU: bf16 / fp32 matmul throughput at the probe's shape
    probe_shape: tuple[int, int, int] | None = None  # (rows, n_embd, 4 n_embd)


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32, bf16 or fp16
    reason: str  # why, for a person: logged with the run


def choose(precision: str, capability: Capability, zero_stage: int) -> Choice:
    """The precision to train in: `precision` as configured, `auto` resolved against the capability."""
    device = capability.device_type
    if precision != "auto":
        if precision == "bf16" and device == "cuda" and not capability.bf16:
            raise UserError(f"config key 'precision': bf16 is not supported on this {device} device")
        return Choice(precision, "configured")
    if not capability.bf16:
        return Choice(
            "fp32",
            f"auto: this {device} has no bf16 " + ("arithmetic" if device == "cuda" else "instructions"),
        )
    if device == "cuda":
        return Choice("bf16", "auto: a CUDA device with bf16")
    found = ", ".join(capability.flags)
    if zero_stage == 0:
        return Choice("fp32", f"auto: {found}, but ZeRO stage 0 has no fp32 master weights for bf16")
    speedup = capability.matmul_speedup
    if speedup is None or speedup < MIN_SPEEDUP:
        measured = "unmeasured" if speedup is None else f"{speedup:.2f}x fp32"
        return Choice("fp32", f"auto: {found}, but bf16 matmuls are {measured} (bf16 needs {MIN_SPEEDUP}x)")
    rows, width, hidden = capability.probe_shape or (0, 0, 0)
    return Choice("bf16", f"auto: {found}, bf16 matmuls {speedup:.2f}x fp32 at {rows}x{width}x{hidden}")


def cpu_bf16_flags(cpuinfo: str) -> tuple[str, ...]:
    """The BF16_FLAGS on the first `flags` line of /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.partition(":")[2].split())
            return tuple(flag for flag in BF16_FLAGS if flag in present)
    return ()


def read_cpu_bf16_flags(path: str = "/proc/cpuinfo") -> tuple[str, ...]:
    try:
        return cpu_bf16_flags(Path(path).read_text())
    except OSError:  # not Linux: no flags known, so no bf16 by auto
        return ()


def resolve(precision: str, zero_stage: int, device, n_embd: int, rows: int) -> Choice:
    """Collective under `auto` on CPUs: rank 0 measures, every rank takes its choice."""
    import torch

    from pipelines.training.collectives import rank0_says

    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    choice = choose(precision, detect(device, n_embd, rows, probe=precision == "auto" and rank0), zero_stage)
    if precision == "auto" and device.type == "cpu":
        bf16 = rank0_says(choice.precision == "bf16", device)
        choice = choice if rank0 else Choice("bf16" if bf16 else "fp32", "rank 0's choice")
    return choice


def detect(device, n_embd: int, rows: int, probe: bool = True) -> Capability:
    """The capability of this device; with `probe`, a CPU with a bf16 flag times the MLP's matmul."""
    import torch

    if device.type == "cuda":
        return Capability("cuda", torch.cuda.is_bf16_supported())
    flags = read_cpu_bf16_flags()
    if not flags:
        return Capability("cpu", False)
    shape = (min(rows, PROBE_ROWS), n_embd, 4 * n_embd)
    return Capability("cpu", True, flags, matmul_speedup(*shape) if probe else None, shape)


def matmul_speedup(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
    """fp32 time over bf16 time of a (rows x inner) @ (inner x cols) matmul: medians of alternating
    rounds (load that comes and goes hits both dtypes alike), each round enough matmuls to take
    ~ROUND_S in fp32, so a small model's matmul is not lost in the timer's noise."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    for x, y in pairs.values():  # warm the kernels up
        x @ y
    start = time.perf_counter()
    a @ b
    count = max(1, round(ROUND_S / max(time.perf_counter() - start, 1e-6)))
    times: dict = {dtype: [] for dtype in pairs}
    for _ in range(repeats):
        for dtype, (x, y) in pairs.items():
            start = time.perf_counter()
            for _ in range(count):
                x @ y
            times[dtype].append(time.perf_counter() - start)
    return statistics.median(times[torch.float32]) / statistics.median(times[torch.bfloat16])
