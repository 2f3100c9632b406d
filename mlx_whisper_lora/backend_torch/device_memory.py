"""The memory of the GPU the torch back end trains on, for the memory plan (tuner/memory_plan.py)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def device_memory(backend) -> Optional[Tuple[int, str]]:
    """(bytes, description) on CUDA: what the card has free plus what this process's allocator holds already;
    None on the CPU (the plan reads the system's memory then)."""
    if getattr(backend, "device", "cpu") != "cuda":
        return None
    free, total = torch.cuda.mem_get_info()
    held = torch.cuda.memory_reserved()
    return free + held, f"on the CUDA GPU ({free / (1 << 30):.2f} free of {total / (1 << 30):.2f}, " \
                        f"{held / (1 << 30):.2f} held by this process)"
