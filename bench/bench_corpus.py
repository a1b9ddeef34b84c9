"""Corpus stage benchmark: our Ray pipeline against datatrove 0.10.1, on the same corpus, same run.

    .venv/bin/python bench/bench_corpus.py [--scales 1,4,16] [--datatrove-scales 1] [--pages N]
                                           [--repeats 5] [--repeat-up-to 4]

Corpus: Python's documentation rendered by pydoc (the demo's pages: standard library, numpy, pandas),
as WARC.gz crawl files. Scale 1x is every page plus edited copies of a third of them (a few percent
to 30% of the words replaced); scale k adds k-1 edited replicas of all of that. Both pipelines run
the same steps with the same settings: resiliparse extraction (datatrove also with its default,
trafilatura), Gopher repetition + Gopher quality + C4 + length filters with the demo's parameters,
exact dedup, MinHash over word 5-grams with 14 bands x 8 rows; both label every document's language
with the same fastText lid.176 model (no language is dropped). Both get the machine's 2 cores. At
scales up to 4x every system runs 5 times and the run with the median time is reported (all times
are kept in the JSON).

Reports, per scale: documents/s and MB/s end to end and per stage, seconds per 1000 documents,
driver and worker peak memory; for datatrove the same figures and our speed-up; dedup precision and
recall on the edited copies (positives: word-5-gram Jaccard >= 0.8 on the extracted text); and the
Ray Data floor: the time of a job of our shape that does no work. datatrove's time divided by it is
the speed-up no Ray Data pipeline can pass on a fresh cluster. Prints a table and writes bench/results/corpus.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from pipelines.config import load_config  # noqa: E402

DT_VENV = ROOT / "bench" / ".venv-datatrove"
EDIT_RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
POSITIVE_J = (0.75, 0.8)  # pairs at or above count as true duplicates; 0.75 is our merge threshold
CPUS = 2


# --- corpus ------------------------------------------------------------------------------------
def pages(cache: Path, limit: int | None) -> list[tuple[str, str]]:
    """(name, HTML) of the demo's pydoc pages, rendered once in a subprocess and cached."""
    path = cache / "pages.pkl"
    if not path.exists():
        code = (
            "import pickle, sys; from pipelines.corpus.demo import render_pages; "
            "pickle.dump([(n, h) for n, h, _ in render_pages()], open(sys.argv[1], 'wb'))"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(path)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL
        )
    with open(path, "rb") as f:
        out = pickle.load(f)
    return out[:limit] if limit else out


def build_corpus_files(base: list[tuple[str, str]], scale: int, out: Path) -> dict[str, int]:
    """WARC.gz files for `scale`; returns url -> group (the page a record was made from).
    The HTML size (what the MB/s figures count, uncompressed) goes to "<out>.html_bytes" beside it."""
    from warcio.warcwriter import WARCWriter

    from pipelines.corpus.demo import _http, edit_html

    rng = random.Random(scale)
    records, group = [], {}
    for replica in range(scale):
        for i, (name, html) in enumerate(base):
            url = f"https://bench.example/{replica}/{name}"
            body = html if replica == 0 else edit_html(html, rng.choice(EDIT_RATES), rng)
            records.append((url, body))
            group[url] = i
            if replica == 0 and i % 3 == 0:
                copy = f"https://mirror.example/{name}"
                records.append((copy, edit_html(html, rng.choice(EDIT_RATES), rng)))
                group[copy] = i
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.html_bytes").write_text(str(sum(len(body.encode()) for _, body in records)))
    shards = 8 * scale
    for s in range(shards):
        with open(out / f"crawl-{s:04d}.warc.gz", "wb") as f:
            writer = WARCWriter(f, gzip=True)
            for url, body in records[s::shards]:
                headers, payload = _http(body.encode())
                writer.write_record(
                    writer.create_warc_record(
                        url,
                        "response",
                        payload=payload,
                        http_headers=headers,
                        warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"},
                    )
                )
    return group


# --- measuring ---------------------------------------------------------------------------------
class PeakMemory(threading.Thread):
    """Peak RSS of this process (the driver) and of the Ray worker processes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.driver = self.worker = self.workers_total = 0
        self.running = True

    def run(self):
        me = psutil.Process()
        while self.running:
            self.driver = max(self.driver, me.memory_info().rss)
            rss = []
            for p in psutil.process_iter(["name", "cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if (p.info["name"] or "").startswith("ray::") or "default_worker.py" in cmd:
                        if p.memory_info().rss and self._ours(p):
                            rss.append(p.memory_info().rss)
                except psutil.Error:
                    continue
            if rss:
                self.worker = max(self.worker, max(rss))
                self.workers_total = max(self.workers_total, sum(rss))
            time.sleep(0.2)

    def _ours(self, proc) -> bool:
        """Workers of this benchmark's Ray (other Rays may run on the machine)."""
        import ray

        session = ray._private.worker._global_node.get_session_dir_path()
        try:
            return any(session in arg for arg in proc.cmdline())
        except psutil.Error:
            return False


def corpus_settings(extractor: str):
    demo = load_config(ROOT / "configs" / "demo.yaml")
    return load_config(
        None,
        [
            "corpus.languages=[]",
            f"corpus.extractor={extractor}",
            f"corpus.filter_params={json.dumps(demo.corpus.filter_params)}",
        ],
    ).corpus


def run_ours(inputs: Path, work: Path, extractor: str, floor: bool = False) -> dict:
    """Our pipeline in a fresh process (a fresh driver, so its memory is the job's alone). `floor`:
    instead, the least any Ray Data job pays there (see ray_data_floor)."""
    shutil.rmtree(work, ignore_errors=True)  # a repeat starts from nothing, as the first run did
    work.mkdir(parents=True)
    spec = work / "spec.json"
    spec.write_text(
        json.dumps({"inputs": str(inputs), "work": str(work), "extractor": extractor, "floor": floor})
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--ours-job", str(spec)], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"our pipeline failed:\n{proc.stderr[-4000:]}")
    return json.loads((work / "result.json").read_text())


def ours_job(spec_path: str) -> None:
    """--ours-job: what a `prepare_corpus` job does, measured from inside its driver."""
    import pyarrow.parquet as pq
    import ray

    from pipelines.core.workspace import Workspace
    from pipelines.corpus.build import build_corpus
    from pipelines.corpus.sources import resolve

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    cfg = corpus_settings(spec["extractor"])
    ray.init(num_cpus=CPUS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    if spec["floor"]:
        (work / "result.json").write_text(json.dumps({"wall_seconds": ray_data_floor(work)}))
        return ray.shutdown()
    memory = PeakMemory()
    memory.start()
    started = time.perf_counter()
    stats = build_corpus(Workspace(str(work)), resolve([spec["inputs"]]), cfg, "corpus", log=lambda m: None)
    wall = time.perf_counter() - started
    memory.running = False
    memory.join()
    data = pq.read_table(work / "corpus" / "data", columns=["id", "url"]).to_pylist()
    rejects = pq.read_table(
        work / "corpus" / "rejects", columns=["url", "reason", "duplicate_of"]
    ).to_pylist()
    clusters = {r["url"]: r["id"] for r in data}
    clusters.update({r["url"]: r["duplicate_of"] for r in rejects if r["duplicate_of"]})
    result = {
        "wall_seconds": wall,
        "stats": stats,
        "clusters": clusters,
        "peak_rss_driver_mb": memory.driver / 2**20,
        "peak_rss_worker_mb": memory.worker / 2**20,
        "peak_rss_workers_total_mb": memory.workers_total / 2**20,
    }
    (work / "result.json").write_text(json.dumps(result))
    ray.shutdown()


def ray_data_floor(work: Path) -> float:
    """Seconds from import to finish of a Ray Data job shaped like ours (a read step and a processing
    step over 8 file groups, written to Parquet) that does no work: what any Ray Data pipeline pays
    on a fresh cluster before its first document (the driver's imports, Ray Data's actors, its
    tasks' imports in the workers)."""
    started = time.perf_counter()
    import ray.data

    ds = ray.data.from_items([{"uris": [str(i)]} for i in range(8)], override_num_blocks=8)
    ds = ds.map_batches(lambda b: b, batch_size=1, num_cpus=1, max_retries=3)
    ds.map_batches(lambda b: b).write_parquet(str(work / "floor"))
    return time.perf_counter() - started


def ensure_datatrove() -> Path:
    python = DT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DT_VENV)], check=True)
        req = ROOT / "bench" / "requirements-datatrove.txt"
        subprocess.run([str(DT_VENV / "bin" / "pip"), "install", "-q", "-r", str(req)], check=True)
    return python


def run_datatrove(inputs: Path, work: Path, extractor: str) -> dict:
    from pipelines.corpus.langid import model_path

    cfg = corpus_settings(extractor)
    spec = {
        "input": str(inputs),
        "work": str(work),
        "extractor": extractor,
        "filter_params": cfg.filter_params,
        "ngram": cfg.ngram,
        "bands": cfg.bands,
        "rows": cfg.rows,
        "lid_model": model_path(),
        "tasks": 2 * CPUS,
        "workers": CPUS,
    }
    spec_path = work / "spec.json"
    shutil.rmtree(work, ignore_errors=True)  # datatrove skips tasks its logs mark as done
    work.mkdir(parents=True)
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [str(ensure_datatrove()), str(ROOT / "bench" / "datatrove_corpus.py"), str(spec_path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"datatrove failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_run(repeats: int, run, *args) -> dict:
    """The run with the median wall time of `repeats` runs, with every run's time beside it: a run of
    a few seconds varies by a quarter on this machine, so one run would decide a ratio by chance."""
    runs = sorted((run(*args) for _ in range(repeats)), key=lambda r: r["wall_seconds"])
    return {**runs[len(runs) // 2], "wall_seconds_runs": [r["wall_seconds"] for r in runs]}


# --- dedup quality -----------------------------------------------------------------------------
def texts_by_url(inputs: Path) -> dict[str, str]:
    """Ground truth: the text dedup sees (resiliparse, normalisation, the filters' rewrites such as
    C4's line removal) for every record that passes the filters."""
    from pipelines.corpus.extract import decode_html, extract_text
    from pipelines.corpus.filters import Doc, apply, make_filters
    from pipelines.corpus.normalize import normalize_text
    from pipelines.corpus.readers import ReadOptions, read_file

    cfg = corpus_settings("resiliparse")
    filters = make_filters(cfg.filters, cfg.filter_params)
    out = {}
    for path in sorted(inputs.glob("*.warc.gz")):
        for table in read_file(str(path), ReadOptions(max_doc_bytes=50_000_000, batch_docs=256)):
            for row in table.to_pylist():
                doc = Doc(normalize_text(extract_text(decode_html(row["raw"]))))
                if apply(filters, doc) is None:
                    out[row["url"]] = doc.text
    return out


def shingles(text: str) -> frozenset:
    from pipelines.corpus.minhash import words

    w = words(text)
    return frozenset(tuple(w[i : i + 5]) for i in range(max(1, len(w) - 4)))


def precision_recall(clusters: dict[str, str], group: dict[str, int], sets: dict[str, frozenset]) -> dict:
    """Over pairs of documents that both reached dedup: a pair is merged when both end in the same
    cluster; positives are pairs with word-5-gram Jaccard >= t (for each t in POSITIVE_J) among the
    copies of one page, plus any merged pair across pages that reaches t."""
    jac = lambda a, b: len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b]))  # noqa: E731
    clusters = {u: c for u, c in clusters.items() if u in sets}  # records both pipelines kept
    pairs = []  # (jaccard, merged)
    by_group: dict[int, list[str]] = {}
    for url in clusters:
        by_group.setdefault(group[url], []).append(url)
    for urls in by_group.values():
        pairs += [(jac(a, b), clusters[a] == clusters[b]) for a, b in itertools.combinations(urls, 2)]
    by_cluster: dict[str, list[str]] = {}
    for url, c in clusters.items():
        by_cluster.setdefault(c, []).append(url)
    for urls in by_cluster.values():  # merges across different pages
        pairs += [(jac(a, b), True) for a, b in itertools.combinations(urls, 2) if group[a] != group[b]]
    out = {}
    for t in POSITIVE_J:
        tp = sum(j >= t and m for j, m in pairs)
        fn = sum(j >= t and not m for j, m in pairs)
        fp = sum(m and j < t for j, m in pairs)
        out[f"J>={t}"] = {
            "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn),
            "positive_pairs": tp + fn,
            "merged_pairs": tp + fp,
        }
    return out


# --- report ------------------------------------------------------------------------------------
def ours_rows(scale: int, r: dict, mb: float) -> list[dict]:
    stats = r["stats"]
    rows = [
        {
            "scale": scale,
            "system": "ours",
            "stage": "end to end",
            "docs": stats["input_docs"],
            "seconds": r["wall_seconds"],
            "docs_per_s": stats["input_docs"] / r["wall_seconds"],
            "mb_per_s": mb / r["wall_seconds"],
        }
    ]
    for name, s in stats["stages"].items():
        if s["seconds"] > 0:
            rows.append(
                {
                    "scale": scale,
                    "system": "ours",
                    "stage": name + (" (worker-s)" if not name.startswith("dedup") else ""),
                    "docs": s["in"],
                    "seconds": s["seconds"],
                    "docs_per_s": s["in"] / s["seconds"],
                    "mb_per_s": mb / s["seconds"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--datatrove-scales", default="1")
    parser.add_argument("--datatrove-extractors", default="resiliparse,trafilatura")
    parser.add_argument("--repeats", type=int, default=5, help="runs per system, median reported")
    parser.add_argument("--repeat-up-to", type=int, default=4, help="repeat at scales up to this; once above")
    parser.add_argument("--pages", type=int, default=None, help="use only the first N pages (quick runs)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "corpus.json"))
    parser.add_argument("--ours-job", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_job:
        return ours_job(args.ours_job)
    scales = [int(s) for s in args.scales.split(",")]
    dt_scales = {int(s) for s in args.datatrove_scales.split(",") if s}

    cache = Path(tempfile.gettempdir()) / "bench-corpus-cache"
    cache.mkdir(exist_ok=True)
    base = pages(cache, args.pages)
    results = {"machine": {"cpus": os.cpu_count(), "cpus_used": CPUS}, "pages": len(base), "scales": {}}
    table = []
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        floor = median_run(args.repeats, run_ours, Path(tmp), Path(tmp) / "floor", "resiliparse", True)
        results["ray_data_floor_seconds"] = floor["wall_seconds"]
        results["ray_data_floor_seconds_runs"] = floor["wall_seconds_runs"]
        for scale in scales:
            inputs = Path(tmp) / f"in-{scale}"
            group = build_corpus_files(base, scale, inputs)
            entry = {
                "warc_gz_mb": sum(f.stat().st_size for f in inputs.iterdir()) / 1e6,
                "input_mb": int((Path(tmp) / f"in-{scale}.html_bytes").read_text()) / 1e6,  # HTML
                "records": len(group),
            }
            repeats = args.repeats if scale <= args.repeat_up_to else 1
            ours = median_run(repeats, run_ours, inputs, Path(tmp) / f"ours-{scale}", "resiliparse")
            table += ours_rows(scale, ours, entry["input_mb"])
            sets = {u: shingles(t) for u, t in texts_by_url(inputs).items()}
            entry["ours"] = {k: v for k, v in ours.items() if k != "clusters"}
            entry["ours"]["dedup"] = precision_recall(ours["clusters"], group, sets)
            entry["ours"]["seconds_per_1000_docs"] = 1000 * ours["wall_seconds"] / ours["stats"]["input_docs"]
            if scale in dt_scales:
                for extractor in args.datatrove_extractors.split(","):
                    work = Path(tmp) / f"dt-{scale}-{extractor}"
                    dt = median_run(repeats, run_datatrove, inputs, work, extractor)
                    docs = len(group)
                    row = {
                        "scale": scale,
                        "system": f"datatrove/{extractor}",
                        "stage": "end to end",
                        "docs": docs,
                        "seconds": dt["wall_seconds"],
                        "docs_per_s": docs / dt["wall_seconds"],
                        "mb_per_s": entry["input_mb"] / dt["wall_seconds"],
                        "speedup_of_ours": dt["wall_seconds"] / ours["wall_seconds"],
                    }
                    table.append(row)
                    for phase, seconds in dt["phases"].items():
                        table.append(
                            {
                                **row,
                                "stage": phase,
                                "seconds": seconds,
                                "docs_per_s": docs / seconds,
                                "mb_per_s": entry["input_mb"] / seconds,
                                "speedup_of_ours": None,
                            }
                        )
                    entry[f"datatrove/{extractor}"] = {
                        **{k: v for k, v in dt.items() if k != "clusters"},
                        "dedup": precision_recall(dt["clusters"], group, sets),
                        "speedup_of_ours": dt["wall_seconds"] / ours["wall_seconds"],
                        # no Ray Data pipeline on a fresh cluster can pass this speed-up
                        "ray_data_ceiling": dt["wall_seconds"] / floor["wall_seconds"],
                    }
            results["scales"][scale] = entry
            print(
                f"scale {scale}x done: {json.dumps({k: v for k, v in entry.items() if k != 'ours'}, default=str)[:400]}"
            )
    results["table"] = table

    print(
        f"\n{'scale':>5} {'system':<24} {'stage':<24} {'docs':>7} {'seconds':>8} {'docs/s':>8} {'MB/s':>7} {'ours x':>7}"
    )
    for r in table:
        speed = f"{r['speedup_of_ours']:.1f}" if r.get("speedup_of_ours") else ""
        print(
            f"{r['scale']:>5} {r['system']:<24} {r['stage']:<24} {r['docs']:>7} {r['seconds']:>8.2f} "
            f"{r['docs_per_s']:>8.1f} {r['mb_per_s']:>7.2f} {speed:>7}"
        )
    print(
        f"\n{'scale':>5} {'system':<24} {'positives':<9} {'precision':>9} {'recall':>7} {'pairs':>6} "
        f"{'s/1000 docs':>11} {'driver MB':>9} {'worker MB':>9}"
    )
    for scale, entry in results["scales"].items():
        for system, r in entry.items():
            if not (isinstance(r, dict) and "dedup" in r):
                continue
            per_1000 = r.get("seconds_per_1000_docs", 1000 * r["wall_seconds"] / entry["records"])
            driver = r.get("peak_rss_driver_mb", r.get("peak_rss_total_mb", 0))
            worker = r.get("peak_rss_worker_mb", r.get("peak_rss_process_mb", 0))
            for t, d in r["dedup"].items():
                print(
                    f"{scale:>5} {system:<24} {t:<9} {d['precision']:>9.3f} {d['recall']:>7.3f} "
                    f"{d['positive_pairs']:>6} {per_1000:>11.1f} {driver:>9.0f} {worker:>9.0f}"
                )
    print(
        f"\nRay Data floor (a job of our shape doing no work, fresh cluster): "
        f"{results['ray_data_floor_seconds']:.2f} s; datatrove's time over it caps any Ray Data speed-up"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
