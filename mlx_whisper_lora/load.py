"""The public loading API, as in 0.1: `load_model`, `save_model` and `quantize_model` of the MLX
Whisper (backend_mlx/load.py; the checkpoint readers are formats/checkpoint.py)."""

from .backend_mlx.load import load_model, quantize_model, save_model

__all__ = ["load_model", "save_model", "quantize_model"]
