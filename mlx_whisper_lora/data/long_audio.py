"""Whisper's log-mel of a long file, computed window by window, so that memory does not grow with
the file: a two-hour file's samples would take 460 MB as float32 and its log-mel another 230 MB,
and the whole-file STFT ~1.3 GB per hour on top.

The file is decoded once, in blocks, into an unnamed temporary file (16 kHz float32). A first pass
finds the log-mel's peak, which Whisper clamps every frame against (8 dB below it). Each slice
the transcriber asks for is then computed from the samples it needs. The frames are those of
`audio.log_mel_spectrogram` on the whole file, to float32 rounding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, AudioError, check_header, finite, log10_mel_power, strided_frames

LONG_FILE_SECONDS = 600  # files longer than this take the windowed path
FFMPEG_LONG_FILE_BYTES = 20 << 20  # a compressed file this big is long (about 20 min at 128 kbit/s)
BLOCK_SECONDS = 30


class SampleFile:
    """A file's 16 kHz mono float32 samples in an unnamed temporary file, read by range (`--vad` finds
    speech in a long file block by block and reads only the chunks it decodes)."""

    def __init__(self, file, n_samples: int):
        self.file, self.n_samples = file, n_samples

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self.n_samples)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        return np.frombuffer(os.pread(self.file.fileno(), (stop - start) * 4, start * 4), dtype=np.float32).copy()

    def close(self) -> None:
        self.file.close()


class WindowedLogMel:
    """The log-mel of the samples in `samples` followed by `padding` zeros, sliced like an array of
    shape (frames, n_mels): `mel[a:b]` is a float32 numpy array."""

    def __init__(self, samples: SampleFile, n_mels: int, padding: int = 0):
        self.samples, self.file, self.n_samples, self.n_mels = samples, samples.file, samples.n_samples, n_mels
        self.length = self.n_samples + padding  # the signal: the audio, then zeros
        self.shape = (self.length // HOP_LENGTH, n_mels)
        self.peak = max(float(self._log10_mel(a, min(a + 3000, self.shape[0])).max())
                        for a in range(0, self.shape[0], 3000))

    def __len__(self) -> int:
        return self.shape[0]

    def _samples(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the signal reflect-padded by N_FFT // 2 at each end (as
        torch.stft(center=True) pads it)."""
        index = np.arange(start, stop) - N_FFT // 2
        index = np.abs(index)  # reflection at the start
        last = self.length - 1
        index = np.where(index > last, 2 * last - index, index)  # and at the end
        low, high = int(index.min()), int(min(index.max(), self.n_samples - 1))
        out = np.zeros(len(index), dtype=np.float32)
        if low < self.n_samples:
            block = self.samples.read(low, high + 1)
            inside = index < self.n_samples
            out[inside] = block[index[inside] - low]
        return out

    def _log10_mel(self, a: int, b: int) -> np.ndarray:
        samples = self._samples(a * HOP_LENGTH, (b - 1) * HOP_LENGTH + N_FFT)
        return log10_mel_power(strided_frames(samples, b - a), self.n_mels)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a WindowedLogMel is sliced by frame ranges (mel[a:b])")
        a, b, _ = key.indices(self.shape[0])
        if b <= a:
            return np.zeros((0, self.n_mels), dtype=np.float32)
        log_spec = np.maximum(self._log10_mel(a, b), np.float32(self.peak - 8.0))
        return (log_spec + np.float32(4.0)) / np.float32(4.0)

    def close(self) -> None:
        self.samples.close()


def _soundfile_blocks(path: str, info) -> Iterator[np.ndarray]:
    """Mono float32 blocks at 16 kHz (soxr's streaming resampler for other rates)."""
    import soundfile as sf

    stream = None
    if info.samplerate != SAMPLE_RATE:
        import soxr

        stream = soxr.ResampleStream(info.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    blocks = sf.blocks(path, blocksize=info.samplerate * BLOCK_SECONDS, dtype="float32", always_2d=True)
    for block in blocks:
        mono = np.ascontiguousarray(block.mean(axis=1), dtype=np.float32)
        yield stream.resample_chunk(mono) if stream is not None else mono
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _ffmpeg_blocks(path: str) -> Iterator[np.ndarray]:
    cmd = ["ffmpeg", "-nostdin", "-threads", "0", "-i", path, "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le",
           "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:
            chunk = proc.stdout.read(SAMPLE_RATE * 2 * BLOCK_SECONDS)
            if not chunk:
                break
            yield np.frombuffer(chunk[: len(chunk) // 2 * 2], np.int16).astype(np.float32) / 32768.0
        if proc.wait() != 0:
            reason = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:] or ["unknown"]
            raise AudioError(f"cannot decode {path}: ffmpeg says {reason[0]}")
    finally:
        if proc.poll() is None:
            proc.kill()


def store_long_audio(path: Union[str, Path]) -> Optional[SampleFile]:
    """A long file's samples decoded in blocks into a temporary file, or None for a file short enough
    to read whole (and for anything the whole-file reader should judge)."""
    import soundfile as sf

    path = str(path)
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    try:
        info = sf.info(path)
    except Exception:
        info = None
    if info is not None and info.frames > 0:
        check_header(info.samplerate, info.frames, path)
        if info.frames / info.samplerate <= LONG_FILE_SECONDS:
            return None
        blocks = _soundfile_blocks(path, info)
    elif shutil.which("ffmpeg") and Path(path).stat().st_size > FFMPEG_LONG_FILE_BYTES:
        blocks = _ffmpeg_blocks(path)
    else:
        return None
    store = tempfile.TemporaryFile(prefix="mlx_whisper_lora_audio_")
    count = 0
    try:
        for block in blocks:
            store.write(finite(block, path).tobytes())
            count += len(block)
        store.flush()
        if count == 0:
            raise AudioError(f"audio file holds no samples: {path}")
        return SampleFile(store, count)
    except BaseException:
        store.close()
        raise


def open_long_audio(path: Union[str, Path], n_mels: int, padding: int = 0) -> Optional[WindowedLogMel]:
    """The windowed log-mel of a long file (its samples in a temporary file), or None for a file
    short enough to read whole (and for anything the whole-file reader should judge)."""
    stored = store_long_audio(path)
    if stored is None:
        return None
    try:
        return WindowedLogMel(stored, n_mels, padding)
    except BaseException:
        stored.close()
        raise
