"""Optimizer parameter groups and the learning-rate schedule (linear warmup, cosine decay)."""

from __future__ import annotations

import math

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matmul weights decay; biases, LayerNorm and embeddings (and so the tied head)
    do not, as in GPT-2/minGPT. Tied parameters appear once."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.Embedding)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields a tied parameter once
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, max_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to max_lr over warmup_steps,
    cosine decay to max_lr * min_lr_ratio at max_steps, constant after."""
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr_at_progress(step, progress, max_lr, warmup_steps, min_lr_ratio)


def lr_at_progress(
    step: int, progress: float, max_lr: float, warmup_steps: int, min_lr_ratio: float
) -> float:
    """Linear warmup over the first warmup_steps steps, then the cosine at `progress` (the share of
    the decay done, whatever measures it: steps, or a time budget's clock), the floor from 1 on."""
    min_lr = max_lr * min_lr_ratio
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (max_lr - min_lr)
