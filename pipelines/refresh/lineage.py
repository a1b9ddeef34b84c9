"""Corpus versions as a lineage: which one is current, its chain of parents, what it has processed.

A lineage is every published corpus version built with the same corpus settings apart from
`corpus.inputs`. A corpus stage build starts one (generation 0, no parent); each refresh adds a
version whose manifest names its parent. The current version is the newest version that no other
version of the lineage names as its parent, unless `refresh.parent` names one.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from pipelines.config import Config
from pipelines.core.manifest import read_manifest
from pipelines.core.workspace import Workspace
from pipelines.corpus.sources import InputFile
from pipelines.errors import UserError

CORPUS_ROOT = "corpus"
SHARDS_ROOT = "shards"
NOT_SETTINGS = ("inputs",)  # corpus keys that do not change how a document is processed


@dataclass(frozen=True)
class Version:
    """A published output: a corpus version or a shards directory."""

    dir: str  # workspace-relative, e.g. corpus/0123456789ab
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return posixpath.basename(self.dir)

    @property
    def parent_dir(self) -> str | None:
        return (self.manifest.get("parent") or {}).get("dir")

    @property
    def generation(self) -> int:
        return int(self.manifest.get("generation", 0))

    def sort_key(self) -> tuple:
        return (self.manifest.get("created_at", ""), self.generation, self.dir)


def corpus_settings(corpus: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in corpus.items() if k not in NOT_SETTINGS}


def settings_differ(cfg: Config, version: Version) -> list[str]:
    """The corpus keys whose value `version` was built with differs from the config's (keys that
    an older manifest lacks are not compared)."""
    mine = corpus_settings(cfg.corpus.model_dump(mode="json"))
    theirs = corpus_settings(version.manifest.get("config", {}).get("corpus", {}))
    return sorted(k for k in mine.keys() & theirs.keys() if mine[k] != theirs[k])


def published(ws: Workspace, root: str, stage: str) -> list[Version]:
    out = []
    for name in ws.list_dirs(root):
        rel = posixpath.join(root, name)
        manifest = read_manifest(ws, rel)
        if manifest is not None and manifest.get("stage") == stage:
            out.append(Version(rel, manifest))
    return out


def current_version(ws: Workspace, cfg: Config) -> Version:
    if cfg.refresh.parent:
        return named_version(ws, cfg, cfg.refresh.parent)
    versions = published(ws, CORPUS_ROOT, "corpus")
    lineage = [v for v in versions if not settings_differ(cfg, v)]
    if not lineage:
        newest = max(versions, key=Version.sort_key, default=None)
        hint = (
            f" (the newest, {newest.id}, differs in "
            f"{', '.join('corpus.' + k for k in settings_differ(cfg, newest))})"
            if newest
            else ""
        )
        raise UserError(
            f"no published corpus version under {ws.full_uri(CORPUS_ROOT)} was built with these corpus "
            f"settings{hint}; build one with jobs/prepare_corpus.py first, or name one with refresh.parent"
        )
    parents = {v.parent_dir for v in lineage}
    return max((v for v in lineage if v.dir not in parents), key=Version.sort_key)


def named_version(ws: Workspace, cfg: Config, name: str) -> Version:
    rel = name.strip("/") if "/" in name else posixpath.join(CORPUS_ROOT, name)
    manifest = read_manifest(ws, rel)
    if manifest is None or manifest.get("stage") != "corpus":
        raise UserError(f"config key 'refresh.parent': {ws.full_uri(rel)} is no published corpus version")
    version = Version(rel, manifest)
    differ = settings_differ(cfg, version)
    if differ:
        raise UserError(
            f"config key 'refresh.parent': corpus version {version.id} was built with other corpus "
            f"settings ({', '.join('corpus.' + k for k in differ)}); a refresh must process new files "
            "the same way"
        )
    return version


def chain(ws: Workspace, version: Version) -> list[Version]:
    """`version` and its ancestors, newest first."""
    out = [version]
    while out[-1].parent_dir:
        parent_dir = out[-1].parent_dir
        manifest = read_manifest(ws, parent_dir)
        if manifest is None:
            raise UserError(
                f"corpus version {out[-1].id} names its parent {ws.full_uri(parent_dir)}, which is "
                "not published any more; the refresh cannot tell which input files it processed"
            )
        out.append(Version(parent_dir, manifest))
    return out


@dataclass
class InputSurvey:
    """corpus.inputs against the input files a version chain has processed."""

    new: list[InputFile]  # not processed yet (sha256 known, see `digests`)
    processed: int  # already in the corpus
    digests: dict[str, str]  # uri -> sha256 of every file that was hashed now


def survey_inputs(files: list[InputFile], versions: list[Version], hash_files) -> InputSurvey:
    """Sort input files into processed and new by URI and sha256. A file whose URI, size and mtime
    match the record is processed without hashing it; otherwise it is hashed (`hash_files(uris)`
    -> sha256 list). A processed URI whose content changed is a UserError: a refresh only adds."""
    records = {r["uri"]: (r, v) for v in reversed(versions) for r in v.manifest.get("input_files", [])}
    unsure = []
    for f in files:
        record = records.get(f.uri, (None, None))[0]
        quick = record is not None and record.get("mtime_ns") is not None
        if not (quick and record["bytes"] == f.size and record["mtime_ns"] == f.mtime_ns):
            unsure.append(f)
    digests = dict(zip([f.uri for f in unsure], hash_files([f.uri for f in unsure]))) if unsure else {}
    new = []
    for f in unsure:
        if f.uri not in records:
            new.append(f)
            continue
        record, version = records[f.uri]
        if record["sha256"] != digests[f.uri]:
            raise UserError(
                f"corpus.inputs: {f.uri} changed since corpus version {version.id} processed it "
                "(its sha256 differs); a refresh only adds files: write new content under a new name"
            )
    return InputSurvey(new, len(files) - len(new), digests)


def shards_of(ws: Workspace, corpus_dir: str) -> Version | None:
    """The newest published shards made from corpus version `corpus_dir`, if any."""
    made = [
        v
        for v in published(ws, SHARDS_ROOT, "shards")
        if v.manifest.get("inputs", {}).get("corpus", {}).get("dir") == corpus_dir
    ]
    return max(made, key=Version.sort_key, default=None)
