"""`--bits 8|4`: a quantized frozen base under floating-point adapters (QLoRA), in both back ends.

The torch side quantizes through bitsandbytes (its CPU path here; CUDA on a GPU machine)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.data.audio import load_audio, log_mel_spectrogram, pad_or_trim

torch = pytest.importorskip("torch", reason="the torch back end needs PyTorch (pip install '.[torch]')")


@pytest.fixture(scope="module")
def mel():
    return torch.from_numpy(np.array(pad_or_trim(log_mel_spectrogram(load_audio(ASSETS / "demo.flac"), 80), 3000, axis=0)[None]))


def test_8bit_base_keeps_the_transcript_and_stores_int8(tiny_en_checkpoint, mel, jfk):
    pytest.importorskip("bitsandbytes", reason="--bits needs bitsandbytes (pip install '.[quantize]')")
    from mlx_whisper_lora.backend_torch.decoding import greedy_decode
    from mlx_whisper_lora.backend_torch.model import load_model
    from mlx_whisper_lora.backend_torch.quantize import quantize_base

    plain, quantized = load_model("tiny.en"), load_model("tiny.en")
    assert quantize_base(quantized, 8) == 4 * 6 + 4 * 10  # every linear layer of tiny.en's 4+4 blocks
    layer = quantized.decoder.blocks[0].attn.query
    assert layer.weight.dtype == torch.int8
    tokens = torch.tensor([[50257, 50362, 770, 1402, 10651, 373, 13]])
    with torch.no_grad():
        a, b = plain(mel, tokens), quantized(mel, tokens)
    assert (a.argmax(-1) == b.argmax(-1)).all()
    assert 0 < (a - b).abs().max() < 1.0  # quantized, and close
    speech = torch.from_numpy(np.array(pad_or_trim(log_mel_spectrogram(load_audio(jfk), 80), 3000, axis=0)[None]))
    text = greedy_decode(quantized, speech)[0]
    assert "ask not what your country can do for you" in text.lower().replace(",", "")


@pytest.mark.parametrize("backend,bits", [pytest.param("torch", 8, marks=pytest.mark.slow),  # 16 s (suite under 15 min)
                                          pytest.param("torch", 4, marks=pytest.mark.slow),  # 4-bit: 19 s
                                          pytest.param("mlx", 4, marks=pytest.mark.slow)])  # MLX CPU: ~5 min
def test_lora_trains_on_a_quantized_base_and_the_adapters_load_on_the_float_model(backend, bits, tmp_path,
                                                                                   tiny_en_checkpoint, mel):
    if backend == "torch":
        pytest.importorskip("bitsandbytes", reason="--bits needs bitsandbytes (pip install '.[quantize]')")
    from mlx_whisper_lora import lora
    from mlx_whisper_lora.backend_mlx.adapters import load_adapters
    from mlx_whisper_lora.backend_mlx.load import build_model

    out = tmp_path / "adapters"
    lora.main(["--train", "--backend", backend, "--bits", str(bits), "--adapter-path", str(out), "--iters", "8",
               "--batch-size", "4", "--learning-rate", "1e-3", "--steps-per-report", "1", "--save-every", "0",
               "--steps-per-eval", "8", "--val-batches", "1", "--no-progress", "--freeze-encoder"])
    entries = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in entries if "val_loss" in e]
    assert len(val) >= 2 and val[-1] < val[0]  # same validation batch before and after training
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["run"]["bits"] == bits
    model = build_model(tiny_en_checkpoint)  # the adapters are plain floating-point LoRA weights
    load_adapters(model, out)
    b = next(m for _, m in model.named_modules() if hasattr(m, "lora_b"))
    assert float(mx.abs(b.lora_b).max()) > 0


def test_mlx_bits_quantizes_the_loaded_base_and_refuses_a_quantized_one(tiny_en_checkpoint, tmp_path):
    import mlx.nn as nn

    from mlx_whisper_lora.backend_mlx.engine import load_base
    from mlx_whisper_lora.backend_mlx.load import save_model
    from mlx_whisper_lora.errors import UserError
    from mlx_whisper_lora.tuner.run_config import RunConfig

    options = RunConfig(model="tiny.en", adapter_path=str(tmp_path / "a"), bits=4)
    model = load_base(options, log=lambda m: None).model
    assert isinstance(model.decoder.blocks[0].attn.query, nn.QuantizedLinear)
    assert model.decoder.blocks[0].attn.query.bits == 4
    save_model(model, tmp_path / "q4")
    with pytest.raises(UserError, match="already quantized"):
        load_base(RunConfig(model=str(tmp_path / "q4"), bits=4), log=lambda m: None)
