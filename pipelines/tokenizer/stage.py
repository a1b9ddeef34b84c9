"""Stage `tokenizer`: train SentencePiece on a reproducible sample of the corpus, losslessly.

Publishes `<ws>/tokenizer/<fp12>/`: spm.model, spm.vocab, the Hugging Face files (hf_files.py)
and a manifest whose "tokenizer" dict names the model (sha256, vocab size, special ids, sample).

Lossless means decode(encode_lossless(text)) == text for any text: identity normalisation, no dummy
prefix, whitespace kept as is, digits split, and byte_fallback so no character is ever unknown.
The sample is the `sample_docs` documents with the smallest hash of (seed, id): the same corpus and
seed give the same sample and the same model, and growing the corpus changes it only gradually.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import posixpath
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from gpt2core.tokenizer import EOS_PIECE, SPM_FILE, UNK_PIECE, load_sentencepiece
from pipelines.config import TokenizerConfig
from pipelines.core.hashing import stable_hash
from pipelines.core.outputs import CorpusOutput, iter_corpus_batches
from pipelines.core.workflow import Stage, StageContext
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError

# SentencePiece trains on lines; longer lines are cut (it would skip them otherwise).
SAMPLE_LINE_CHARS = 4096
# The lossless settings; see the module docstring.
TRAINER_OPTIONS = {
    "normalization_rule_name": "identity",
    "add_dummy_prefix": False,
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,  # runs of spaces (code indentation) become one piece
    "split_digits": True,
    "byte_fallback": True,
    "unk_id": 0,
    "eos_id": 1,
    "bos_id": -1,  # GPT-2 style: <|endoftext|> is the only special piece the model sees
    "pad_id": -1,
    "unk_piece": UNK_PIECE,
    "eos_piece": EOS_PIECE,
    "input_sentence_size": 0,  # the sample is chosen here, reproducibly; SentencePiece uses all of it
    "max_sentence_length": 4 * SAMPLE_LINE_CHARS,  # bytes: UTF-8 needs at most 4 per character
    "minloglevel": 2,
}


def tokenizer_stage() -> Stage:
    return Stage(
        "tokenizer",
        run_tokenizer,
        sections=("tokenizer",),
        inputs=("corpus",),
        summary="train SentencePiece on a sample of the corpus; export a Hugging Face tokenizer",
    )


def run_tokenizer(ctx: StageContext) -> dict[str, Any]:
    from pipelines.runtime.ray import run_as_task
    from pipelines.tokenizer.hf_files import write_hf_files

    cfg = ctx.cfg.tokenizer
    files = CorpusOutput.of(ctx.inputs["corpus"]).data_files(ctx.ws)
    # A task sized by tokenizer.num_cpus on a node with the CPUs, not the driver on a small head.
    trained = run_as_task(train_on_sample, ctx.ws, files, cfg, num_cpus=cfg.num_cpus)
    model, sample = trained["model"], trained["sample"]
    sp = load_sentencepiece(model)
    ctx.ws.write_bytes(posixpath.join(ctx.out, SPM_FILE), model)
    ctx.ws.write_bytes(posixpath.join(ctx.out, "spm.vocab"), vocab_text(sp).encode())
    write_hf_files(ctx.ws, ctx.out, sp, cfg.model_type)
    ctx.log(
        f"[tokenizer] vocab {sp.get_piece_size()} ({cfg.model_type}) from {sample['docs']} docs, "
        f"{sample['bytes'] / 1e6:.1f} MB in {trained['seconds']:.1f}s ({trained['threads']} threads)"
    )
    return {
        "tokenizer": {
            "sha256": hashlib.sha256(model).hexdigest(),
            "vocab_size": sp.get_piece_size(),
            "eos_id": sp.eos_id(),
            "eos_piece": EOS_PIECE,
            "unk_id": sp.unk_id(),
            "bos_id": None,  # none: prime generation with eos_id, as GPT-2 does
            "pad_id": None,  # none: pad with eos_id and mask the loss
            "model_type": cfg.model_type,
            "sample_docs": sample["docs"],
            "sample_bytes": sample["bytes"],
            "train_seconds": round(trained["seconds"], 3),
            "train_threads": trained["threads"],
            "train_node": trained["node"],
        }
    }


def train_on_sample(ws: Workspace, files: list[str], cfg: TokenizerConfig) -> dict[str, Any]:
    """In a Ray task: sample the corpus, train with as many threads as the task has CPUs."""
    import ray

    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    sample = CorpusSample(ws, files, cfg.sample_docs, cfg.seed)
    started = time.perf_counter()
    model = train_sentencepiece(sample.lines(), cfg, sample, threads)
    return {
        "model": model,
        "sample": {"docs": sample.docs, "bytes": sample.bytes},
        "seconds": time.perf_counter() - started,
        "threads": threads,
        "node": ray.get_runtime_context().get_node_id(),
    }


class CorpusSample:
    """The `size` documents with the smallest stable_hash(id, seed), streamed as training lines."""

    def __init__(self, ws: Workspace, files: list[str], size: int, seed: int):
        self.ws, self.files, self.size, self.seed = ws, files, size, seed
        self.docs = self.bytes = 0  # filled while lines() is consumed
        self.threshold = self._threshold()

    def _threshold(self) -> int | None:
        """The largest key in the sample, or None when the corpus is no bigger than the sample."""
        largest: list[int] = []  # a max-heap (negated keys) of the `size` smallest keys seen
        total = 0
        for batch in iter_corpus_batches(self.ws, self.files, ["id"]):
            for doc_id in batch.column(0).to_pylist():
                total += 1
                key = -stable_hash(doc_id, self.seed)
                if len(largest) < self.size:
                    heapq.heappush(largest, key)
                elif key > largest[0]:
                    heapq.heapreplace(largest, key)
        return -largest[0] if total > self.size else None

    def lines(self) -> Iterator[str]:
        for batch in iter_corpus_batches(self.ws, self.files, ["id", "text"]):
            for doc_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                if self.threshold is not None and stable_hash(doc_id, self.seed) > self.threshold:
                    continue
                text = text or ""
                self.docs += 1
                self.bytes += len(text.encode())
                for line in text.split("\n"):
                    for start in range(0, len(line), SAMPLE_LINE_CHARS):
                        yield line[start : start + SAMPLE_LINE_CHARS]


# --- SentencePiece -------------------------------------------------------------------------------
def train_sentencepiece(
    lines: Iterable[str], cfg: TokenizerConfig, sample: CorpusSample, threads: int
) -> bytes:
    """The serialized model; a UserError naming `tokenizer.vocab_size` when the sample is too small."""
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            num_threads=threads,
            **TRAINER_OPTIONS,
        )
    except RuntimeError as exc:
        most = re.search(r"value <= (\d+)", str(exc))
        if not most:
            raise
        raise UserError(
            f"config key 'tokenizer.vocab_size': {cfg.vocab_size} is more than the training sample "
            f"({sample.docs} docs, {sample.bytes} bytes) supports (at most {most.group(1)}); "
            f"lower it or give the corpus more text"
        ) from None
    return model.getvalue()


def vocab_text(sp: Any) -> str:
    """spm.vocab as spm_train writes it: `piece<TAB>score`, one line per id."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))
