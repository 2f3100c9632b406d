"""LoRA/DoRA layers: start as the base layer, scale alpha/rank, fuse to the same function."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_whisper_lora.backend_mlx.lora_layers import DoRALinear, LoRALinear, dense_weight

from numerics import assert_float32_close, reduction_bound


def _exact(layer, x) -> np.ndarray:
    """The layer's function in float64 numpy, from its float32 weights (dequantized where quantized)."""
    f64 = lambda a: np.array(a).astype(np.float64)  # noqa: E731
    w, a, b, x = f64(dense_weight(layer.linear)), f64(layer.lora_a), f64(layer.lora_b), f64(x)
    y = x @ w.T + layer.scale * (x @ a) @ b
    if isinstance(layer, DoRALinear):
        y = y * (f64(layer.m) / np.linalg.norm(w + layer.scale * (a @ b).T, axis=1))
    return y + f64(layer.linear.bias) if "bias" in layer.linear else y


def _random_lora(layer_cls, base, rank=4, alpha=8.0):
    mx.random.seed(0)
    lora = layer_cls.from_base(base, rank=rank, alpha=alpha)
    lora.lora_b = mx.random.normal(lora.lora_b.shape) * 0.1
    return lora


def test_starts_as_the_base_layer_and_scales_alpha_over_rank():
    base = nn.Linear(16, 12)
    x = mx.random.normal((3, 16))
    lora = LoRALinear.from_base(base, rank=4, alpha=8.0)
    assert lora.scale == 2.0
    assert mx.array_equal(lora(x), base(x))
    assert lora.lora_a.shape == (16, 4) and lora.lora_b.shape == (4, 12)
    assert float(mx.abs(lora.lora_a).max()) <= 1 / np.sqrt(16)
    lora.lora_b = mx.ones((4, 12))
    expected = base(x) + 2.0 * (x @ lora.lora_a) @ mx.ones((4, 12))
    # the layer and the written-out sum are two float32 orders of one function: held to float64 (numerics.py)
    assert_float32_close(np.array(lora(x)), _exact(lora, x), np.array(expected), "LoRA")


@pytest.mark.parametrize("layer_cls", [LoRALinear, DoRALinear])
def test_fuse_gives_the_same_outputs(layer_cls):
    base = nn.Linear(32, 24)
    lora = _random_lora(layer_cls, base)
    if layer_cls is DoRALinear:
        lora.m = lora.m * 1.3
    x = mx.random.normal((5, 32))
    fused = lora.fuse()
    assert isinstance(fused, nn.Linear)
    # fused (one product with W + delta, DoRA's row scale folded in) and unfused are two float32 orders of one
    # function: the fused layer is held to the float64 layer within a multiple of the unfused one's rounding
    assert_float32_close(np.array(fused(x)), _exact(lora, x), np.array(lora(x)), f"fused {layer_cls.__name__}")
    assert not mx.allclose(fused(x), base(x), atol=1e-3)


def test_quantized_base_trains_only_the_adapter_and_fuses():
    dense = nn.Linear(64, 64)
    qbase = nn.QuantizedLinear.from_linear(dense, group_size=32, bits=8)
    lora = _random_lora(LoRALinear, qbase)
    lora.linear.freeze()
    trainable = {k for k, _ in nn.utils.tree_flatten(lora.trainable_parameters())}
    assert trainable == {"lora_a", "lora_b"}
    x = mx.random.normal((4, 64))
    dequantized = lora.fuse(dequantize=True)
    assert isinstance(dequantized, nn.Linear)
    # the dequantized fused layer computes the quantized one's function (same dequantized weights) in another
    # float32 order: held to the float64 layer within a multiple of the quantized layer's own rounding
    assert_float32_close(np.array(dequantized(x)), _exact(lora, x), np.array(lora(x)), "dequantized fuse")
    requantized = lora.fuse()
    assert isinstance(requantized, nn.QuantizedLinear)
    # requantizing W' = Q(W) + delta rounds each weight to its group's 8-bit grid, so output j moves by at most
    # sum_k |x_k| |Q(W')_jk - W'_jk| (the weights' own rounding, exact in float64), plus the two float32 products'
    # rounding (length 64, numerics.reduction_bound); the fixed 0.05 before was ~2.7x the largest such bound
    adapted = np.array(dense_weight(lora.linear)).astype(np.float64) + np.array(lora.delta()).astype(np.float64)
    rounding = np.abs(np.array(dense_weight(requantized)).astype(np.float64) - adapted)
    assert rounding.max() > 0  # it did requantize
    x64 = np.array(x).astype(np.float64)
    bound = np.abs(x64) @ rounding.T + 2 * reduction_bound(64, float(np.abs(x64).max() * np.abs(adapted).max()))
    assert np.all(np.abs(np.array(requantized(x)) - np.array(lora(x))) <= bound)
