"""The training loss over Whisper's frozen output projection (the token embedding, tied), with the
gradient for the hidden states formed in the forward pass.

Why: the logits at ~220 target positions of a batch over the 51,864-token vocabulary are a 45 MB
array; autograd keeps it for the backward pass, and log-softmax, the loss's gather and their backward
each pass over a freshly allocated array that size again. With the projection frozen nothing but dL/dh
is needed from it, so the logits go into a buffer kept between steps, become softmax minus the target
in place, and are multiplied back at once (0.106 s against autograd's 0.153 for tiny.en's batch of 8
here). Rows are taken up to 512 at a time, which bounds the buffer (106 MB); smaller blocks were slower
(32, 64, 128 rows: 0.186, 0.150, 0.140 s), as each reads the whole 80 MB projection again. The result
equals `cross_entropy(h @ W.T, targets, reduction="sum", label_smoothing=s)` and its gradient, to
float rounding (tested)."""

from __future__ import annotations

from typing import Optional

import torch

BLOCK_ROWS = 512
LOWEST_EXPONENT = -87.0  # e^-87: the smallest exponent whose exp is still a normal float32
_BUFFER: dict = {}


def _buffer(rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, vocab) block for the logits, kept between steps: a fresh one each step costs its page faults."""
    key = (vocab, like.dtype, like.device)
    held = _BUFFER.get(key)
    if held is None or held.shape[0] < rows:
        _BUFFER.clear()
        held = _BUFFER[key] = like.new_empty((max(rows, 64), vocab))
    return held[:rows]


class FrozenHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, smoothing: float):
        rows, vocab = hidden.shape[0], weight.shape[0]
        in_place = hidden.dtype == weight.dtype == torch.float32
        grad = torch.empty_like(hidden)
        total = hidden.new_zeros((), dtype=torch.float32)
        logits = _buffer(min(rows, BLOCK_ROWS), vocab, hidden) if in_place else None
        for start in range(0, rows, BLOCK_ROWS):
            h, t = hidden[start:start + BLOCK_ROWS], targets[start:start + BLOCK_ROWS].long()
            if in_place:
                z = torch.matmul(h, weight.T, out=logits[: h.shape[0]])
            else:  # bf16/fp16 products, the softmax in float32 (as the unfused loss takes logits.float())
                z = (h @ weight.T).float()
            picked = z.gather(1, t[:, None])
            mean = z.mean(dim=1, keepdim=True) if smoothing else None
            peak = z.amax(dim=1, keepdim=True)
            # softmax in place; exp of scores far below the peak would give subnormal numbers, which
            # this CPU computes ~10x slower (60 ms instead of 6 for these logits): they are held at
            # e^-87 (1e-38) instead, which no sum or gradient here can tell from less
            z.sub_(peak).clamp_(min=LOWEST_EXPONENT).exp_()
            norm = z.sum(dim=1, keepdim=True)
            lse = peak + norm.log()
            loss = lse - picked
            if smoothing:
                loss = (1 - smoothing) * loss + smoothing * (lse - mean)
            total += loss.sum()
            z.div_(norm)
            z.scatter_add_(1, t[:, None], torch.full_like(picked, -(1 - smoothing)))
            if smoothing:
                z.sub_(smoothing / vocab)
            if in_place:
                torch.matmul(z, weight, out=grad[start:start + BLOCK_ROWS])
            else:
                grad[start:start + BLOCK_ROWS] = z.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


_CAST: dict = {}


def frozen_weight_in(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`, the cast kept while the weight is unchanged (autocast would redo it, a
    51,864 x d copy, at every step)."""
    if weight.dtype == dtype:
        return weight.detach()
    key = (weight.data_ptr(), weight._version, dtype)
    if key not in _CAST:
        _CAST.clear()
        _CAST[key] = weight.detach().to(dtype)
    return _CAST[key]


def frozen_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              smoothing: float = 0.0, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Sum over rows of the cross-entropy of `hidden @ weight.T` against `targets` (`weight` frozen);
    `dtype`: the products' (autocast's), float32 if not given."""
    dtype = dtype or torch.float32
    with torch.autocast(hidden.device.type, enabled=False):
        return FrozenHeadCrossEntropy.apply(hidden.to(dtype), frozen_weight_in(weight, dtype), targets, float(smoothing))
