"""What the CPU can do, read once from /proc/cpuinfo: the kernels a torch path picks depend on it
(int8 products with VNNI, bf16 products with AVX512-BF16 or AMX)."""

from __future__ import annotations

import functools
from pathlib import Path

from .. import cpu_isa


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags; empty where /proc/cpuinfo is not there (not Linux: callers keep their safe choice)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    found = frozenset(word for line in text.splitlines() if line.startswith("flags") for word in line.split(":", 1)[-1].split())
    return cpu_isa.hidden(found)  # less what an emulated older CPU lacks (MLX_WHISPER_LORA_CPU_ISA)


def cpu_has(*names: str) -> bool:
    """Whether the CPU has any of the flags `names`."""
    return not cpu_flags().isdisjoint(names)
