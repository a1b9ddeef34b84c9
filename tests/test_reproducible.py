"""The demo's crawl, generated into a workspace at run time, is the same bytes in every workspace.

The corpus, tokenizer and shards are byte-identical over the same input files wherever they lie
(tests/test_object_store.py runs the chain over one dump in a local directory and in a bucket);
this shows the demo's inputs are the same files in any directory, so two fresh workspaces of the
demo config hold the same corpus and shards. It also shows that generation never copies the
process's environment (where credentials live) or paths into the corpus.
"""

from __future__ import annotations

import hashlib
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.core.workspace import Workspace
from pipelines.corpus import demo

pytestmark = pytest.mark.slow
SECRET = "do-not-train-on-me-0c7f"


def generated_files(ws: Workspace) -> dict[str, bytes]:
    rel = demo.ensure(ws, "demo:pydoc", log=lambda line: None)
    return {name: ws.read_bytes(f"{rel}/{name}") for name in ws.list_files(rel)}


def test_two_workspaces_generate_byte_identical_demo_crawls(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_TEST_CREDENTIAL", SECRET)
    monkeypatch.chdir(tmp_path)
    roots = [tmp_path / "one" / "ws", tmp_path / "elsewhere" / "deeper" / "ws"]
    with ThreadPoolExecutor(2) as pool:  # two subprocesses: one per core
        a, b = pool.map(generated_files, [Workspace(str(root)) for root in roots])
    assert len(a) > 10 and any(name.endswith(".warc.gz") for name in a)
    digest = lambda files: {n: hashlib.sha256(data).hexdigest() for n, data in files.items()}  # noqa: E731
    assert digest(a) == digest(b)
    # WARC, JSONL and HTML bodies are compressed in places: look inside for what must not be there
    text = b"".join(_plain(name, data) for name, data in a.items())
    assert b"html" in text and b"json" in text
    for leak in (SECRET, str(tmp_path), str(Path(__file__).resolve().parents[1])):
        assert leak.encode() not in text, leak


def _plain(name: str, data: bytes) -> bytes:
    import zstandard

    if name.endswith(".gz"):
        return _gunzip(data)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _gunzip(data: bytes) -> bytes:
    """Every gzip member (a WARC.gz holds one per record), up to where a truncated file ends."""
    out = []
    while data:
        member = zlib.decompressobj(wbits=31)
        out.append(member.decompress(data))
        if not member.eof:
            break
        data = member.unused_data
    return b"".join(out)
