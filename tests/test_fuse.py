"""Fused, unfused, transformers, PEFT and mlx-whisper all compute the same model."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.backend_mlx.adapters import AdapterConfig, apply_adapters, load_adapters, save_adapters
from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.data.audio import load_audio, log_mel_spectrogram, pad_or_trim
from mlx_whisper_lora.inference.decoding import DecodingOptions, decode
from mlx_whisper_lora.fuse import fuse
from mlx_whisper_lora.backend_mlx.load import build_model, load_model
from mlx_whisper_lora.backend_mlx.lora_layers import LoRALinear

from numerics import MLX_FACTOR, assert_float32_close

TOKENS = [50257, 50362, 770, 1402, 10651, 373, 13]  # <|startoftranscript|><|notimestamps|> + some text


@pytest.fixture(scope="module")
def adapted(tiny_en_checkpoint, tmp_path_factory):
    """tiny.en with LoRA on every module and non-zero adapter weights, saved to a folder."""
    folder = tmp_path_factory.mktemp("adapters")
    model = build_model(tiny_en_checkpoint)
    mx.random.seed(0)
    config = AdapterConfig(modules=["all"], rank=4, alpha=8, base_model="tiny.en", dims=model.dims.to_dict())
    apply_adapters(model, config)
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.02
    save_adapters(model, config, folder)
    model.eval()
    return model, folder


@pytest.fixture(scope="module")
def mel():
    return mx.array(pad_or_trim(log_mel_spectrogram(load_audio(ASSETS / "demo.flac"), 80), 3000, axis=0)[None])


@pytest.fixture(scope="module")
def exact_logits(adapted, mel, tiny_en_checkpoint):
    """The adapted model's logits in float64 and float32 (the torch twin with the saved adapters): the
    fused, exported and imported models are other float32 orders of the same function, each held to the
    float64 logits within a multiple of the float32 twin's own rounding (numerics.py)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed (the float64 reference)")
    from mlx_whisper_lora.backend_torch import lora as tlora
    from mlx_whisper_lora.backend_torch import model as tmodel

    twin = tmodel.Whisper(tiny_en_checkpoint.dims)
    tmodel.load_mlx_weights(twin, tiny_en_checkpoint.weights)
    tlora.load_adapters(twin.eval(), adapted[1])
    t_mel, t_tokens = torch.from_numpy(np.array(mel)), torch.tensor([TOKENS])
    with torch.no_grad():
        reference = twin(t_mel, t_tokens).numpy()
        exact = twin.double()(t_mel.double(), t_tokens).numpy()
    return exact, reference


def _greedy(model, mel):
    return decode(model, mel, DecodingOptions(language="en", without_timestamps=True))[0].text


def test_fused_equals_unfused(adapted, mel, tiny_en_checkpoint, tmp_path, exact_logits):
    model, folder = adapted
    tokens = mx.array([TOKENS])
    unfused = model(mel, tokens)
    out = fuse(None, folder, tmp_path / "fused", dtype="float32")
    fused = load_model(out)
    assert not any(isinstance(m, LoRALinear) for _, m in fused.named_modules())
    assert_float32_close(np.array(unfused), *exact_logits, "MLX unfused", MLX_FACTOR)
    assert_float32_close(np.array(fused(mel, tokens)), *exact_logits, "MLX fused", MLX_FACTOR)
    base = build_model(tiny_en_checkpoint)
    assert float(mx.abs(base(mel, tokens) - unfused).max()) > 1e-2  # the adapters do change the model
    assert _greedy(fused, mel) == _greedy(model, mel)
    assert mx.array_equal(fused.alignment_heads, base.alignment_heads)


def test_fused_folder_loads_in_mlx_whisper(adapted, mel, tmp_path, exact_logits):
    mlx_whisper = pytest.importorskip("mlx_whisper", reason="PyPI mlx-whisper (reference) not installed")
    from mlx_whisper.load_models import load_model as mw_load

    model, folder = adapted
    out = fuse(None, folder, tmp_path / "fused", dtype="float32")
    theirs = mw_load(str(out), dtype=mx.float32)
    tokens = mx.array([TOKENS])
    assert mlx_whisper is not None
    assert_float32_close(np.array(theirs(mel, tokens)), *exact_logits, "mlx-whisper fused", MLX_FACTOR)


def test_transformers_export_gives_the_same_greedy_transcripts(adapted, mel, tmp_path, shared_data):
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    model, folder = adapted
    out = fuse(None, folder, tmp_path / "hf", export_format="hf")
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(str(out)).eval()
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    tok = get_tokenizer(False)
    clips = [ASSETS / "demo.flac", shared_data / "whisper_mlx_classics" / "audio" / "jfk.flac"]
    for clip in clips:
        m = pad_or_trim(log_mel_spectrogram(load_audio(clip), 80), 3000, axis=0)[None]
        ours = _greedy(model, m)
        features = torch.from_numpy(np.array(m).transpose(0, 2, 1).copy())
        with torch.no_grad():
            ids = hf.generate(features, decoder_input_ids=torch.tensor([[50257, 50362]]), max_new_tokens=200,
                              do_sample=False, num_beams=1)
        theirs = tok.decode([t for t in ids[0].tolist() if t < tok.eot]).strip()
        assert theirs == ours


def test_peft_export_matches_in_transformers_and_imports_back(adapted, mel, tiny_en_checkpoint, tmp_path,
                                                              exact_logits):
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    peft = pytest.importorskip("peft", reason="peft not installed")
    torch = pytest.importorskip("torch", reason="PyTorch not installed")
    from mlx_whisper_lora.backend_mlx.load import save_hf as save_hf_folder

    model, folder = adapted
    tokens = mx.array([TOKENS])
    base_dir = save_hf_folder(build_model(tiny_en_checkpoint), tmp_path / "base_hf")
    peft_dir = fuse(None, folder, tmp_path / "peft", export_format="peft")
    assert (peft_dir / "adapter_model.safetensors").exists()
    base = transformers.WhisperForConditionalGeneration.from_pretrained(str(base_dir))
    with_adapter = peft.PeftModel.from_pretrained(base, str(peft_dir)).eval()
    features = torch.from_numpy(np.array(mel).transpose(0, 2, 1).copy())
    with torch.no_grad():
        theirs = with_adapter(input_features=features, decoder_input_ids=torch.tensor([TOKENS])).logits.numpy()
    assert_float32_close(theirs, *exact_logits, "PEFT in transformers")  # torch kernels, as the twin's

    imported = build_model(tiny_en_checkpoint)
    load_adapters(imported, peft_dir)  # a PEFT folder reads as adapters too
    assert_float32_close(np.array(imported(mel, tokens)), *exact_logits, "PEFT imported", MLX_FACTOR)


def test_transcribe_cli_uses_adapters_unfused(adapted, tmp_path, capsys):
    from mlx_whisper_lora.transcribe import main

    model, folder = adapted
    main([str(ASSETS / "demo.flac"), "--adapter-path", str(folder), "--language", "en", "--output-dir", str(tmp_path),
          "--verbose", "false", "--temperature-increment-on-fallback", "0"])
    written = " ".join((tmp_path / "demo.txt").read_text().split())
    from mlx_whisper_lora.transcribe import transcribe

    expected = transcribe(str(ASSETS / "demo.flac"), model, language="en", verbose=False, temperature=(0.0,))["text"]
    assert written == " ".join(expected.split())


def test_default_mlx_export_runs_in_mlx_whisper_with_its_defaults_and_keeps_the_text_style(adapted, tmp_path):
    """mlx-whisper builds its ModelDimensions from config.json and decodes in float16 by default: the
    export holds float16 weights and keeps this package's extras (text style) in a file of its own."""
    mlx_whisper = pytest.importorskip("mlx_whisper", reason="PyPI mlx-whisper (reference) not installed")
    import json

    from mlx_whisper_lora.formats.adapter_files import read_adapter_config, save_adapter_config
    from mlx_whisper_lora.text.case_style import render
    from mlx_whisper_lora.transcribe import transcribe

    model, folder = adapted
    styled = tmp_path / "styled"
    styled.mkdir()
    config = read_adapter_config(folder)
    config.case_style, config.punctuation = "upper", "none"
    save_adapter_config(config, styled)
    (styled / "adapters.safetensors").write_bytes((folder / "adapters.safetensors").read_bytes())
    out = fuse(None, styled, tmp_path / "fused", log=lambda m: None)
    assert set(json.loads((out / "config.json").read_text())) <= {
        "n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_vocab", "n_text_ctx",
        "n_text_state", "n_text_head", "n_text_layer", "model_type", "quantization"}
    audio = load_audio(ASSETS / "demo.flac")
    theirs = mlx_whisper.transcribe(audio, path_or_hf_repo=str(out), verbose=None)["text"]  # fp16, its defaults
    ours = transcribe(audio, load_model(out), verbose=False)["text"]
    assert ours == ours.upper() and ours.strip()  # the style travels with the folder for this package
    assert render(theirs, "upper", "none").split() == ours.split()


def test_console_and_files_show_the_same_rendered_text(adapted, tmp_path, capsys):
    from mlx_whisper_lora.formats.adapter_files import read_adapter_config, save_adapter_config
    from mlx_whisper_lora.transcribe import main

    model, folder = adapted
    config = read_adapter_config(folder)
    config.case_style = "upper"
    save_adapter_config(config, folder)
    try:
        main([str(ASSETS / "demo.flac"), "--adapter-path", str(folder), "--language", "en", "--output-dir",
              str(tmp_path), "--output-format", "srt"])
    finally:
        config.case_style = "keep"
        save_adapter_config(config, folder)
    printed = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines() if "] " in line]
    written = [line for line in (tmp_path / "demo.srt").read_text().splitlines()
               if line.strip() and "-->" not in line and not line.strip().isdigit()]
    assert printed and printed == written and all(p == p.upper() for p in printed)


def test_an_export_into_the_adapter_folder_is_refused_before_anything_is_written(adapted):
    from mlx_whisper_lora.errors import UserError

    _, folder = adapted
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for save_path in (folder, folder / ".", folder.parent / folder.name):
        with pytest.raises(UserError, match="is the adapter folder"):
            fuse(None, folder, save_path, export_format="peft")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
