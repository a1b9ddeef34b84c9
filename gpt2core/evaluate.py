"""Validation metrics: mean loss, perplexity and bits per byte. One function, used by the training loop
(every rank its share, summed over ranks) and by the champion gate (one process, whole model).

Bits per byte divide by the UTF-8 bytes of the text, not by tokens, so models with different
tokenizers compare on the same text: bpb = mean loss / ln 2 * tokens / bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from gpt2core.data import IGNORE_INDEX


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy, nats per target token
    perplexity: float
    bits_per_byte: float | None  # None when the data has no byte count
    tokens: int  # target tokens evaluated, all ranks

    def metrics(self, prefix: str = "val_") -> dict[str, float]:
        named = {"loss": self.loss, "ppl": self.perplexity, "bpb": self.bits_per_byte}
        return {f"{prefix}{k}": v for k, v in named.items() if v is not None}

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        bpb = f" ({self.bits_per_byte:.3f} bpb)" if self.bits_per_byte is not None else ""
        return f"val loss {self.loss:.4f}{bpb}"


def evaluate(
    loss_fn: Callable[..., object],
    batches: Iterable[tuple[object, object]],
    tokens_per_byte: float | None,
    device: object = "cpu",
    distributed: bool = False,
) -> EvalResult:
    """Token-weighted mean loss of `loss_fn(x, y)` (a scalar mean over y's counted targets) over
    `batches`; with `distributed`, the sums are all-reduced so every rank gets the split's figures."""
    import torch

    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss * tokens, tokens
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            count = (y != IGNORE_INDEX).sum()
            loss = loss_fn(x, y)
            totals += torch.stack([loss.double() * count, count.double()])
    if distributed:
        torch.distributed.all_reduce(totals)
    loss_sum, tokens = totals.tolist()
    if not tokens:
        raise ValueError("evaluation saw no target tokens (empty validation data)")
    mean = loss_sum / tokens
    bpb = mean / math.log(2) * tokens_per_byte if tokens_per_byte else None
    return EvalResult(mean, math.exp(min(mean, 50.0)), bpb, int(tokens))


def model_loss_fn(model: object) -> Callable[..., object]:
    """loss_fn for a gpt2core GPT (or a DeepSpeed engine wrapping one): forward with targets."""

    def loss_fn(x, y):
        return model(x, y)[1]

    return loss_fn


# --- a whole model directory on validation shards (the champion gate) ------------------------------
class TokenStream:
    """An in-memory token stream with the reader interface eval_batches() needs (len, read,
    tokens_per_byte): validation text re-encoded for a model whose tokenizer differs from the shards'."""

    def __init__(self, tokens, n_bytes: int):
        import numpy as np

        self.tokens, self.n_bytes = np.asarray(tokens, dtype=np.int64), n_bytes

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, start: int, length: int):
        return self.tokens[start : start + length]

    @property
    def tokens_per_byte(self) -> float:
        return len(self.tokens) / max(self.n_bytes, 1)


def val_tokens_for(model_dir: str, shards_dir: str, shards_tokenizer_dir: str):
    """The val split as `model_dir`'s tokenizer sees it: the shards themselves when the tokenizers
    are the same file, else the documents decoded (the tokenizer is lossless) and re-encoded."""
    import hashlib
    from pathlib import Path

    import numpy as np

    from gpt2core.data import TokenShards
    from gpt2core.tokenizer import SPM_FILE, load_tokenizer

    val = TokenShards(shards_dir, "val", verify=False)
    spm = Path(model_dir) / SPM_FILE
    if spm.is_file() and hashlib.sha256(spm.read_bytes()).hexdigest() == val.tokenizer_sha256:
        return val
    source, target = load_tokenizer(shards_tokenizer_dir), load_tokenizer(model_dir)
    stream = val.read(0, len(val)).astype(np.int64)
    ends = np.flatnonzero(stream == val.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    texts = [source.decode(stream[s:e].tolist()) for s, e in zip(starts, ends)]
    encoded = [ids + [target.eos_id] for ids in target.encode_batch(texts)]
    return TokenStream([t for ids in encoded for t in ids], val.n_bytes)


def evaluate_model_dir(
    model_dir: str, val, batch_size: int, max_batches: int, device: str = "cpu"
) -> EvalResult:
    """Val metrics of a saved model on its first `max_batches` batches of `val` (windows of the
    model's own context), in one process: the same windows the training loop's ranks share out."""
    from gpt2core.checkpoint import load_model
    from gpt2core.data import eval_batches

    model = load_model(model_dir, device=device).float()
    batches = eval_batches(val, model.config.block_size, batch_size, max_windows=batch_size * max_batches)
    return evaluate(model_loss_fn(model), batches, val.tokens_per_byte, device)
