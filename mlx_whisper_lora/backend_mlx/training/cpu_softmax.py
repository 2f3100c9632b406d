"""A differentiable softmax whose forward pass runs in numpy on the CPU: the decoder's cross-attention
over the audio in training.

Why: MLX's CPU back end computes exp one element at a time; the cross-attention softmax of a tiny.en
training step at batch 8 (8 x 6 heads x 28 tokens x 1500 frames) takes 31 ms a layer in MLX and 5 ms in
numpy. Its gradient, p * (g - sum(g * p)), needs no exp and stays in MLX's graph. The forward pass
evaluates its input (the graph up to there): used only in the decoder, whose activations are small."""

from __future__ import annotations

import mlx.core as mx

from ..cpu_kernels import softmax_last_axis
from .host_kernels import numpy_allowed


@mx.custom_function
def _numpy_softmax(x):
    return softmax_last_axis(x).astype(x.dtype)


@_numpy_softmax.vjp
def _numpy_softmax_vjp(x, cotangent, p):
    g = cotangent.astype(mx.float32)
    p32 = p.astype(mx.float32)
    return (p32 * (g - (g * p32).sum(axis=-1, keepdims=True))).astype(x.dtype)


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis in float32, returned in x's dtype: numpy's on the CPU (host_kernels.py),
    MLX's elsewhere."""
    if numpy_allowed():
        return _numpy_softmax(x)
    return mx.softmax(x.astype(mx.float32), axis=-1).astype(x.dtype)
