"""Long files: the log-mel computed window by window from a temporary file of samples
(data/long_audio.py) equals the whole-file log-mel, and transcripts do not change. The threshold
is lowered so that real clips of a few seconds take the long-file path here."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from mlx_whisper_lora.data import long_audio
from mlx_whisper_lora.data.audio import N_SAMPLES, AudioError, load_audio, log_mel_spectrogram

from numerics import assert_float32_close
from reference64 import log_mel_float64


@pytest.fixture
def everything_is_long(monkeypatch):
    monkeypatch.setattr(long_audio, "LONG_FILE_SECONDS", 1)


def clip(shared_data):
    return shared_data / "librispeech_2spk" / "audio" / "4088-158077-0000.flac"


def stereo_44k(shared_data, tmp_path):
    import soxr

    mono = load_audio(clip(shared_data))
    resampled = soxr.resample(mono, 16000, 44100)
    path = tmp_path / "stereo_44k.wav"
    sf.write(path, np.stack([resampled, 0.5 * resampled], axis=1), 44100)
    return path


@pytest.mark.parametrize("kind", ["flac_16k", "wav_44k_stereo"])
def test_windowed_log_mel_equals_the_whole_file_log_mel(kind, shared_data, tmp_path, everything_is_long):
    path = clip(shared_data) if kind == "flac_16k" else stereo_44k(shared_data, tmp_path)
    windowed = long_audio.open_long_audio(path, 80, padding=N_SAMPLES)
    audio = load_audio(path)
    whole = np.array(log_mel_spectrogram(audio, 80, padding=N_SAMPLES))
    exact = log_mel_float64(audio, 80, padding=N_SAMPLES)
    assert windowed.shape == whole.shape == exact.shape
    n = whole.shape[0]
    for a, b in ((0, 3000), (1, 2), (1234, 4234), (n - 3000, n), (0, n), (n - 5, n + 100)):
        # the same MLX FFT on the same frames, the mel product over other row counts (another BLAS blocking):
        # held to the float64 log-mel within a multiple of the whole-file log-mel's own rounding (numerics.py)
        assert_float32_close(np.array(windowed[a:b]), exact[a:b], whole[a:b], f"windowed {kind} [{a}:{b}]")
    windowed.close()


def test_short_files_are_read_whole(shared_data):
    assert long_audio.open_long_audio(clip(shared_data), 80) is None  # 12.8 s, under the threshold


def test_transcripts_of_the_windowed_path_are_the_same(tiny_en, shared_data, monkeypatch):
    from mlx_whisper_lora.inference.transcriber import transcribe

    path = shared_data / "whisper_mlx_classics" / "audio" / "jfk.flac"
    whole = transcribe(path, tiny_en, temperature=0.0, word_timestamps=True)
    monkeypatch.setattr(long_audio, "LONG_FILE_SECONDS", 1)
    opened = []
    original = long_audio.open_long_audio
    monkeypatch.setattr("mlx_whisper_lora.inference.transcriber.open_long_audio",
                        lambda *a, **k: opened.append(original(*a, **k)) or opened[-1])
    windowed = transcribe(path, tiny_en, temperature=0.0, word_timestamps=True)
    assert opened and opened[0] is not None and opened[0].file.closed  # taken, and its file released
    assert windowed["text"] == whole["text"]
    assert [(s["start"], s["end"]) for s in windowed["segments"]] == [(s["start"], s["end"]) for s in whole["segments"]]
    assert [w["start"] for s in windowed["segments"] for w in s["words"]] == \
        [w["start"] for s in whole["segments"] for w in s["words"]]


def test_non_finite_samples_in_a_long_file_are_one_error(tmp_path, everything_is_long):
    samples = np.zeros(16000 * 3, dtype=np.float32)
    samples[20000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav has 1 samples that are not numbers"):
        long_audio.open_long_audio(path, 80)
