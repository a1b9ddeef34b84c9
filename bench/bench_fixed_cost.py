"""Where a pretraining run's time goes outside its training steps: the demo's pretrain stage, 5 times.

    .venv/bin/python bench/bench_fixed_cost.py [--runs 5] [--workspace DIR] [--set key=value ...]

The corpus, tokenizer and shards stages of configs/demo.yaml run once (skipped when the workspace
has them); then `jobs/pretrain.py` runs `--runs` times as a user runs it, each a new run
(`train.run_name=fixed-cost-<i>`) in the same workspace, so from the second on the champion gate
has a champion to evaluate. Each run's manifest holds the breakdown: the stage's seconds, the
workers' timing (pipelines/training/loop.py) and publish's phases (training/publish.py). Reported, median
over the runs:
- submit -> first step: from TorchTrainer.fit() to the end of the first training step (Ray Train's
  controller, the worker group and its process group, DeepSpeed's initialize, the step-0
  evaluation, the first batch and step); the goal is <= 8 s;
- the phases, and the share of the stage's wall time outside the training steps (goal <= 15%);
- the job's process wall time (Python imports, Ray's start and stop included).
Writes bench/results/bench_fixed_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bench_fixed_cost.json"
CONFIG = ROOT / "configs" / "demo.yaml"
# (label, the manifest timing key): in the order a run goes through them
PHASES = (
    ("controller, worker group, process group", "submit_to_worker_s"),
    ("DeepSpeed initialize (+ precision probe)", "engine_s"),
    ("MLflow setup in rank 0", "mlflow_setup_s"),
    ("evaluations (all)", "eval_s"),
    ("training steps", "steps_s"),
    ("checkpoints", "checkpoint_s"),
    ("final checkpoint + consolidation", "final_checkpoint_s"),
    ("fit (submit -> workers done)", "fit_s"),
    ("collect the model", "collect_s"),
    ("publish the model files", "upload_s"),
    ("log the MLflow model", "log_model_s"),
    ("register the version", "register_s"),
    ("champion gate (before: its own wait)", "gate_s"),
    ("champion gate, left after registering", "gate_wait_s"),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workspace", help="reuse this workspace (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser.parse_args()


def job(name: str, workspace: str, overrides: list[str], *extra: str) -> float:
    """Run jobs/<name>.py on the demo config; its wall time. Output goes to the workspace's logs."""
    command = [sys.executable, str(ROOT / "jobs" / f"{name}.py"), "--config", str(CONFIG)]
    command += [arg for o in [f"workspace={workspace}", *overrides] for arg in ("--set", o)] + list(extra)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return seconds


def pretrain_manifest(workspace: str, run_name: str) -> dict:
    return json.loads((Path(workspace) / "models" / run_name / "manifest.json").read_text())


def measure(workspace: str, overrides: list[str], runs: int) -> list[dict]:
    job("pipeline", workspace, overrides, "--stages", "corpus,tokenizer,shards")
    measured = []
    for i in range(runs):
        name = f"fixed-cost-{i}-{os.getpid()}"
        wall = job("pretrain", workspace, [*overrides, f"train.run_name={name}"])
        manifest = pretrain_manifest(workspace, name)
        timing = manifest["timing"]
        measured.append({"run": name, "process_s": wall, "stage_s": manifest["seconds"], **timing})
        print(
            f"run {i + 1}/{runs}: stage {manifest['seconds']:.1f}s, steps {timing['steps_s']:.1f}s, "
            f"submit -> first step {timing['submit_to_first_step_s']:.1f}s",
            flush=True,
        )
    return measured


def summarise(runs: list[dict]) -> dict:
    median = {key: statistics.median(r.get(key, 0.0) for r in runs) for _, key in PHASES}
    for key in ("stage_s", "process_s", "submit_to_first_step_s"):
        median[key] = statistics.median(r[key] for r in runs)
    outside = [(r["stage_s"] - r["steps_s"]) / r["stage_s"] for r in runs]
    return {
        "median": median,
        "outside_steps_share": statistics.median(outside),
        "submit_to_first_step_s": [r["submit_to_first_step_s"] for r in runs],
    }


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fixed-cost-") as tmp:
        workspace = args.workspace or str(Path(tmp) / "ws")
        runs = measure(workspace, args.set, args.runs)
    summary = summarise(runs)
    result = {
        "command": "python bench/bench_fixed_cost.py " + " ".join(sys.argv[1:]),
        "runs": runs,
        **summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    median, stage = summary["median"], summary["median"]["stage_s"]
    print(f"\nthe demo's pretrain stage, median of {len(runs)} runs: {stage:.1f}s")
    for label, key in PHASES:
        print(f"  {label:44}{median[key]:>7.2f}s{100 * median[key] / stage:>6.1f}%")
    print(f"  {'the job process (imports, Ray start/stop)':44}{median['process_s']:>7.2f}s")
    firsts = ", ".join(f"{s:.1f}" for s in summary["submit_to_first_step_s"])
    print(f"submit -> first step: median {median['submit_to_first_step_s']:.1f}s ({firsts}; goal <= 8 s)")
    print(
        f"outside the training steps: {100 * summary['outside_steps_share']:.1f}% of the stage (goal <= 15%)"
    )
    print(f"written {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
