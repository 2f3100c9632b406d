import os

import numpy as np
import pytest
import soundfile as sf

from mlx_whisper_lora.data.audio import AudioError, load_audio, log_mel_spectrogram, mel_filters, pad_or_trim

from numerics import assert_float32_close, float32_error
from reference64 import log_mel_float64


def _whisper():
    return pytest.importorskip("whisper", reason="openai-whisper (the mel reference) is not installed")


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_openai_whisper(jfk, n_mels):
    whisper = _whisper()
    import torch

    audio = load_audio(jfk)
    ref = whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels).numpy().T
    ours = np.array(log_mel_spectrogram(audio, n_mels))
    assert ours.shape == ref.shape
    _held_to_float64(ours, log_mel_float64(audio, n_mels), ref, f"log-mel {n_mels}")


def _held_to_float64(ours, exact, ref, name):
    """MLX's and torch's STFTs are two float32 orders of one computation (their FFT kernels, by CPU): ours is
    held to the float64 log-mel within a multiple of openai-whisper's own float32 rounding (numerics.py). The
    log10 turns an FFT's absolute rounding into a larger share in the quiet bins kept by the 8-decade clamp
    (measured 1-2e-5 for either, ~100 float32 units of the largest value), the same for both implementations."""
    assert ours.shape == exact.shape
    # the float64 reference computes openai-whisper's definition: torch's float32 result is within float32
    # rounding of it (measured 2e-5); a wrong window, padding, filter or clamp is off by more than 1e-2
    assert float32_error(ref, exact) < 1e-3
    assert_float32_close(ours, exact, ref, name)


def test_log_mel_with_padding_matches_openai_whisper(shared_data):
    whisper = _whisper()
    import torch

    audio = load_audio(shared_data / "librispeech_test_clean_4" / "audio" / "1089-134691-0000.flac")
    ref = whisper.log_mel_spectrogram(torch.from_numpy(audio), padding=480000).numpy().T
    ours = np.array(log_mel_spectrogram(audio, padding=480000))
    _held_to_float64(ours, log_mel_float64(audio, padding=480000), ref, "log-mel padded")


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_librosa_filters_shipped_by_openai_whisper(n_mels):
    whisper = _whisper()
    ref = np.load(os.path.join(os.path.dirname(whisper.__file__), "assets", "mel_filters.npz"))[f"mel_{n_mels}"]
    # both are float64 computations (ours, librosa's) rounded to float32: equal within one float32 unit of each
    # weight, where their float64 values straddle a rounding boundary (measured: 1 unit, at 118 and 85 weights)
    assert np.all(np.abs(mel_filters(n_mels) - ref) <= np.spacing(np.abs(ref)))


def test_load_audio_resamples_to_16k(tmp_path, jfk):
    import soxr

    original = load_audio(jfk)
    path = tmp_path / "clip44k.wav"
    sf.write(path, soxr.resample(original, 16000, 44100), 44100, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert abs(len(audio) - len(original)) <= 1
    n = min(len(audio), len(original))
    assert np.corrcoef(audio[:n], original[:n])[0, 1] > 0.999
    assert abs(np.std(audio) - np.std(original)) < 0.01 * np.std(original)


def test_load_audio_reads_wav_and_ogg(tmp_path, jfk):
    audio = load_audio(jfk)[:16000]
    for ext, subtype in (("wav", "PCM_16"), ("ogg", "VORBIS")):
        path = tmp_path / f"x.{ext}"
        sf.write(path, audio, 16000, subtype=subtype)
        back = load_audio(path)
        assert abs(len(back) - len(audio)) < 200
        assert np.corrcoef(back[:15000], audio[:15000])[0, 1] > 0.9


def test_pad_or_trim():
    x = np.arange(10, dtype=np.float32)
    assert pad_or_trim(x, 4).tolist() == [0, 1, 2, 3]
    assert pad_or_trim(x, 12).tolist()[-2:] == [0, 0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"this is not audio at all" * 10), "cannot decode"),
    ],
)
def test_load_audio_errors_name_the_file(tmp_path, make, message, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no ffmpeg fallback: the message is ours
    path = tmp_path / "clip.wav"
    make(path)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert message in str(e.value) and "clip.wav" in str(e.value)


def test_absurd_headers_are_refused_before_decoding(tmp_path):
    """A damaged header claiming 1 Hz would ask the resampler for gigabytes: refused in one line."""
    from mlx_whisper_lora.data.audio import check_header

    path = tmp_path / "one_hertz.wav"
    sf.write(path, np.zeros(50_000, dtype=np.float32), 1, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 Hz, outside 1-384 kHz"):
        load_audio(path)
    with pytest.raises(AudioError, match="hours long"):
        check_header(16_000, 16_000 * 3600 * 13, "long.wav")
    check_header(44_100, 44_100 * 3600 * 2, "two_hours.wav")  # long but sane: accepted
