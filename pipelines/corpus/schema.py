"""Row layouts shared by every corpus step, and the stable document id.

A document id is 16 hex digits of a 63-bit hash of (input file name, record key). The file name is
its path below the inputs' root (pipelines/corpus/sources.py), also the rows' `source`; the record
key is the record's own id field when it has one, else its position in the file (line or row
number; WARC-Record-ID in a crawl; 0 for a one-document file); rows keep it as the string
`source_id`, so kept and rejected rows join back to the input. The same input
files give the same ids wherever they lie (another directory, a bucket, another node), so a rerun
or a run on another cluster keeps the same documents and byte-identical outputs, and
"keep the smallest id" is a deterministic dedup rule. 63 bits keep the number a positive int64,
so the hex order and the numeric order agree.
"""

from __future__ import annotations

import pyarrow as pa
import xxhash

ID_BITS = 63
ID_MASK = (1 << ID_BITS) - 1

# The funnel, in order: every dropped document names the stage that dropped it.
STAGES = (
    "read",
    "extract",
    "normalize",
    "language",
    "quality",
    "decontaminate",
    "dedup_exact",
    "dedup_fuzzy",
)


def doc_key(source: str, record: str | int) -> int:
    return xxhash.xxh3_64_intdigest(f"{source}\x00{record}".encode()) & ID_MASK


def key_to_id(key: int) -> str:
    return f"{key:016x}"


# What a reader yields per record (`raw` for bytes still to decode, `text` for text it already has).
RECORD_SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("source", pa.string()),
        ("source_id", pa.string()),  # the record key as a string; null for a whole-file reject
        ("url", pa.string()),
        ("format", pa.string()),  # "html" | "text"
        ("raw", pa.large_binary()),
        ("text", pa.large_string()),
        ("stage", pa.string()),  # set when the record is already rejected
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("sec_read", pa.float32()),  # worker seconds spent reading, spread over the file's records
    ]
)

# Kept documents as published in data/*.parquet.
DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("lang", pa.string()),
        ("lang_score", pa.float32()),
        ("words", pa.int32()),
        ("replacement_chars", pa.int32()),  # U+FFFD left by invalid bytes in the input
        ("pii_redactions", pa.int32()),
    ]
)

# Dropped documents as published in rejects/*.parquet: one row per document, one reason each.
REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("url", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),  # the kept document's id, and its record in its input:
        ("duplicate_of_source", pa.string()),
        ("duplicate_of_source_id", pa.string()),
        ("detail", pa.string()),
    ]
)

PER_DOC_STAGES = ("read", "extract", "normalize", "language", "quality", "pii", "decontaminate", "minhash")
TIMING_COLUMNS = tuple(f"sec_{s}" for s in PER_DOC_STAGES)


# Every record after the per-document steps (kept so far or rejected), with its dedup keys.
STAGING_SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        *[(f.name, f.type) for f in DOC_SCHEMA if f.name != "id"],
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("exact_hash", pa.uint64()),
        ("sig", pa.list_(pa.uint32())),  # variable-size lists: rejected rows hold nulls
        ("bands", pa.list_(pa.uint64())),
        ("ngrams", pa.list_(pa.uint64())),  # sampled word n-gram hashes: what index/ngrams holds
        ("recalled", pa.bool_()),  # an exact copy: its outcome came from a memo (memo.py)
        *[(c, pa.float32()) for c in TIMING_COLUMNS],
    ]
)
