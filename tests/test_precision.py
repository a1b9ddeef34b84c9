"""`precision: auto` against stated capabilities: bf16 where the hardware's bf16 matmuls are faster,
fp32 where they are not or cannot be had. The choice is a function of the capability, never of a
timing taken here; detection is checked on /proc/cpuinfo texts and on this machine's own flags."""

from __future__ import annotations

import pytest
import torch

from pipelines.errors import UserError
from pipelines.training import precision
from pipelines.training.precision import Capability, choose, cpu_bf16_flags, detect, resolve

SMALL_PROBE = (2048, 384, 1536)


def cpu(speedup: float | None, flags=("avx512_bf16",)) -> Capability:
    return Capability("cpu", bool(flags), tuple(flags), speedup, SMALL_PROBE if flags else None)


@pytest.mark.parametrize(
    ("capability", "zero_stage", "expected", "why"),
    [
        (cpu(3.9, ("amx_bf16", "avx512_bf16")), 1, "bf16", "amx_bf16, avx512_bf16, bf16 matmuls 3.90x"),
        (cpu(2.5), 2, "bf16", "2048x384x1536"),  # an AMD EPYC with AVX512-BF16
        (cpu(0.55), 1, "fp32", "bf16 matmuls are 0.55x fp32"),  # AVX512-BF16 that is slower
        (cpu(1.2), 1, "fp32", "needs 1.3x"),  # faster matmuls that would not pay for the casts
        (cpu(None, ()), 1, "fp32", "no bf16 instructions"),
        (cpu(None), 1, "fp32", "unmeasured"),
        (cpu(3.9, ("amx_bf16",)), 0, "fp32", "ZeRO stage 0 has no fp32 master weights"),
        (Capability("cuda", True), 1, "bf16", "CUDA device with bf16"),
        (Capability("cuda", False), 1, "fp32", "no bf16 arithmetic"),
    ],
)
def test_auto_follows_the_stated_capability(capability, zero_stage, expected, why):
    choice = choose("auto", capability, zero_stage)
    assert choice.precision == expected
    assert why in choice.reason


def test_a_configured_precision_is_kept_or_refused_where_the_device_lacks_it():
    assert choose("fp32", cpu(3.9, ("amx_bf16",)), 1).precision == "fp32"
    assert choose("bf16", cpu(None, ()), 1).precision == "bf16"  # torch emulates it on any CPU
    assert choose("bf16", Capability("cuda", True), 2).reason == "configured"
    with pytest.raises(UserError, match="'precision': bf16 is not supported on this cuda device"):
        choose("bf16", Capability("cuda", False), 1)


def test_the_bf16_flags_are_read_from_cpuinfo():
    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\nbogomips: 1\n"
    assert cpu_bf16_flags(amx) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_flags("flags\t: fpu sse2 avx2 avx512f avx512_vnni\n") == ()
    assert cpu_bf16_flags("processor: 0\n") == ()  # no flags line (not x86): nothing claimed


def test_a_cpu_without_bf16_flags_is_never_timed(monkeypatch):
    monkeypatch.setattr(precision, "read_cpu_bf16_flags", lambda: ())
    monkeypatch.setattr(precision, "matmul_speedup", pytest.fail)
    capability = detect(torch.device("cpu"), 384, 4096)
    assert capability == Capability("cpu", False)
    assert resolve("auto", 1, torch.device("cpu"), 384, 4096).precision == "fp32"


def test_a_cpu_with_a_bf16_flag_times_the_models_own_matmul(monkeypatch):
    timed = []
    monkeypatch.setattr(precision, "read_cpu_bf16_flags", lambda: ("amx_bf16",))
    monkeypatch.setattr(precision, "matmul_speedup", lambda *shape: timed.append(shape) or 4.0)
    choice = resolve("auto", 1, torch.device("cpu"), 384, 8 * 1024)
    assert timed == [(2048, 384, 1536)]  # the MLP's up-projection, a micro-batch of rows (at most 2048)
    assert choice.precision == "bf16"
    assert resolve("fp32", 1, torch.device("cpu"), 384, 8 * 1024).precision == "fp32"
    assert len(timed) == 1  # a configured precision measures nothing


def test_this_machines_flags_and_the_probe_agree_with_torch():
    flags = precision.read_cpu_bf16_flags()
    has_avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: None)()
    if has_avx512_bf16 is not None:
        assert ("avx512_bf16" in flags) == has_avx512_bf16
    assert precision.matmul_speedup(256, 64, 256, repeats=2) > 0
