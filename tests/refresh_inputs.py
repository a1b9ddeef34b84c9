"""Inputs and readers for the refresh tests: an original corpus and three batches that arrive in turn,
with duplicates inside a batch, across batches and against the original corpus."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import Config, load_config
from pipelines.corpus.schema import doc_key
from tests.corpus_inputs import SHOP, english_doc, write_jsonl

DEMO_CONFIG = "configs/demo.yaml"  # relative to the repository root, as the schedules name it
ROOT = Path(__file__).resolve().parents[1]
REGISTERED_MODEL = "refresh-tests-model"
# Settings that keep the whole chain small and fast (2 dedup partitions: few Ray tasks on 2 cores).
TINY = (
    "corpus.partitions=2",
    "tokenizer.vocab_size=400",
    "shards.val_fraction=0.1",
    "shards.shard_tokens=2000",
    "shards.num_actors=1",
    f"mlflow.registered_model={REGISTERED_MODEL}",  # not the demo's: other tests register that one
)


def near(text: str) -> str:
    """A near-duplicate: one word changed (word-5-gram Jaccard well above the 0.75 threshold)."""
    return text.replace(" the ", " a ", 1)


def record_id(uri: str, prefix: str, other_key: int, smaller: bool) -> str:
    """A record id whose document id is smaller (or larger) than `other_key`'s: a later copy with
    the smaller id is where a refresh (keeps the earliest copy) and a one-shot build (keeps the
    smallest id) differ."""
    for n in itertools.count():
        rid = f"{prefix}-{n}"
        if (doc_key(uri, rid) < other_key) == smaller:
            return rid
    raise AssertionError("unreachable")


def write_batches(root: Path) -> list[list[Path]]:
    """Batch 0 is the original corpus; returns the files of each batch."""
    rng = random.Random(8)
    fresh = [english_doc(rng) for _ in range(26)]
    root.mkdir(parents=True, exist_ok=True)
    where: dict[str, tuple[str, str]] = {}  # unique doc name -> (uri, record id) of its first copy

    def unique(path: Path, n: int) -> dict:
        where[f"u{n}"] = (path.name, f"u{n}")  # ids hash the name below the inputs' root
        return {"id": f"u{n}", "text": fresh[n]}

    def copy(path: Path, of: int, smaller: bool, edit: bool = False) -> dict:
        uri, rid = where[f"u{of}"]
        text = near(fresh[of]) if edit else fresh[of]
        return {"id": record_id(path.name, f"copy-of-u{of}", doc_key(uri, rid), smaller), "text": text}

    junk = {"id": "junk", "text": SHOP}  # dropped by a quality rule, in every batch
    b0, b1, b2 = root / "b0.jsonl", root / "b1.jsonl", root / "b2.jsonl"
    b3a, b3b = root / "b3a.jsonl", root / "b3b.jsonl"
    write_jsonl(b0, [unique(b0, n) for n in range(12)] + [copy(b0, 0, True), junk])
    write_jsonl(
        b1,
        [unique(b1, n) for n in range(12, 17)]
        + [copy(b1, 1, True), copy(b1, 2, True, edit=True)]  # against the original, smaller ids
        + [copy(b1, 12, False), copy(b1, 13, True, edit=True), junk],  # inside the batch
    )
    write_jsonl(
        b2,
        [unique(b2, n) for n in range(17, 21)]
        + [copy(b2, 14, True), copy(b2, 15, False, edit=True)]  # across batches
        + [copy(b2, 3, False), copy(b2, 17, True), junk],  # the original; inside the batch
    )
    write_jsonl(b3a, [unique(b3a, n) for n in range(21, 24)] + [copy(b3a, 18, True, edit=True)])
    write_jsonl(
        b3b,
        [unique(b3b, n) for n in range(24, 26)]
        + [copy(b3b, 16, False), copy(b3b, 4, True, edit=True)]  # batch 1; the original
        + [copy(b3b, 21, True), junk],  # inside the batch, across its two files
    )
    return [[b0], [b1], [b2], [b3a, b3b]]


def read_rows(root: Path, rel: str) -> list[dict]:
    files = sorted((root / rel).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def file_states(root: Path, *subdirs: str) -> dict[str, tuple[str, int]]:
    """{path: (sha256, inode)} of every file below `subdirs` of `root`."""
    states = {}
    for sub in subdirs:
        for path in sorted((root / sub).rglob("*")):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                states[str(path.relative_to(root))] = (digest, os.stat(path).st_ino)
    return states


def clusters(kept: list[dict], rejects: list[dict]) -> dict[str, frozenset[str]]:
    """keeper id -> every id in its duplicate cluster (the keeper included)."""
    members: dict[str, set[str]] = {row["id"]: {row["id"]} for row in kept}
    for row in rejects:
        if row["duplicate_of"] is not None:
            assert row["duplicate_of"] in members, f"{row['id']} points to a dropped {row['duplicate_of']}"
            members[row["duplicate_of"]].add(row["id"])
    return {keeper: frozenset(ids) for keeper, ids in members.items()}


def config_overrides(ws: Path, inputs: list, tracking_uri: str, *extra: str) -> list[str]:
    return [
        f"workspace={ws}",
        f"corpus.inputs={json.dumps([str(p) for p in inputs])}",
        "mlflow.experiment=refresh-tests",
        f"mlflow.tracking_uri={tracking_uri}",
        *TINY,
        *extra,
    ]


def refresh_config(ws: Path, inputs: list, tracking_uri: str, *extra: str) -> Config:
    return load_config(ROOT / DEMO_CONFIG, config_overrides(ws, inputs, tracking_uri, *extra))


def job_args(ws: Path, inputs: list, tracking_uri: str, *extra: str) -> list[str]:
    """`jobs/refresh_corpus.py --config configs/demo.yaml --set ...` with the same config."""
    sets = [a for item in config_overrides(ws, inputs, tracking_uri, *extra) for a in ("--set", item)]
    return ["jobs/refresh_corpus.py", "--config", DEMO_CONFIG, *sets]
