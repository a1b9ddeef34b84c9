"""Cross-entropy of a linear head without materialising the (tokens x vocab) fp32 logits.

The head's logits are by far the largest activation of a GPT-2 step (8k tokens x 50k vocab in fp32 is
1.6 GB, and autograd would keep softmax and gradient copies of it). Here they are built a chunk of
rows at a time; when gradients are needed, each chunk's gradient with respect to the hidden states
and the weight is computed right away (softmax - one_hot), so the backward pass only scales them.

Those saved gradients stay in fp32 and unnormalised until backward, where 1/count and grad_loss
(which carries an fp16 loss scale) multiply them before any cast to the parameters' dtype: a mean
over 16k tokens is ~1e-6 per element, below fp16's normal range (6e-5), and unscaled it would be
flushed to subnormals or zero before the loss scale could lift it.
"""

from __future__ import annotations

import math

import torch

from gpt2core.data import IGNORE_INDEX

# Logits per chunk, by device type (rows per chunk = budget // padded vocab, in equal chunks).
# CPU: 2**24 (64 MB of fp32 logits), tuned by bench/bench_model.py: the scratch buffers stay small
#   and are reused (see _scratch), and each chunk's passes run near the caches.
# CUDA: ~15 kernels per chunk, so a few large chunks rather than many small ones. Each logit costs
#   10 bytes of scratch under bf16/fp16 (2 logits + 4 fp32 copy + 4 fp32 log-probs; 8 in fp32), so
#   2**28 logits are at most 2.7 GB, 3% of an 80 GB GPU. A 16 x 1024 micro-batch at vocab 50304 takes
#   ceil(16384 / (2**28 // 50304 = 5336 rows)) = 4 chunks of 4096 rows (2.1 GB, 60 kernels), where
#   the CPU budget would take 50 chunks (750 kernels). Other devices get the CPU's budget.
LOGITS_PER_CHUNK = {"cpu": 2**24, "cuda": 2**28}
MIN_CHUNK_ROWS = 16


def chunk_rows_for(device_type: str, n_rows: int, padded_vocab: int) -> int:
    """Rows per chunk: as many as the device's logits budget allows, split into equal chunks."""
    budget = LOGITS_PER_CHUNK.get(device_type, LOGITS_PER_CHUNK["cpu"])
    most = max(MIN_CHUNK_ROWS, budget // padded_vocab)
    chunks = max(1, math.ceil(n_rows / most))
    return max(1, math.ceil(n_rows / chunks))


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
        # Sums of (softmax - one_hot) terms, in fp32; backward divides by count (see the docstring).
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
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
                # d(nll)/d(logits) = softmax - one_hot, built in the log-prob buffer. Ignored rows are
                # masked on the (rows x n_embd) operands rather than on the (rows x vocab) gradient.
                grad = (
                    logp[:n].exp_().scatter_add_(1, safe_t, torch.full_like(safe_t, -1.0, dtype=logp.dtype))
                )
                if dtype != torch.float32:
                    grad = logits[:n].copy_(grad)
                mask = vc.unsqueeze(1)
                if want_h:  # |grad @ w| ~ |w|: well inside fp16's range before it goes to fp32
                    torch.mul(grad @ w, mask, out=grad_h[start:stop])
                # Unnormalised, a chunk's weight gradient is O(1e-3) and up, where 1/count would push it
                # below fp16's normal range; it is at most rows x max|h|: fp16 overflows only if |h|
                # averages over 16 along all 4096 rows of a CUDA chunk that share one target token.
                if want_w:
                    if dtype == torch.float32:
                        grad_w.addmm_(grad.t(), hc * mask)
                    else:
                        part = _scratch("grad_w", tuple(weight.shape), dtype, h.device)
                        grad_w.add_(torch.mm(grad.t(), hc * mask, out=part))
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.dtypes = h.dtype, weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_loss.float() / count  # the mean's 1/count and the caller's (loss-scaled) gradient
        gh = (grad_h * scale).to(ctx.dtypes[0]) if grad_h is not None else None
        gw = (grad_w * scale).to(ctx.dtypes[1]) if grad_w is not None else None
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
    rows = chunk_rows or chunk_rows_for(h.device.type, h.size(0), weight.size(0))
    return _LinearCrossEntropy.apply(h, weight, targets, vocab_size, rows, torch.is_grad_enabled())
