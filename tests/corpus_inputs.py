"""Inputs for the corpus tests: English-looking documents that pass the quality filters, random
documents with controlled near-duplicates, and files in every input format (good and damaged)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipelines.corpus.demo import write_warc

ADJ = "quiet bright narrow ancient busy careful gentle heavy local modern patient rapid simple steady warm".split()
NOUN = "river garden library teacher market village engine letter window student museum harbor bridge kitchen".split()
VERB = "visits describes follows repairs watches explains collects carries paints measures reaches".split()
PLACE = "station school forest castle bakery hospital valley island factory theater".split()
TIME = "morning evening winter summer weekend holiday afternoon".split()
NAME = "Anna Brian Clara David Elena Frank Grace Henry Irene James Karen Louis Maria".split()
TEMPLATES = [
    "The {a} {n} {v} the {a2} {n2} near the {p} every {t}.",
    "{N} said that the {n} of the {p} was {a} and {a2} during the {t}.",
    "In the {t}, {N} {v} a {a} {n} and then walks to the {p} with {N2}.",
    "Nobody expected the {n} to be so {a}, but {N} had seen it at the {p} before.",
    "Why does the {a} {n} always wait for the {n2} outside the {p}?",
    "With a {a} {n} in hand, {N} {v} the {n2} before the {t} ends.",
    "Most people in the {p} have a {a} {n} and a {a2} {n2} at home.",
    "{N} and {N2} agree that the {p} needs a {a} {n} to stay open.",
]


def sentence(rng: random.Random) -> str:
    pick = rng.choice
    return rng.choice(TEMPLATES).format(
        a=pick(ADJ),
        a2=pick(ADJ),
        n=pick(NOUN),
        n2=pick(NOUN),
        v=pick(VERB),
        p=pick(PLACE),
        t=pick(TIME),
        N=pick(NAME),
        N2=pick(NAME),
    )


def english_doc(rng: random.Random, sentences: int = 14) -> str:
    """Prose that passes the Gopher and C4 rules and reads as English (about 150 words)."""
    lines = [" ".join(sentence(rng) for _ in range(3)) for _ in range(sentences // 3 + 1)]
    return "\n".join(lines)


def html_page(text: str, title: str = "page") -> str:
    body = "".join(f"<p>{line}</p>" for line in text.splitlines())
    nav = "<nav><a href='/'>Home</a> <a href='/about'>About</a></nav>"
    return f"<html><head><title>{title}</title></head><body>{nav}<main>{body}</main></body></html>"


def write_jsonl(path: Path, records: list, compression: str | None = None) -> None:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    if compression == "gzip":
        lines = gzip.compress(lines)
    elif compression == "zstd":
        lines = zstandard.ZstdCompressor().compress(lines)
    path.write_bytes(lines)


def write_parquet(path: Path, records: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(records), path)


def mixed_corpus(root: Path, seed: int = 0) -> dict:
    """A small raw corpus in every format with known good, duplicate and bad documents.

    Returns the expected counts the tests check against.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = [english_doc(rng) for _ in range(12)]
    write_jsonl(
        root / "a.jsonl",
        [{"id": f"a{i}", "text": docs[i], "url": f"https://a.example/{i}"} for i in range(3)]
        + ['{"id": "broken", "text": ']
        + [{"id": "a-copy", "text": docs[0]}],  # exact duplicate of a0
        None,
    )
    write_jsonl(root / "b.jsonl.gz", [{"id": f"b{i}", "text": docs[3 + i]} for i in range(2)], "gzip")
    write_jsonl(
        root / "c.jsonl.zst", [{"id": "c0", "text": docs[5]}, {"id": "c1", "body": "no text"}], "zstd"
    )
    write_parquet(root / "d.parquet", [{"id": "d0", "text": docs[6], "url": None}])
    (root / "e.txt").write_text(docs[7])
    (root / "f.html").write_text(html_page(docs[8]))
    edited = docs[8].replace(" the ", " a ", 1)  # a near-duplicate of f.html
    write_warc(
        root / "g.warc.gz",
        [
            ("https://g.example/0", html_page(docs[9]).encode()),
            ("https://g.example/1", html_page(edited).encode()),
            ("https://g.example/img", b"\x89PNG....", "image/png"),
            ("https://g.example/de", html_page(GERMAN).encode()),
        ],
    )
    (root / "h-binary.html").write_bytes(bytes(range(256)) * 8)
    (root / "i-empty.txt").write_bytes(b"")
    (root / "j-latin1.txt").write_bytes(("na\xefve caf\xe9 " * 100).encode("latin-1"))
    (root / "k-junk.html").write_text(html_page(SHOP))  # English, but far too short for Gopher
    return {
        "input_docs": 20,  # 5 + 2 + 2 + 1 + 1 + 1 + 4 + 1 + 1 + 1 + 1 (a.jsonl's broken line counts)
        "kept_docs": 10,  # docs 0..9 once each
        "junk": "k-junk.html",  # dropped by a quality rule
        "dropped": {
            "malformed_json": 1,
            "exact_duplicate": 1,
            "missing_text": 1,
            "near_duplicate": 1,
            "not_html": 1,
            "language": 1,
            "binary_content": 1,
            "empty": 1,
            "invalid_utf8": 1,
        },
    }


SHOP = "Welcome to our online shop. We sell the best shoes and bags in the whole city, with free delivery."
GERMAN = (
    "Die Stadt liegt an einem breiten Fluss und hat eine lange Geschichte. Im Sommer kommen viele "
    "Besucher, um die alten Brücken zu sehen. Der Markt öffnet jeden Morgen um sieben Uhr.\n"
    "Wir haben gestern Abend in einem kleinen Restaurant am Hafen gegessen. Das Wetter war kalt, "
    "aber die Sonne schien den ganzen Tag. Meine Schwester arbeitet seit drei Jahren als Ärztin."
)


def near_duplicate_corpus(seed: int = 0, clusters: int = 60, copies: int = 4, words: int = 300):
    """Random-word documents in clusters: each copy of a cluster's base replaces a random share of
    its words, so word-5-gram Jaccard similarities spread from about 0.2 to 1.0.

    Returns [(doc id, text, cluster)], exact copies included (cluster base repeated verbatim)."""
    rng = random.Random(seed)
    vocab = [f"w{i:05d}" for i in range(20_000)]
    out = []
    for c in range(clusters):
        base = [rng.choice(vocab) for _ in range(words)]
        out.append((f"c{c}-base", " ".join(base), c))
        if c % 5 == 0:
            out.append((f"c{c}-exact", " ".join(base), c))
        for k in range(copies):
            rate = rng.choice([0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2])
            copy = [rng.choice(vocab) if rng.random() < rate else w for w in base]
            out.append((f"c{c}-copy{k}", " ".join(copy), c))
    return out


def jaccard(a: str, b: str, n: int = 5) -> float:
    wa, wb = a.split(), b.split()
    sa = {tuple(wa[i : i + n]) for i in range(len(wa) - n + 1)}
    sb = {tuple(wb[i : i + n]) for i in range(len(wb) - n + 1)}
    return len(sa & sb) / len(sa | sb)
