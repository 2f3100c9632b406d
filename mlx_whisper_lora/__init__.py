"""Whisper in MLX, with LoRA fine-tuning."""

from . import blas, cpu_isa

cpu_isa.apply()  # an emulated older CPU (MLX_WHISPER_LORA_CPU_ISA), before any numerical library loads
blas.preload()  # must run before mlx.core is imported anywhere in this process

__version__ = "0.2.0"
