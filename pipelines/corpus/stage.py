"""The `corpus` stage: resolve `corpus.inputs`, build the corpus version, publish its manifest.

Output: <workspace>/corpus/<fingerprint[:12]>/ (that 12-hex id is the corpus version) with data/,
rejects/, index/, stats.json, funnel.png and, written last by the runner, manifest.json holding
"stats", "kept_docs", "index" (the dedup settings a refresh must share) and "input_files"
(uri, bytes, mtime_ns, sha256 of every input file: what a refresh compares to find files not yet
processed). The fingerprint also holds the identities of the `corpus.decontaminate` eval files,
which are checked (they resolve and open) at planning time.
"""

from __future__ import annotations

from pipelines.config import Config
from pipelines.core.workflow import Stage, StageContext
from pipelines.core.workspace import Workspace


def input_identity(cfg: Config, ws: Workspace) -> list:
    """Fingerprint input: every input file's URI, size and mtime (and the demo generator's id), and
    those of the eval files when there are any."""
    from pipelines.corpus import decontaminate, demo, sources

    identity = [
        demo.identity(item) if isinstance(item, str) and item.startswith(sources.DEMO_PREFIX) else item
        for item in sources.identity(cfg.corpus.inputs)
    ]
    if cfg.corpus.decontaminate:
        identity.append({"decontaminate": decontaminate.identity(cfg.corpus)})
    return identity


def preflight(cfg: Config, ws: Workspace, published: dict) -> None:
    """At planning time: the eval files resolve and open (a one-line UserError naming the key)."""
    from pipelines.corpus import decontaminate

    decontaminate.check_readable(cfg.corpus)


def input_files(ctx: StageContext) -> list:
    return resolve_inputs(ctx.cfg, ctx.ws, ctx.log)


def resolve_inputs(cfg: Config, ws: Workspace, log=print) -> list:
    """Resolve corpus.inputs (generating demo corpora first); a UserError names corpus.inputs."""
    from pipelines.corpus import demo, sources

    patterns = [
        ws.full_uri(demo.ensure(ws, p, log)) if p.startswith(sources.DEMO_PREFIX) else p
        for p in cfg.corpus.inputs
    ]
    return sources.resolve(patterns)


def input_record(f, sha256: str) -> dict:
    """What a manifest records of an input file; a refresh trusts (uri, bytes, mtime_ns) unhashed."""
    return {"uri": f.uri, "source": f.rel, "bytes": f.size, "mtime_ns": f.mtime_ns, "sha256": sha256}


def dropped_line(dropped: dict[str, int], shown: int = 5) -> str:
    """ "dropped 617: gopher_quality 181, gopher_repetition 150, ...": reasons by filter, largest first."""
    by_filter: dict[str, int] = {}
    for reason, count in dropped.items():
        family = reason.split(".", 1)[0]
        by_filter[family] = by_filter.get(family, 0) + count
    ranked = sorted(by_filter.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{name} {count}" for name, count in ranked[:shown]]
    if len(ranked) > shown:
        parts.append(f"{sum(c for _, c in ranked[shown:])} for {len(ranked) - shown} other reasons")
    return f"dropped {sum(dropped.values())}: " + ", ".join(parts) if parts else "dropped 0"


def run(ctx: StageContext) -> dict:
    import ray

    from pipelines.corpus import index, stats
    from pipelines.corpus.build import build_corpus, sha256_refs
    from pipelines.runtime.ray import init_ray

    files = input_files(ctx)  # before Ray starts: a wrong path fails in a second, not after startup
    init_ray(ctx.cfg)
    digests = sha256_refs([f.uri for f in files])
    ctx.log(f"[corpus] {len(files)} input files, {sum(f.size for f in files) / 1e6:.1f} MB")
    result = build_corpus(ctx.ws, files, ctx.cfg.corpus, ctx.out, log=ctx.log)
    stats.log_funnel(result, ctx.ws.read_bytes(f"{ctx.out}/funnel.png"))
    ctx.log(
        f"[corpus] kept {result['kept_docs']} of {result['input_docs']} documents "
        f"({result['kept_chars'] / 1e6:.1f}M characters); version {ctx.out.rsplit('/', 1)[-1]}"
    )
    ctx.log(f"[corpus] {dropped_line(result['dropped'])} ({ctx.ws.full_uri(f'{ctx.out}/stats.json')})")
    return {
        "version": ctx.fingerprint[:12],
        "kept_docs": result["kept_docs"],
        "stats": result,
        "index": index.settings(ctx.cfg.corpus),
        "input_files": [input_record(f, digest) for f, digest in zip(files, ray.get(digests))],
    }


def corpus_stage() -> Stage:
    return Stage(
        "corpus",
        run,
        sections=("corpus",),
        fingerprint_extra=input_identity,
        preflight=preflight,
        needs_ray=False,  # run() starts Ray itself, once the inputs are known to exist
        summary="clean and deduplicate raw web text into a corpus version",
    )
