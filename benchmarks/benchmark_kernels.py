"""MLX-CPU softmax and GELU against the inference kernels in mlx_whisper_lora.backend_mlx.cpu_kernels.

Shapes are those of Whisper tiny's encoder on one 30 s window: attention 6x1500x1500, MLP 1500x1536.
Usage: python benchmarks/benchmark_kernels.py
"""

import time

import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_whisper_lora.backend_mlx import cpu_kernels


def best_of(fn, n=5):
    fn()
    best = 1e9
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    scores = mx.random.normal((1, 6, 1500, 1500)) * 4
    hidden = mx.random.normal((1, 1500, 1536)) * 3
    mx.eval(scores, hidden)
    x = mx.random.normal((1, 1500, 384)) * 0.3
    q = x.reshape(1, 1500, 6, 64).transpose(0, 2, 1, 3)
    mx.eval(x, q)

    def mlx_attention():
        return (mx.softmax(q @ q.swapaxes(-1, -2), axis=-1) @ q).transpose(0, 2, 1, 3).reshape(1, 1500, 384)

    rows = [
        ("softmax 6x1500x1500", lambda: mx.eval(mx.softmax(scores, axis=-1)),
         lambda: mx.eval(cpu_kernels.softmax_last_axis(scores)),
         np.abs(np.array(mx.softmax(scores, axis=-1)) - np.array(cpu_kernels.softmax_last_axis(scores))).max()),
        ("attention 6x1500x64", lambda: mx.eval(mlx_attention()), lambda: mx.eval(cpu_kernels.attention(x, x, x, 6, 1.0)),
         np.abs(np.array(mlx_attention()) - np.array(cpu_kernels.attention(x, x, x, 6, 1.0))).max()),
        ("erf GELU 1500x1536", lambda: mx.eval(nn.gelu(hidden)), lambda: mx.eval(cpu_kernels.gelu(hidden)),
         np.abs(np.array(nn.gelu(hidden)) - np.array(cpu_kernels.gelu(hidden))).max()),
    ]
    print(f"{'op':24s} {'mlx (ms)':>9s} {'ours (ms)':>10s} {'speed-up':>9s} {'max abs diff':>13s}")
    for name, ref, ours, diff in rows:
        a, b = best_of(ref) * 1e3, best_of(ours) * 1e3
        print(f"{name:24s} {a:9.1f} {b:10.1f} {a / b:8.1f}x {diff:13.2e}")


if __name__ == "__main__":
    main()
