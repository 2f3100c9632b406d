"""Build the MLX Whisper from a checkpoint (formats/checkpoint.py reads every kind), and save it as an MLX folder.

`load_model` accepts an MLX folder, a Hugging Face transformers folder or hub id, an openai-whisper
`.pt` checkpoint, a CTranslate2 (faster-whisper) folder, or a short name such as `tiny.en`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import UserError
from ..files import atomic_write, atomic_write_bytes, atomic_write_text
from ..formats.checkpoint import EXTRAS_FILE, Checkpoint, ModelLoadError, resolve
from ..formats.offline_models import DEFAULT_MODEL
from .model import Whisper

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def parse_dtype(dtype: Union[str, mx.Dtype, None]) -> mx.Dtype:
    if dtype is None:
        return mx.float32
    if isinstance(dtype, mx.Dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ---------------------------------------------------------------- build, load, save
def build_model(ckpt: Checkpoint, dtype: Union[str, mx.Dtype, None] = mx.float32) -> Whisper:
    dtype = parse_dtype(dtype)
    model = Whisper(ckpt.dims, dtype=dtype)
    if ckpt.quantization:
        q = ckpt.quantization
        nn.quantize(
            model,
            group_size=q.get("group_size", 64),
            bits=q.get("bits", 4),
            class_predicate=lambda p, m: isinstance(m, (nn.Linear, nn.Embedding)) and f"{p}.scales" in ckpt.weights,
        )
    expected = dict(tree_flatten(model.parameters()))
    expected.pop("alignment_heads", None)
    missing = sorted(set(expected) - set(ckpt.weights))
    unexpected = sorted(set(ckpt.weights) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"weights of {ckpt.source} do not fit the model: {detail}")
    arrays = []
    for name, value in ckpt.weights.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ModelLoadError(
                f"weights of {ckpt.source}: {name} has shape {tuple(value.shape)}, expected {tuple(expected[name].shape)}"
            )
        arr = mx.array(value)
        if mx.issubdtype(arr.dtype, mx.floating):
            arr = arr.astype(dtype)
        arrays.append((name, arr))
    model.update(tree_unflatten(arrays))
    model.quantization = ckpt.quantization
    if ckpt.alignment_heads:
        model.set_alignment_heads(ckpt.alignment_heads)
    mx.eval(model.parameters())
    model.source = ckpt.source
    model.folder = ckpt.folder
    model.case_style = ckpt.case_style
    model.punctuation = ckpt.punctuation
    return model


def load_model(path_or_id: Union[str, Path, None] = None, dtype: Union[str, mx.Dtype, None] = mx.float32) -> Whisper:
    """Load Whisper from a folder, file, hub id or short name (default: the offline tiny.en)."""
    return build_model(resolve(str(path_or_id or DEFAULT_MODEL)), dtype)


def save_model(model: Whisper, path: Union[str, Path], dtype: Union[str, mx.Dtype, None] = None) -> Path:
    """Write an MLX folder (config.json + weights.safetensors) that this package and mlx-whisper load;
    what mlx-whisper does not read (text style, source) goes to mlx_whisper_lora.json beside them.

    Alignment heads travel inside the weights file, as mlx-whisper's model attribute of that name.
    The tokenizer vocabulary of the source folder is copied along when there is one.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    if dtype is not None:
        dt = parse_dtype(dtype)
        weights = {k: v.astype(dt) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    config = {**model.dims.to_dict(), "model_type": "whisper"}
    quant = getattr(model, "quantization", None)
    if quant:
        config["quantization"] = quant
    extras = {"source": model.source}
    if model.case_style in ("upper", "lower"):
        extras["case_style"] = model.case_style
    if model.punctuation == "none":
        extras["punctuation"] = "none"
    extras["alignment_heads"] = model.alignment_heads.tolist()  # also in the weights, where mlx-whisper reads them
    atomic_write(path / "weights.safetensors", lambda tmp: mx.save_safetensors(str(tmp), weights, metadata={"format": "mlx"}))
    atomic_write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(path / EXTRAS_FILE, json.dumps(extras, indent=2, default=str) + "\n")
    folder = model.folder
    if folder is not None:
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            src = Path(folder) / name
            if src.exists() and src.resolve() != (path / name).resolve():
                atomic_write_bytes(path / name, src.read_bytes())
    return path


def quantize_model(model: Whisper, bits: int = 4, group_size: int = 64) -> Whisper:
    """Quantize linear and embedding layers in place (as mlx-whisper's convert -q does)."""
    if bits not in (2, 3, 4, 6, 8):
        raise UserError(f"--q-bits {bits} is not supported; use 4 or 8")
    nn.quantize(model, group_size=group_size, bits=bits,
                class_predicate=lambda p, m: isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.shape[-1] % group_size == 0)
    model.quantization = {"group_size": group_size, "bits": bits}
    return model


def float_weights(model: Whisper) -> dict:
    """Every floating-point parameter as float32 numpy, in MLX names (alignment heads left out)."""
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters()) if k != "alignment_heads"}


def save_hf(model: Whisper, path: Union[str, Path], dtype: str = "float32") -> Path:
    """The model as a transformers folder (export/hf.py); a quantized model is refused."""
    from ..export.hf import save_hf_folder

    if getattr(model, "quantization", None):
        raise ValueError("dequantize the model before exporting it to transformers")
    return save_hf_folder(float_weights(model), model.dims, model.alignment_heads.tolist(), path, model.folder, dtype)
