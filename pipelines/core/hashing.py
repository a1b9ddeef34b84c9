"""sha256 of files, read in chunks (shards and checkpoints are far larger than memory should hold),
and the stable 64-bit hash of a document id that sampling and splits are decided by."""

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


def stable_hash(doc_id: str, salt: int | str = "") -> int:
    """A 64-bit hash of a document id that is the same on every machine, process and Python."""
    digest = hashlib.blake2b(f"{salt}\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
