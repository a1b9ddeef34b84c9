"""Input files: `corpus.inputs` (paths, globs, directories or pyarrow filesystem URIs) resolved to
concrete files with their format, size and modification time.

The file identities (URI + size + mtime) go into the stage fingerprint, so changed inputs make a
new corpus version, and into the manifest (with sha256), so a refresh can tell which files it has
not processed yet.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
from dataclasses import asdict, dataclass, replace

import pyarrow.fs as pafs

from pipelines.errors import UserError

DEMO_PREFIX = "demo:"
KEY = "corpus.inputs"
_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".html": "html",
    ".htm": "html",
    ".warc": "warc",
}


@dataclass(frozen=True)
class InputFile:
    uri: str  # a local absolute path or scheme://path, openable by every worker
    size: int
    mtime_ns: int | None
    # The path below the inputs' root (see resolve): what document ids hash and rows name as
    # `source`, so the same files give the same corpus wherever they lie.
    rel: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def file_format(name: str) -> tuple[str, str | None] | None:
    """(format, compression) from a file name, e.g. "a.warc.gz" -> ("warc", "gzip"); None if unknown."""
    base = name.lower()
    stem, ext = posixpath.splitext(base)
    compression = _COMPRESSIONS.get(ext)
    if compression:
        stem, ext = posixpath.splitext(stem)
    fmt = _FORMATS.get(ext)
    if fmt is None or (compression and fmt == "parquet"):
        return None
    return fmt, compression


def filesystem(uri: str, key: str = KEY) -> tuple[pafs.FileSystem, str]:
    if "://" in uri and not uri.startswith("file://"):
        try:
            return pafs.FileSystem.from_uri(uri)
        except Exception as exc:  # noqa: BLE001 - any pyarrow error means the URI is unusable
            raise UserError(f"{key}: cannot open {uri!r}: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def _uri(fs: pafs.FileSystem, pattern: str, path: str) -> str:
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{pattern.split('://', 1)[0]}://{path}"


def _expand(pattern: str, key: str = KEY) -> list[InputFile]:
    fs, path = filesystem(pattern, key)
    has_glob = any(ch in path for ch in "*?[")
    if isinstance(fs, pafs.LocalFileSystem) and has_glob:
        candidates = sorted(glob.glob(path, recursive=True))
    elif has_glob:
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        candidates = sorted(i.path for i in infos if fnmatch.fnmatch(i.path, path))
    else:
        candidates = [path]
    found = []
    for info in fs.get_file_info(candidates):
        if info.type == pafs.FileType.Directory:
            inner = fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
            found += sorted(
                (i for i in inner if i.type == pafs.FileType.File and not i.base_name.startswith(".")),
                key=lambda i: i.path,
            )
        elif info.type == pafs.FileType.File:
            found.append(info)
    files = []
    for info in found:
        if file_format(info.base_name) is None:
            raise UserError(
                f"{key}: {_uri(fs, pattern, info.path)}: unknown format (expected .jsonl/.json[.gz|.zst], "
                ".parquet, .txt[.gz], .html, .warc[.gz])"
            )
        files.append(InputFile(_uri(fs, pattern, info.path), int(info.size), info.mtime_ns))
    return files


def resolve(patterns: list[str], key: str = KEY) -> list[InputFile]:
    """Every input file, sorted and without repeats, with its name below the inputs' root; a
    UserError (naming config key `key`) for a pattern that matches nothing."""
    if not patterns:
        raise UserError(f"config key '{key}' is empty: give paths, globs or URIs of the raw corpus")
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        matched = _expand(pattern, key)
        if not matched:
            raise UserError(f"config key '{key}': {pattern!r} matches no file")
        for f in matched:
            files.setdefault(f.uri, f)
    root = input_root(patterns)
    return sorted((replace(f, rel=relative_name(f.uri, root)) for f in files.values()), key=lambda f: f.uri)


def _base(pattern: str) -> str:
    """The URI of the directory a pattern starts from: a glob's directory before its first
    wildcard, a directory itself, a file's directory."""
    fs, path = filesystem(pattern)
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    elif fs.get_file_info(path).type == pafs.FileType.Directory:
        base = path.rstrip("/")
    else:
        base = posixpath.dirname(path)
    return _uri(fs, pattern, base)


def input_root(patterns: list[str]) -> str | None:
    """The deepest directory above every pattern's base (None when they share none: other
    schemes or buckets). Input files are named below it, so two patterns with files of the same
    name in different directories still name them apart."""
    bases = [_base(p) for p in patterns]
    schemes = {b.split("://", 1)[0] if "://" in b else "" for b in bases}
    if len(schemes) != 1:
        return None
    scheme = schemes.pop()
    paths = [b.split("://", 1)[1] if scheme else b for b in bases]
    common = posixpath.commonpath(paths)  # "" for two buckets
    if not common:
        return None
    return f"{scheme}://{common}" if scheme else common


def relative_name(uri: str, root: str | None) -> str:
    if root is None:
        return uri
    return posixpath.relpath(uri.split("?", 1)[0], root.split("?", 1)[0])


def identity(patterns: list[str]) -> list:
    """What the fingerprint hashes: file identities, or the problem (raised when the stage runs)."""
    out: list = []
    for pattern in patterns:
        if pattern.startswith(DEMO_PREFIX):
            out.append(pattern)
            continue
        try:
            out += [[f.uri, f.size, f.mtime_ns] for f in _expand(pattern)]
        except UserError as exc:
            out.append(f"error: {exc}")
    return out
