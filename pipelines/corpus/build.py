"""Build a corpus from input files: the reusable core of the corpus stage (and of a refresh).

    read -> extract -> normalise -> language -> quality -> PII -> decontaminate -> MinHash
                                              (Ray Data, streaming, into _staging/*.parquet; the
                                              eval n-gram table is read once, decontaminate.py)
    exact + fuzzy dedup, optionally against earlier corpora's index/       (Ray tasks, dedup.py)
    index/ngrams, index/records of the kept documents                    (Ray tasks, kept_index.py)
    data/, rejects/, stats.json                                           (Ray tasks, publish.py)

The driver sees file names, object references and counts, never documents or signatures.
"""

from __future__ import annotations

import posixpath
import threading
import time
import warnings
from collections.abc import Callable

from pipelines.config import CorpusConfig
from pipelines.core.workspace import Workspace
from pipelines.corpus import decontaminate
from pipelines.corpus import index as corpus_index
from pipelines.corpus.dedup import deduplicate
from pipelines.corpus.kept_index import write_kept_index
from pipelines.corpus.process import process_batch, warm_up
from pipelines.corpus.publish import publish_file
from pipelines.corpus.readers import ReadOptions, read_file
from pipelines.corpus.shuffle import remote
from pipelines.corpus.sources import InputFile, filesystem
from pipelines.corpus.stats import combine, funnel_png, preload_plotting
from pipelines.runtime.console import library_output_on_terminal
from pipelines.runtime.ray import cluster_cpus

STAGING = "_staging"


def read_options(cfg: CorpusConfig) -> ReadOptions:
    return ReadOptions(cfg.text_field, cfg.id_field, cfg.url_field, cfg.max_doc_bytes, cfg.batch_docs)


def _read_files(batch: dict, opts: ReadOptions):
    for group in batch["uris"]:
        for uri, name in group:
            yield from read_file(str(uri), opts, str(name))


def file_groups(files: list[InputFile], groups: int) -> list[list[tuple[str, str]]]:
    """(uri, name) of the files in `groups` read tasks of about equal bytes (largest first onto
    the lightest group): a task per tiny file would cost more in scheduling than in reading."""
    bins: list[tuple[int, list]] = [(0, []) for _ in range(min(groups, len(files)))]
    for f in sorted(files, key=lambda f: -f.size):
        size, uris = min(bins, key=lambda b: b[0])
        bins.remove((size, uris))
        bins.append((size + f.size, [*uris, (f.uri, f.rel or f.uri)]))
    return [uris for _, uris in bins]


def sha256_input(uri: str) -> str:
    from pipelines.core.hashing import sha256_stream

    fs, path = filesystem(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return sha256_stream(f)


def sha256_refs(uris: list[str]) -> list:
    """Ray object refs of the sha256 of each input file, hashed where the cluster has room."""
    return [remote(sha256_input).options(num_cpus=0.25).remote(uri) for uri in uris]


def process_documents(
    ws: Workspace,
    files: list[InputFile],
    cfg: CorpusConfig,
    staging: str,
    evals: decontaminate.EvalHandle | None = None,
) -> list[str]:
    """The per-document steps with Ray Data; returns the staging Parquet files (workspace-relative).
    `evals`: the eval n-gram table's decontaminate.EvalHandle (None: no decontamination)."""
    cfg_json, cpus = cfg.model_dump_json(), int(cluster_cpus())
    # Start a processor (Ray Data, the language model, the extractor) in a worker per CPU while the
    # driver imports Ray Data and plans, which takes one CPU for about a second. Each holds almost a
    # whole CPU, so Ray Data's first tasks wait for these warm workers instead of starting new
    # worker processes, which costs seconds of CPU on a small machine. 0.99, not 1: with no CPU
    # free at all Ray Data warns that the job will hang.
    warm = [remote(warm_up).options(num_cpus=0.99).remote(cfg_json, evals) for _ in range(cpus)]
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = (
        library_output_on_terminal()
    )  # bars for people at a terminal, not for log files
    # Reserving CPUs per operator holds one of two CPUs for the short read tasks: with reservation on,
    # one worker processed documents alone for seconds at a time. Off for this dataset only.
    reserving, ctx.op_resource_reservation_enabled = ctx.op_resource_reservation_enabled, False
    # Blocks reach the staging files in input order, not in the order their tasks finish: the same
    # input files give the same staging files, so the same corpus files, on every run and cluster.
    ordered = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        groups = file_groups(files, max(4, 4 * cpus))
        ds = ray.data.from_items([{"uris": g} for g in groups], override_num_blocks=len(groups))
        # A read whose worker dies (out of memory on a decompression bomb) fails the job after three
        # tries; Ray Data's default is to retry forever. Remote args unlike the processing step's
        # also keep Ray Data from fusing the two steps. Ray 2.60 warns that free-form remote args
        # go away in 2.64 but has no named `max_retries` yet: the warning is for us, not for users
        # (and 2.64 would fail loudly here).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                _read_files, batch_size=1, fn_kwargs={"opts": read_options(cfg)}, num_cpus=1, max_retries=3
            )
        # A read task's batches would leave it as one block, and a block goes to one task: cut them
        # into blocks of a few batches so that one large file still spreads over every worker.
        # Strict: exactly that many rows a block. Best-effort bundling cut where blocks happened to
        # arrive together, so under load the same input gave other staging (so corpus) files.
        ds = ds.repartition(target_num_rows_per_block=4 * cfg.batch_docs, strict=True)
        ds = ds.map_batches(
            process_batch,
            batch_format="pyarrow",
            batch_size=cfg.batch_docs,
            fn_kwargs={"cfg_json": cfg_json, "evals": evals},
        )
        ds.write_parquet(ws.path(staging), filesystem=ws.fs)
    finally:
        ctx.op_resource_reservation_enabled = reserving
        ctx.execution_options.preserve_order = ordered
    ray.get(warm)
    return [posixpath.join(staging, f) for f in ws.list_files(staging) if f.endswith(".parquet")]


def build_corpus(
    ws: Workspace,
    files: list[InputFile],
    cfg: CorpusConfig,
    out: str,
    against: list[str] = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Process `files` into `out` (data/, rejects/, index/, stats.json, funnel.png); return stats.

    `against`: workspace-relative dirs of earlier corpus versions; documents that duplicate theirs
    are dropped (duplicate_of names the earlier id), probing their index/ only.
    """
    import ray

    index_dirs = corpus_index.check_compatible(ws, list(against), cfg)
    uri = ws.full_uri()
    staging = posixpath.join(out, STAGING)
    ws.delete_dir(staging)
    wall = {}

    started = time.perf_counter()
    threading.Thread(target=preload_plotting, daemon=True).start()
    evals = decontaminate.load(cfg, log)
    staged = process_documents(ws, files, cfg, staging, evals)
    wall["documents"] = time.perf_counter() - started
    log(f"[corpus] {len(files)} input files -> {len(staged)} staging files in {wall['documents']:.1f}s")

    started = time.perf_counter()
    num_perm = cfg.bands * cfg.rows
    out_index = posixpath.join(out, "index")
    dedup = deduplicate(
        ws,
        staged,
        parts=cfg.partitions,
        num_perm=num_perm,
        bands=cfg.bands,
        exact=cfg.exact_dedup,
        fuzzy=cfg.fuzzy_dedup,
        threshold=cfg.similarity_threshold,
        out_index=out_index,
        against=index_dirs,
    )
    ws.write_json(posixpath.join(out_index, "index.json"), corpus_index.settings(cfg))
    wall["dedup"] = time.perf_counter() - started

    started = time.perf_counter()
    write_kept_index(uri, staged, dedup.decisions, cfg.partitions, out_index)  # publish reads records
    wall["kept_index"] = time.perf_counter() - started
    started = time.perf_counter()
    parts, originals = cfg.partitions, [out_index, *index_dirs]
    counts = ray.get(
        [
            remote(publish_file).remote(f, uri, rel, out, originals, parts, *dedup.decisions[f % parts])
            for f, rel in enumerate(staged)
        ]
    )
    wall["publish"] = time.perf_counter() - started
    stats = combine(counts, dedup.stats, sum(f.size for f in files), wall)
    ws.write_json(posixpath.join(out, "stats.json"), stats)
    ws.write_bytes(posixpath.join(out, "funnel.png"), funnel_png(stats))
    ws.delete_dir(staging)
    return stats
