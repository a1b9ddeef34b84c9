"""Node-local copies of workspace files, for the libraries that need a local file (SentencePiece,
safetensors, memory-mapped shards, DeepSpeed).

A `DirRef` names a published directory (a workspace URI) and its files with their sha256, as its
manifest records them. `DirRef.local()` returns a local directory holding exactly those files:
the directory itself when the workspace is a local or mounted path, else a copy in this node's
cache, downloaded once per node and reused by every process on it. The cache is content-keyed
(the directory name hashes the file names and sha256s), a file is verified when it is first used
in a process, and one that no longer matches is fetched again, never used. Downloads go to a
temporary name and are renamed into place, under a per-file lock, so two ranks on one node never
read a half-written file nor download it twice.

Cache root: PIPELINES_CACHE_DIR (a `{node}` in it becomes the Ray node id, so nodes that share a
home directory can still keep apart caches), else ~/.cache/gpt2-platform.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.hashing import CHUNK, sha256_path
from pipelines.core.workspace import Workspace, uri_basename, write_atomically
from pipelines.errors import UserError

CACHE_ENV = "PIPELINES_CACHE_DIR"
MANIFEST = "manifest.json"
_verified: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) checked in this process


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "gpt2-platform")
    if "{node}" in root:
        root = root.replace("{node}", _node_id())
    return Path(root).expanduser()


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:16]
    except Exception:  # noqa: BLE001 - outside Ray: one cache for the process's machine
        pass
    return "local"


@dataclass(frozen=True)
class DirRef:
    """A published directory: its URI and {file name: sha256}; `manifest` is written beside the
    files when the directory's reader needs it (token shards)."""

    uri: str
    files: dict[str, str]
    manifest: dict | None = field(default=None, compare=False)

    @classmethod
    def of(cls, ws, rel: str, manifest: dict | None = None, with_manifest: bool = False) -> DirRef:
        """The directory `rel` of workspace `ws` with the checksums its manifest lists."""
        from pipelines.core.manifest import read_manifest

        manifest = manifest if manifest is not None else read_manifest(ws, rel)
        files = {name: entry["sha256"] for name, entry in (manifest or {}).get("files", {}).items()}
        return cls(ws.full_uri(rel), files, manifest if with_manifest else None)

    def local(self) -> Path:
        ws = Workspace(self.uri)
        if ws.is_local:
            return Path(ws.root)
        key = hashlib.sha256(json.dumps(sorted(self.files.items())).encode()).hexdigest()[:24]
        target = cache_root() / "dirs" / key
        target.mkdir(parents=True, exist_ok=True)
        for name, sha256 in self.files.items():
            fetch(ws, name, target / name, sha256)
        if self.manifest is not None and not (target / MANIFEST).is_file():
            data = json.dumps(self.manifest).encode()
            write_atomically(target / MANIFEST, lambda f: f.write(data))
        return target


def as_local(where: str | DirRef | None) -> str | None:
    """A local directory for a DirRef (fetched through the cache) or a local path (as it is)."""
    return str(where.local()) if isinstance(where, DirRef) else where


def fetch(ws, rel: str, dst: Path, sha256: str) -> Path:
    """`dst` holding workspace file `rel` whose sha256 is `sha256`: reused when it verifies,
    downloaded (and verified) otherwise. A download that does not match is an error."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst.parent / f".{dst.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait and reuse it
        if _matches(dst, sha256):
            return dst
        digest = hashlib.sha256()

        def download(out) -> None:
            with ws.fs.open_input_stream(ws.path(rel), compression=None) as src:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != sha256:  # raised before the rename: the bad copy is removed
                raise OSError(
                    f"{ws.full_uri(rel)}: sha256 {digest.hexdigest()[:12]}... does not match the "
                    f"manifest's {sha256[:12]}... (changed or damaged in the workspace)"
                )

        write_atomically(dst, download)
        _remember(dst)
    return dst


def _matches(path: Path, sha256: str) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if _verified.get(str(path)) == (stat.st_size, stat.st_mtime_ns):
        return True
    if sha256_path(path) != sha256:
        return False
    _remember(path)
    return True


def _remember(path: Path) -> None:
    stat = path.stat()
    _verified[str(path)] = (stat.st_size, stat.st_mtime_ns)


def local_file(uri: str, sha256: str | None = None) -> Path:
    """A local copy of one file named by a URI (a local path is itself)."""
    from pipelines.core.manifest import sha256_file

    ws = Workspace(uri)  # the file itself is the "workspace": its path is ws.path("")
    if ws.is_local:
        return Path(ws.root)
    sha256 = sha256 or sha256_file(ws, "")
    return fetch(ws, "", cache_root() / "files" / sha256[:24] / uri_basename(uri), sha256)


def is_uri(text: str) -> bool:
    """A pyarrow filesystem URI (s3://, gs://, ...), as opposed to a local path or file://."""
    return "://" in text and not text.startswith("file://")


def user_file(text: str, key: str) -> Path:
    """A local copy of the file a config key names: a local path, or any pyarrow URI (fetched
    once into this node's cache). A file that is not there is a UserError naming the key."""
    if not is_uri(text):
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise UserError(f"config key '{key}': {path} is not a file")
        return path
    sha256 = remote_sha256(text, key)
    if sha256 is None:
        raise UserError(f"config key '{key}': {text.split('?', 1)[0]!r} is not a file")
    return local_file(text, sha256)  # the hash in hand: the file is not streamed again to get it


def remote_sha256(uri: str, key: str) -> str | None:
    """The sha256 of the file at `uri` (streamed); None when there is no such file."""
    import pyarrow.fs as pafs

    from pipelines.core.manifest import sha256_file

    ws = Workspace(uri, key=key)
    ws.check_reachable()
    if ws.fs.get_file_info(ws.root).type != pafs.FileType.File:
        return None
    return sha256_file(ws, "")


def file_identity(text: str | None, builtin: str, key: str) -> str | None:
    """The sha256 of a file named by a config key, local or a URI (None when unset or the built-in
    demo source; "missing:..." when it is not there, so the stage runs and reports it)."""
    if not text or text == builtin:
        return None
    if is_uri(text):
        return remote_sha256(text, key) or f"missing:{text}"
    path = Path(text.removeprefix("file://")).expanduser()
    return sha256_path(path) if path.is_file() else f"missing:{text}"


def staging_dir(prefix: str) -> str:
    """A fresh local directory for files on their way to storage (checkpoints before upload),
    under the cache root rather than the container's small /tmp."""
    root = cache_root() / "staging"
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=root)


def discard_staging(path: str | Path | None) -> None:
    """Remove the staging_dir holding `path` once its files are in storage; anything else (a
    user's own model directory, the node cache) is left alone."""
    if path is None:
        return
    root = (cache_root() / "staging").resolve()
    path = Path(path).resolve()
    if path.is_relative_to(root) and path != root:
        shutil.rmtree(root / path.relative_to(root).parts[0], ignore_errors=True)
