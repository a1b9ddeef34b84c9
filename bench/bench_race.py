"""A race: nanoGPT's own CPU recipe against this product's pretrain job, on the same ~1 MB of text,
scored in bits per byte (bpb) on the same held-out documents against wall time.

    .venv/bin/python bench/bench_race.py [--nanogpt DIR] [--nanogpt-iters 2000] [--product-budget S]
    .venv/bin/python bench/bench_race.py --nanogpt-iters 40 --nanogpt-eval-interval 10 \
        --product-steps 6 --product-set train.eval_interval=3           # a smoke run, about 2 minutes

Text: pydoc's pages of Python's standard library (the kind of text of the demo corpus,
`demo:pydoc`), written deterministically by bench/race_data.py to ~2.5 MB of JSONL, of which the
product's corpus stage keeps about 0.9 MB (language, quality and near-duplicate filters).

Held-out text: the product's data stages run first, untimed (as nanoGPT's prepare.py is not
timed): corpus, tokenizer, shards (`jobs/pipeline.py --stages corpus,tokenizer,shards`). nanoGPT's
train.bin / val.bin / meta.pkl are then cut from exactly the documents the shards stage put in its
train and val splits (their `*.docs.parquet` indexes, the text from the published corpus), one
separator character per document as the product ends each with one EOS token (race_data.py).
Both models are scored on the same val documents: the product on all of its val windows at every
evaluation (eval_batches is sized to the split), nanoGPT with its recipe's estimate, 20 random
batches of 12 windows of 64 characters (noisier).

nanoGPT: the snapshot of github:karpathy/nanoGPT (a git dir or a checkout; default: the one in
/work/.mirror/), exported with `git archive HEAD` into a temporary directory, never into this repo.
Its `train.py` runs with its README's CPU recipe for shakespeare_char, plus --eval_interval (a
curve), --out_dir and --dataset (the data written here) and --nanogpt-iters as max_iters and
lr_decay_iters. Its val loss is nats per character: bpb = loss / ln 2 * characters / UTF-8 bytes
of the val text (separators are characters but no bytes, as the product counts EOS tokens).

The product: `jobs/pretrain.py --config configs/demo.yaml` (the demo model: 4 layers x 128, 128
tokens of context, a 4096-piece tokenizer; 2 Ray Train workers x 1 CPU, DeepSpeed ZeRO 1) with
PRODUCT_SETTINGS, trained for train.time_budget = nanoGPT's measured wall time (--product-budget to
change it, --product-steps for max_steps instead). Its console's `val <loss> (<bpb> bpb)` lines
are per UTF-8 byte already. It runs after nanoGPT (whose wall time sets its budget), never beside it.

Wall time: each side is a subprocess; every line of its output is stamped with the seconds since its
spawn (so start-up counts: Python, torch, Ray, DeepSpeed) and written to <work>/logs/. Figures:
(1) when the product first reaches nanoGPT's final val bpb, as a share of nanoGPT's wall time
(goal <= 1/4); (2) the product's bpb at nanoGPT's wall time (its last evaluation by then) against
nanoGPT's final bpb, % lower (goal >= 25%). Prints a table, writes bench/results/bench_race.json
and plots both curves to bench/results/bench_race.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
RESULTS = ROOT / "bench" / "results" / "bench_race.json"
PLOT = ROOT / "bench" / "results" / "bench_race.png"
DEMO_CONFIG = "configs/demo.yaml"
MIRROR = Path("/work/.mirror")

TEXT_BYTES = 2_500_000  # JSONL text in; ~0.9 MB of it survives the corpus stage's filters
# The data stages' settings on top of the demo config. val_fraction 0.15: after near-copies of
# training text go back to train, ~12% of the text (54 documents, ~105 KB) is val, as prepare.py's 10%.
DATA_SETTINGS = {"shards.val_fraction": 0.15}
# The demo pretraining run, tuned for a race of minutes: a short warm-up, an evaluation every 25
# steps (~7 s; one costs about three steps) for a curve. train.eval_batches is set to cover the val
# split; the rest is configs/demo.yaml's (its model, batch, learning rate, workers, precision).
PRODUCT_SETTINGS = {
    "train.warmup_steps": 10,
    "train.eval_interval": 25,
    "train.log_interval": 10,
    "train.checkpoint_interval": 100,
}
# nanoGPT's README, "I only have a macbook": the CPU recipe for shakespeare_char.
NANOGPT_RECIPE = (
    "config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
    "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
    "--lr_decay_iters=2000 --dropout=0.0"
).split()
NANOGPT_DATASET = "race_pydoc"  # data/<this>/ in the exported tree

NANOGPT_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
# "[pretrain] step 0 val loss 8.3 (3.412 bpb)" and "[pretrain] step 20/150 | ... | val 4.1 (1.702 bpb) | ..."
PRODUCT_EVAL = re.compile(r"\] step (\d+)\S* .*?\bval (?:loss )?([\d.]+) \(([\d.]+) bpb\)")
GOAL_TIME_SHARE = 0.25
GOAL_LOWER_PCT = 25.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nanogpt", type=Path, help="nanoGPT git dir or checkout (default: in /work/.mirror)"
    )
    parser.add_argument("--nanogpt-iters", type=int, default=2000, help="max_iters and lr_decay_iters")
    # 250: its config's own (the README's recipe keeps it), so the curve adds no evaluations
    parser.add_argument("--nanogpt-eval-interval", type=int, default=250)
    parser.add_argument("--product-budget", type=float, help="train.time_budget, s (default: nanoGPT's wall)")
    parser.add_argument("--product-steps", type=int, help="train.max_steps instead of a time budget")
    parser.add_argument(
        "--product-set", action="append", default=[], metavar="KEY=VALUE", help="more pretrain overrides"
    )
    parser.add_argument(
        "--data-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more data-stage overrides (YAML values)",
    )
    parser.add_argument("--text-bytes", type=int, default=TEXT_BYTES)
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench-race",
        help="workspace, text and logs; kept, so the data stages are reused when up to date",
    )
    args = parser.parse_args()
    if args.nanogpt_iters % args.nanogpt_eval_interval:
        parser.error(
            "--nanogpt-iters must be a multiple of --nanogpt-eval-interval (its last step is evaluated)"
        )
    return args


# --- running a side ------------------------------------------------------------------------------
def run_stamped(cmd: list[str], cwd: Path, log_path: Path) -> dict:
    """Run `cmd`, stamping each line of its stdout and stderr (merged, in order) with the seconds since
    its spawn; every stamped line goes to `log_path` as it arrives. A failure ends the bench."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines as they happen, not at exit
    lines = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"# cwd {cwd}\n# {' '.join(cmd)}\n")
        load_before = os.getloadavg()[0]
        spawned = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        for line in proc.stdout:
            stamp = time.monotonic() - spawned
            line = line.rstrip("\n")
            lines.append((stamp, line))
            log.write(f"{stamp:9.3f} {line}\n")
            log.flush()
        rc = proc.wait()
        wall = time.monotonic() - spawned
    if rc:
        tail = "\n".join(line for _, line in lines[-15:])
        raise SystemExit(f"{cmd[1]} exited {rc} (log {log_path}):\n{tail}")
    # other load on the machine slows a side: recorded, so a run on a busy machine can be told
    return {"lines": lines, "wall_s": wall, "load_avg_1min": [load_before, os.getloadavg()[0]]}


def settings_args(settings: dict) -> list[str]:
    """`--set key=value` pairs; values as JSON, which the job parses as YAML."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


# --- the data ------------------------------------------------------------------------------------
def write_text(work: Path, n_bytes: int) -> Path:
    """The input JSONL (bench/race_data.py, in its own process with a fixed hash seed); replaced only
    when its bytes change, so an up-to-date corpus is reused."""
    path = work / "text" / "pydoc.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_suffix(".new")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, str(ROOT / "bench" / "race_data.py"), str(fresh), "--bytes", str(n_bytes)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    if path.is_file() and path.read_bytes() == fresh.read_bytes():
        fresh.unlink()
    else:
        fresh.replace(path)
    return path


def data_settings(work: Path, text: Path, extra: list[str]) -> dict:
    import yaml

    given = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in extra)}
    return {"workspace": str(work / "ws"), "corpus.inputs": [str(text)], **DATA_SETTINGS, **given}


def run_data_stages(settings: dict, logs: Path) -> float:
    """corpus -> tokenizer -> shards with the product's own job (untimed in the race)."""
    cmd = [sys.executable, "jobs/pipeline.py", "--config", DEMO_CONFIG, *settings_args(settings)]
    run = run_stamped([*cmd, "--stages", "corpus,tokenizer,shards"], ROOT, logs / "data.log")
    return run["wall_s"]


def product_config(settings: dict, extra: list[str]):
    """The pretrain job's config: `settings` then `extra` (KEY=VALUE as typed)."""
    from pipelines.config import load_config

    overrides = [f"{k}={json.dumps(v)}" for k, v in settings.items()] + list(extra)
    return load_config(ROOT / DEMO_CONFIG, overrides)


def eval_batches_for(cfg) -> int:
    """train.eval_batches that cover every val window of the published shards (and no more)."""
    from pipelines.core.workflow import Runner
    from pipelines.stages import pipeline_stages

    shards = Runner(cfg, pipeline_stages(), log=lambda m: None).published("shards")
    windows = shards.manifest["splits"]["val"]["tokens"] // (cfg.model.resolved("block_size") + 1)
    return max(1, math.ceil(windows / cfg.train.global_batch_size))


# --- nanoGPT -------------------------------------------------------------------------------------
def find_nanogpt(given: Path | None) -> Path:
    """The git dir of nanoGPT's snapshot: `given` (a git dir, a checkout or a mirror folder), else
    /work/.mirror/karpathy+nanoGPT*."""
    roots = [given] if given else sorted(MIRROR.glob("karpathy+nanoGPT*"))
    for root in roots:
        for candidate in (root, root / ".git", root / "repo", root / "repo" / ".git"):
            if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
                return candidate
    where = given or f"{MIRROR}/karpathy+nanoGPT*"
    raise SystemExit(f"no nanoGPT git snapshot at {where}: fetch github:karpathy/nanoGPT or pass --nanogpt")


def export_nanogpt(git_dir: Path, dest: Path) -> str:
    """`git archive HEAD | tar -x` into `dest`; returns the commit."""
    archive = subprocess.Popen(["git", f"--git-dir={git_dir}", "archive", "HEAD"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait():
        raise SystemExit(f"git archive of {git_dir} failed")
    commit = subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    return commit.stdout.strip()


def nanogpt_command(args, out_dir: Path) -> list[str]:
    recipe = [a for a in NANOGPT_RECIPE if not a.startswith(("--max_iters=", "--lr_decay_iters="))]
    iters = args.nanogpt_iters
    extra = [
        f"--max_iters={iters}",
        f"--lr_decay_iters={iters}",
        f"--eval_interval={args.nanogpt_eval_interval}",
    ]
    extra += [f"--out_dir={out_dir}", f"--dataset={NANOGPT_DATASET}"]
    return [sys.executable, "train.py", *recipe, *extra]


def nanogpt_curve(lines: list, chars_per_byte: float) -> list[dict]:
    curve = []
    for stamp, line in lines:
        match = NANOGPT_EVAL.match(line)
        if match:
            loss = float(match.group(3))
            bpb = loss / math.log(2) * chars_per_byte
            curve.append({"t": stamp, "step": int(match.group(1)), "val_loss": loss, "bpb": bpb})
    return curve


def product_curve(lines: list) -> list[dict]:
    curve = []
    for stamp, line in lines:
        match = PRODUCT_EVAL.search(line)
        if match:
            step, loss, bpb = int(match.group(1)), float(match.group(2)), float(match.group(3))
            curve.append({"t": stamp, "step": step, "val_loss": loss, "bpb": bpb})
    return curve


# --- the figures ---------------------------------------------------------------------------------
def race_figures(nano: dict, product: dict) -> dict:
    """(1) the product's first time at or below nanoGPT's final bpb / nanoGPT's wall; (2) its bpb at
    nanoGPT's wall time (last evaluation by then), % below nanoGPT's final bpb."""
    target, wall = nano["final_bpb"], nano["wall_s"]
    reached = next((p["t"] for p in product["curve"] if p["bpb"] <= target), None)
    by_then = [p for p in product["curve"] if p["t"] <= wall]
    at_wall = by_then[-1]["bpb"] if by_then else None
    return {
        "product_reaches_nanogpt_final_s": reached,
        "time_share": reached / wall if reached is not None else None,
        "time_share_goal": GOAL_TIME_SHARE,
        "product_bpb_at_nanogpt_wall": at_wall,
        "lower_pct": 100 * (target - at_wall) / target if at_wall is not None else None,
        "lower_pct_goal": GOAL_LOWER_PCT,
    }


def side_summary(run: dict, curve: list[dict], command: list[str]) -> dict:
    if not curve:
        raise SystemExit(f"no evaluation line parsed from {command[1]}'s output")
    return {
        "command": " ".join(command),
        "wall_s": run["wall_s"],
        "final_bpb": curve[-1]["bpb"],
        "final_eval_s": curve[-1]["t"],
        "first_eval_s": curve[0]["t"],  # start-up: interpreter, imports, Ray, workers
        "load_avg_1min": run["load_avg_1min"],  # before and after
        "curve": curve,
    }


def plot(nano: dict, product: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, side in (("nanoGPT (char, CPU recipe)", nano), ("product (Ray Train + DeepSpeed)", product)):
        ax.plot(
            [p["t"] for p in side["curve"]], [p["bpb"] for p in side["curve"]], marker="o", ms=3, label=name
        )
    ax.axhline(nano["final_bpb"], color="gray", ls="--", lw=0.8, label="nanoGPT final bpb")
    ax.axvline(nano["wall_s"], color="gray", ls=":", lw=0.8, label="nanoGPT wall time")
    ax.axvline(GOAL_TIME_SHARE * nano["wall_s"], color="green", ls=":", lw=0.8, label="goal: 1/4 of it")
    ax.set_xlabel("seconds since process start")
    ax.set_ylabel("val bits per byte")
    ax.set_title("Same text, same val documents: bpb against wall time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_report(nano: dict, product: dict, figures: dict) -> None:
    print(f"{'':34}{'final bpb':>10}{'wall s':>9}{'1st eval s':>12}")
    for name, side in (("nanoGPT train.py, CPU recipe", nano), ("product jobs/pretrain.py", product)):
        print(f"{name:34}{side['final_bpb']:>10.3f}{side['wall_s']:>9.1f}{side['first_eval_s']:>12.1f}")
    reached, share = figures["product_reaches_nanogpt_final_s"], figures["time_share"]
    first = "never" if reached is None else f"{reached:.1f}s = {share:.2f} of nanoGPT's wall time"
    print(f"(1) product at nanoGPT's final bpb: {first} (goal <= {GOAL_TIME_SHARE:.2f})")
    at_wall, lower = figures["product_bpb_at_nanogpt_wall"], figures["lower_pct"]
    second = "no evaluation by then" if at_wall is None else f"{at_wall:.3f} bpb, {lower:.1f}% lower"
    print(f"(2) product at nanoGPT's wall time: {second} (goal >= {GOAL_LOWER_PCT:.0f}%)")
    load = max(nano["load_avg_1min"] + product["load_avg_1min"])
    if load > (os.cpu_count() or 1):
        print(
            f"WARNING: 1-min load average up to {load:.1f} on {os.cpu_count()} CPUs: the times are inflated"
        )


def main() -> int:
    args = parse_args()
    work = args.work.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logs = work / "logs" / stamp
    git_dir = find_nanogpt(args.nanogpt)

    text = write_text(work, args.text_bytes)
    data = data_settings(work, text, args.data_set)
    data_s = run_data_stages(data, logs)

    from race_data import split_texts, write_char_dataset

    cfg = product_config(data, args.product_set)
    with tempfile.TemporaryDirectory(prefix="bench-race-nanogpt-") as tmp:
        tree = Path(tmp)
        commit = export_nanogpt(git_dir, tree)
        dataset = write_char_dataset(split_texts(cfg), tree / "data" / NANOGPT_DATASET)
        nano_cmd = nanogpt_command(args, tree / "out")
        nano_run = run_stamped(nano_cmd, tree, logs / "nanogpt.log")
    nano = side_summary(nano_run, nanogpt_curve(nano_run["lines"], dataset["val_chars_per_byte"]), nano_cmd)
    nano["commit"] = commit

    # The product trains for nanoGPT's wall time (or --product-budget / --product-steps).
    budget = args.product_budget or nano["wall_s"]
    stopping = (
        {"train.max_steps": args.product_steps}
        if args.product_steps
        else {"train.time_budget": f"{budget:.0f}s"}
    )
    product_settings = {
        **PRODUCT_SETTINGS,
        "train.eval_batches": eval_batches_for(cfg),
        **stopping,
        "train.run_name": f"race-{stamp}",  # a fresh run each time: never resumes an earlier one
    }
    product_cmd = [sys.executable, "jobs/pretrain.py", "--config", DEMO_CONFIG]
    product_cmd += settings_args({**data, **product_settings})
    product_cmd += [arg for item in args.product_set for arg in ("--set", item)]  # as typed
    product_run = run_stamped(product_cmd, ROOT, logs / "product.log")
    product = side_summary(product_run, product_curve(product_run["lines"]), product_cmd)

    figures = race_figures(nano, product)
    result = {
        "command": "python bench/bench_race.py " + " ".join(sys.argv[1:]),
        "data": {**dataset, "text_jsonl": str(text), "data_stages_s": data_s, "data_settings": data},
        "nanogpt": nano,
        "product": {**product, "settings": product_settings, "extra_settings": args.product_set},
        "figures": figures,
        "logs": str(logs),
        "cpu_count": os.cpu_count(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    plot(nano, product, PLOT)
    print_report(nano, product, figures)
    print(f"logs {logs}; written {RESULTS.relative_to(ROOT)}, {PLOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
