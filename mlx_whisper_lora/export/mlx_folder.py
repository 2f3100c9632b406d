"""An MLX folder (config.json + weights.safetensors) that this package and PyPI mlx-whisper load, written
from numpy so no MLX is needed to write one. What mlx-whisper does not read (text style, source) goes to
mlx_whisper_lora.json beside them; alignment heads travel inside the weights file too, as mlx-whisper's
model attribute of that name; the source's tokenizer vocabulary is copied along when there is one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from ..files import atomic_write_bytes, atomic_write_text
from ..formats.checkpoint import EXTRAS_FILE
from ..formats.safetensors_io import write_safetensors, write_safetensors_bfloat16
from .fused_model import FusedModel

MLX_DTYPES = {"float16": np.float16, "float32": np.float32, "bfloat16": None}  # None: written by hand (numpy lacks it)


def save_mlx_folder(model: FusedModel, path: Union[str, Path], dtype: str = "float16") -> Path:
    """Floating-point weights (quantization scales and biases included) in `dtype`; packed integers as they are."""
    if dtype not in MLX_DTYPES:
        raise ValueError(f"MLX folder in {dtype!r}: use one of {', '.join(MLX_DTYPES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = dict(model.weights)
    weights["alignment_heads"] = np.array(model.alignment_heads, dtype=np.int32).reshape(-1, 2)
    if MLX_DTYPES[dtype] is None:
        write_safetensors_bfloat16(path / "weights.safetensors", weights, {"format": "mlx"})
    else:
        cast = {k: v.astype(MLX_DTYPES[dtype]) if np.issubdtype(v.dtype, np.floating) else v for k, v in weights.items()}
        write_safetensors(path / "weights.safetensors", cast, {"format": "mlx"})
    config = {**model.dims.to_dict(), "model_type": "whisper"}
    if model.quantization:
        config["quantization"] = model.quantization
    extras = {"source": model.source}
    if model.case_style in ("upper", "lower"):
        extras["case_style"] = model.case_style
    if model.punctuation == "none":
        extras["punctuation"] = "none"
    extras["alignment_heads"] = [list(map(int, h)) for h in model.alignment_heads]
    atomic_write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(path / EXTRAS_FILE, json.dumps(extras, indent=2, default=str) + "\n")
    if model.folder is not None:
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            src = Path(model.folder) / name
            if src.exists() and src.resolve() != (path / name).resolve():
                atomic_write_bytes(path / name, src.read_bytes())
    return path
