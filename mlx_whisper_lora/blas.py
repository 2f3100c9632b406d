"""Route MLX's CPU matrix products to an optimized BLAS on Linux.

The Linux `mlx[cpu]` wheel links a reference BLAS (about 5 GFLOP/s here). MLX resolves
`cblas_sgemm` through the process's global symbol scope, so loading an optimized BLAS with
RTLD_GLOBAL *before* `mlx.core` is imported makes MLX use it. PyPI's `mkl` ships `libmkl_rt`,
which exports the standard CBLAS names; we measured ~198 GFLOP/s for 1024^2 sgemm through MLX
with it on a 2-core EPYC (6 as installed) (benchmarks/benchmark_blas.py). Set MLX_WHISPER_LORA_BLAS=off to disable,
or to a library path to load that one instead.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

ENV_VAR = "MLX_WHISPER_LORA_BLAS"
loaded: Optional[str] = None  # path of the BLAS we loaded, for reporting


def _candidates() -> List[str]:
    prefixes = {sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")}
    found = []
    for prefix in prefixes:
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    # System OpenBLAS (Debian's libopenblas0) as a second choice.
    found += sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libopenblas.so*"))
    found += sorted(glob.glob("/usr/lib/aarch64-linux-gnu/libopenblas.so*"))
    return found


def preload() -> Optional[str]:
    """Load an optimized BLAS globally, once, if we are on Linux and mlx is not yet imported."""
    global loaded
    if loaded is not None or not sys.platform.startswith("linux"):
        return loaded
    choice = os.environ.get(ENV_VAR, "auto").strip()
    if choice.lower() in ("off", "0", "none", "reference"):
        return None
    if sys.modules.get("mlx.core") is not None:  # too late: MLX already bound its BLAS symbols
        if _candidates():
            warnings.warn(
                "mlx was imported before mlx_whisper_lora, so MLX keeps its slow reference BLAS "
                "(about 30x slower matrix products on Linux). Import mlx_whisper_lora first.",
                RuntimeWarning, stacklevel=3,
            )
        return None
    # Intel OpenMP threads spin for 200 ms after each call by default, taking the cores from
    # numpy and our own threads between matrix products (measured: 13.8 s -> 11.9 s of encoder
    # time on 20 clips with 0). A user's own setting wins.
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    paths = [choice] if choice.lower() != "auto" else _candidates()
    for path in paths:
        if not Path(path).exists():
            continue
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        loaded = path
        return loaded
    return None
