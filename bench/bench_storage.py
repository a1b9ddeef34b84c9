"""Object-store workspace against local disk: the same pretraining run, side by side in one run.

    .venv/bin/python bench/bench_storage.py [--steps 40] [--checkpoint-interval 10]

Both sides run the product's pretrain stage (Ray Train + DeepSpeed, 2 workers x 1 CPU, the demo
model: 4 x 128, 128-token context) on the same shards: once with a local workspace, once with
`workspace=s3://...` on a real S3 API server on 127.0.0.1 (moto, started here), shards read through
the node cache and checkpoints uploaded by Ray Train (asynchronously on the object store). Reported
per side:
  - training tokens/s: tokens per step / the median step time (checkpoint steps included);
  - checkpoint save s: the mean time a checkpoint holds up training (DeepSpeed save + report);
  - checkpoint restore s: fetching the final checkpoint from storage into a local directory;
  - shard-read windows/s: a rank's window sampler, cold (fetching into the node cache) and warm.
Goal: training tokens/s on s3:// at least 0.9x local. Writes bench/results/bench_storage.json.
A loopback S3 server has no network latency: a real bucket adds round trips, which the asynchronous
upload and the node cache are there to hide.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "bench" / "results" / "bench_storage.json"
BUCKET = "bench-storage"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-interval", type=int, default=10)
    parser.add_argument("--read-batches", type=int, default=300)
    return parser.parse_args()


def start_s3(work: Path) -> tuple[subprocess.Popen, str]:
    from s3_server import start_s3_server

    proc, endpoint = start_s3_server(work / "s3.log")
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint, PIPELINES_CACHE_DIR=str(work / "cache"),
    )  # fmt: skip
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    return proc, endpoint


def upload_tree(local: Path, uri: str) -> None:
    import pyarrow.fs as pafs

    from pipelines.core.workspace import Workspace

    ws = Workspace(uri)
    pafs.copy_files(str(local), ws.path(), destination_filesystem=ws.fs)


def pretrain(workspace: str, shards: str, server: str, args) -> dict:
    from prepared_workspace import OVERRIDES

    from pipelines.config import load_config
    from pipelines.core.workflow import Runner
    from pipelines.training.pretrain import pretrain_stage

    overrides = [
        *[o for o in OVERRIDES if not o.startswith(("model.", "train."))],
        *"train.num_workers=2 train.micro_batch_size=8 train.global_batch_size=32 train.zero_stage=1".split(),
        "train.precision=fp32", "train.warmup_steps=5", "train.eval_batches=2", "train.keep_checkpoints=2",
        f"train.max_steps={args.steps}", f"train.eval_interval={args.steps}", f"train.log_interval={args.steps}",
        f"train.checkpoint_interval={args.checkpoint_interval}",
        f"workspace={workspace}", f"train.shards={shards}", f"mlflow.tracking_uri={server}",
        "mlflow.experiment=bench-storage", "mlflow.registered_model=bench-storage",
    ]  # fmt: skip
    runner = Runner(load_config(ROOT / "configs" / "demo.yaml", overrides), [pretrain_stage()], log=print)
    started = time.perf_counter()
    runner.run(force=["pretrain"])
    manifest = runner.published("pretrain").manifest
    timing = manifest["timing"]
    return {
        "stage_s": time.perf_counter() - started,
        "tokens_per_s": 32 * 128 * timing["steady_steps"] / timing["steady_step_s"],
        "checkpoint_save_s": timing["checkpoint_s"] / timing["checkpoints"],
        "checkpoint_restore_s": restore_seconds(runner, manifest),
    }


def restore_seconds(runner, manifest: dict) -> float:
    """Fetch the run's latest checkpoint into a local directory, as a resumed worker does."""
    from pipelines.training.launch import latest_checkpoint

    checkpoint, _ = latest_checkpoint(runner.ws, manifest["checkpoints"])
    started = time.perf_counter()
    with checkpoint.as_directory() as directory:
        assert any(Path(directory).iterdir())
    return time.perf_counter() - started


def read_rate(shards_uri: str, batches: int) -> dict:
    """A rank's sampler over the train split: windows/s, cold (node cache empty) and warm."""
    from pipelines.core.cache import DirRef, cache_root
    from pipelines.core.manifest import read_manifest
    from pipelines.core.workspace import Workspace
    from pipelines.training.task import PretrainTask

    ws = Workspace(shards_uri)
    manifest = read_manifest(ws, "")
    ref = DirRef.of(ws, "", manifest, with_manifest=True)
    info = manifest["tokenizer"]
    rates = {}
    shutil.rmtree(cache_root(), ignore_errors=True)
    for run in ("cold", "warm"):
        started = time.perf_counter()
        source = PretrainTask(ref, "", info["sha256"], info["vocab_size"]).train_source(0, 2, 128, 0)
        for _ in range(batches):
            source.next_batch(8)
        rates[f"windows_per_s_{run}"] = batches * 8 / (time.perf_counter() - started)
    return rates


def main() -> int:
    import ray
    from conftest import free_port, stop_process_group, wait_http
    from prepared_workspace import build_prepared_workspace

    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    s3, _ = start_s3(work)
    mlflow_port = free_port()
    mlflow = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(mlflow_port), "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
         "--artifacts-destination", str(work / "artifacts"), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=open(work / "mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    server = f"http://127.0.0.1:{mlflow_port}"
    try:
        wait_http(f"{server}/health", proc=mlflow)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        pw = build_prepared_workspace(work / "data")
        upload_tree(pw.workspace, f"s3://{BUCKET}/data")
        s3_shards = f"s3://{BUCKET}/data/{pw.shards_dir.relative_to(pw.workspace)}"
        sides = {
            "local": {**pretrain(str(work / "local"), str(pw.shards_dir), server, args)},
            "s3": {**pretrain(f"s3://{BUCKET}/ws", s3_shards, server, args)},
        }
        sides["local"].update(read_rate(str(pw.shards_dir), args.read_batches))
        sides["s3"].update(read_rate(s3_shards, args.read_batches))
    finally:
        ray.shutdown()
        stop_process_group(mlflow)
        stop_process_group(s3)
        shutil.rmtree(work, ignore_errors=True)
    ratios = {k: sides["s3"][k] / sides["local"][k] for k in sides["local"]}
    result = {"command": "python bench/bench_storage.py " + " ".join(sys.argv[1:]), "steps": args.steps,
              "sides": sides, "s3_over_local": ratios, "goal_tokens_per_s_ratio": 0.9}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':26}{'local':>10}{'s3':>10}{'s3/local':>10}")
    for key in sides["local"]:
        print(f"{key:26}{sides['local'][key]:>10.2f}{sides['s3'][key]:>10.2f}{ratios[key]:>10.2f}")
    print(
        f"training tokens/s ratio {ratios['tokens_per_s']:.2f} (goal >= 0.9); written {RESULTS.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
