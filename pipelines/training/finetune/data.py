"""Fine-tuning data: JSONL prompt/completion pairs or a plain text file, as fixed-size training rows.

Pairs: each row is prompt + completion + EOS in one window; the targets of the prompt positions are
-100, so only the completion (and its EOS) carries loss. A pair longer than the window loses prompt
tokens from the left (the completion is what is learned), counted as `truncated`. A malformed line or
one without a string `prompt` and `completion` is counted as a reject with its reason, never raised.
Text: the file's tokens (then EOS) cut into windows, every target counts (continued pretraining).

Rows are tokenized once, on the driver, into `<dir>/{train,val}.npz` (x, y int32 [rows, block]);
the training workers only read them (pipelines/training/finetune/task.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpt2core.data import IGNORE_INDEX as IGNORE  # the loss ignores these targets
from pipelines.core.outputs import VAL_PAIRS

PROMPT, COMPLETION = "prompt", "completion"
SPLITS = ("train", "val")


@dataclass
class PairsFile:
    pairs: list[tuple[str, str]]
    rejects: Counter = field(default_factory=Counter)  # reason -> lines


def read_pairs(path: str | Path) -> PairsFile:
    """The prompt/completion pairs of a JSONL file; bad lines counted by reason."""
    out = PairsFile([])
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                out.rejects["malformed_json"] += 1
                continue
            if not isinstance(record, dict):
                out.rejects["not_an_object"] += 1
                continue
            missing = [k for k in (PROMPT, COMPLETION) if not isinstance(record.get(k), str)]
            if missing:
                out.rejects[f"missing_{missing[0]}"] += 1
                continue
            if not record[COMPLETION]:
                out.rejects["empty_completion"] += 1
                continue
            out.pairs.append((record[PROMPT], record[COMPLETION]))
    return out


def encode_pair(
    prompt_ids: list[int], completion_ids: list[int], eos_id: int, block_size: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(x, y, truncated): one window of prompt + completion + EOS, prompt targets -100, padded."""
    prompt = prompt_ids or [eos_id]  # an empty prompt starts from end-of-text, as GPT-2 samples
    completion = [*completion_ids, eos_id][:block_size]  # at least the prompt's last token stays
    room = block_size + 1 - len(completion)
    truncated = len(prompt) > room
    ids = prompt[-room:] + completion
    n_prompt = len(ids) - len(completion)
    x = np.full(block_size, eos_id, dtype=np.int32)
    y = np.full(block_size, IGNORE, dtype=np.int32)
    x[: len(ids) - 1] = ids[:-1]
    y[n_prompt - 1 : len(ids) - 1] = ids[n_prompt:]
    return x, y, truncated


def is_val(prompt: str, completion: str, val_fraction: float) -> bool:
    """A stable split by content: the same pair lands in the same split on every run."""
    digest = hashlib.sha256(f"{prompt}\x00{completion}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


@dataclass
class Rows:
    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    target_bytes: int = 0  # UTF-8 bytes of the text the counted targets spell (bits per byte)

    def add(self, x: np.ndarray, y: np.ndarray, target_bytes: int) -> None:
        self.x.append(x)
        self.y.append(y)
        self.target_bytes += target_bytes

    def save(self, path: Path) -> dict:
        x, y = np.stack(self.x), np.stack(self.y)
        np.savez(path, x=x, y=y)
        targets = int((y != IGNORE).sum())
        return {"rows": len(x), "targets": targets, "tokens_per_byte": targets / max(self.target_bytes, 1)}


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, block_size: int) -> tuple[Rows, int]:
    """(rows, truncated): the pairs as windows of `tokenizer` and `block_size`."""
    rows, truncated = Rows(), 0
    prompts = tokenizer.encode_batch([p for p, _ in pairs])
    completions = tokenizer.encode_batch([c for _, c in pairs])
    for (_, completion), p_ids, c_ids in zip(pairs, prompts, completions):
        x, y, cut = encode_pair(p_ids, c_ids, tokenizer.eos_id, block_size)
        truncated += cut
        # EOS spells no text; it counts as one byte, so bits per byte stay finite for short completions.
        rows.add(x, y, len(completion.encode()) + 1)
    return rows, truncated


def build_pairs(path: str | Path, tokenizer, block_size: int, val_fraction: float, out_dir: Path) -> dict:
    """Tokenize a JSONL pairs file into out_dir/{train,val}.npz (+ val.jsonl, the val pairs as text,
    for the champion gate); returns counts per split, truncations and rejects."""
    source = read_pairs(path)
    splits = {"train": [], "val": []}
    for prompt, completion in source.pairs:
        splits["val" if is_val(prompt, completion, val_fraction) else "train"].append((prompt, completion))
    rows, truncated = {}, 0
    for split, pairs in splits.items():
        rows[split], cut = encode_pairs(pairs, tokenizer, block_size)
        truncated += cut
    info = {
        "format": "pairs",
        "pairs": len(source.pairs),
        "truncated": truncated,
        "rejects": dict(source.rejects),
    }
    return _save(rows, splits["val"], out_dir, info)


def build_text(path: str | Path, tokenizer, block_size: int, val_fraction: float, out_dir: Path) -> dict:
    """Tokenize a text file into windows (the last val_fraction of them, at least one, for val)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    ids = np.asarray([*tokenizer.encode(text), tokenizer.eos_id], dtype=np.int32)
    n = (len(ids) - 1) // block_size
    bytes_per_window = len(text.encode()) / max(n, 1)
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    rows = {split: Rows() for split in SPLITS}
    val_text = []
    for i in range(n):
        window = ids[i * block_size : (i + 1) * block_size + 1]
        split = "val" if i >= n - n_val else "train"
        rows[split].add(window[:-1], window[1:], round(bytes_per_window))
        if split == "val":
            val_text.append(("", tokenizer.decode(window[1:].tolist())))
    return _save(rows, val_text, out_dir, {"format": "text", "truncated": 0, "rejects": {}})


def _save(rows: dict[str, Rows], val_pairs: list[tuple[str, str]], out_dir: Path, info: dict) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    empty = [s for s in SPLITS if not rows[s].x]
    if empty:
        counts = ", ".join(f"{s} {len(rows[s].x)}" for s in SPLITS)
        raise ValueError(
            f"the {empty[0]} split is empty ({counts} rows): give more data or change val_fraction"
        )
    write_pairs(val_pairs, out_dir / VAL_PAIRS)
    return {**info, "splits": {s: rows[s].save(out_dir / f"{s}.npz") for s in SPLITS}}


def write_pairs(pairs: list[tuple[str, str]] | list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for pair in pairs:
            record = pair if isinstance(pair, dict) else {PROMPT: pair[0], COMPLETION: pair[1]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def load_rows(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(data_dir) / f"{split}.npz") as f:
        return f["x"], f["y"]


def demo_pairs(documents: list[str], max_pairs: int, per_doc: int = 4, max_chars: int = 200) -> list[dict]:
    """Prompt/completion pairs from a corpus of documentation: a line that is not a sentence (a
    signature, a parameter, a heading), then the next line when it is one - what the thing does."""
    pairs = []
    for text in documents:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        found = 0
        for first, second in zip(lines, lines[1:]):
            if found == per_doc or len(pairs) == max_pairs:
                break
            heading = 10 <= len(first) <= max_chars and not first.endswith(".")
            sentence = 20 <= len(second) <= max_chars and second[0].isupper() and second.endswith(".")
            if heading and sentence:
                pairs.append({PROMPT: f"{first}\n", COMPLETION: second})
                found += 1
    return pairs
