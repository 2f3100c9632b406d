"""fp32 matrix-product speed through MLX with each BLAS choice, against numpy, in one run.

Each MLX configuration runs in its own process (a BLAS must be loaded before mlx is imported).
Usage: python benchmarks/benchmark_blas.py [--size 1024]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

WORKER = r'''
import os, sys, time
size = int(sys.argv[1]); mode = sys.argv[2]
if mode == "numpy":
    import numpy as np
    a = np.random.rand(size, size).astype(np.float32); mm = lambda: a @ a
else:
    os.environ["MLX_WHISPER_LORA_BLAS"] = "off" if mode == "reference" else "auto"
    import mlx_whisper_lora
    from mlx_whisper_lora import blas as _blas
    import mlx.core as mx
    a = mx.random.normal((size, size)); mx.eval(a); mm = lambda: mx.eval(a @ a)
mm(); best = 1e9
for _ in range(5):
    s = time.perf_counter(); mm(); best = min(best, time.perf_counter() - s)
print(2 * size ** 3 / best / 1e9)
'''


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    args = p.parse_args(argv)
    print(f"sgemm {args.size}x{args.size} fp32, best of 5")
    for mode, label in (("reference", "MLX, bundled reference BLAS"), ("auto", "MLX, mlx_whisper_lora default (MKL)"),
                        ("numpy", "numpy")):
        out = subprocess.run([sys.executable, "-c", WORKER, str(args.size), mode], capture_output=True, text=True)
        value = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr.strip()[-200:]}"
        print(f"{label:40s} {float(value):8.1f} GFLOP/s" if out.returncode == 0 else f"{label:40s} {value}")


if __name__ == "__main__":
    main()
