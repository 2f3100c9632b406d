"""Run as an older x86-64 CPU would: MLX_WHISPER_LORA_CPU_ISA=avx2 (or =default, SSE4.2) caps the
instruction sets the numerical libraries pick their kernels by, and hides the newer CPU flags from this package.

Why: PyTorch, MKL, oneDNN, CTranslate2, OpenBLAS and numpy choose kernels (and so summation orders, and
so float32 rounding) by the CPU they find, and this package picks its int8 and bf16 paths by the CPU flags
(VNNI, AVX512-BF16, AMX). A machine without AVX-512 takes other paths than the one the tests ran on; setting this
variable takes them here, for the test suite (`MLX_WHISPER_LORA_CPU_ISA=avx2 python -m pytest`) or for a user
reproducing a report from such a machine. Each library's own variable is set only when the user has not set it.
The caps must be in place before those libraries load, so the package's __init__ applies them first; they are
set in os.environ, so the processes this one starts (CLIs, servers, test workers) run capped too.
Not covered: MLX's own compiled kernels (built for one baseline, no dispatch), onnxruntime and whisper.cpp (no
such switch); their matrix products that go through MKL are capped.
"""

from __future__ import annotations

import os
from typing import Dict, FrozenSet

ENV_VAR = "MLX_WHISPER_LORA_CPU_ISA"

# The libraries' own switches, per level.
_LIBRARY_CAPS: Dict[str, Dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's ATen kernels
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL (PyTorch's and MLX's BLAS)
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (PyTorch's convolutions, bf16 and some int8 products)
        "CT2_FORCE_CPU_ISA": "AVX2",  # CTranslate2 (faster-whisper)
        "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS (numpy's matrix products)
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's dispatched loops (numpy 2.4 names)
    },
    "default": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "CT2_FORCE_CPU_ISA": "GENERIC",
        "OPENBLAS_CORETYPE": "Nehalem",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    },
}

# Flags a CPU at that level does not have (prefixes): this package's own choices (cpu_flags) stop seeing them.
_HIDDEN_PREFIXES = {
    "avx2": ("avx512", "avx_vnni", "amx", "avx_ifma", "avx_ne_convert", "avx_vnni_int8"),
    "default": ("avx", "fma", "f16c", "amx"),
}


def level() -> str:
    """The level asked for ('' when none); an unknown value is refused by name."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value and value not in _LIBRARY_CAPS:
        raise SystemExit(f"{ENV_VAR}={value!r} is not a level this package knows: use one of {sorted(_LIBRARY_CAPS)}, "
                         "or unset it")
    return value


def apply() -> str:
    """Set the libraries' caps for the level asked for (each only where the user has not set it); returns the level."""
    chosen = level()
    for name, value in _LIBRARY_CAPS.get(chosen, {}).items():
        os.environ.setdefault(name, value)
    return chosen


def hidden(flags: FrozenSet[str]) -> FrozenSet[str]:
    """`flags` less those the emulated CPU lacks (all of them when no level is asked for)."""
    prefixes = _HIDDEN_PREFIXES.get(level(), ())
    return frozenset(f for f in flags if not f.startswith(prefixes)) if prefixes else flags
