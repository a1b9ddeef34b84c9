"""Refresh cost against corpus size: the same new documents added to a corpus of 1x and 4x size, next
to the peer, a full rebuild (corpus + tokenizer + shards stages over all inputs, as the pipeline
does when its inputs change).

    .venv/bin/python bench/bench_refresh.py [--docs 4000] [--scales 1,4] [--new 0.05] [--rounds 2]

Corpus: English-like prose (tests/corpus_inputs.english_doc, ~150 words a document) in JSONL files
of 200 documents; the 4x corpus is the 1x corpus and three times as much again. The new batch is
`--new` of the 1x corpus (5%: the same files for every scale, so that only the corpus size
changes): fresh documents plus exact and near copies of corpus documents, so that dedup against
the index finds something. Per scale the corpus, tokenizer and shards are built first (untimed);
then `refresh()` runs `--rounds` times, each in a fresh copy of that workspace (the fastest
counts: other processes' load only adds), from taking the lock to the published shards, MLflow
included; then the full rebuild runs once. Both sides share one local Ray (2 CPUs), started before
timing. Prints a table and writes bench/results/bench_refresh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILE_DOCS = 200
SETTINGS = (
    "tokenizer.vocab_size=1024",
    "shards.shard_tokens=1000000",
    "shards.val_fraction=0.01",
    "ray.num_cpus=2",
    "ray.object_store_memory_mb=1024",
)


def write_jsonl(path: Path, docs: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))


def make_inputs(root: Path, docs: int, scales: list[int], new_fraction: float) -> dict:
    """corpus files per scale (each scale's a superset of the smaller ones') and the new batch."""
    from tests.corpus_inputs import english_doc

    rng = random.Random(0)
    corpus = [(f"d{i}", english_doc(rng)) for i in range(docs * max(scales))]
    files = []
    for start in range(0, len(corpus), FILE_DOCS):
        path = root / "corpus" / f"part-{start // FILE_DOCS:05d}.jsonl"
        write_jsonl(path, corpus[start : start + FILE_DOCS])
        files.append(path)
    new_docs = max(10, int(docs * new_fraction))
    copies = max(2, new_docs // 20)  # 5% exact and 5% near copies of corpus documents
    new = [(f"n{i}", english_doc(rng)) for i in range(new_docs - 2 * copies)]
    new += [(f"exact{i}", corpus[i][1]) for i in range(copies)]
    new += [(f"near{i}", corpus[copies + i][1].replace(" the ", " a ", 1)) for i in range(copies)]
    write_jsonl(root / "new" / "batch-0000.jsonl", new)
    per_file = docs // FILE_DOCS
    return {
        "corpus": {s: files[: s * per_file] for s in scales},
        "new": [root / "new" / "batch-0000.jsonl"],
        "new_docs": len(new),
    }


def config(work: Path, ws: Path, inputs: list[Path]):
    from pipelines.config import load_config

    return load_config(
        None,
        [
            f"workspace={ws}",
            f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"corpus.inputs={json.dumps([str(p) for p in inputs])}",
            *SETTINGS,
        ],
    )


def full_build(work: Path, ws: Path, inputs: list[Path]) -> float:
    from pipelines.core.workflow import Runner
    from pipelines.corpus.stage import corpus_stage
    from pipelines.shards.stage import shards_stage
    from pipelines.tokenizer.stage import tokenizer_stage

    started = time.perf_counter()
    Runner(
        config(work, ws, inputs), [corpus_stage(), tokenizer_stage(), shards_stage()], log=lambda m: None
    ).run()
    return time.perf_counter() - started


def timed_refresh(work: Path, base_ws: Path, ws: Path, inputs: list[Path]) -> dict:
    from pipelines.refresh.stage import refresh

    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base_ws, ws)
    started = time.perf_counter()
    result = refresh(config(work, ws, inputs), log=lambda m: None)
    seconds = time.perf_counter() - started
    assert result.status == "refreshed", result.status
    increment = result.corpus.manifest["refresh"]["stats"]
    return {
        "seconds": round(seconds, 2),
        "corpus_seconds": result.corpus.manifest["seconds"],
        "shards_seconds": result.shards.manifest["seconds"],
        "new_input_docs": increment["input_docs"],
        "new_kept_docs": increment["kept_docs"],
        "corpus_kept_docs": result.corpus.manifest["kept_docs"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4000, help="documents in the 1x corpus")
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--new", type=float, default=0.05, help="new documents, as a share of the 1x corpus")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    from pipelines.runtime.ray import init_ray

    work = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    inputs = make_inputs(work / "in", args.docs, scales, args.new)
    init_ray(config(work, work / "unused", []))
    load_before = os.getloadavg()[0]
    rows = []
    for scale in scales:
        base_ws = work / f"base-{scale}x"
        base_seconds = full_build(work, base_ws, inputs["corpus"][scale])
        refreshes = [
            timed_refresh(work, base_ws, work / f"refresh-{scale}x", inputs["corpus"][scale] + inputs["new"])
            for _ in range(args.rounds)
        ]
        best = min(refreshes, key=lambda r: r["seconds"])
        rebuild = full_build(work, work / f"rebuild-{scale}x", inputs["corpus"][scale] + inputs["new"])
        rows.append(
            {
                "scale": scale,
                "corpus_docs": args.docs * scale,
                "new_docs": inputs["new_docs"],
                "base_build_seconds": round(base_seconds, 2),
                "refresh": best,
                "refresh_rounds_seconds": [r["seconds"] for r in refreshes],
                "rebuild_seconds": round(rebuild, 2),
                "rebuild_over_refresh": round(rebuild / best["seconds"], 2),
            }
        )
    first, last = rows[0], rows[-1]
    summary = {
        "refresh_ratio": round(last["refresh"]["seconds"] / first["refresh"]["seconds"], 2),
        "rebuild_ratio": round(last["rebuild_seconds"] / first["rebuild_seconds"], 2),
        "scales": f"{last['scale']}x / {first['scale']}x",
    }
    result = {
        "command": "python bench/bench_refresh.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "rows": rows,
        "summary": summary,
    }
    print(
        f"\n{'scale':>5} {'corpus docs':>11} {'new docs':>8} {'refresh s':>9} {'(corpus':>8} {'shards)':>8} "
        f"{'rebuild s':>9} {'rebuild/refresh':>15}"
    )
    for r in rows:
        f = r["refresh"]
        print(
            f"{r['scale']:>4}x {r['corpus_docs']:>11} {r['new_docs']:>8} {f['seconds']:>9.1f} "
            f"{f['corpus_seconds']:>8.1f} {f['shards_seconds']:>8.1f} {r['rebuild_seconds']:>9.1f} "
            f"{r['rebuild_over_refresh']:>15.1f}"
        )
    print(
        f"\nrefresh {summary['scales']}: {summary['refresh_ratio']} (goal: near 1); "
        f"full rebuild {summary['scales']}: {summary['rebuild_ratio']}; "
        f"load average {result['load_average_before']} -> {result['load_average_after']}"
    )
    out = ROOT / "bench" / "results" / "bench_refresh.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
