"""`transcribe --backend torch`: the long-form transcriber driving the torch model gives what the MLX
model gives (same language, windows, timestamps and tokens), with and without adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

torch = pytest.importorskip("torch", reason="the torch back end needs PyTorch (pip install '.[torch]')")

from mlx_whisper_lora.backend_mlx.adapters import AdapterConfig, apply_adapters, save_adapters  # noqa: E402
from mlx_whisper_lora.backend_mlx.load import build_model  # noqa: E402
from mlx_whisper_lora.backend_torch.decoding import TorchDecodingModel  # noqa: E402
from mlx_whisper_lora.backend_torch.model import load_model as load_torch_model  # noqa: E402
from mlx_whisper_lora.transcribe import load_for_inference, transcribe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _same_result(got: dict, expected: dict):
    assert got["language"] == expected["language"]
    assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in expected["segments"]]
    assert [(s["start"], s["end"]) for s in got["segments"]] == [(s["start"], s["end"]) for s in expected["segments"]]
    # the same tokens from two float32 implementations (torch, MLX): a token's log-probability moves by at most
    # twice its logits' float32 rounding (log-softmax); tiny.en's MLX logits are within ~1.2e-4 of float64 and
    # torch's within a sixteenth of that (test_torch_backend.py::test_logits_match_mlx), so ~2.6e-4 apart for
    # tiny.en; base's 512-wide, 6-layer reductions round up to ~2x as much (error grows with the reduction
    # length, numerics.reduction_bound), ~1e-3, and 2e-3 holds that with 2x room
    assert [s["avg_logprob"] for s in got["segments"]] == pytest.approx(
        [s["avg_logprob"] for s in expected["segments"]], abs=2e-3)


def test_beam_search_matches_mlx(tiny_en, jfk):
    expected = transcribe(jfk, tiny_en, progress=False, verbose=False, beam_size=4, temperature=0.0)
    got = transcribe(jfk, TorchDecodingModel(load_torch_model("tiny.en")), progress=False, verbose=False,
                     beam_size=4, temperature=0.0)
    _same_result(got, expected)


def test_adapters_and_case_style_apply_in_the_torch_back_end(tiny_en_checkpoint, jfk, tmp_path):
    model = build_model(tiny_en_checkpoint)
    config = AdapterConfig(rank=4, alpha=8, base_model="tiny.en", case_style="upper")
    mx.random.seed(1)
    apply_adapters(model, config)
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
    save_adapters(model, config, tmp_path)
    mlx_result = transcribe(jfk, load_for_inference(None, str(tmp_path)), progress=False, verbose=False)
    torch_model = load_for_inference(None, str(tmp_path), backend="torch", device="cpu")
    torch_result = transcribe(jfk, torch_model, progress=False, verbose=False)
    plain = transcribe(jfk, TorchDecodingModel(load_torch_model("tiny.en")), progress=False, verbose=False)
    assert torch_result["text"] == mlx_result["text"] and torch_result["text"] == torch_result["text"].upper()
    assert [s["tokens"] for s in torch_result["segments"]] != [s["tokens"] for s in plain["segments"]]


def test_cli_backend_torch_writes_the_same_json_as_mlx(tmp_path, jfk):
    for backend in ("mlx", "torch"):
        proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.transcribe", str(jfk), "--backend", backend,
                               "-o", str(tmp_path / backend), "-f", "json", "--verbose", "false"],
                              cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    results = [json.loads((tmp_path / b / "jfk.json").read_text()) for b in ("mlx", "torch")]
    assert results[0]["text"] == results[1]["text"]
    assert "ask not what your country can do for you" in results[1]["text"].lower().replace(",", "")
