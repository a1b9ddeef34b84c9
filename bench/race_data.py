"""bench_race.py's data: the input text, and nanoGPT's dataset cut from the product's own split.

Input text: pydoc's plain-text page of public classes and functions of Python's standard library
(the kind of text the product's demo corpus, `demo:pydoc`, is made of), one JSONL document per
page, modules in a fixed shuffled order until about `--bytes` bytes. Written in a subprocess with a
fixed hash seed (pydoc renders sets) and the demo corpus's scrubbing of addresses and install
paths, so the same Python writes the same file:

    python bench/race_data.py OUT.jsonl [--bytes 1100000]

nanoGPT's dataset: the documents the product's shards stage put in each split (its
`*.docs.parquet` indexes), their text taken from the published corpus, joined with one separator
character per document (as the product appends one EOS token) and character-encoded exactly as
nanoGPT's data/shakespeare_char/prepare.py does: train.bin and val.bin of uint16 ids, and meta.pkl
with vocab_size, itos and stoi over the characters of both splits.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIN_DOC_CHARS = 300  # a signature without a docstring is no document
MAX_DOC_CHARS = 30_000  # one giant class page would outweigh hundreds of functions in ~1 MB
SEED = 0
# Between documents in nanoGPT's text, as the product's shards end each document with one EOS.
# A control character pydoc never writes, so it means only "a document ends here".
DOC_SEPARATOR = "\x03"


# --- the input text (runs in its own process) -------------------------------------------------
def module_order() -> list[str]:
    from pipelines.corpus.demo import SKIP

    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)
    random.Random(SEED).shuffle(names)  # a mix of the library, not its first letters
    return names


def module_pages(module_name: str) -> list[dict]:
    """pydoc's page of each public class and function that `module_name` (or a submodule) defines."""
    import inspect
    import pydoc

    from pipelines.corpus.demo import _import, stable

    module = _import(module_name)
    if module is None:
        return []
    pages, seen = [], set()
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or id(obj) in seen or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if (getattr(obj, "__module__", None) or "").split(".")[0] != module_name:
            continue  # imported from elsewhere: documented under its own module
        seen.add(id(obj))
        try:
            text = stable(pydoc.plaintext.document(obj, f"{module_name}.{name}"))
        except Exception:  # noqa: BLE001 - pydoc fails on a few odd objects: leave them out
            continue
        if MIN_DOC_CHARS <= len(text) <= MAX_DOC_CHARS:
            doc_id = f"{module_name}.{name}"
            pages.append(
                {"id": doc_id, "text": text, "url": f"https://docs.example.org/python/{doc_id}.html"}
            )
    return pages


def write_pydoc_jsonl(out: Path, target_bytes: int) -> dict:
    import contextlib
    import io
    import warnings

    from pipelines.corpus.demo import forget_the_process

    warnings.simplefilter("ignore")
    out = out.resolve()
    forget_the_process()  # nothing of this process (argv, environment, cwd) reaches the text
    docs, total = [], 0
    for module_name in module_order():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            pages = module_pages(module_name)
        for page in pages:
            docs.append(page)
            total += len(page["text"].encode())
        if total >= target_bytes:
            break
    out.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return {"docs": len(docs), "bytes": total}


# --- nanoGPT's dataset from the product's split ---------------------------------------------------
def split_texts(cfg) -> dict[str, list[str]]:
    """{"train": [...], "val": [...]}: the texts of the documents in the product's published shards,
    in shard and file order."""
    import pyarrow.parquet as pq

    from pipelines.core.outputs import CorpusOutput
    from pipelines.core.workflow import Runner
    from pipelines.shards.doc_index import read_doc_index
    from pipelines.stages import pipeline_stages

    runner = Runner(cfg, pipeline_stages(), log=lambda m: None)
    corpus, shards = runner.published("corpus"), runner.published("shards")
    if corpus is None or shards is None:
        raise SystemExit("the product's corpus or shards are not published for this config")
    ws = runner.ws
    texts: dict[str, str] = {}
    for rel in CorpusOutput.of(corpus).data_files(ws):
        table = pq.read_table(ws.path(rel), columns=["id", "text"], filesystem=ws.fs)
        texts.update(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    index = read_doc_index(ws, shards.dir)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for split, doc_id in zip(index.column("split").to_pylist(), index.column("id").to_pylist()):
        splits[split].append(texts[doc_id])
    return splits


def write_char_dataset(splits: dict[str, list[str]], data_dir: Path) -> dict:
    """train.bin, val.bin, meta.pkl as nanoGPT's shakespeare_char/prepare.py writes them."""
    import numpy as np

    data = {split: "".join(t + DOC_SEPARATOR for t in docs) for split, docs in splits.items()}
    chars = sorted(set(data["train"]) | set(data["val"]))  # prepare.py: over the whole text
    if len(chars) > 2**16:
        raise SystemExit(f"{len(chars)} distinct characters do not fit nanoGPT's uint16 ids")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, text in data.items():
        np.array([stoi[c] for c in text], dtype=np.uint16).tofile(data_dir / f"{split}.bin")
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    val_bytes = sum(len(t.encode()) for t in splits["val"])
    return {
        "vocab_size": len(chars),
        "train_docs": len(splits["train"]),
        "val_docs": len(splits["val"]),
        "train_chars": len(data["train"]),
        "val_chars": len(data["val"]),  # separators included: nanoGPT predicts them
        # the documents' UTF-8 bytes, separators not: as the product's bpb counts EOS tokens, not bytes
        "val_bytes": val_bytes,
        "val_chars_per_byte": len(data["val"]) / val_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Write bench_race.py's input text (pydoc pages, JSONL).")
    parser.add_argument("out", type=Path)
    parser.add_argument("--bytes", type=int, default=1_100_000)
    args = parser.parse_args()
    print(json.dumps(write_pydoc_jsonl(args.out, args.bytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
