"""Attention that keeps no (queries x keys) matrix for the backward pass: the encoder's self-attention
when the encoder trains. MLX has no fused kernel with a fused gradient there: the CPU and Metal run
SDPA's unfused fallback when training, and CUDA's fused gradient needs a query length that is a multiple
of 128 (the encoder's is 1500).

Why by hand: the unfused attention keeps each layer's (batch, heads, 1500, 1500) float32 softmax for its
gradient, 432 MB per layer for tiny at batch 8, every layer's by the time the backward pass starts (what
puts encoder LoRA on large models out of a GPU's memory). Here the forward pass goes over blocks of
queries and keeps only the output and each row's log-sum-exp; the backward pass recomputes each block's
softmax from them (the flash-attention recurrence), the blocks chained so one block's products are done
before the next one's start. The price is one more exp over the scores: cheap on a GPU, but MLX's CPU back
end computes exp one element at a time, so on the CPU this trades time for memory
(benchmarks/benchmark_mlx_step.py; docs/benchmarks.md). Equal to softmax(q k^T) v and its gradients to float
rounding (tests/test_mlx_training_paths.py)."""

from __future__ import annotations

import mlx.core as mx

BLOCK = 256  # queries per block: a (batch, heads, 256, 1500) float32 block is 74 MB for tiny at batch 8


def _blocks(n: int):
    return [(s, min(s + BLOCK, n)) for s in range(0, n, BLOCK)]


def _after(x: mx.array, done: mx.array) -> mx.array:
    """`x`, scheduled after `done` (a zero-cost data dependency): MLX evaluates lazily, and without it
    every block's products could be alive at once. (mx.depends is in MLX since 0.24.)"""
    return mx.depends(x, done) if hasattr(mx, "depends") else x


@mx.custom_function
def _attention(q, k, v):
    outs, lses = [], []
    kt = k.swapaxes(-1, -2)
    for s, e in _blocks(q.shape[2]):
        qb = q[:, :, s:e] if not outs else _after(q[:, :, s:e], outs[-1])
        scores = (qb @ kt).astype(mx.float32)
        lse = mx.logsumexp(scores, axis=-1, keepdims=True)
        outs.append(mx.exp(scores - lse).astype(v.dtype) @ v)
        lses.append(lse)
    return mx.concatenate(outs, axis=2), mx.concatenate(lses, axis=2)


@_attention.vjp
def _attention_vjp(primals, cotangents, outputs):
    q, k, v = primals
    d_out = cotangents[0]
    out, lse = outputs
    delta = (d_out.astype(mx.float32) * out.astype(mx.float32)).sum(axis=-1, keepdims=True)
    kt, vt = k.swapaxes(-1, -2), v.swapaxes(-1, -2)
    dq, dk, dv = [], mx.zeros(k.shape, mx.float32), mx.zeros(v.shape, mx.float32)
    for s, e in _blocks(q.shape[2]):
        qb, gb = q[:, :, s:e], d_out[:, :, s:e]
        if dq:
            qb = _after(qb, dk)
        p = mx.exp((qb @ kt).astype(mx.float32) - lse[:, :, s:e])
        dv = dv + p.swapaxes(-1, -2).astype(v.dtype) @ gb
        ds = p * ((gb @ vt).astype(mx.float32) - delta[:, :, s:e])
        dq.append((ds.astype(k.dtype) @ k).astype(q.dtype))
        dk = dk + ds.swapaxes(-1, -2).astype(q.dtype) @ qb
    return mx.concatenate(dq, axis=2), dk.astype(k.dtype), dv.astype(v.dtype)


def attention(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
    """softmax(q @ k^T) @ v over (batch, heads, length, head_dim), queries and keys scaled already."""
    return _attention(q, k, v)[0]
