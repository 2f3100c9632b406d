"""Whisper's log-mel front end: this package's (numpy, float32 FFT, blockwise) against openai-whisper's
(torch.stft) and MLX's FFT on the same audio, in one run; prints seconds (best of N) and ratios, and the
largest difference of each peer's frames from ours.

Usage: python benchmarks/benchmark_log_mel.py [--seconds 30 600] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import mlx_whisper_lora  # noqa: F401  (before MLX: its BLAS)
from mlx_whisper_lora.data.audio import HOP_LENGTH, N_FFT, N_SAMPLES, hann_window, log_mel_spectrogram, mel_filters


def mlx_log_mel(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """The same computation through MLX's FFT (this package's front end before it moved to numpy)."""
    import mlx.core as mx

    x = mx.array(np.pad(audio, (0, padding)))
    half = N_FFT // 2
    x = mx.concatenate([x[1:half + 1][::-1], x, x[-(half + 1):-1][::-1]])
    frames = mx.as_strided(x, shape=(1 + (x.shape[0] - N_FFT) // HOP_LENGTH, N_FFT), strides=(HOP_LENGTH, 1))
    power = mx.square(mx.abs(mx.fft.rfft(frames * mx.array(hann_window(N_FFT)))[:-1]))
    log_spec = mx.log10(mx.maximum(power @ mx.array(mel_filters(n_mels)).T, 1e-10))
    return np.array((mx.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0)


def openai_log_mel(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    import torch
    import whisper

    return whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels, padding=padding).numpy().T


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[30.0, 600.0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M')} load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    print("| audio | ours (numpy) | openai-whisper (torch.stft) | MLX FFT | ours / openai | ours / MLX | max diff openai, MLX |")
    print("|---|---|---|---|---|---|---|")
    for seconds in args.seconds:
        audio = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
        peers = {"ours": log_mel_spectrogram, "openai": openai_log_mel, "mlx": mlx_log_mel}
        frames = {name: fn(audio, 80, N_SAMPLES) for name, fn in peers.items()}
        took = {name: best_of(lambda fn=fn: fn(audio, 80, N_SAMPLES), args.repeats) for name, fn in peers.items()}
        diff = [float(np.abs(frames[name] - frames["ours"]).max()) for name in ("openai", "mlx")]
        print(f"| {seconds:g} s | {took['ours']:.3f} s | {took['openai']:.3f} s | {took['mlx']:.3f} s | "
              f"{took['ours'] / took['openai']:.2f}x | {took['ours'] / took['mlx']:.2f}x | {diff[0]:.1e}, {diff[1]:.1e} |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
