"""LoRA/DoRA layers: start as the base layer, scale alpha/rank, fuse to the same function."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_whisper_lora.backend_mlx.lora_layers import DoRALinear, LoRALinear


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
    assert mx.allclose(lora(x), expected, atol=1e-5)


@pytest.mark.parametrize("layer_cls", [LoRALinear, DoRALinear])
def test_fuse_gives_the_same_outputs(layer_cls):
    base = nn.Linear(32, 24)
    lora = _random_lora(layer_cls, base)
    if layer_cls is DoRALinear:
        lora.m = lora.m * 1.3
    x = mx.random.normal((5, 32))
    fused = lora.fuse()
    assert isinstance(fused, nn.Linear)
    assert mx.allclose(fused(x), lora(x), atol=1e-5)
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
    assert mx.allclose(dequantized(x), lora(x), atol=1e-4)
    requantized = lora.fuse()
    assert isinstance(requantized, nn.QuantizedLinear)
    assert float(mx.abs(requantized(x) - lora(x)).max()) < 0.05
