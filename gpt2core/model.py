"""GPT-2 in plain PyTorch: learned positions, pre-LayerNorm blocks, tanh GELU, tied embeddings.

Module and parameter names follow GPT-2/nanoGPT (transformer.h.N.attn.c_attn, ...) so that Hugging
Face checkpoints map onto it one to one (gpt2core/hf.py only transposes the Conv1D weights).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt2core.config import GPTConfig
from gpt2core.loss import linear_cross_entropy


class KVCacheLike(Protocol):
    """What attention needs from a cache during generation (see gpt2core.generate.KVCache)."""

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def advance(self, n: int) -> None: ...


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCacheLike | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # Keys/values of all earlier tokens plus the mask that encodes causality and left padding.
            k, v, mask = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation; one fused kernel instead of a chain of ops.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCacheLike | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class LMHead(nn.Linear):
    """The (tied) output projection. With targets it returns the loss instead of logits: computing the
    loss inside this module's forward keeps it where ZeRO-3 gathers the weight."""

    def __init__(self, n_embd: int, padded_vocab_size: int, vocab_size: int):
        super().__init__(n_embd, padded_vocab_size, bias=False)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:  # padding columns sliced off: they can never be sampled
            return super().forward(x)[..., : self.vocab_size]
        flat = x.reshape(-1, x.size(-1))
        return linear_cross_entropy(flat, self.weight, targets.reshape(-1), self.vocab_size)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias),
            )
        )
        self.lm_head = LMHead(cfg.n_embd, cfg.padded_vocab_size, cfg.vocab_size)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): two per block add to the stream.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        with torch.no_grad():  # padding rows are never looked up nor sampled: keep them inert
            self.transformer.wte.weight[cfg.vocab_size :].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_position_embeddings: bool = False) -> int:
        """Unique parameters (the tied head counts once), padding rows included."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if exclude_position_embeddings else n

    def compile_blocks(self, **compile_kwargs) -> GPT:
        """torch.compile each block in place (regional compilation: one graph reused n_layer times)."""
        for block in self.transformer.h:
            block.compile(**compile_kwargs)
        return self

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        cache: KVCacheLike | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits, loss).

        Without targets: logits (B, T, vocab_size), or (B, 1, vocab_size) with last_only; loss None.
        With targets (B, T), already shifted, -100 = ignore: (None, mean loss over the other
        targets), computed in row chunks so no full fp32 logits tensor is ever built.
        positions (B, T) and cache are for generation with left-padded prompts (gpt2core.generate).
        """
        T = idx.size(1)
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size={self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute and cache is None:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, i)
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)
        if targets is not None:
            return None, self.lm_head(x, targets)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(x), None
