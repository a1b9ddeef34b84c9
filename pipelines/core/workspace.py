"""The workspace: a local directory or any pyarrow filesystem URI (s3://, gs://, hdfs://, an NFS mount).

Every stage reads and writes through this one object, so the same code runs on a laptop and on a
cluster whose nodes share storage. Paths handed around between stages are workspace-relative.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from pipelines.errors import UserError


class Workspace:
    """`key` names the config key the URI came from, for errors (`workspace`, `train.shards`, ...)."""

    def __init__(self, uri: str, key: str = "workspace"):
        self.uri, self.key = uri, key
        # pyarrow URI options (?endpoint_override=...&scheme=http) travel with every URI handed on
        self.query = uri.split("?", 1)[1] if "?" in uri and "://" in uri else ""
        if "://" in uri and not uri.startswith("file://"):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except Exception as exc:  # noqa: BLE001 - any pyarrow error is a config problem here
                raise UserError(
                    f"config key '{key}': cannot open {_redacted(uri)}: {_first_line(exc)}"
                ) from None
            self.root = self.root.rstrip("/")
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
        return self.uri_of(self.path(rel))

    def uri_of(self, fs_path: str) -> str:
        """The URI of a path on this workspace's filesystem (it may lie outside the workspace)."""
        if self.is_local:
            return fs_path
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{fs_path}" + (f"?{self.query}" if self.query else "")

    def check_reachable(self) -> None:
        """Fail now, in one line naming the config key, when an object store cannot be used: an
        unknown endpoint, a missing bucket, missing or refused credentials."""
        if self.is_local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as exc:
            raise UserError(
                f"config key '{self.key}': cannot reach {_redacted(self.uri)}: {_first_line(exc)} "
                "(check the endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_PROFILE)"
            ) from None
        if info.type == pafs.FileType.NotFound:
            raise UserError(
                f"config key '{self.key}': bucket {bucket!r} of {_redacted(self.uri)} does not exist"
            )

    def local_path(self, rel: str = "") -> Path:
        """A local path; only for local workspaces (tests and local tools). Stages use
        pipelines/core/cache.py to get local copies of workspace files on any node."""
        if not self.is_local:
            raise UserError(f"workspace {self.uri!r} is not local; this step needs a local or mounted path")
        return Path(self.path(rel))

    def upload_dir(self, local: str | Path, rel: str) -> dict[str, str]:
        """Copy the files of a local directory into `rel` (flat); returns {name: sha256}."""
        from pipelines.core.hashing import sha256_path

        files = {}
        for item in sorted(Path(local).iterdir()):
            if item.is_file():
                files[item.name] = sha256_path(item)
                self.upload_file(item, f"{rel}/{item.name}")
        return files

    def upload_file(self, local: str | Path, rel: str) -> None:
        """One local file into the workspace, never visible half-written (temp + rename locally,
        one atomic PUT or multipart completion on object stores)."""
        self.makedirs(posixpath.dirname(rel))
        if self.is_local:
            with open(local, "rb") as src:
                write_atomically(Path(self.path(rel)), lambda f: shutil.copyfileobj(src, f))
            return
        pafs.copy_files(str(local), self.path(rel), destination_filesystem=self.fs)

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
        with self.fs.open_input_stream(self.path(rel), compression=None) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file so that no reader ever sees part of it.

        Locally: temp file + fsync + rename. Object stores publish a PUT atomically already.
        """
        self.makedirs(posixpath.dirname(rel))
        if not self.is_local:
            with self.fs.open_output_stream(self.path(rel), compression=None) as f:
                f.write(data)
            return
        write_atomically(Path(self.path(rel)), lambda f: f.write(data))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` unless it exists; True when this call created it. Exclusive
        against any number of racing writers: O_EXCL locally, a conditional PUT (If-None-Match: *)
        on S3. Other object stores have no exclusive create in pyarrow: there the file is written
        when absent and read back, so the last of two racing writers wins (best effort)."""
        self.makedirs(posixpath.dirname(rel))
        if self.is_local:
            try:
                fd = os.open(self.path(rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        if self.uri.startswith("s3://"):
            return self._s3_put_if_absent(rel, data)
        if self.exists(rel):
            return False
        self.write_bytes(rel, data)
        return self.read_bytes(rel) == data

    def _s3_put_if_absent(self, rel: str, data: bytes) -> bool:
        import boto3
        from botocore.exceptions import ClientError

        options = dict(item.split("=", 1) for item in self.query.split("&") if "=" in item)
        endpoint = options.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=options.get("region"))
        bucket, key = self.path(rel).split("/", 1)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):  # it exists, or a racing PUT of it is under way
                return False
            raise
        return True

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_atomically(target: Path, fill: Callable[[BinaryIO], Any]) -> None:
    """A local file that no reader ever sees part of: `fill` writes a temp file beside it, which is
    fsynced and renamed into place (and removed if anything fails)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def uri_basename(uri: str) -> str:
    """The last name of a path or URI, without URI options."""
    return posixpath.basename(uri.split("?", 1)[0].rstrip("/"))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _redacted(uri: str) -> str:
    """The URI without its query options (they may carry keys)."""
    return repr(uri.split("?", 1)[0])
