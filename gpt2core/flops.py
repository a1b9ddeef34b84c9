"""Model FLOPs per token and model FLOPs utilisation (MFU) against a measured peak.

FLOPs count the useful matmuls only (the unpadded vocabulary; LayerNorm, GELU, softmax ignored), with
attention counted over the full context as in PaLM's appendix B: forward = 2 N + 4 n_layer n_embd T,
training (forward + backward) = 3x forward. The peak comes from timing a large matmul in the same
dtype on the same device, since no datasheet number fits every CPU.
"""

from __future__ import annotations

import time

from gpt2core.config import GPTConfig


def matmul_params(config: GPTConfig) -> int:
    """Weights that take part in a matmul per token: the blocks and the output head."""
    return config.n_layer * 12 * config.n_embd**2 + config.n_embd * config.vocab_size


def flops_per_token(config: GPTConfig, seq_len: int, training: bool = True) -> float:
    """FLOPs per token at context length seq_len; training=False for a forward pass only."""
    forward = 2 * matmul_params(config) + 4 * config.n_layer * config.n_embd * seq_len
    return 3.0 * forward if training else float(forward)


def measure_peak_flops(dtype=None, device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a (size x size) @ (size x size) matmul in dtype (default float32)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # warm-up: thread pools, kernel selection
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def mfu(tokens_per_second: float, flops_per_token_: float, peak_flops: float) -> float:
    """Achieved model FLOP/s as a fraction of the peak."""
    return tokens_per_second * flops_per_token_ / peak_flops
