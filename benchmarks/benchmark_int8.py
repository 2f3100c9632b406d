"""The matrix products of Whisper tiny in each precision and library this CPU offers: why
`transcribe --quantize int8` runs through PyTorch's int8 kernels and not MLX's (docs/benchmarks.md).

Usage: python benchmarks/benchmark_int8.py
Prints milliseconds per product for one decoding step's output projection (1 x 384 by 384 x 51,864) and one
encoder MLP product (1500 x 384 by 384 x 1536): numpy float32, torch float32 / bfloat16 / dynamic int8
(this package's Int8Linear), MLX float32 / 8-bit `quantized_matmul`.
"""

from __future__ import annotations

import time

import numpy as np

import mlx_whisper_lora  # noqa: F401  (the fast BLAS before mlx)
import mlx.core as mx
import torch

from mlx_whisper_lora.backend_torch.int8 import Int8Linear


def timed(f, n: int) -> float:
    out = f()
    if isinstance(out, mx.array):
        mx.eval(out)
    start = time.perf_counter()
    for _ in range(n):
        out = f()
        if isinstance(out, mx.array):
            mx.eval(out)
    return (time.perf_counter() - start) / n * 1000


def main():
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    for name, rows, cols, out_features, n in (("output projection, one token", 1, 384, 51864, 200),
                                              ("encoder MLP product, one window", 1500, 384, 1536, 20)):
        w = (rng.standard_normal((out_features, cols)) * 0.05).astype(np.float32)
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        tw, tx = torch.from_numpy(w), torch.from_numpy(x)
        bw, bx = tw.bfloat16(), tx.bfloat16()
        int8 = Int8Linear(tw)
        mw, mxx = mx.array(w), mx.array(x)
        qw, scales, biases = mx.quantize(mw, group_size=64, bits=8)
        results = {
            "numpy float32": timed(lambda: x @ w.T, n),
            "torch float32": timed(lambda: torch.nn.functional.linear(tx, tw), n),
            "torch bfloat16": timed(lambda: torch.nn.functional.linear(bx, bw), n),
            "torch int8 (Int8Linear)": timed(lambda: int8(tx), n),
            "mlx float32": timed(lambda: mxx @ mw.T, n),
            "mlx 8-bit quantized_matmul": timed(lambda: mx.quantized_matmul(mxx, qw, scales, biases, transpose=True,
                                                                            group_size=64, bits=8), max(2, n // 10)),
        }
        print(f"{name} ({rows} x {cols} by {cols} x {out_features}):")
        for system, ms in results.items():
            print(f"  {system:28s} {ms:9.3f} ms")


if __name__ == "__main__":
    main()
