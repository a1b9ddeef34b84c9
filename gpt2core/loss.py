"""Cross-entropy of a linear head without materialising the (tokens x vocab) fp32 logits.

The head's logits are by far the largest activation of a GPT-2 step (8k tokens x 50k vocab in fp32 is
1.6 GB, and autograd would keep softmax and gradient copies of it). Here they are built a chunk of
rows at a time; when gradients are needed, each chunk's gradient with respect to the hidden states
and the weight is computed right away (softmax - one_hot), so the backward pass only scales them.
"""

from __future__ import annotations

import math

import torch

from gpt2core.data import IGNORE_INDEX

CHUNK_ELEMENTS = 2**24  # fp32 logits per chunk (64 MB): rows per chunk = CHUNK_ELEMENTS // vocab


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A work buffer that lives on between calls. On CPU each fresh (rows x vocab) tensor is a new
    mapping whose pages fault in on first touch, which cost as much as the log-softmax over it; GPU
    allocators cache blocks themselves. The buffers never leave forward(), so reuse is safe."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    key = (name, dtype, device)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < math.prod(shape):
        buf = _SCRATCH[key] = torch.empty(math.prod(shape), dtype=dtype, device=device)
    return buf[: math.prod(shape)].view(shape)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, chunk_rows: int, grad_enabled: bool):
        dtype = _compute_dtype(h)
        w = weight.to(dtype)
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(torch.float32)
        # needs_input_grad stays True under torch.no_grad(), hence the caller's grad mode.
        want_h, want_w = (grad_enabled and need for need in ctx.needs_input_grad[:2])
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        scale = valid.float() / count  # per-row weight of the mean; 0 for ignored rows
        rows = (min(chunk_rows, h.size(0)), weight.size(0))
        logits = _scratch("logits", rows, dtype, h.device)
        logits32 = logits if dtype == torch.float32 else _scratch("logits32", rows, torch.float32, h.device)
        logp = _scratch("logp", rows, torch.float32, h.device)
        for start in range(0, h.size(0), chunk_rows):
            stop = min(start + chunk_rows, h.size(0))
            n, hc, tc, vc = stop - start, h[start:stop].to(dtype), targets[start:stop], valid[start:stop]
            torch.mm(hc, w.t(), out=logits[:n])
            if logits32 is not logits:  # a plain copy, then the fp32 kernel: 4x faster than dtype=
                logits32[:n].copy_(logits[:n])
            if vocab_size < w.size(0):
                logits32[:n, vocab_size:] = float("-inf")  # padding columns never take probability mass
            torch.log_softmax(logits32[:n], dim=1, out=logp[:n])
            safe_t = tc.clamp(min=0).unsqueeze(1)
            total -= torch.where(vc, logp[:n].gather(1, safe_t).squeeze(1), 0.0).sum()
            if want_h or want_w:
                # d(nll)/d(logits) = softmax - one_hot, built in the log-prob buffer. The row weights
                # go onto the (rows x n_embd) operands rather than the (rows x vocab) gradient.
                grad = (
                    logp[:n].exp_().scatter_add_(1, safe_t, torch.full_like(safe_t, -1.0, dtype=logp.dtype))
                )
                if dtype != torch.float32:
                    grad = logits[:n].copy_(grad)
                row_scale = scale[start:stop].unsqueeze(1)
                if want_h:
                    grad_h[start:stop] = ((grad @ w).float() * row_scale).to(h.dtype)
                if want_w:
                    scaled_h = (h[start:stop].float() * row_scale).to(dtype)
                    if dtype == torch.float32:
                        grad_w.addmm_(grad.t(), scaled_h)
                    else:
                        part = _scratch("grad_w", tuple(weight.shape), dtype, h.device)
                        grad_w.add_(torch.mm(grad.t(), scaled_h, out=part))
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of logits = h @ weight.T (columns >= vocab_size excluded) over targets that
    are not -100; 0 when every target is ignored. h (N, C), weight (V_padded, C), targets (N,)."""
    rows = chunk_rows or max(16, CHUNK_ELEMENTS // weight.size(0))
    return _LinearCrossEntropy.apply(h, weight, targets, vocab_size, rows, torch.is_grad_enabled())
