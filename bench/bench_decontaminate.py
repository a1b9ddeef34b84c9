"""What decontamination and the sampled n-gram index (index/ngrams) cost the corpus stage.

    .venv/bin/python bench/bench_decontaminate.py [--scale 16] [--repeats 3] [--eval-docs 5000]

Corpus: bench_corpus.py's (Python's documentation as WARC.gz, scale k = k edited replicas). Eval
set: `--eval-docs` JSONL documents of 100 words, like a benchmark's test split: windows of the
extracted text of 1 page in 50 (so their pages and replicas are contaminated) and the rest random
words of the corpus's vocabulary. Three variants, each in a fresh process, interleaved run by run,
the median reported:

  off            no eval files, and neither the n-gram step nor index/ngrams and index/records
                 (patched out, and publish resolves no duplicate's record): the build before them
  index          no eval files: the n-gram hashes and the kept documents' index every build now
                 makes, and duplicates named by their input records
  decontaminate  the eval set: its table read on the driver, every document checked, the index

After each `index` and `decontaminate` build, the overlap check that the shards' val split and
the champion gate both run (pipelines/core/ngrams.py: read index/ngrams, the training split's
distinct n-grams, each val candidate's share; val by the shards' hash at val_fraction 0.005) is
timed on the driver as `overlap_seconds`.

Prints a table and writes bench/results/bench_decontaminate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_corpus import CPUS, build_corpus_files, corpus_settings, pages  # noqa: E402

VARIANTS = ("off", "index", "decontaminate")
# A run of the 16x corpus takes about 30 s. Now and then Ray Data's document step stalls in every
# variant (the repartition tasks hold both CPUs, backpressured, while the processing tasks wait for
# a CPU) and a run takes minutes; such a run is stopped and made again, and counted.
RUN_LIMIT_S = 80


def write_evals(base: list[tuple[str, str]], n_docs: int, path: Path) -> int:
    """The eval JSONL; returns how many of its documents are windows of corpus pages."""
    from pipelines.corpus.extract import decode_html, extract_text

    rng = random.Random(0)
    texts = [extract_text(decode_html(html.encode())) for _, html in base[::50]]
    vocab = sorted({w for t in texts for w in t.split() if w.isalpha()})
    docs = []
    for text in texts:
        words = text.split()
        start = rng.randrange(max(1, len(words) - 100))
        docs.append(" ".join(words[start : start + 100]))
    while len(docs) < n_docs:
        docs.append(" ".join(rng.choice(vocab) for _ in range(100)))
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return len(texts)


def disable_ngrams() -> None:
    """The `off` variant: no n-gram step in the workers (so no staging column), no index/ngrams.
    The workers get it through wrappers of the functions Ray sends them (defined here, in __main__,
    so pickled by value), not a runtime_env hook, which would slow every worker's start."""
    from pipelines.corpus import build, process

    def off(fn):
        def wrapper(*args, **kwargs):
            from pipelines.corpus import process

            process.DocumentProcessor.decontaminate = lambda self, rows: None
            return fn(*args, **kwargs)

        return wrapper

    def no_records(fn):
        def wrapper(*args, **kwargs):
            from pipelines.corpus import publish

            publish.records_of = lambda *args: {}
            return fn(*args, **kwargs)

        return wrapper

    build.warm_up, build.process_batch = off(process.warm_up), off(process.process_batch)
    build.write_kept_index = lambda *args: None
    build.publish_file = no_records(build.publish_file)


def overlap_seconds(ws, corpus_dir: str) -> float:
    """The val split's and the gate's n-gram overlap over a built corpus, timed."""
    import numpy as np

    from pipelines.core import ngrams
    from pipelines.core.hashing import stable_hash

    started = time.perf_counter()
    ng, _ = ngrams.read_ngrams(ws, corpus_dir)
    threshold = int(0.005 * 2**64)
    val = np.array([stable_hash(f"{d:016x}", "val") < threshold for d in ng.docs.tolist()])
    shares = ng.overlap_shares(ngrams.distinct(ng.of(~val)))[val]
    assert len(shares) > 0
    return time.perf_counter() - started


def job(spec_path: str) -> None:
    """--job: one corpus build in this fresh process, measured from its driver."""
    import ray

    from pipelines.core.workspace import Workspace
    from pipelines.corpus.build import build_corpus
    from pipelines.corpus.sources import resolve

    spec = json.loads(Path(spec_path).read_text())
    cfg = corpus_settings("resiliparse").model_copy(update={"decontaminate": spec["evals"]})
    if spec["variant"] == "off":
        disable_ngrams()
    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    logs: list[tuple[float, str]] = []
    started = time.perf_counter()
    stats = build_corpus(
        Workspace(spec["work"]),
        resolve([spec["inputs"]]),
        cfg,
        "corpus",
        log=lambda m: logs.append((time.perf_counter() - started, m)),
    )
    wall = time.perf_counter() - started
    ray.shutdown()
    overlap = overlap_seconds(Workspace(spec["work"]), "corpus") if spec["variant"] != "off" else None
    result = {"wall_seconds": wall, "stats": stats, "logs": logs, "overlap_seconds": overlap}
    Path(spec["out"]).write_text(json.dumps(result))


def run(variant: str, inputs: Path, evals: Path, work: Path) -> dict:
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = {
        "variant": variant,
        "inputs": str(inputs),
        "evals": [str(evals)] if variant == "decontaminate" else [],
        "work": str(work),
        "out": str(work / "result.json"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    for attempt in range(3):
        # Its own session, so that a run past the limit is stopped with every Ray process it started.
        proc = subprocess.Popen(
            [sys.executable, __file__, "--job", str(work / "spec.json")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"{variant}: stalled past {RUN_LIMIT_S}s (attempt {attempt + 1}), run again", flush=True)
            continue
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{stderr[-4000:]}")
        return {**json.loads((work / "result.json").read_text()), "stalled_attempts": attempt}
    raise RuntimeError(f"{variant}: stalled three times")


def summary(runs: dict[str, list[dict]]) -> dict:
    out = {}
    for variant, results in runs.items():
        results = sorted(results, key=lambda r: r["wall_seconds"])
        median = results[len(results) // 2]
        stats = median["stats"]
        out[variant] = {
            "wall_seconds": median["wall_seconds"],
            "wall_seconds_runs": [r["wall_seconds"] for r in results],
            "decontaminate_worker_seconds": stats["stages"]["decontaminate"]["seconds"],
            "contaminated": stats["dropped"].get("contaminated", 0),
            "input_docs": stats["input_docs"],
            "kept_docs": stats["kept_docs"],
            "wall_seconds_by_phase": stats["wall_seconds"],
            "stalled_attempts": sum(r["stalled_attempts"] for r in results),
            "overlap_seconds": median["overlap_seconds"],
        }
    off = out["off"]["wall_seconds"]
    for variant in VARIANTS[1:]:
        extra = out[variant]["wall_seconds"] - off
        out[variant]["extra_seconds"] = extra
        out[variant]["extra_share"] = extra / off
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-docs", type=int, default=5000)
    parser.add_argument("--pages", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_decontaminate.json"))
    parser.add_argument("--job", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        return job(args.job)
    cache = Path(tempfile.gettempdir()) / "bench-corpus-cache"
    cache.mkdir(exist_ok=True)
    base = pages(cache, args.pages)
    with tempfile.TemporaryDirectory(prefix="bench-decontaminate-") as tmp:
        inputs, evals = Path(tmp) / "in", Path(tmp) / "evals.jsonl"
        build_corpus_files(base, args.scale, inputs)
        from_pages = write_evals(base, args.eval_docs, evals)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        run("index", inputs, evals, Path(tmp) / "warm-up")  # file cache, models: not counted
        for _ in range(args.repeats):
            for variant in VARIANTS:
                runs[variant].append(run(variant, inputs, evals, Path(tmp) / variant))
                print(f"{variant:<14} {runs[variant][-1]['wall_seconds']:.1f}s", flush=True)
        result = {
            "scale": args.scale,
            "input_mb": int((Path(tmp) / "in.html_bytes").read_text()) / 1e6,
            "eval_docs": args.eval_docs,
            "eval_docs_from_pages": from_pages,
            "load_average": list(os.getloadavg()),
            "variants": summary(runs),
        }
    print(
        f"\nscale {args.scale}x: {result['variants']['off']['input_docs']} documents, {result['input_mb']:.0f} MB"
    )
    print(
        f"{'variant':<14} {'wall s':>7} {'extra s':>8} {'share':>6} {'step worker-s':>14} {'contaminated':>12} "
        f"{'overlap s':>9}"
    )
    for variant, r in result["variants"].items():
        extra = r.get("extra_seconds", 0.0)
        print(
            f"{variant:<14} {r['wall_seconds']:7.1f} {extra:8.1f} {extra / result['variants']['off']['wall_seconds']:6.1%} "
            f"{r['decontaminate_worker_seconds']:14.2f} {r['contaminated']:12d} "
            f"{r['overlap_seconds'] or 0.0:9.2f}"
        )
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
