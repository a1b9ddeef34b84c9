"""stats.json and the funnel: documents in and out of every stage, drops by reason, seconds.

Invariant (checked before anything is published): input_docs == kept_docs + sum(dropped).
Per-document stages report worker CPU seconds (summed over workers, so a busy machine does not
inflate them); the dedup stages report the wall seconds of their Ray rounds.
"""

from __future__ import annotations

from collections import Counter

from pipelines.corpus.schema import STAGES


def combine(file_counts: list[dict], dedup_stats: dict, input_bytes: int, wall: dict) -> dict:
    dropped: Counter = Counter()
    by_stage: Counter = Counter()
    worker: Counter = Counter()
    by_source: dict[str, Counter] = {}
    for c in file_counts:
        for source, counts in c["by_source"].items():
            by_source.setdefault(source, Counter()).update(counts)
        dropped.update(c["dropped"])
        by_stage.update(c["dropped_by_stage"])
        worker.update(c["seconds"])
    input_docs = sum(c["input_docs"] for c in file_counts)
    kept = sum(c["kept_docs"] for c in file_counts)
    seconds = {
        **{s: worker[s] for s in ("read", "extract", "normalize", "language")},
        "quality": worker["quality"] + worker["pii"],
        "decontaminate": worker["decontaminate"],  # with the n-gram hashes of index/ngrams
        "dedup_exact": dedup_stats.get("exact", {}).get("seconds", 0.0),
        "dedup_fuzzy": dedup_stats.get("fuzzy", {}).get("seconds", 0.0) + worker["minhash"],
    }
    stages, remaining = {}, input_docs
    for name in STAGES:
        out = remaining - by_stage[name]
        stages[name] = {"in": remaining, "out": out, "seconds": round(seconds[name], 3)}
        remaining = out
    stats = {
        "input_docs": input_docs,
        "kept_docs": kept,
        "dropped": dict(sorted(dropped.items())),
        "stages": stages,
        "input_bytes": input_bytes,
        "kept_chars": sum(c["kept_chars"] for c in file_counts),
        # per input file (its name below the inputs' root): records read and documents kept
        "by_source": {s: dict(by_source[s]) for s in sorted(by_source)},
        # exact copies of a page or a text whose outcome came from a worker's memo (memo.py)
        "recalled_docs": sum(c["recalled_docs"] for c in file_counts),
        "dedup": {k: {n: v for n, v in d.items() if n != "seconds"} for k, d in dedup_stats.items()},
        "wall_seconds": {k: round(v, 3) for k, v in wall.items()},
    }
    if input_docs != kept + sum(dropped.values()) or remaining != kept:
        raise RuntimeError(f"corpus counts do not add up: {stats}")
    return stats


def preload_plotting() -> None:
    """Import matplotlib ahead of `funnel_png` (about half a second of CPU): the funnel is drawn last,
    when nothing else runs, so a build imports it on a thread while its workers are busy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def funnel_png(stats: dict) -> bytes:
    """Bar chart of documents left after each stage, and the top drop reasons."""
    import io

    preload_plotting()
    import matplotlib.pyplot as plt

    stages = {n: stats["stages"][n] for n in STAGES if n in stats["stages"]}  # funnel order, not JSON's
    reasons = sorted(stats["dropped"].items(), key=lambda kv: -kv[1])[:15]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.3]})
    names = ["input", *stages]
    counts = [stats["input_docs"], *[s["out"] for s in stages.values()]]
    left.barh(names[::-1], counts[::-1], color="#4c72b0")
    for y, value in enumerate(counts[::-1]):
        left.text(value, y, f" {value}", va="center", fontsize=8)
    left.set_title("documents remaining after each stage")
    if reasons:
        right.barh([r for r, _ in reasons][::-1], [n for _, n in reasons][::-1], color="#dd8452")
    right.set_title("dropped documents by reason")
    right.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def log_funnel(stats: dict, png: bytes) -> None:
    """The funnel to the active MLflow run: `funnel_docs` with one step per stage (the UI draws it
    as a curve) and the PNG. The per-stage and per-reason counts arrive as the stage's metrics."""
    import tempfile
    from pathlib import Path

    import mlflow

    mlflow.log_metric("funnel_docs", stats["input_docs"], step=0)
    for step, stage in enumerate(stats["stages"].values(), start=1):
        mlflow.log_metric("funnel_docs", stage["out"], step=step)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "funnel.png"
        path.write_bytes(png)
        mlflow.log_artifact(str(path))


def add(a: dict, b: dict) -> dict:
    """The stats of a corpus made of two parts (a refreshed version: its parent's documents and the
    new ones): every count and second summed, key by key; the invariant still holds."""

    def merged(x, y):  # None: the key is missing on that side
        if isinstance(x, dict) or isinstance(y, dict):
            x, y = x or {}, y or {}
            return {k: merged(x.get(k), y.get(k)) for k in sorted({*x, *y})}
        total = (x or 0) + (y or 0)
        return round(total, 3) if isinstance(total, float) else total

    stats = merged(a, b)
    if stats["input_docs"] != stats["kept_docs"] + sum(stats["dropped"].values()):
        raise RuntimeError(f"corpus counts do not add up: {stats}")
    return stats
