"""One input record, followed through a model's lineage: kept or why not, and where its tokens are.

The record is named by its `source_id` (the id it has in its input file, or its line/row number),
with its file's name (`source`) when ids repeat across files. Each corpus version of the chain is
asked by its id columns only (data/ and rejects/, never the text); a kept document is then looked up
in the shards' document index (pipelines/shards/doc_index.py: which split, which file, which token
range). A fine-tuned model is asked through the model it started from, whose data it names.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipelines.core.workspace import Workspace
from pipelines.corpus.schema import DOC_SCHEMA, REJECT_SCHEMA
from pipelines.errors import UserError
from pipelines.shards.doc_index import read_doc_index

DATA_COLUMNS = ["id", "source", "source_id"]
REJECT_COLUMNS = ["id", "source", "source_id", "stage", "reason", "detail"]
DUPLICATE_COLUMNS = ["duplicate_of", "duplicate_of_source", "duplicate_of_source_id"]


def find_document(lineage: dict[str, Any], source_id: str, source: str | None) -> dict:
    """Where record `source_id` (of file `source`, if given) went; a UserError when no version has it."""
    while "corpus" not in lineage and "parent_model" in lineage:  # fine-tuned: its base model's data
        lineage = lineage["parent_model"]
    if "corpus" not in lineage:
        raise UserError("--doc: this model names no corpus")
    ws = Workspace(lineage["workspace"])
    for version in lineage["corpus"]:  # newest first; a refreshed version links its parents' files
        rel = _relative(ws, version["dir"])
        kept = _matches(ws, posixpath.join(rel, "data"), DOC_SCHEMA, DATA_COLUMNS, source_id, source)
        if kept:
            row = _one(kept, source_id)
            found = {"kept": True, **row, "shards": _tokens(ws, lineage, row["id"])}
            return {"source_id": source_id, "corpus": version["dir"], **found}
        columns = REJECT_COLUMNS + DUPLICATE_COLUMNS
        rejected = _matches(ws, posixpath.join(rel, "rejects"), REJECT_SCHEMA, columns, source_id, source)
        if rejected:
            return {
                "source_id": source_id,
                "kept": False,
                "corpus": version["dir"],
                **_one(rejected, source_id),
            }
    where = f" of {source}" if source else ""
    raise UserError(f"--doc: no input record with id {source_id!r}{where} in the model's corpus versions")


def _relative(ws: Workspace, uri: str) -> str:
    """A lineage URI as a workspace-relative path (URI options such as ?endpoint_override= aside)."""
    return uri.split("?", 1)[0].removeprefix(ws.full_uri().split("?", 1)[0]).strip("/")


def _matches(
    ws: Workspace, rel: str, schema: pa.Schema, columns: list[str], source_id: str, source: str | None
) -> list[dict]:
    """The rows of `rel`'s parquet files for the record: read with the current schema, so that files
    from before `source_id` was kept read it as null (and match nothing) instead of failing."""
    files = [ws.path(posixpath.join(rel, f)) for f in ws.list_files(rel) if f.endswith(".parquet")]
    if not files:
        return []
    mask = pc.field("source_id") == source_id
    if source is not None:
        mask = mask & (pc.field("source") == source)
    wanted = pa.schema([schema.field(c) for c in columns])
    dataset = pads.dataset(files, schema=wanted, format="parquet", filesystem=ws.fs)
    return dataset.to_table(filter=mask).to_pylist()


def _one(rows: list[dict], source_id: str) -> dict:
    if len(rows) > 1:
        sources = sorted({r["source"] for r in rows})
        hint = "name one with --source" if len(sources) > 1 else "its id is not unique there"
        raise UserError(f"--doc: {len(rows)} records of {', '.join(sources)} have id {source_id!r}; {hint}")
    return rows[0]


def _tokens(ws: Workspace, lineage: dict[str, Any], doc_id: str) -> dict | None:
    """The document's split, shard file and token range; None when it tokenized to nothing."""
    index = read_doc_index(ws, _relative(ws, lineage["shards"]["dir"]), ids=[doc_id]).to_pylist()
    if not index:
        return None  # kept, but empty: the shards stage writes no tokens for it
    return {k: index[0][k] for k in ("split", "file", "start", "stop")}


def render_document(doc: dict) -> list[str]:
    head = f"document   {doc['source']}#{doc['source_id']} (id {doc['id']}) in {doc['corpus']}"
    if not doc["kept"]:
        line = f"  dropped at {doc['stage']}: {doc['reason']}"
        if doc.get("duplicate_of"):
            line += f", a copy of {doc['duplicate_of_source']}#{doc['duplicate_of_source_id']} (id {doc['duplicate_of']})"
        elif doc.get("detail"):
            line += f" ({doc['detail']})"
        return [head, line]
    shards = doc["shards"]
    if shards is None:
        return [head, "  kept; no tokens (empty after tokenization)"]
    where = f"{shards['file']} ({shards['split']} split)"
    return [head, f"  kept: tokens [{shards['start']}, {shards['stop']}) of {where}"]
