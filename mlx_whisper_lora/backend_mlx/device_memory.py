"""The memory of the GPU MLX trains on, for the memory plan (tuner/memory_plan.py)."""

from __future__ import annotations

from typing import Optional, Tuple

import mlx.core as mx


def device_info() -> dict:
    """MLX's device description (`mx.device_info`, `mx.metal.device_info` in older MLX), {} when it has none."""
    for owner in (mx, getattr(mx, "metal", None)):
        probe = getattr(owner, "device_info", None)
        if probe is not None:
            try:
                return dict(probe())
            except (RuntimeError, AttributeError):
                continue
    return {}


def device_memory() -> Optional[Tuple[int, str]]:
    """(bytes, description) on an MLX GPU: the recommended working set on Apple silicon, the memory MLX reports
    on CUDA; None on the CPU (the plan reads the system's memory then)."""
    if mx.default_device() != mx.gpu:
        return None
    info = device_info()
    for key, what in (("max_recommended_working_set_size", "MLX's recommended working set"),
                      ("memory_size", "the GPU's memory as MLX reports it"),
                      ("total_memory", "the GPU's memory as MLX reports it")):
        if info.get(key):
            return int(info[key]), what
    import os

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return memory, "of the system's memory (MLX reports none for its GPU)"
