"""Faster stand-ins for MLX-CPU's transcendental kernels, for inference only (not differentiable).

On Linux x86 the MLX CPU back end evaluates exp and erf one element at a time, and runs the
encoder's many small per-head matrix products slowly. numpy's vectorised exp and its BLAS do
better (benchmarks/benchmark_kernels.py measures each). These versions agree with the exact ops to
~1e-6; `Whisper.embed_audio` and the decoding loop use them on the CPU device. Training does not:
they leave MLX's graph, so they have no gradients.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import numpy as np


_POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))


def softmax_last_axis(x: mx.array) -> mx.array:
    """Softmax over the last axis computed by numpy in float32 (evaluates x)."""
    a = np.array(x.astype(mx.float32))
    a -= a.max(axis=-1, keepdims=True)
    np.exp(a, out=a)
    a /= a.sum(axis=-1, keepdims=True)
    return mx.array(a)


def attention(q: mx.array, k: mx.array, v: mx.array, n_head: int, scale: float) -> mx.array:
    """Multi-head softmax(q k^T * scale) v for unmasked (batch, n, d) projections, in numpy.

    Used for the encoder's self-attention: numpy's BLAS runs the per-head products faster than
    MLX-CPU's batched matmul, the (n x n) scores never cross back into MLX, and the heads are
    split with numpy views instead of MLX transposes and copies. Heads run on the thread pool.
    """
    qn, kn, vn = (np.array(a.astype(mx.float32)) for a in (q, k, v))
    b, n, d = qn.shape
    dh = d // n_head
    out = np.empty((b, n, d), dtype=np.float32)

    def one_head(job):
        i, h = job
        cols = slice(h * dh, (h + 1) * dh)
        scores = (qn[i, :, cols] * np.float32(scale)) @ kn[i, :, cols].T
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        out[i, :, cols] = scores @ vn[i, :, cols]

    with _single_threaded_numpy_blas():  # parallel over heads instead: no oversubscription
        list(_POOL.map(one_head, [(i, h) for i in range(b) for h in range(n_head)]))
    return mx.array(out).astype(q.dtype)


_NUMPY_BLAS = None


def _single_threaded_numpy_blas():
    """A context that holds numpy's OpenBLAS to one thread (threadpoolctl), or does nothing.

    Measured on 20 clips with tiny.en: encoder 12.1 s -> 7.6 s once the heads, not BLAS, are
    spread over the two cores."""
    global _NUMPY_BLAS
    if _NUMPY_BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _NUMPY_BLAS = ThreadpoolController().select(internal_api="openblas")
        except Exception:  # threadpoolctl missing or unable to inspect: run as is
            _NUMPY_BLAS = False
    if not _NUMPY_BLAS:
        return contextlib.nullcontext()
    return _NUMPY_BLAS.limit(limits=1)


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
