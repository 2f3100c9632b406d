"""The training loss over Whisper's frozen output projection (the token embedding, tied) in MLX, with
the gradient for the hidden states formed in the forward pass: the torch engine's frozen_head_loss.

Why: autograd keeps the (target positions, 51,864) logits for the backward pass and passes over arrays
that size again for log-softmax, the gather and their gradients. With the projection frozen only dL/dh
is needed from it, so each block of rows becomes softmax minus the target and is multiplied back at
once; the logits of one block at a time exist, and nothing of them is kept for the backward pass. The
result equals `cross_entropy(h @ W.T, targets, label_smoothing=s).sum()` and its gradient to float
rounding (tests/test_mlx_training_paths.py)."""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np

from .host_kernels import numpy_allowed

BLOCK_ROWS = 512


def _loss_and_gradient(hidden: mx.array, weight: mx.array, targets: mx.array, rows: mx.array, smoothing: float):
    """(summed loss, dL/dhidden) of the rows, each weighted by `rows`, a block of rows at a time, the softmax
    in float32."""
    totals, grads = [], []
    vocab = weight.shape[0]
    for start in range(0, hidden.shape[0], BLOCK_ROWS):
        h, t, r = hidden[start:start + BLOCK_ROWS], targets[start:start + BLOCK_ROWS], rows[start:start + BLOCK_ROWS]
        z = (h @ weight.T).astype(mx.float32)
        lse = mx.logsumexp(z, axis=-1, keepdims=True)
        loss = lse[:, 0] - mx.take_along_axis(z, t[:, None], axis=-1)[:, 0]
        if smoothing:
            loss = (1 - smoothing) * loss + smoothing * (lse[:, 0] - z.mean(axis=-1))
        totals.append((loss * r).sum())
        p = mx.exp(z - lse)
        if smoothing:
            p = p - smoothing / vocab
        p = mx.put_along_axis(p, t[:, None], mx.take_along_axis(p, t[:, None], axis=-1) - (1 - smoothing), axis=-1)
        grads.append(((p * r[:, None]).astype(weight.dtype) @ weight).astype(hidden.dtype))
    total = totals[0] if len(totals) == 1 else mx.stack(totals).sum()
    return total, grads[0] if len(grads) == 1 else mx.concatenate(grads)


def _loss_and_gradient_numpy(hidden: mx.array, weight: mx.array, targets: mx.array, row_weights: mx.array,
                             smoothing: float):
    """The same in numpy, for the CPU: MLX's CPU back end computes exp one element at a time, numpy's is
    vectorised (a tiny.en step at batch 8 through `lora --train` went from 0.89 to 0.73 s with this). It evaluates the forward pass up to here (see frozen_head_cross_entropy)."""
    h, w = (np.asarray(a) if a.dtype == mx.float32 else np.array(a.astype(mx.float32)) for a in (hidden, weight))
    t = np.array(targets).astype(np.int64)
    r = np.array(row_weights.astype(mx.float32))
    rows = np.arange(len(t))
    vocab = w.shape[0]
    total, grads = 0.0, np.empty_like(h)
    for start in range(0, len(t), BLOCK_ROWS):
        block = slice(start, start + BLOCK_ROWS)
        z = h[block] @ w.T
        picked = z[rows[: len(z)], t[block]]
        mean = z.mean(axis=1) if smoothing else None
        peak = z.max(axis=1, keepdims=True)
        z -= peak
        np.maximum(z, -87.0, out=z)  # e^-87: exps below it would be subnormal (slow) and change no sum here
        np.exp(z, out=z)
        norm = z.sum(axis=1, keepdims=True)
        lse = (peak + np.log(norm))[:, 0]
        loss = lse - picked
        if smoothing:
            loss = (1 - smoothing) * loss + smoothing * (lse - mean)
        total += float((loss * r[block]).sum(dtype=np.float64))
        z /= norm
        z[rows[: len(z)], t[block]] -= 1 - smoothing
        if smoothing:
            z -= smoothing / vocab
        z *= r[block, None]
        grads[block] = z @ w
    return mx.array(total, dtype=mx.float32), mx.array(grads).astype(hidden.dtype)


@lru_cache(maxsize=8)
def _frozen_head_function(smoothing: float, in_numpy: bool):
    @mx.custom_function
    def frozen_head(hidden, weight, targets, rows):
        if in_numpy:
            return _loss_and_gradient_numpy(hidden, weight, targets, rows, smoothing)
        return _loss_and_gradient(hidden, weight, targets, rows, smoothing)

    @frozen_head.vjp
    def frozen_head_vjp(primals, cotangents, outputs):
        hidden, weight, targets, rows = primals
        # the weight's, the targets' and the row weights' cotangents are never evaluated: nothing trains them
        return (outputs[1] * cotangents[0].astype(outputs[1].dtype), mx.zeros_like(weight), mx.zeros_like(targets),
                mx.zeros_like(rows))

    return frozen_head


def frozen_head_cross_entropy(hidden: mx.array, weight: mx.array, targets: mx.array,
                              smoothing: float = 0.0, small_graph: bool = False,
                              row_weights: mx.array = None) -> mx.array:
    """Sum over rows of the cross-entropy of `hidden @ weight.T` against `targets`, `weight` frozen, each row's
    term times `row_weights` (default 1; 0 for the padding rows of a bucketed, compiled step).
    `small_graph`: the forward pass before it is small (the decoder over cached encoder states), so on the
    CPU it may be evaluated here for numpy's loss; over a training encoder that would hold all its
    activations at once (8.7 GB instead of 4.7 for tiny at batch 8), and MLX's own ops run instead."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    if row_weights is None:
        row_weights = mx.ones((hidden.shape[0],), dtype=mx.float32)
    in_numpy = small_graph and numpy_allowed()
    return _frozen_head_function(float(smoothing), in_numpy)(hidden, mx.stop_gradient(weight), targets,
                                                             row_weights.astype(mx.float32))[0]
