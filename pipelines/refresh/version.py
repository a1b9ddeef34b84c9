"""A refreshed corpus version: the parent's files, linked, plus the new input files' documents.

    corpus/<id>/data/part-FFFFF.parquet            the parent's (hard links: never copied or rewritten)
    corpus/<id>/data/part-FFFFF-gNNNN.parquet      kept documents of the new files (generation NNNN)
    corpus/<id>/rejects/..., index/<kind>/...      the same scheme (index parts: parent's + new)
    corpus/<id>/stats.json, funnel.png             the whole version: parent's counts + the new ones
    corpus/<id>/manifest.json                      written last; names the parent

The new files go through the corpus build (pipelines/corpus/build.py) into `_increment/`,
deduplicated against the parent's index/ only, and then move to their tagged names. The id is a
fingerprint of the parent, the settings and the new files, so a rerun after a crash rebuilds the
same directory from scratch (the parent is never written, so it stays usable throughout).
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable

from pipelines import __version__
from pipelines.config import Config
from pipelines.core.manifest import checksum_files, file_entry, fingerprint, manifest_digest, publish
from pipelines.core.workspace import Workspace
from pipelines.corpus import index as corpus_index
from pipelines.corpus import stats as corpus_stats
from pipelines.corpus.sources import InputFile
from pipelines.corpus.stage import input_record
from pipelines.refresh.lineage import CORPUS_ROOT, Version, corpus_settings

INCREMENT = "_increment"
OWN_FILES = ("stats.json", "funnel.png", "index/index.json")  # each version writes its own


def tagged(rel: str, generation: int) -> str:
    """data/part-00003.parquet -> data/part-00003-g0002.parquet"""
    stem, ext = posixpath.splitext(rel)
    return f"{stem}-g{generation:04d}{ext}"


def version_fingerprint(cfg: Config, parent: Version, new: list[InputFile], digests: dict[str, str]) -> str:
    from pipelines.corpus import decontaminate

    spec = {
        "stage": "corpus",
        "project": __version__,
        "refresh_of": {"dir": parent.dir, "fingerprint": parent.manifest["fingerprint"]},
        "corpus": corpus_settings(cfg.corpus.model_dump(mode="json")),
        "files": [[f.uri, f.size, digests[f.uri]] for f in new],
    }
    if cfg.corpus.decontaminate:  # the eval files' identities, as in the corpus stage's fingerprint
        spec["decontaminate"] = decontaminate.identity(cfg.corpus)
    return fingerprint(spec)


def build_version(
    ws: Workspace,
    cfg: Config,
    parent: Version,
    new: list[InputFile],
    digests: dict[str, str],
    log: Callable[[str], None] = print,
) -> Version:
    """Build and publish the version that adds `new` to `parent` (Ray must be initialised)."""
    from pipelines.corpus.build import build_corpus

    started = time.perf_counter()
    fp = version_fingerprint(cfg, parent, new, digests)
    out = posixpath.join(CORPUS_ROOT, fp[:12])
    generation = parent.generation + 1
    ws.delete_dir(out)  # leftovers of a crashed refresh are never reused
    increment_dir = posixpath.join(out, INCREMENT)
    increment = build_corpus(ws, new, cfg.corpus, increment_dir, against=[parent.dir], log=log)

    files, data_files = {}, []
    for rel, entry in checksum_files(ws, increment_dir).items():  # the same bytes after the move
        if rel in OWN_FILES:
            continue
        dst = tagged(rel, generation)
        ws.move(posixpath.join(increment_dir, rel), posixpath.join(out, dst))
        files[dst] = entry
        if rel.startswith("data/"):
            data_files.append(posixpath.join(out, dst))
    ws.delete_dir(increment_dir)
    inherited = parent.manifest.get("files") or checksum_files(ws, parent.dir)
    for rel, entry in inherited.items():
        if rel not in OWN_FILES:
            ws.link(posixpath.join(parent.dir, rel), posixpath.join(out, rel))
            files[rel] = entry

    stats = corpus_stats.add(parent.manifest["stats"], increment)
    ws.write_json(posixpath.join(out, "stats.json"), stats)
    ws.write_bytes(posixpath.join(out, "funnel.png"), corpus_stats.funnel_png(stats))
    ws.write_json(posixpath.join(out, "index", "index.json"), corpus_index.settings(cfg.corpus))
    files.update({rel: file_entry(ws, posixpath.join(out, rel)) for rel in OWN_FILES})

    manifest = publish(
        ws,
        out,
        stage="corpus",
        fingerprint=fp,
        config={"corpus": cfg.corpus.model_dump(mode="json")},
        inputs={},
        seconds=time.perf_counter() - started,
        fields={
            "version": fp[:12],
            "parent": {"dir": parent.dir, "version": parent.id, "digest": manifest_digest(parent.manifest)},
            "generation": generation,
            "kept_docs": stats["kept_docs"],
            "stats": stats,
            "index": corpus_index.settings(cfg.corpus),
            "input_files": [input_record(f, digests[f.uri]) for f in new],  # this generation's only
            "refresh": {"stats": increment, "data_files": sorted(data_files)},
            "files": dict(sorted(files.items())),
        },
    )
    return Version(out, manifest)
