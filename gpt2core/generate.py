"""Batched sampling with a preallocated KV cache.

Prompts of different lengths share one batch by left padding: each sequence's positions start at 0
at its first real token, and the attention mask hides the padding. Every step feeds one token per
sequence; a sequence stops at EOS (finish_reason "eos", the EOS itself not returned) or after
max_new_tokens or when the context is full ("length").

Everything runs on the model's device (cache, masks, sampling, the seeded generator): a seed gives
the same tokens on the same kind of device, and a GPU waits for the host once per token, to stop
when every sequence is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2core.model import GPT


@dataclass
class Generation:
    tokens: list[int]  # the new tokens, without the prompt and without EOS
    finish_reason: str  # "eos" | "length"


class KVCache:
    """Keys and values of all layers, (n_layer, B, n_head, length, head_dim), written in place.

    mask[b, 0, q, k] is 0 where query position q may attend to key position k (causal, not a padding
    key, and always itself, so that padding queries do not produce NaNs) and -inf elsewhere: an
    additive mask built once, which attention takes as is (a boolean one it converts at every call).

    The cache has the model's dtype, so that attention rounds as transformers' does. (On CPU, an fp32
    cache would make a bf16 decode step ~15% faster, the bf16 attention kernel being ~6x slower than
    the fp32 one for a single query row, but bf16 greedy tokens would then drift from transformers'.)"""

    def __init__(self, model: GPT, pad: torch.Tensor, length: int, dtype: torch.dtype):
        cfg = model.config
        self.dtype = dtype
        shape = (cfg.n_layer, pad.numel(), cfg.n_head, length, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=pad.device)
        self.v = torch.zeros_like(self.k)
        pos = torch.arange(length, device=pad.device)
        causal = pos[None, :] <= pos[:, None]
        real_key = pos[None, :] >= pad[:, None]
        allowed = (causal[None] & real_key[:, None, :]) | torch.eye(
            length, dtype=torch.bool, device=pad.device
        )
        self.mask = torch.zeros(allowed.shape, dtype=self.dtype, device=pad.device)
        self.mask.masked_fill_(~allowed, float("-inf"))
        self.mask = self.mask[:, None]
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, end = self.pos, self.pos + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], self.mask[:, :, start:end, :end]

    def advance(self, n: int) -> None:
        self.pos += n


@dataclass(frozen=True)
class Sampling:
    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def _check_prompts(model: GPT, prompts: list[list[int]], max_new_tokens: int) -> None:
    cfg = model.config
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if len(p) >= cfg.block_size:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; the context holds {cfg.block_size}, leaving no room to generate"
            )
        if min(p) < 0 or max(p) >= cfg.vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")


def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor | None, sampling: Sampling, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) fp32 logits -> (B,) token ids; same processing order as transformers."""
    if seen is not None:  # CTRL-style penalty on every token already in the sequence
        penalty = sampling.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    if sampling.greedy or sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.size(-1):
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # keep the smallest prefix whose mass reaches top_p
        drop_sorted = mass_before >= sampling.top_p
        drop_sorted[:, 0] = False
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def _left_pad(prompts: list[list[int]], device: torch.device):
    """(B, width) ids right-aligned, their positions (0 at each first real token), left pad sizes."""
    width = max(map(len, prompts))
    # Built on the host and copied once: one small copy per prompt costs a GPU a sync each.
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    pad = width - lengths
    positions = (torch.arange(width, device=device)[None, :] - pad[:, None]).clamp(min=0)
    return idx, positions, pad, lengths


@torch.inference_mode()
def generate(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | None = None,
    seed: int | None = None,
) -> list[Generation]:
    """Continue each prompt (a list of token ids); one Generation per prompt, in order.

    greedy (or temperature 0) takes the argmax; otherwise samples after repetition penalty,
    temperature, top-k and top-p. seed makes sampling reproducible. Raises ValueError for bad input.
    """
    sampling = Sampling(greedy, temperature, top_k, top_p, repetition_penalty)
    sampling.check()
    _check_prompts(model, prompts, max_new_tokens)
    if not prompts:
        return []
    cfg = model.config
    device = model.transformer.wte.weight.device
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else model.transformer.wte.weight.dtype
    idx, positions, pad, lengths = _left_pad(prompts, device)
    budget = torch.clamp(cfg.block_size - lengths, max=max_new_tokens)  # never outgrow the context
    steps = int(budget.max())
    seen = None
    if repetition_penalty != 1.0:  # which ids each sequence already holds (padding excluded)
        seen = torch.zeros((len(prompts), cfg.vocab_size), dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, device=device)] = True
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    was_training = model.training
    model.eval()
    try:
        cache = KVCache(model, pad, idx.size(1) + steps - 1, dtype)
        logits, _ = model(idx, positions=positions, cache=cache, last_only=True)
        out = torch.empty((len(prompts), steps), dtype=torch.long, device=device)
        n_new = torch.zeros_like(lengths)
        done = torch.zeros_like(lengths, dtype=torch.bool)
        stopped_by_eos = torch.zeros_like(done)
        for step in range(steps):
            tok = next_tokens(logits[:, -1].float(), seen, sampling, generator)
            out[:, step] = tok
            if eos_id is not None:
                stopped_by_eos |= ~done & (tok == eos_id)
                done |= stopped_by_eos
            n_new += (~done).long()
            done |= n_new >= budget
            if bool(done.all()):  # the one host sync per token
                break
            if seen is not None:
                seen.scatter_(1, tok[:, None], True)
            # Finished sequences keep stepping (their output is ignored); hold their position in range.
            positions = torch.clamp(lengths + step, max=cfg.block_size - 1)
            logits, _ = model(tok[:, None], positions=positions[:, None], cache=cache, last_only=True)
    finally:
        model.train(was_training)
    rows, counts = out.tolist(), n_new.tolist()
    reasons = ["eos" if e else "length" for e in stopped_by_eos.tolist()]
    return [Generation(tokens=row[:n], finish_reason=r) for row, n, r in zip(rows, counts, reasons)]
