"""The workspace: a local directory or any pyarrow filesystem URI (s3://, gs://, hdfs://, an NFS mount).

Every stage reads and writes through this one object, so the same code runs on a laptop and on a
cluster whose nodes share storage. Paths handed around between stages are workspace-relative.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipelines.errors import UserError


class Workspace:
    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri and not uri.startswith("file://"):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except Exception as exc:  # noqa: BLE001 - any pyarrow error is a config problem here
                raise UserError(f"config key 'workspace': cannot open {uri!r}: {exc}") from None
        else:
            local = Path(uri.removeprefix("file://")).expanduser().resolve()
            self.fs, self.root = pafs.LocalFileSystem(), str(local)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Workspace({self.uri!r})"

    # --- paths -----------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """Filesystem path (for self.fs) of a workspace-relative path."""
        return posixpath.join(self.root, rel) if rel else self.root

    def full_uri(self, rel: str = "") -> str:
        """A URI that other processes (Ray workers, MLflow) can open."""
        if self.is_local:
            return self.path(rel)
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{self.path(rel)}"

    def local_path(self, rel: str = "") -> Path:
        """A local path; only for local workspaces (SQLite, DeepSpeed checkpoints, SentencePiece)."""
        if not self.is_local:
            raise UserError(f"workspace {self.uri!r} is not local; this step needs a local or mounted path")
        return Path(self.path(rel))

    # --- files -----------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def makedirs(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

    def list_files(self, rel: str) -> list[str]:
        """Files below `rel`, as paths relative to `rel`, sorted."""
        if not self.exists(rel):
            return []
        base = self.path(rel).rstrip("/") + "/"
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=True))
        return sorted(i.path[len(base) :] for i in infos if i.type == pafs.FileType.File)

    def list_dirs(self, rel: str) -> list[str]:
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def link(self, src: str, dst: str) -> None:
        """`dst` with the content of `src`, never a write through to `src`: a hard link when the
        workspace is local (no bytes copied), a copy on object stores (server-side where supported)."""
        self.makedirs(posixpath.dirname(dst))
        if self.is_local:
            try:
                os.link(self.path(src), self.path(dst))
                return
            except OSError:  # a file system without hard links: copy
                pass
        self.fs.copy_file(self.path(src), self.path(dst))

    def move(self, src: str, dst: str) -> None:
        self.makedirs(posixpath.dirname(dst))
        self.fs.move(self.path(src), self.path(dst))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file so that no reader ever sees part of it.

        Locally: temp file + fsync + rename. Object stores publish a PUT atomically already.
        """
        self.makedirs(posixpath.dirname(rel))
        if not self.is_local:
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)
            return
        target = Path(self.path(rel))
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
