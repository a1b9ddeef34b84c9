"""Manifests: the last file a stage writes, and the only proof that its output is complete.

A directory without `manifest.json` is incomplete and never read. A manifest holds the stage, its
fingerprint, its inputs' fingerprints, library versions, counts, and a checksum per file.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from importlib import metadata
from typing import Any

from pipelines.core.hashing import sha256_stream
from pipelines.core.workspace import Workspace

MANIFEST = "manifest.json"
TRACKED_LIBRARIES = ("ray", "torch", "deepspeed", "mlflow", "pyarrow", "sentencepiece", "numpy")


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def sha256_file(ws: Workspace, rel: str) -> str:
    with ws.fs.open_input_stream(ws.path(rel), compression=None) as f:
        return sha256_stream(f)


def file_entry(ws: Workspace, rel: str) -> dict[str, Any]:
    """A manifest's record of one file: {bytes, sha256}."""
    return {"bytes": ws.fs.get_file_info(ws.path(rel)).size, "sha256": sha256_file(ws, rel)}


def checksum_files(ws: Workspace, out_dir: str) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} for every file under out_dir except the manifest."""
    return {
        rel: file_entry(ws, posixpath.join(out_dir, rel)) for rel in ws.list_files(out_dir) if rel != MANIFEST
    }


def read_manifest(ws: Workspace, out_dir: str) -> dict[str, Any] | None:
    """The published manifest of out_dir, or None when the output is missing or incomplete."""
    rel = posixpath.join(out_dir, MANIFEST)
    if not ws.exists(rel):
        return None
    return ws.read_json(rel)


def manifest_digest(manifest: dict[str, Any]) -> str:
    return fingerprint(manifest)


def input_entry(out_dir: str, manifest: dict[str, Any]) -> dict[str, str]:
    """How a manifest names an output it was made from."""
    return {"fingerprint": manifest["fingerprint"], "digest": manifest_digest(manifest), "dir": out_dir}


def publish(
    ws: Workspace,
    out: str,
    *,
    stage: str,
    fingerprint: str,
    config: dict[str, Any],
    inputs: dict[str, dict[str, str]],
    seconds: float,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """Publish the output in `out` (its files are written): the manifest, last, with what every
    manifest holds (stage, fingerprint, project version, config, inputs, seconds, the files with
    their sha256) and the stage's own `fields` (which win). The Runner and the refresh publish here."""
    from pipelines import __version__
    from pipelines.core.faults import die_before_manifest

    body = {
        "stage": stage,
        "fingerprint": fingerprint,
        "project_version": __version__,
        "output": out,
        "config": config,
        "inputs": inputs,
        "seconds": round(seconds, 3),
        **fields,
    }
    body.setdefault("files", checksum_files(ws, out))
    die_before_manifest(stage)
    return write_manifest(ws, out, body)


def write_manifest(ws: Workspace, out_dir: str, body: dict[str, Any]) -> dict[str, Any]:
    manifest = {
        **body,
        "versions": library_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ws.write_json(posixpath.join(out_dir, MANIFEST), manifest)
    return manifest
