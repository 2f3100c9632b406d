"""float64 references that float32 results are held to (numerics.assert_float32_close)."""

from __future__ import annotations

import numpy as np

from mlx_whisper_lora.data.audio import HOP_LENGTH, N_FFT, mel_filters


def log_mel_float64(audio, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper's log-mel (frames, n_mels) of float32 `audio` in float64 numpy: the float32 Hann window and mel
    filters that both implementations hold, every operation after them exact to float64 (numpy's pocketfft)."""
    x = np.asarray(audio, dtype=np.float64)
    x = np.pad(x, (0, padding)) if padding else x
    if x.shape[0] <= N_FFT // 2:
        x = np.pad(x, (0, N_FFT // 2 + 1 - x.shape[0]))
    x = np.pad(x, N_FFT // 2, mode="reflect")  # torch.stft(center=True)'s reflect padding
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32).astype(np.float64)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)[:-1]) ** 2  # Whisper drops the last frame
    log_spec = np.log10(np.maximum(power @ mel_filters(n_mels).astype(np.float64).T, 1e-10))
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
