"""The contamination figure of the champion gate: how much of the validation text (and of named
evaluation sets) the training split already holds, by word n-grams, read from indexes only.

The training documents' n-grams are index/ngrams of the shards' corpus version: each kept
document's sample of its n-grams (pipelines/core/ngrams.py; the same n-grams are sampled in every
document, so two samples intersect where the full sets do). Which document is train and which val
is the shards' document index (pipelines/shards/doc_index.py). A document counts as contaminated
when at least `registry.contaminated_doc_share` (default 0.5) of its sampled n-grams are in the
training split, the document-level rule of PaLM's contamination study (70% of 8-grams): a shared
licence line or navigation bar is a small share of a page, a copied page is nearly all of it.

    val      the share of val documents that are contaminated
    <file>   the share of a contamination set's documents that are (registry.contamination_sets)

The gate compares the largest with registry.max_contamination.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.config import CorpusConfig, RegistryConfig
from pipelines.core import ngrams
from pipelines.core.manifest import read_manifest
from pipelines.core.workspace import Workspace
from pipelines.errors import MissingIndex, UserError
from pipelines.shards.doc_index import read_doc_index

KEY = "registry.contamination_sets"


def measure(ws: Workspace, shards_rel: str, registry: RegistryConfig, corpus: CorpusConfig) -> dict[str, Any]:
    """{"n", "val", "val_docs", "sets": {file: share}, "max"} for the shards `shards_rel`."""
    manifest = read_manifest(ws, shards_rel)
    ng, settings = ngrams.read_ngrams(ws, manifest["inputs"]["corpus"]["dir"])  # MissingIndex if older
    index = read_doc_index(ws, shards_rel)
    split_of = dict(zip((int(i, 16) for i in index["id"].to_pylist()), index["split"].to_pylist()))
    split = np.array([split_of.get(d, "") for d in ng.docs.tolist()])
    table = ngrams.distinct(ng.of(split == "train"))
    limit = registry.contaminated_doc_share
    val = ng.overlap_shares(table)[split == "val"]
    sets = {}
    for name, texts in eval_sets(registry.contamination_sets, corpus):
        shares = ngrams.Ngrams.of_texts(texts, settings["n"], settings["keep_bits"]).overlap_shares(table)
        sets[name] = float(np.mean(shares >= limit))
    share = float(np.mean(val >= limit)) if len(val) else 0.0
    return {
        "n": settings["n"],
        "val": share,
        "val_docs": len(val),
        "sets": sets,
        "max": max([share, *sets.values()]),
    }


def eval_sets(patterns: list[str], corpus: CorpusConfig):
    """(name, texts) of each contamination set file (JSONL with corpus.text_field, or text)."""
    from pipelines.corpus import decontaminate, sources

    if not patterns:
        return
    for f in sources.resolve(patterns, KEY):
        texts = list(decontaminate.eval_texts(f, corpus))
        if not texts:
            raise UserError(f"config key '{KEY}': {f.uri} holds no document")
        yield f.rel or f.uri, texts


def verdict(figures: dict[str, Any], limit: float) -> str | None:
    """None when the figures pass; else why the champion stays, in a few words."""
    if figures["max"] <= limit:
        return None
    worst = max([("val", figures["val"]), *figures["sets"].items()], key=lambda kv: kv[1])
    what = "val documents" if worst[0] == "val" else f"documents of {worst[0]}"
    return (
        f"{worst[1]:.1%} of {what} have most of their {figures['n']}-grams in the training split "
        f"(registry.max_contamination={limit:g})"
    )


def check_sets(registry: RegistryConfig) -> None:
    """At planning time: every contamination set resolves (a one-line error naming the key)."""
    from pipelines.corpus import sources

    if registry.contamination_sets:
        sources.resolve(registry.contamination_sets, KEY)


def gate_input(
    shards_uri: str, manifest: dict, registry: RegistryConfig, corpus: CorpusConfig, log
) -> dict[str, Any] | None:
    """What the champion gate weighs for the shards at `shards_uri`: {"figures", "refused" (None,
    or why champion must stay)}; None, said in a line, when their corpus or shards predate the
    indexes it is measured with."""
    out = manifest.get("output", "")
    if not out or not shards_uri.rstrip("/").endswith("/" + out):
        log(f"contamination not measured: {shards_uri} is not where its manifest says ({out})")
        return None
    ws = Workspace(shards_uri.rstrip("/")[: -len(out) - 1])
    try:
        figures = measure(ws, out, registry, corpus)
    except MissingIndex as exc:
        log(f"contamination not measured: {exc}")
        return None
    return {"figures": figures, "refused": verdict(figures, registry.max_contamination)}
