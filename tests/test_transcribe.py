"""Long-form transcription, output files, and the CLI's handling of bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.inference.transcriber import _segments_from_tokens, transcribe
from mlx_whisper_lora.text.tokenizer import get_tokenizer
from mlx_whisper_lora.formats.transcript_writers import format_timestamp, write_result

ROOT = Path(__file__).resolve().parent.parent


GERMAN = "fleurs_en_de/audio/fleurs-de-009.flac"  # 43 s: two windows


@pytest.fixture(scope="module")
def german(base_model, shared_data):
    """MLX base's long-form transcript of the German file (verbose False: the segments are what is compared)."""
    return transcribe(shared_data / GERMAN, base_model, progress=False, verbose=False)


def test_long_form_german_with_detected_language(german, shared_data):
    path = shared_data / GERMAN
    duration = sf.info(str(path)).duration
    result = german
    assert result["language"] == "de"
    segments = result["segments"]
    assert len(segments) >= 3
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    assert all(s["end"] > s["start"] for s in segments)
    assert segments[-1]["end"] <= duration + 0.5
    assert any(s["start"] >= 30 for s in segments), "the second window was transcribed"
    assert "Schülerinnen" in result["text"]
    assert result["text"].strip() == "".join(s["text"] for s in segments).strip()


def test_long_form_two_windows_with_detected_language_match_mlx(german, shared_data):
    """`transcribe --backend torch`: the long-form transcriber driving the torch model gives what the MLX model
    gives (language, windows, timestamps, tokens) over two windows; here to share MLX's transcript with the test
    above (test_torch_transcribe.py has the other torch-against-MLX checks)."""
    pytest.importorskip("torch", reason="the torch back end needs PyTorch (pip install '.[torch]')")
    from mlx_whisper_lora.backend_torch.decoding import TorchDecodingModel
    from mlx_whisper_lora.backend_torch.model import load_model as load_torch_model

    got = transcribe(shared_data / GERMAN, TorchDecodingModel(load_torch_model("base")), progress=False, verbose=False)
    assert german["language"] == "de" and any(s["start"] >= 30 for s in german["segments"])
    assert got["language"] == german["language"]
    assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in german["segments"]]
    assert [(s["start"], s["end"]) for s in got["segments"]] == [(s["start"], s["end"]) for s in german["segments"]]
    # a log-softmax at most doubles the logits' float32 error, and base's logits differ between the back ends by a
    # few 1e-4 (test_torch_backend.py::test_logits_match_mlx measures tiny.en's; base's longer sums about 2x)
    assert [s["avg_logprob"] for s in got["segments"]] == pytest.approx(
        [s["avg_logprob"] for s in german["segments"]], abs=2e-3)


def test_clip_timestamps_restrict_the_range(tiny_en, jfk):
    full = transcribe(jfk, tiny_en, progress=False)
    part = transcribe(jfk, tiny_en, progress=False, clip_timestamps="0,4")
    assert len(part["text"]) < len(full["text"])
    assert all(s["end"] <= 4.0 + 1e-6 for s in part["segments"])


def test_silence_gives_no_text(tiny_en):
    result = transcribe(np.zeros(16000 * 5, dtype=np.float32), tiny_en, progress=False)
    assert result["text"].strip() == "" and result["segments"] == []


def test_english_only_model_rejects_other_languages(tiny_en, jfk):
    with pytest.raises(UserError, match="English-only"):
        transcribe(jfk, tiny_en, language="de")


def test_segments_from_tokens_split_at_timestamp_pairs():
    tok = get_tokenizer(False)
    tb = tok.timestamp_begin
    hello, world = tok.encode(" hello"), tok.encode(" world")
    tokens = [tb] + hello + [tb + 50, tb + 50] + world + [tb + 120]
    segments, consumed, single_ending = _segments_from_tokens(tokens, tok, time_offset=10.0, window_frames=3000,
                                                              precision=0.02)
    assert single_ending
    assert [(s["start"], s["end"], s["text"]) for s in segments] == [(10.0, 11.0, " hello"), (11.0, 12.4, " world")]
    assert consumed == 3000  # ended on a single timestamp: the whole window is used
    tokens = [tb] + hello + [tb + 50, tb + 50] + world + [tb + 120, tb + 120]
    _, consumed, single_ending = _segments_from_tokens(tokens, tok, 0.0, 3000, 0.02)
    assert not single_ending
    assert consumed == 240  # resume where the last complete segment ended


def test_writers(tmp_path):
    result = {"text": " a b", "language": "en",
              "segments": [{"start": 0.0, "end": 1.5, "text": " a"}, {"start": 3661.25, "end": 3662.0, "text": " b"}]}
    assert format_timestamp(3661.25, decimal_marker=",") == "01:01:01,250"
    srt = write_result(result, tmp_path, "clip", "srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\na\n\n2\n01:01:01,250 --> 01:01:02,000\nb")
    vtt = write_result(result, tmp_path, "clip", "vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00.000 --> 00:01.500\na")
    assert write_result(result, tmp_path, "clip", "tsv").read_text().splitlines()[1] == "0\t1500\ta"
    assert json.loads(write_result(result, tmp_path, "clip", "json").read_text())["language"] == "en"


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mlx_whisper_lora.transcribe", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_writes_every_format_named_after_the_audio(tmp_path, jfk):
    proc = _cli(str(jfk), "--output-dir", str(tmp_path), "--output-format", "all", "--verbose", "False")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jfk.json", "jfk.srt", "jfk.tsv", "jfk.txt", "jfk.vtt"]
    data = json.loads((tmp_path / "jfk.json").read_text())
    assert set(data) == {"text", "segments", "language"}
    assert "ask not what your country can do for you" in data["text"]


def test_cli_silence_warns_in_one_line_and_writes_empty_outputs(tmp_path):
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(16000 * 3, dtype=np.float32), 16000)
    proc = _cli(str(silent), "--output-dir", str(tmp_path / "out"), "--verbose", "False")
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines == [f"warning: no speech found in {silent}; its outputs are empty"]
    assert (tmp_path / "out" / "silence.txt").read_text() == ""


def _bad_inputs(tmp_path, tiny_en_checkpoint):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("not audio, just text\n" * 50)
    truncated = tmp_path / "truncated-model"
    truncated.mkdir()
    data = Path(tiny_en_checkpoint.folder, "model.bin").read_bytes() if Path(tiny_en_checkpoint.folder, "model.bin").exists() else None
    (truncated / "model.bin").write_bytes(data[: len(data) // 2])
    return {
        "missing file": ([str(tmp_path / "nope.wav")], "audio file not found"),
        "zero-length file": ([str(empty)], "empty"),
        "non-audio file": ([str(text)], "cannot decode"),
        "wrong model path": (["--model", str(tmp_path / "no-model")], "not found"),
        "truncated weights": (["--model", str(truncated)], "truncated"),
        "hallucination threshold alone": (["--hallucination-silence-threshold", "2"], "needs word timestamps"),
    }


def test_cli_bad_input_gives_one_line_error(tmp_path, tiny_en_checkpoint, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # keep ffmpeg out of the non-audio case if present
    for case, (args, message) in _bad_inputs(tmp_path, tiny_en_checkpoint).items():
        proc = _cli(*args, "--output-dir", str(tmp_path / "out"))
        assert proc.returncode == 2, (case, proc.stderr)
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (case, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_transcribe_many_equals_transcribe_file_by_file(tiny_en, shared_data):
    from mlx_whisper_lora.transcribe import transcribe_many

    paths = [shared_data / "whisper_mlx_classics/audio/jfk.flac",
             shared_data / "librispeech_test_clean_4/audio/1089-134691-0000.flac",
             shared_data / "pocketsphinx_librivox/audio/sense_and_sensibility_01_austen_64kb-0880.flac"]
    batched = transcribe_many(paths, tiny_en, batch_size=2, progress=False)
    for path, result in zip(paths, batched):
        single = transcribe(path, tiny_en, progress=False)
        assert result["text"] == single["text"]
        assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in single["segments"]]
        # the same tokens by the same MLX kernels, in a batch of 2 instead of 1: a token's log-probability moves
        # by at most twice its logits' float32 rounding (log-softmax), and tiny.en's MLX logits stay within
        # ~1.2e-4 of float64 (test_torch_backend.py::test_logits_match_mlx), so the two runs' averages differ by
        # at most ~5e-4 (2 runs x 2 x 1.2e-4); 1e-3 holds that with 2x room
        assert [s["avg_logprob"] for s in result["segments"]] == pytest.approx(
            [s["avg_logprob"] for s in single["segments"]], abs=1e-3)


def test_half_precision_model_transcribes(tiny_en_checkpoint, jfk):
    import mlx.core as mx

    from mlx_whisper_lora.backend_mlx.load import build_model

    model = build_model(tiny_en_checkpoint, dtype="float16")
    assert model.dtype == mx.float16
    text = transcribe(jfk, model, progress=False, temperature=0.0)["text"]
    assert "ask not what your country can do for you" in text.lower().replace(",", "")
