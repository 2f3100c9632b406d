"""The ONNX export (export/onnx.py: the layout transformers.js loads) run in onnxruntime: the bundled demo
adapter's model on the demo clip (quick), and the all-caps LibriSpeech adapter of test_exports.py on its 20
held-out clips, float32 and int8 (slow)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mlx_whisper_lora.assets_dir import ASSETS

try:  # the exports' registry moved the verification helpers from backend_mlx/ to export/
    from mlx_whisper_lora.export.verify import plain
except ImportError:  # pragma: no cover
    from mlx_whisper_lora.backend_mlx.export_verify import plain

from test_exports import CLIPS, trained  # noqa: F401  (the adapter fixture, trained once in this module too)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")


def _decoder_names(path):
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [i.name for i in graph.input], [o.name for o in graph.output]


def test_demo_adapter_onnx_export_transcribes_the_demo_clip_as_this_package(tmp_path):
    """The float export in onnxruntime gives this package's words on the demo clip; the merged decoder has the
    inputs and outputs transformers.js feeds and reads (empty pasts plus use_cache_branch on the first step)."""
    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.export.onnx import onnx_runner, write_onnx
    from mlx_whisper_lora.fuse import fuse
    from mlx_whisper_lora.transcribe import load_for_inference, transcribe_many

    hf = fuse(None, ASSETS / "demo_adapter", tmp_path / "hf", export_format="hf", dtype="float32")
    out = write_onnx(hf, tmp_path / "onnx", log=lambda message: None)
    assert {"config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["is_encoder_decoder"] is True  # transformers.js needs it
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["decoder_model_merged.onnx", "encoder_model.onnx"]
    # each weight stored once (the output projection is the token embedding's Transpose, not a second copy): the
    # decoder's file is smaller than the whole model's safetensors
    assert (out / "onnx" / "decoder_model_merged.onnx").stat().st_size < (hf / "model.safetensors").stat().st_size
    inputs, outputs = _decoder_names(out / "onnx" / "decoder_model_merged.onnx")
    layers = json.loads((out / "config.json").read_text())["decoder_layers"]
    cache = [f"{i}.{part}.{kv}" for i in range(layers) for part in ("decoder", "encoder") for kv in ("key", "value")]
    assert sorted(inputs) == sorted(["input_ids", "encoder_hidden_states", "use_cache_branch"]
                                    + [f"past_key_values.{c}" for c in cache])
    assert sorted(outputs) == sorted(["logits"] + [f"present.{c}" for c in cache])

    audio = np.asarray(load_audio(str(ASSETS / "demo.flac")), dtype=np.float32)
    ours = transcribe_many([audio], load_for_inference(None, str(ASSETS / "demo_adapter")), temperature=0.0,
                           language="en", progress=False)[0]["text"]
    theirs = onnx_runner(out, "en")(audio)
    assert plain(theirs) == plain(ours), (theirs, ours)


@pytest.mark.slow
def test_onnxruntime_runs_the_float_and_int8_onnx_exports(trained, tmp_path):  # noqa: F811
    """On the 20 held-out clips the float export agrees with this package on >= 19 (the same greedy search over
    the same float32 weights: only the kernels' rounding differs), and int8 weights cost at most 1 WER point."""
    from mlx_whisper_lora.export.onnx import onnx_runner, write_onnx
    from mlx_whisper_lora.fuse import fuse
    from mlx_whisper_lora.text.metrics import score

    work, adapters, audios, ours = trained
    refs = [json.loads(line)["text"] for line in (work / "data" / "test.jsonl").read_text().splitlines()][:CLIPS]
    hf = fuse(None, adapters, tmp_path / "hf", export_format="hf", dtype="float32")
    logs = []
    started = time.perf_counter()
    out = write_onnx(hf, tmp_path / "onnx", quantize="int8", log=logs.append)
    print(f"write_onnx {time.perf_counter() - started:.1f} s; {logs[-1]}")  # seen with pytest -s
    sizes = {p.name: p.stat().st_size for p in (out / "onnx").glob("*.onnx")}
    # int8 weights take a quarter of the float bytes; the int8 decoder holds the token embedding twice (lookup and
    # output projection, 2 bytes a weight against the float file's 4 for its one copy), so under half
    assert sizes["encoder_model_quantized.onnx"] < 0.4 * sizes["encoder_model.onnx"], sizes
    assert sizes["decoder_model_merged_quantized.onnx"] < 0.5 * sizes["decoder_model_merged.onnx"], sizes
    texts = {}
    for name, quantized in (("float32", False), ("int8", True)):
        run = onnx_runner(out, "en", quantized=quantized)
        started = time.perf_counter()
        texts[name] = [run(a) for a in audios]
        print(f"onnxruntime {name}: {time.perf_counter() - started:.1f} s for {len(audios)} clips")
    same = [plain(a) == plain(b) for a, b in zip(ours, texts["float32"])]
    wer = {name: score([plain(r) for r in refs], [plain(t) for t in hyps])["wer"] for name, hyps in texts.items()}
    ours_wer = score([plain(r) for r in refs], [plain(t) for t in ours])["wer"]
    print(f"float32 export agrees with this package on {sum(same)}/{len(same)} clips; WER ours {ours_wer:.2%}, "
          f"float32 {wer['float32']:.2%}, int8 {wer['int8']:.2%}")
    assert sum(same) >= 19, [(a, b) for a, b, s in zip(ours, texts["float32"], same) if not s]
    assert wer["int8"] <= wer["float32"] + 0.01, wer
