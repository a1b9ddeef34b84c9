"""LoRA: low-rank adapters on the attention and MLP projections, merged back into plain weights.

apply_lora(model, rank, alpha) wraps each targeted nn.Linear as y = W x + b + (alpha / rank) B A x,
with A (rank, in) random and B (out, rank) zero, so training starts from exactly the base model.
Every other parameter is frozen: only A and B train. merged_state_dict(state) folds the adapters into
W (W + scale * B A) and returns a state dict with the base model's names, so a fine-tuned model is
saved, served and exported like any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
BASE, LORA_A, LORA_B = "base", "lora_A", "lora_B"


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS  # module name suffixes inside each block

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.base = base
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear; B = 0 keeps the output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Wrap the targeted projections in place and freeze everything but the adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(config.targets)
    ]
    if not targets:
        raise ValueError(f"no module matches the LoRA targets {config.targets}")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoraLinear(module, config.rank, config.scale))
    return model


def merged_state_dict(state: dict[str, torch.Tensor], config: LoraConfig) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict -> the base model's names with W + scale * B A (adapters gone)."""
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in (LORA_A, LORA_B):
            continue
        owner, _, part = prefix.rpartition(".")
        if part != BASE:
            merged[key] = value
            continue
        if leaf == "weight":
            a, b = state[f"{owner}.{LORA_A}"], state[f"{owner}.{LORA_B}"]
            value = value + config.scale * (b.float() @ a.float()).to(value.dtype)
        merged[f"{owner}.{leaf}"] = value
    return merged
