"""What a person reads: a short chain's console without a TTY, a live bar on one, --verbose, logs in
the workspace, and a failed worker's traceback on the console whatever the mode."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest
from user_chain import pipeline_args

from pipelines.core.faults import FAULT_ENV, FAULT_RAISE_ENV
from pipelines.runtime.console import Console
from tests.conftest import ROOT, run_job

MAX_LINES = 80
# What must never reach the console unasked: Ray internals, DeepSpeed's build, Python warnings.
NOISE = re.compile(
    r"PlacementGroupCleaner|core_worker\.cc|RayTrainWorker|TrainController|\(pid=|pid=\d+\)|"
    r"DeepSpeed|built successfully|Warning|warnings\.warn|TrainingReport|Downloading artifacts|"
    r"\bINFO\b|\bWARNING\b|Traceback"
)


@pytest.mark.slow
def test_the_chain_reads_in_a_few_lines_with_every_figure(user_chain):
    ws, _, proc = user_chain
    console = proc.stdout + proc.stderr
    lines = console.splitlines()
    assert len(lines) <= MAX_LINES, console
    noise = [line for line in lines if NOISE.search(line)]
    assert not noise, "\n".join(noise)
    kept, seen = map(int, re.search(r"\[corpus\] kept (\d+) of (\d+) documents", proc.stdout).groups())
    dropped = re.search(r"\[corpus\] dropped (\d+): .*exact_duplicate (\d+)", proc.stdout)
    assert dropped and int(dropped[1]) == seen - kept and int(dropped[2]) > 0  # the copies
    assert re.search(r"\[shards\] \d+ tokens", proc.stdout)
    # the val bits/byte curve: every evaluation of both runs (steps 0, 5, 10 and 0, 3, 6)
    pretrain_bpb = re.findall(r"\[pretrain\] step (\d+)\S* .*?([\d.]+) bpb", proc.stdout)
    finetune_bpb = re.findall(r"\[finetune\] step (\d+)\S* .*?([\d.]+) bpb", proc.stdout)
    assert [int(step) for step, _ in pretrain_bpb] == [0, 5, 10], proc.stdout
    assert [int(step) for step, _ in finetune_bpb] == [0, 3, 6], proc.stdout
    assert re.search(r"\[pretrain\] registered \S+ version 1 .*champion", proc.stdout)
    assert re.search(r"\[finetune\] registered \S+ version 2", proc.stdout)
    assert re.search(r"\[generate\] \d+ rows, \d+ tokens", proc.stdout)
    assert "mlflow ui" in proc.stdout
    # ... and the rest is in the workspace, one log per stage
    logs = {p.parent.name: p.read_text() for p in (ws / "logs").glob("*/*.log")}
    assert set(logs) >= {"pipeline", "corpus", "tokenizer", "shards", "pretrain", "finetune", "generate"}
    assert "RayTrainWorker" in logs["pretrain"] and "Setting up process group" in logs["pretrain"]
    assert "[pretrain] step 10/10" in logs["pretrain"]  # a person's lines are in the log too
    assert f"logs: {ws / 'logs'}/<stage>/" in lines[0]


@pytest.mark.slow
def test_verbose_brings_the_library_output_back(user_chain):
    ws, corpus, _ = user_chain
    proc = run_job(*pipeline_args(ws, corpus, "--stages", "shards", "--force", "shards", "--verbose"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "(_write_shards pid=" in proc.stdout + proc.stderr  # a Ray task's own output, forwarded
    logs = sorted((ws / "logs" / "shards").glob("*.log"))
    assert len(logs) == 2 and "(_write_shards pid=" in logs[-1].read_text()


@pytest.mark.slow
def test_a_terminal_shows_a_live_bar_that_ends_at_100_percent(user_chain):
    """On a time budget, whose step count is an estimate until the end: the bar still ends at N/N,
    the run says where its budget went, registers its model and decays its rate to the floor."""
    import mlflow

    ws, corpus, _ = user_chain
    args = pipeline_args(ws, corpus, "--stages", "pretrain", sets=("train.time_budget=20s",))
    output = run_on_a_terminal([sys.executable, *args])
    assert output.returncode == 0, output.text[-4000:]
    lines = re.split(r"[\r\n]", output.text)
    final = [line for line in lines if re.search(r"\[pretrain\].* (\d+)/\1 ", line)]
    assert final, output.text[-4000:]
    assert re.search(r"100%\|.* (\d+)/\1 .*loss [\d.]+ .*tok/s.*val [\d.]+ \([\d.]+ bpb\)", final[-1]), final[
        -1
    ]
    assert not NOISE.search(output.text.replace("\x1b", ""))
    [budget] = [line for line in lines if "[pretrain] time budget 20s: trained " in line]
    assert re.search(r"\(steps [\d.]+s, evaluation [\d.]+s, checkpoints [\d.]+s, start-up [\d.]+s\)", budget)
    assert any(re.search(r"\[pretrain\] registered gpt2-demo version \d+", line) for line in lines)
    manifests = [json.loads(p.read_text()) for p in (ws / "models").glob("pretrain-*/manifest.json")]
    [run] = [m for m in manifests if m["config"]["train"]["time_budget"] == "20s"]
    history = mlflow.MlflowClient(f"sqlite:///{ws}/mlflow.db").get_metric_history(run["mlflow_run_id"], "lr")
    floor, peak = 0.003 * 0.1, 0.003  # the chain's lr and the default min_lr_ratio
    assert floor <= max(history, key=lambda m: m.step).value < floor + 0.25 * (peak - floor)
    assert run["steps"] != 10  # not the chain's train.max_steps: the clock decided


@pytest.mark.slow
def test_a_failed_workers_traceback_is_on_the_console(user_chain):
    ws, corpus, _ = user_chain
    args = pipeline_args(ws, corpus, "--stages", "pretrain", sets=("train.max_steps=7",))
    proc = run_job(*args, env={FAULT_ENV: "2", FAULT_RAISE_ENV: "ImportError"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "in maybe_fire" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: training failed on rank")


def test_a_bar_per_run_ends_at_100_percent_with_the_lines_above_it():
    """The console's rendering alone, on a pseudo-terminal of 0 columns (as nobody sized it)."""
    leader, follower = pty.openpty()
    reader = PtyReader(leader)
    console = Console(ws=None, verbose=False)
    console.out, console.tty = os.fdopen(os.dup(follower), "w", buffering=1), True
    for step in (5, 8):
        postfix = f"loss 4.{step} | 9 tok/s | val 4.2 (2.1 bpb)"
        console.render(
            {"text": "-", "progress": {"label": "pretrain", "step": step, "total": 8, "postfix": postfix}}
        )
        console.say(f"[pretrain] line {step}")
    console.out.close()
    os.close(follower)
    text = reader.text()
    assert re.search(r"\[pretrain\]:\s+62%\|.*5/8 .*loss 4\.5", text), text
    assert re.search(r"\[pretrain\]: 100%\|.*8/8 .*loss 4\.8 \| 9 tok/s \| val 4\.2 \(2\.1 bpb\)", text), text
    assert text.rstrip().endswith("[pretrain] line 8") and "[pretrain] line 5" in text
    assert not console.bars  # closed at 8/8


class PtyReader:
    """Everything written to a pseudo-terminal, read as it comes (a full pty blocks its writer)."""

    def __init__(self, leader: int):
        self.leader, self.chunks = leader, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.leader, 65536)
            except OSError:  # EIO: every writer is gone
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self, timeout: float = 30) -> str:
        self.thread.join(timeout=timeout)
        os.close(self.leader)
        return b"".join(self.chunks).decode("utf-8", "replace")


class TerminalRun:
    def __init__(self, returncode: int, text: str):
        self.returncode, self.text = returncode, text


def run_on_a_terminal(cmd: list[str], timeout: float = 900) -> TerminalRun:
    """`cmd` with stdout and stderr on a pseudo-terminal, as at a person's shell."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=follower, stderr=follower, env=os.environ.copy())
    os.close(follower)
    reader = PtyReader(leader)
    returncode = proc.wait(timeout=timeout)
    return TerminalRun(returncode, reader.text())
