"""sha256 of files, read in chunks (shards and checkpoints are far larger than memory should hold)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 22


def sha256_stream(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := f.read(CHUNK):
        digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)
