"""bench/gpu_smoke.py without a GPU: one line and exit 0 where there is no CUDA, the same checks on
a small CPU shape, and exit 1 once a check's measurement is corrupted or a row cannot be judged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_ROWS = [
    "logits fp32",
    "logits bf16",
    "greedy fp32",
    "train fp32 grads",
    "train bf16 grads",
    "train fp16 grads",
    "DeepSpeed ZeRO 1 bf16",
    "DeepSpeed ZeRO 2 bf16",
    *(f"bench_model small {task} {dtype}" for dtype in ("fp32", "bf16") for task in ("train", "generate")),
]


def smoke(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/gpu_smoke.py", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def statuses(stdout: str) -> dict[str, str]:
    """check -> status, from the table's body rows."""
    rows = [line.split(" | ") for line in stdout.splitlines() if line.startswith("| ")][1:]
    return {cells[0].removeprefix("| "): cells[1] for cells in rows}


def test_without_cuda_it_says_so_in_one_line():
    out = smoke(CUDA_VISIBLE_DEVICES="")  # the default device is cuda; hide any there is
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.splitlines()) == 1
    assert "no CUDA device" in out.stdout


@pytest.mark.slow
def test_every_check_passes_on_cpu():
    out = smoke("--device", "cpu")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert statuses(out.stdout) == dict.fromkeys(CPU_ROWS, "pass")
    assert out.stdout.splitlines()[-1].startswith(f"{len(CPU_ROWS)} passed, 0 failed, 0 skipped")


@pytest.mark.parametrize(
    "fault, checks",
    [("train fp16 grads", "train"), ("greedy fp32", "greedy"), ("logits bf16", "logits")],
)
def test_a_corrupted_measurement_fails_the_run(fault, checks):
    out = smoke("--device", "cpu", "--checks", checks, "--inject-fault", fault)
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    failed = {check for check, status in statuses(out.stdout).items() if status == "FAIL"}
    assert failed == {fault}


def test_an_unusable_wheelhouse_skips_the_deepspeed_rows(tmp_path):
    (tmp_path / "requirements.txt").write_text("deepspeed==0.19.8\n")  # and no wheel of it
    out = smoke("--device", "cpu", "--checks", "deepspeed", "--wheelhouse", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert statuses(out.stdout) == {"DeepSpeed ZeRO 1 bf16": "skip", "DeepSpeed ZeRO 2 bf16": "skip"}
    assert "pip --no-index" in out.stdout
