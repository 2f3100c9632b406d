"""LoRA and DoRA wrappers around a linear layer (plain or quantized).

y = W x + b + scale * B(A(dropout(x))), with scale = alpha / rank as in PEFT, so adapters move
between this package and PEFT without rescaling. A is (in, rank), initialised uniform in
+-1/sqrt(in) (PEFT's Kaiming-uniform bound); B is (rank, out), zero, so training starts from the
base model exactly. A quantized base (QuantizedLinear) stays frozen and quantized: QLoRA.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn


def _input_dims(linear: nn.Module) -> int:
    if isinstance(linear, nn.QuantizedLinear):
        return linear.weight.shape[1] * 32 // linear.bits
    return linear.weight.shape[1]


def dense_weight(linear: nn.Module) -> mx.array:
    """The (out, in) weight of a plain or quantized linear layer, in floating point."""
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.biases, linear.group_size, linear.bits)
    return linear.weight


def _rebuild(linear: nn.Module, weight: mx.array, dequantize: bool) -> nn.Module:
    """A linear layer like `linear` (same bias, quantized the same way unless dequantize) with `weight`."""
    out_dims, in_dims = weight.shape
    has_bias = "bias" in linear
    if isinstance(linear, nn.QuantizedLinear) and not dequantize:
        dense = nn.Linear(in_dims, out_dims, bias=has_bias)
        dense.weight = weight
        if has_bias:
            dense.bias = linear.bias
        return nn.QuantizedLinear.from_linear(dense, linear.group_size, linear.bits)
    dense = nn.Linear(in_dims, out_dims, bias=has_bias)
    dense.weight = weight
    if has_bias:
        dense.bias = linear.bias
    return dense


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    @classmethod
    def from_base(cls, linear: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        lora = cls(_input_dims(linear), linear.weight.shape[0], rank, alpha, dropout)
        lora.linear = linear
        return lora

    def __init__(self, input_dims: int, output_dims: int, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.linear = nn.Linear(input_dims, output_dims)
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = float(alpha) / rank
        self.dropout = nn.Dropout(p=dropout)
        bound = 1.0 / math.sqrt(input_dims)
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(input_dims, rank))
        self.lora_b = mx.zeros((rank, output_dims))

    additive = True  # y = base(x) + a low-rank term: the base's output can be cached apart

    def low_rank_terms(self, x: mx.array) -> tuple:
        """(dropout(x) @ A, scale * B): the update is their product, so callers may reassociate it."""
        return self.dropout(x) @ self.lora_a.astype(x.dtype), (self.scale * self.lora_b).astype(x.dtype)

    def delta(self) -> mx.array:
        """The (out, in) update this adapter adds to the base weight."""
        return self.scale * (self.lora_a @ self.lora_b).T

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return y + (self.scale * z).astype(y.dtype)

    def fuse(self, dequantize: bool = False) -> nn.Module:
        weight = dense_weight(self.linear)
        return _rebuild(self.linear, (weight + self.delta().astype(weight.dtype)), dequantize)


class DoRALinear(LoRALinear):
    """Weight-decomposed LoRA: the direction of W + delta is rescaled to a trained magnitude m.

    As in the DoRA paper and PEFT, the norm of the adapted weight is not differentiated through."""

    additive = False  # the whole output is rescaled

    @classmethod
    def from_base(cls, linear: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        dora = super().from_base(linear, rank, alpha, dropout)
        dora.m = mx.linalg.norm(dense_weight(linear).astype(mx.float32), axis=1)
        return dora

    def __call__(self, x: mx.array) -> mx.array:
        weight = dense_weight(self.linear)
        y = x @ weight.T.astype(x.dtype)
        z = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        y = y + (self.scale * z).astype(y.dtype)
        adapted = weight.astype(mx.float32) + self.delta()
        norm = mx.stop_gradient(mx.linalg.norm(adapted, axis=1))
        y = y * (self.m / norm).astype(y.dtype)
        if "bias" in self.linear:
            y = y + self.linear.bias
        return y

    def fuse(self, dequantize: bool = False) -> nn.Module:
        adapted = dense_weight(self.linear).astype(mx.float32) + self.delta()
        adapted = adapted * (self.m / mx.linalg.norm(adapted, axis=1))[:, None]
        return _rebuild(self.linear, adapted.astype(dense_weight(self.linear).dtype), dequantize)
