"""Adapter injection, files and validation on a small random Whisper."""

from __future__ import annotations

import json

import mlx.core as mx
from mlx.utils import tree_flatten
import pytest

from mlx_whisper_lora.backend_mlx.adapters import (
    apply_adapters, count_parameters, fuse_adapters, load_adapters, save_adapters, trainable_weights,
)
from mlx_whisper_lora.formats.adapter_config import AdapterConfig, AdapterError, parse_modules
from mlx_whisper_lora.backend_mlx.lora_layers import LoRALinear
from mlx_whisper_lora.backend_mlx.model import ModelDimensions, Whisper
import numpy as np

from numerics import MLX_FACTOR, assert_float32_close

DIMS = ModelDimensions(n_mels=80, n_audio_ctx=30, n_audio_state=32, n_audio_head=2, n_audio_layer=3,
                       n_vocab=51864, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=3)


def small_model(dims=DIMS) -> Whisper:
    mx.random.seed(0)
    return Whisper(dims)


def test_module_names_accept_openai_transformers_and_short_spellings():
    assert parse_modules(None) == ["attn.query", "attn.value", "cross_attn.query", "cross_attn.value"]
    assert parse_modules(["q_proj", "v_proj"]) == parse_modules("query,value")
    assert parse_modules(["encoder_attn.k_proj", "fc1"]) == ["cross_attn.key", "mlp1"]
    assert len(parse_modules(["all"])) == 10
    with pytest.raises(AdapterError, match="unknown LoRA module 'qq'"):
        parse_modules(["qq"])


def test_injects_into_the_last_layers_of_both_stacks_and_only_trains_adapters():
    model = small_model()
    apply_adapters(model, AdapterConfig(num_layers=2, modules=["query", "value", "mlp2"]))
    names = set(trainable_weights(model))
    assert "encoder.blocks.0.attn.query.lora_a" not in names
    assert "encoder.blocks.1.attn.query.lora_a" in names and "encoder.blocks.2.mlp2.lora_b" in names
    assert "decoder.blocks.2.cross_attn.value.lora_b" in names
    assert not any("cross_attn" in n for n in names if n.startswith("encoder"))
    assert all(n.endswith(("lora_a", "lora_b")) for n in names)
    trainable, total = count_parameters(model)
    assert trainable == sum(v.size for v in trainable_weights(model).values()) and trainable < total


def test_freeze_encoder_and_full_fine_tune():
    model = small_model()
    apply_adapters(model, AdapterConfig(freeze_encoder=True))
    assert all(n.startswith("decoder.") for n in trainable_weights(model))
    full = small_model()
    apply_adapters(full, AdapterConfig(fine_tune_type="full", num_layers=1))
    names = set(trainable_weights(full))
    assert "decoder.blocks.2.mlp1.weight" in names and "encoder.blocks.2.attn.query.weight" in names
    assert "decoder.blocks.1.mlp1.weight" not in names and "alignment_heads" not in names


def test_save_load_round_trip_and_fuse(tmp_path):
    model = small_model()
    config = AdapterConfig(rank=4, alpha=8, modules=["all"], base_model="small-random", dims=DIMS.to_dict())
    apply_adapters(model, config)
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
    save_adapters(model, config, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["rank"] == 4 and saved["alpha"] == 8 and saved["base_model"] == "small-random"
    assert saved["lora_parameters"]["scale"] == 2.0

    mel = mx.random.normal((1, 60, 80))
    tokens = mx.array([[50257, 220, 400]])
    expected = model(mel, tokens)
    other = small_model()
    load_adapters(other, tmp_path)
    # the same float32 weights (safetensors stores them bit for bit), the same MLX kernels: identical (0.0
    # measured); 1e-5 is room for nothing but a BLAS that blocks by alignment, far below a misplaced adapter
    assert mx.allclose(other(mel, tokens), expected, atol=1e-5)
    fuse_adapters(other)
    assert not any(isinstance(m, LoRALinear) for _, m in other.named_modules())
    # fused and unfused are two float32 orders of one function: the fused model is held to the float64 logits
    # (the torch twin with the saved adapters) within a multiple of the unfused model's own rounding
    assert_float32_close(np.array(other(mel, tokens)), _float64_logits(tmp_path, mel, tokens), np.array(expected),
                         "fused", MLX_FACTOR)


def _float64_logits(adapters, mel, tokens):
    """small_model()'s logits with the adapters saved at `adapters`, in float64 (the torch twin)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed (the float64 reference)")
    from mlx_whisper_lora.backend_torch import lora as tlora
    from mlx_whisper_lora.backend_torch import model as tmodel

    twin = tmodel.Whisper(DIMS)
    tmodel.load_mlx_weights(twin, {k: np.array(v) for k, v in tree_flatten(small_model().parameters())})
    tlora.load_adapters(twin.eval(), adapters)
    with torch.no_grad():
        return twin.double()(torch.from_numpy(np.array(mel)).double(), torch.from_numpy(np.array(tokens))).numpy()


def test_adapters_for_other_shapes_are_refused(tmp_path):
    model = small_model()
    config = AdapterConfig(rank=4, dims=DIMS.to_dict(), base_model="small-random")
    apply_adapters(model, config)
    save_adapters(model, config, tmp_path)
    bigger = small_model(ModelDimensions(**{**DIMS.to_dict(), "n_text_state": 64, "n_audio_state": 64}))
    with pytest.raises(AdapterError, match="trained on small-random"):
        load_adapters(bigger, tmp_path)
    # Same shapes but a config promising rank 8: the tensors do not fit
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["rank"] = 8
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="expects"):
        load_adapters(small_model(), tmp_path)


def test_missing_adapter_files_are_clear_errors(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        load_adapters(small_model(), tmp_path / "nope")
    (tmp_path / "adapters.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        load_adapters(small_model(), tmp_path)


def _loss_and_grads(model):
    import mlx.nn as nn

    from mlx_whisper_lora.backend_mlx.engine import masked_cross_entropy

    mel = mx.random.normal((2, 60, 80), key=mx.random.key(1))
    tokens = mx.array([[50257, 220, 400, 500], [50257, 300, 301, 50256]])
    mask = mx.ones(tokens[:, 1:].shape)

    def loss(m):
        total, count = masked_cross_entropy(m(mel, tokens[:, :-1]), tokens[:, 1:], mask)
        return total / count

    return nn.value_and_grad(model, loss)(model)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    from mlx_whisper_lora.backend_mlx.engine import set_grad_checkpoint

    plain, checkpointed = small_model(), small_model()
    for m in (plain, checkpointed):
        mx.random.seed(3)
        apply_adapters(m, AdapterConfig(modules=["all"]))
        for _, layer in m.named_modules():
            if isinstance(layer, LoRALinear):
                layer.lora_b = mx.full(layer.lora_b.shape, 0.01)
    set_grad_checkpoint(checkpointed, True)
    loss_a, grads_a = _loss_and_grads(plain)
    loss_b, grads_b = _loss_and_grads(checkpointed)
    # checkpointing recomputes the same forward with the same kernels on the same values: identical (0.0
    # measured); 1e-6 (8 float32 units of a loss near 11) is room for nothing but a BLAS blocking by alignment
    assert abs(loss_a.item() - loss_b.item()) < 1e-6
    flat_a, flat_b = dict(tree_flatten(grads_a)), dict(tree_flatten(grads_b))
    assert flat_a.keys() == flat_b.keys() and len(flat_a) > 10
    assert all(mx.allclose(flat_a[k], flat_b[k], atol=1e-6) for k in flat_a)  # (the same, for the gradients)


def test_qlora_trains_adapters_over_a_quantized_base():
    from mlx_whisper_lora.backend_mlx.load import quantize_model

    model = small_model()
    quantize_model(model, bits=4, group_size=32)
    apply_adapters(model, AdapterConfig(rank=4))
    for _, layer in model.named_modules():
        if isinstance(layer, LoRALinear):
            layer.lora_b = mx.full(layer.lora_b.shape, 0.01)
    _, grads = _loss_and_grads(model)
    flat = dict(tree_flatten(grads))
    assert flat and all(k.endswith(("lora_a", "lora_b")) for k in flat)
    assert all(float(mx.abs(v).sum()) > 0 for v in flat.values())
    fuse_adapters(model, dequantize=True)
    assert model.quantization is None
    assert not any(type(m).__name__.startswith("Quantized") for _, m in model.named_modules())


def test_adapter_scale_interpolates_lora_updates_in_both_back_ends():
    """--adapter-scale s: every LoRA layer's update is s times the trained one (0: the base model);
    DoRA and full fine-tunes are refused with the flag's name."""
    from mlx_whisper_lora.assets_dir import DEMO_ADAPTER
    from mlx_whisper_lora.backend_mlx.load import load_model

    scales = {}
    for s in (1.0, 0.5, 0.0):
        model = load_model("tiny.en")
        load_adapters(model, DEMO_ADAPTER, scale=s)
        scales[s] = {n: m.scale for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    # python floats (float64): alpha / rank times s is one or two float64 roundings (~1e-16 of a scale near 2),
    # so 1e-9 is only room for the order of the products (here and for torch's below); a missing or doubled s
    # is off by a whole 0.5x
    assert scales[1.0] and all(abs(scales[0.5][n] - 0.5 * v) < 1e-9 and scales[0.0][n] == 0 for n, v in scales[1.0].items())
    torch_lora = pytest.importorskip("mlx_whisper_lora.backend_torch.lora")
    from mlx_whisper_lora.backend_torch.model import load_model as load_torch_model

    tmodel = load_torch_model("tiny.en")
    torch_lora.load_adapters(tmodel, DEMO_ADAPTER, scale=0.5)
    tscales = [m.scale for m in tmodel.modules() if hasattr(m, "lora_a") or hasattr(m, "lora_A")]
    assert tscales and all(abs(v - next(iter(scales[0.5].values()))) < 1e-9 for v in tscales)
    with pytest.raises(AdapterError, match="adapter-scale"):
        load_adapters(load_model("tiny.en"), DEMO_ADAPTER, scale=-1)
