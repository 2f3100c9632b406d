"""Audio loading and Whisper's log-mel front end (computed in MLX).

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

import mlx.core as mx
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
    """Pad with zeros or cut `array` along `axis` to `length` (numpy or MLX)."""
    n = array.shape[axis]
    if n > length:
        idx = [slice(None)] * array.ndim
        idx[axis] = slice(0, length)
        return array[tuple(idx)]
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return mx.pad(array, widths) if isinstance(array, mx.array) else np.pad(array, widths)
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
def hann_window(n: int) -> mx.array:
    k = np.arange(n)
    return mx.array((0.5 - 0.5 * np.cos(2 * np.pi * k / n)).astype(np.float32))  # periodic


def log_mel_spectrogram(audio, n_mels: int = 80, padding: int = 0) -> mx.array:
    """Whisper's log-mel features of mono 16 kHz audio: (frames, n_mels), float32.

    `audio` is a path, a numpy array or an MLX array; `padding` zeros are appended first.
    """
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    x = mx.array(audio) if not isinstance(audio, mx.array) else audio
    x = x.astype(mx.float32)
    if padding > 0:
        x = mx.pad(x, [(0, padding)])
    half = N_FFT // 2
    if x.shape[0] <= half:
        x = mx.pad(x, [(0, half + 1 - x.shape[0])])
    # Reflect padding as torch.stft(center=True) does.
    prefix = x[1 : half + 1][::-1]
    suffix = x[-(half + 1) : -1][::-1]
    x = mx.concatenate([prefix, x, suffix])
    n_frames = 1 + (x.shape[0] - N_FFT) // HOP_LENGTH
    frames = mx.as_strided(x, shape=(n_frames, N_FFT), strides=(HOP_LENGTH, 1))
    spectrum = mx.fft.rfft(frames * hann_window(N_FFT))
    power = mx.square(mx.abs(spectrum[:-1]))  # Whisper drops the last frame
    mel = power @ mx.array(mel_filters(n_mels)).T
    log_spec = mx.log10(mx.maximum(mel, 1e-10))
    log_spec = mx.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
