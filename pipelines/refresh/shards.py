"""Shards for a refreshed corpus version: the parent shards' files plus the new documents' tokens.

The parent's `train-*.arrow` / `val-*.arrow` files and their document indexes (`*.docs.parquet`)
are hard-linked into the new directory (never rewritten: their sha256 in the manifest stays what it
was); only the new documents are tokenized, with the parent's tokenizer and settings, into files
numbered after the parent's, each with its own index. A new document goes to val by the same
stable hash of its id as in the shards stage, so the split of every older document stays where it
was. The manifest has the shards stage's layout (gpt2core/data.py and `train.shards` read it as
any other) plus `parent` and `refresh`.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable

from gpt2core.tokenizer import SPM_FILE
from pipelines import __version__
from pipelines.config import Config, ShardsConfig
from pipelines.core.manifest import fingerprint, input_entry, manifest_digest, publish
from pipelines.core.workspace import Workspace
from pipelines.refresh.lineage import SHARDS_ROOT, Version
from pipelines.shards.stage import SPLITS, TokenizerFile, WrittenShards, write_shards
from pipelines.shards.val_split import ValSplit


def extend_shards(
    ws: Workspace, cfg: Config, parent: Version, corpus: Version, log: Callable[[str], None] = print
) -> Version:
    """Publish shards for `corpus` (a refreshed version) that extend `parent` (its parent's shards)."""
    started = time.perf_counter()
    info = parent.manifest["tokenizer"]
    model = TokenizerFile(ws, posixpath.join(info["dir"], SPM_FILE), info["sha256"])
    model.load()  # fails now, before any actor starts, when the tokenizer is gone or replaced
    settings = ShardsConfig(**{**parent.manifest["config"]["shards"], "num_actors": cfg.shards.num_actors})
    fp = fingerprint(
        {
            "stage": "shards",
            "project": __version__,
            # fingerprints, not manifest digests: a rerun after a crash gives the same directory
            "parent": {"dir": parent.dir, "fingerprint": parent.manifest["fingerprint"]},
            "corpus": {"dir": corpus.dir, "fingerprint": corpus.manifest["fingerprint"]},
        }
    )
    out = posixpath.join(SHARDS_ROOT, fp[:12])
    ws.delete_dir(out)  # leftovers of a crashed refresh are never reused
    ws.makedirs(out)
    old_splits = _link_parent_files(ws, parent, out)

    data_files = corpus.manifest["refresh"]["data_files"]
    new = WrittenShards({s: {"files": [], "tokens": 0, "docs": 0, "bytes": 0} for s in SPLITS}, 0, {})
    val_split = ValSplit(0)
    if corpus.manifest["refresh"]["stats"]["kept_docs"]:  # else every new document was a duplicate
        # the parent's val is not empty: no forced document
        val_split = ValSplit.for_corpus(ws, data_files, settings, corpus.dir, log, force_one=False)
        new = write_shards(
            ws,
            out,
            data_files,
            model,
            parent.manifest["dtype"],
            val_split,
            settings,
            first_index={s: len(old_splits[s]["files"]) for s in SPLITS},
        )
    splits = {
        s: {
            "files": old_splits[s]["files"] + new.splits[s]["files"],
            **{k: old_splits[s][k] + new.splits[s][k] for k in ("tokens", "docs", "bytes")},
        }
        for s in SPLITS
    }
    new_tokens = sum(new.splits[s]["tokens"] for s in SPLITS)
    seconds = time.perf_counter() - started
    new_shard_files = sum(len(new.splits[s]["files"]) for s in SPLITS)
    log(f"[refresh] shards {ws.full_uri(out)}: +{new_tokens} tokens in {new_shard_files} new files")
    manifest = publish(
        ws,
        out,
        stage="shards",
        fingerprint=fp,
        config={"shards": settings.model_dump(mode="json")},
        inputs={
            "corpus": input_entry(corpus.dir, corpus.manifest),
            "tokenizer": parent.manifest["inputs"]["tokenizer"],
        },
        seconds=seconds,
        fields={
            "tokenizer": info,
            "dtype": parent.manifest["dtype"],
            "splits": splits,
            "empty_docs": parent.manifest.get("empty_docs", 0) + new.empty_docs,
            "val_to_train": parent.manifest.get("val_to_train", 0) + len(val_split.to_train),
            "parent": {"dir": parent.dir, "digest": manifest_digest(parent.manifest)},
            "refresh": {
                "new_tokens": new_tokens,
                "new_docs": sum(new.splits[s]["docs"] for s in SPLITS),
                "new_files": sorted(new.files),
            },
            "files": {**parent.manifest["files"], **new.files},
        },
    )
    return Version(out, manifest)


def _link_parent_files(ws: Workspace, parent: Version, out: str) -> dict:
    """The parent's shard files and their document indexes (shards from before the index have
    none), linked (or copied) into `out` unchanged; returns its splits."""
    for split in SPLITS:
        for f in parent.manifest["splits"][split]["files"]:
            for name in filter(None, (f["name"], f.get("doc_index"))):
                ws.link(posixpath.join(parent.dir, name), posixpath.join(out, name))
    return parent.manifest["splits"]
