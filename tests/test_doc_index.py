"""The shards' document index (pipelines/shards/doc_index.py): one `<split>-NNNNN.docs.parquet` per
shard file, whose rows name each document of the file and its token range.

Read on the session's prepared workspace (a stdlib-docstring corpus published the way corpora were
before `source_id`, then the real tokenizer and shards stages), and written by the real shards
writer (Ray Data actors, a writer task) for a small corpus whose data files hold record ids, or not.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt2core.tokenizer import encode_lossless, load_sentencepiece
from pipelines.config import load_config
from pipelines.core.manifest import read_manifest
from pipelines.core.outputs import corpus_data_files, iter_corpus_batches
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError
from pipelines.shards.doc_index import doc_tokens, index_name, read_doc_index
from pipelines.shards.stage import TokenizerFile, write_shards
from pipelines.shards.val_split import ValSplit

pytestmark = pytest.mark.slow  # the prepared workspace: Ray, the tokenizer and shards stages


class Shards:
    """The prepared workspace's shards, their manifest, the corpus they came from and the tokenizer."""

    def __init__(self, pw):
        self.ws = Workspace(str(pw.workspace))
        self.rel = str(pw.shards_dir.relative_to(pw.workspace))
        self.manifest = read_manifest(self.ws, self.rel)
        corpus = corpus_data_files(self.ws, self.manifest["inputs"]["corpus"]["dir"])
        rows = (
            r for b in iter_corpus_batches(self.ws, corpus, ["id", "text", "source"]) for r in b.to_pylist()
        )
        self.docs = {r["id"]: r for r in rows}
        self.tokenizer_rel = str(pw.tokenizer_dir.relative_to(pw.workspace)) + "/spm.model"
        self.sp = load_sentencepiece(self.ws.read_bytes(self.tokenizer_rel))
        self.index = read_doc_index(self.ws, self.rel)

    def file_entries(self):
        return [(split, f) for split, info in self.manifest["splits"].items() for f in info["files"]]


@pytest.fixture(scope="module")
def shards(prepared_workspace) -> Shards:
    return Shards(prepared_workspace)


def shard_file_tokens(shards: Shards, name: str) -> np.ndarray:
    with pa.memory_map(shards.ws.path(f"{shards.rel}/{name}")) as source:
        return pa.ipc.open_file(source).read_all().column(0).to_numpy()


def test_every_document_with_tokens_is_indexed_exactly_once(shards):
    texts = [d["text"] for d in shards.docs.values()]
    with_tokens = [i for i, ids in zip(shards.docs, encode_lossless(shards.sp, texts)) if ids]
    indexed = shards.index.column("id").to_pylist()
    assert len(indexed) == len(set(indexed)) == len(with_tokens) > 100
    assert set(indexed) == set(with_tokens)
    assert set(shards.index.column("source").to_pylist()) == {"stdlib-docstrings"}
    assert shards.index.column("source_id").null_count == len(indexed)  # a corpus from before record ids
    assert shards.index.column_names == ["split", "file", "id", "source", "source_id", "start", "stop"]
    assert set(shards.index.column("split").to_pylist()) == {"train", "val"}


def test_ranges_tile_each_shard_file(shards):
    assert len(shards.file_entries()) >= 3
    for split, entry in shards.file_entries():
        rows = [r for r in shards.index.to_pylist() if r["file"] == entry["name"]]
        assert {r["split"] for r in rows} == {split} and len(rows) == entry["docs"]
        starts, stops = [r["start"] for r in rows], [r["stop"] for r in rows]
        assert starts[0] == 0 and starts[1:] == stops[:-1]
        assert stops[-1] == entry["tokens"] == len(shard_file_tokens(shards, entry["name"]))


def test_each_range_decodes_to_its_document_text(shards):
    eos = shards.sp.eos_id()
    for row in shards.index.to_pylist():
        tokens = doc_tokens(shards.ws, shards.rel, row["file"], row["start"], row["stop"])
        assert tokens[-1] == eos and eos not in tokens[:-1], row
        assert shards.sp.decode(tokens[:-1].tolist()) == shards.docs[row["id"]]["text"], row


def test_the_manifest_names_and_checksums_each_index(shards):
    listed = shards.manifest["files"]
    for _, entry in shards.file_entries():
        assert (
            entry["doc_index"]
            == index_name(entry["name"])
            == entry["name"][: -len(".arrow")] + ".docs.parquet"
        )
        data = shards.ws.read_bytes(f"{shards.rel}/{entry['doc_index']}")
        assert listed[entry["doc_index"]] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    on_disk = set(shards.ws.list_files(shards.rel)) - {"manifest.json"}
    assert (
        set(listed) == on_disk == {n for _, e in shards.file_entries() for n in (e["name"], e["doc_index"])}
    )


def test_doc_tokens_refuses_a_range_outside_the_file(shards):
    _, entry = shards.file_entries()[0]
    with pytest.raises(UserError, match=rf"{entry['name']}: no tokens \[0, {entry['tokens'] + 1}\)"):
        doc_tokens(shards.ws, shards.rel, entry["name"], 0, entry["tokens"] + 1)


def test_shards_built_before_the_index_are_refused_naming_the_directory(shards, tmp_path):
    old = json.loads(json.dumps(shards.manifest))
    for info in old["splits"].values():
        for entry in info["files"]:
            del entry["doc_index"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"shards .*/old have no document index .*: rebuild the shards"):
        read_doc_index(Workspace(str(tmp_path)), "old")


# --- the writer, on data files with record ids and without ----------------------------------------
def write_corpus_file(path, docs: list[tuple[str, str, str | None]], with_source_id: bool) -> None:
    """A corpus data file of (id, text, source_id) rows; without the source_id column (an older
    corpus) when with_source_id is false."""
    columns = {
        "id": [d[0] for d in docs],
        "text": [d[1] for d in docs],
        "url": pa.nulls(len(docs), pa.string()),
        "source": [path.stem + ".jsonl"] * len(docs),
    }
    if with_source_id:
        columns["source_id"] = [d[2] for d in docs]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_the_writer_passes_record_ids_through_and_reads_files_without_them_as_null(
    shards, tmp_path, ray_local
):
    texts = [d["text"] for d in shards.docs.values()][:40]
    new = [(f"{i:016x}", t, f"rec-{i}") for i, t in enumerate(texts[:20])] + [("e" * 16, "", "rec-empty")]
    old = [(f"{100 + i:016x}", t, None) for i, t in enumerate(texts[20:])]
    write_corpus_file(tmp_path / "corpus" / "data" / "part-00000.parquet", new, with_source_id=True)
    write_corpus_file(tmp_path / "corpus" / "data" / "part-00001.parquet", old, with_source_id=False)
    ws = Workspace(str(tmp_path))
    files = corpus_data_files(ws, "corpus")
    model = TokenizerFile(shards.ws, shards.tokenizer_rel, shards.manifest["tokenizer"]["sha256"])
    cfg = load_config(None, ["shards.shard_tokens=1000", "shards.num_actors=1"]).shards
    written = write_shards(ws, "out", files, model, "uint16", ValSplit(0, forced_id=new[3][0]), cfg)
    ws.write_json("out/manifest.json", {"splits": written.splits})

    index = read_doc_index(ws, "out")
    rows = {r["id"]: r for r in index.to_pylist()}
    assert set(rows) == {d[0] for d in new + old} - {"e" * 16}  # the empty document has no tokens
    assert all(
        rows[i]["source_id"] == sid and rows[i]["source"] == "part-00000.jsonl" for i, _, sid in new[:20]
    )
    assert all(rows[i]["source_id"] is None and rows[i]["source"] == "part-00001.jsonl" for i, _, _ in old)
    assert rows[new[3][0]]["split"] == "val" and len(written.splits["train"]["files"]) >= 3
    assert set(written.files) == set(ws.list_files("out")) - {"manifest.json"}  # token files and indexes
    for row in index.to_pylist():
        tokens = doc_tokens(ws, "out", row["file"], row["start"], row["stop"])
        assert shards.sp.decode(tokens[:-1].tolist()) == next(t for i, t, _ in new + old if i == row["id"])
