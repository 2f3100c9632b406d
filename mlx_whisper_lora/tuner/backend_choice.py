"""Which training back end `--backend auto` picks on this machine, and why (the reason is logged).

MLX is the default on Apple Silicon's GPU (Metal). On an NVIDIA GPU the PyTorch back end trains
when it sees the GPU: measured on an H100 (large-v2, bf16, batch 8), MLX's CUDA back end took 1.29x
torch's time a step with the encoder frozen and ran out of the card's 80 GB with encoder LoRA, which
the torch back end trained in 28.6 GB on an H200 (docs/benchmarks.md, GPU section); MLX trains there
when PyTorch cannot use the GPU.
On a CPU-only MLX build, its transcendental kernels (exp in softmax, erf in GELU) run scalar: measured here,
a softmax over Whisper's encoder attention takes 14x torch's time and a LoRA step several times
PEFT's (docs/benchmarks.md). There the PyTorch back end, same model, LoRA and adapter files,
trains instead, when it is installed (MLX-quantized bases stay on MLX: the torch back end
quantizes through bitsandbytes, `--bits`).
"""

from __future__ import annotations

import importlib.util
from typing import Tuple

CPU_REASON = ("MLX has no GPU here and its CPU kernels for exp/erf are scalar; the PyTorch back end trains "
              "several times faster on this machine (docs/benchmarks.md); --backend mlx to override")
CUDA_REASON = ("the PyTorch back end is faster than MLX's CUDA back end on NVIDIA GPUs and needs far less memory "
               "with encoder LoRA (docs/benchmarks.md); --backend mlx to override")


def mlx_accelerated() -> str:
    """'metal' or 'cuda' when MLX runs on a GPU here, else '' (also when MLX is not installed)."""
    if importlib.util.find_spec("mlx") is None:
        return ""
    import mlx.core as mx

    try:
        if mx.metal.is_available():
            return "metal"
    except AttributeError:
        pass
    cuda = getattr(mx, "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            return "cuda"
    except AttributeError:
        pass
    return ""


def torch_sees_cuda() -> bool:
    """Whether PyTorch is installed with a CUDA GPU it can use."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str, device: str = None) -> Tuple[str, str]:
    """(back end, why) for `--backend requested` (mlx, torch or auto)."""
    if requested in ("mlx", "torch"):
        return requested, "asked for"
    if device:
        return "torch", f"--device {device} is a torch back end option"
    gpu = mlx_accelerated()
    if gpu == "cuda" and torch_sees_cuda():
        return "torch", CUDA_REASON
    if gpu:
        return "mlx", f"MLX runs on {gpu} here"
    if importlib.util.find_spec("mlx") is None:
        return "torch", "MLX is not installed here"
    if importlib.util.find_spec("torch") is None:
        return "mlx", "PyTorch is not installed (pip install 'mlx-whisper-lora[torch]' for the faster CPU back end)"
    return "torch", CPU_REASON
