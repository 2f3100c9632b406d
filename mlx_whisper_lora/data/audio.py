"""Audio loading and Whisper's log-mel front end (computed in numpy, so that either engine, and a machine
without MLX, reads the same frames; numpy 2's float32 FFT keeps pace with MLX's on the CPU).

Matches openai-whisper's `log_mel_spectrogram`: 400-point periodic Hann STFT with hop 160 and
reflect padding, power spectrum, Slaney mel filters (as librosa builds them), log10 clamped to
8 dB below the peak, then (x + 4) / 4.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import UserError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder halves the frame rate
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50, one audio token per 20 ms


class AudioError(UserError):
    """The audio file is missing, empty or not decodable."""


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    if orig_sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32)


def _load_with_ffmpeg(path: str, sr: int) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-threads", "0", "-i", path, "-f", "s16le", "-ac", "1",
           "-acodec", "pcm_s16le", "-ar", str(sr), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown"]
        raise AudioError(f"cannot decode {path}: ffmpeg says {reason[0]}")
    return np.frombuffer(proc.stdout, np.int16).astype(np.float32) / 32768.0


def load_audio(path: Union[str, Path], sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 at `sr` Hz.

    libsndfile (wav, flac, ogg, mp3) is tried first; other formats go through ffmpeg when it is on
    PATH. Raises AudioError with the file name and the problem.
    """
    path = str(path)
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {path}")
    if p.is_dir():
        raise AudioError(f"expected an audio file but got a directory: {path}")
    if p.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # not a libsndfile format: the read below says so, or ffmpeg takes it
        info = None
    if info is not None:
        check_header(info.samplerate, info.frames, path)
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as sf_error:  # libsndfile could not parse it
        if shutil.which("ffmpeg"):
            audio = _load_with_ffmpeg(path, sr)
        else:
            raise AudioError(
                f"cannot decode {path} as audio ({str(sf_error).strip()}); supported without ffmpeg: "
                "wav, flac, ogg, mp3 — install ffmpeg for other formats"
            ) from None
    else:
        audio = resample(data.mean(axis=1), file_sr, sr)
    if audio.size == 0:
        raise AudioError(f"audio file holds no samples: {path}")
    return finite(np.ascontiguousarray(audio, dtype=np.float32), path)


MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
MAX_HOURS = 12  # one file; at 16 kHz that is 2.8 GB of float32 samples before any log-mel


def check_header(sample_rate: int, frames: int, name) -> None:
    """Refuse a header that would make reading or resampling ask for absurd memory (a damaged file
    claiming 1 Hz, or days of audio), before a byte of it is decoded."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: its header says {sample_rate} Hz, outside 1-384 kHz; the file is damaged or "
                         "not speech audio")
    hours = frames / sample_rate / 3600
    if hours > MAX_HOURS:
        raise AudioError(f"{name} is {hours:.1f} hours long; split it into files of at most {MAX_HOURS} hours")


def finite(audio: np.ndarray, name) -> np.ndarray:
    """`audio` unchanged, or an AudioError when a sample is NaN or infinite (such a clip makes every
    loss and every adapter weight NaN, and transcripts nonsense)."""
    if not np.isfinite(audio).all():
        bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(f"{name} has {bad} samples that are not numbers (NaN or infinite); repair or drop the file")
    return audio


def pad_or_trim(array, length: int = N_SAMPLES, axis: int = -1):
    """Pad with zeros or cut `array` along `axis` to `length` (numpy, or an MLX array)."""
    n = array.shape[axis]
    if n > length:
        idx = [slice(None)] * array.ndim
        idx[axis] = slice(0, length)
        return array[tuple(idx)]
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        if isinstance(array, np.ndarray):
            return np.pad(array, widths)
        import mlx.core as mx  # an MLX array (training code pads its own): only then is MLX needed

        return mx.pad(array, widths)
    return array


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular Slaney-normalised mel filter bank, shape (n_mels, n_fft // 2 + 1), as librosa makes it."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=None)
def hann_window(n: int) -> np.ndarray:
    k = np.arange(n)
    return (0.5 - 0.5 * np.cos(2 * np.pi * k / n)).astype(np.float32)  # periodic


FRAMES_PER_BLOCK = 3000  # the STFT runs this many frames at a time: its complex spectrum stays small


def log10_mel_power(frames: np.ndarray, n_mels: int) -> np.ndarray:
    """log10 of the mel power of strided frames (n, N_FFT), floored at 1e-10, float32 (n, n_mels);
    blockwise, so a long file's spectrum never exists whole."""
    out = np.empty((len(frames), n_mels), dtype=np.float32)
    filters = mel_filters(n_mels).T
    window = hann_window(N_FFT)
    for a in range(0, len(frames), FRAMES_PER_BLOCK):
        spectrum = np.fft.rfft(frames[a:a + FRAMES_PER_BLOCK] * window)  # complex64 from float32 (numpy >= 2)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32, copy=False)
        np.log10(np.maximum(power @ filters, 1e-10), out=out[a:a + FRAMES_PER_BLOCK])
    return out


def strided_frames(x: np.ndarray, n_frames: int) -> np.ndarray:
    """The first `n_frames` N_FFT-sample frames of `x`, HOP_LENGTH apart (a view: no copy)."""
    return np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][:n_frames]


def log_mel_spectrogram(audio, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper's log-mel features of mono 16 kHz audio: (frames, n_mels), float32 numpy.

    `audio` is a path or an array (numpy, or anything numpy reads: an MLX or torch CPU array);
    `padding` zeros are appended first.
    """
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if padding > 0:
        x = np.pad(x, (0, padding))
    half = N_FFT // 2
    if x.shape[0] <= half:
        x = np.pad(x, (0, half + 1 - x.shape[0]))
    x = np.pad(x, (half, half), mode="reflect")  # as torch.stft(center=True) pads
    n_frames = (x.shape[0] - N_FFT) // HOP_LENGTH  # Whisper drops the last frame
    log_spec = log10_mel_power(strided_frames(x, n_frames), n_mels)
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
