"""Whisper in MLX, with LoRA fine-tuning."""

from . import blas

blas.preload()  # must run before mlx.core is imported anywhere in this process

__version__ = "0.2.0"
