"""Faster stand-ins for MLX-CPU's transcendental kernels, for inference only (not differentiable).

On Linux x86 the MLX CPU back end evaluates exp and erf one element at a time, and runs the
encoder's many small per-head matrix products slowly. numpy's vectorised exp and its BLAS do
better (scripts/benchmark_kernels.py measures each). These versions agree with the exact ops to
~1e-6; `Whisper.embed_audio` and the decoding loop use them on the CPU device. Training does not:
they leave MLX's graph, so they have no gradients.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np


def softmax_last_axis(x: mx.array) -> mx.array:
    """Softmax over the last axis computed by numpy in float32 (evaluates x)."""
    a = np.array(x.astype(mx.float32))
    a -= a.max(axis=-1, keepdims=True)
    np.exp(a, out=a)
    a /= a.sum(axis=-1, keepdims=True)
    return mx.array(a)


def attention(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
    """softmax(q k^T) v for (batch, heads, n, d) inputs, without a mask, computed in numpy.

    Used for the encoder's self-attention: numpy's BLAS runs the small per-head products ~4x
    faster than MLX-CPU's batched matmul, and the (n x n) scores never cross back into MLX.
    """
    qn = np.array(q.astype(mx.float32))
    kn = np.array(k.astype(mx.float32))
    vn = np.array(v.astype(mx.float32))
    scores = np.matmul(qn, kn.swapaxes(-1, -2))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return mx.array(np.matmul(scores, vn)).astype(q.dtype)


_POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))


def _gelu_inplace(x: np.ndarray) -> None:
    """x <- 0.5 x (1 + erf(x / sqrt 2)) with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    z = np.abs(x)
    z *= np.float32(0.7071067811865476)
    t = np.float32(0.3275911) * z
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    p = np.float32(1.061405429) * t
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        p += np.float32(c)
        p *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    p *= z  # p = 1 - erf(|x| / sqrt 2)
    p *= np.float32(0.5)
    np.subtract(np.float32(1.0), p, out=p, where=x >= 0)  # x >= 0: 1 - p/2; x < 0: p/2
    x *= p


def gelu(x: mx.array) -> mx.array:
    """Exact-form GELU computed by numpy, split over the CPU cores (numpy releases the GIL)."""
    a = np.array(x.astype(mx.float32))
    rows = a.reshape(-1, a.shape[-1])
    chunks = np.array_split(np.arange(rows.shape[0]), _POOL._max_workers)
    list(_POOL.map(lambda idx: _gelu_inplace(rows[idx[0] : idx[-1] + 1]) if len(idx) else None, chunks))
    return mx.array(a).astype(x.dtype)
