"""GPT-2 model configuration and the standard presets.

Pure Python (no torch import) so that configs can be built and validated cheaply, e.g. by the CLI's
`--dry-run`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Embedding rows are padded up to a multiple of this for faster matmuls; the extra rows are never
# sampled (their logits are masked/sliced) and never exported.
VOCAB_MULTIPLE = 64

# (n_layer, n_head, n_embd, block_size) of the published GPT-2 sizes, plus a tiny one for tests.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}


@dataclass
class GPTConfig:
    vocab_size: int  # the tokenizer's vocabulary (unpadded)
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # maximum context length (learned position embeddings)
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linear and LayerNorm layers
    activation_checkpointing: bool = False  # recompute each block in backward to save memory

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {unknown}")
        return cls(**d)


def preset(name: str, vocab_size: int, **overrides: Any) -> GPTConfig:
    """A preset by name with the tokenizer's vocab size; overrides whose value is None are ignored."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return GPTConfig(vocab_size=vocab_size, **values)
