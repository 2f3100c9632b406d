"""Build the MLX Whisper from a checkpoint (formats/checkpoint.py reads every kind), and save it as an MLX folder.

`load_model` accepts an MLX folder, a Hugging Face transformers folder or hub id, an openai-whisper
`.pt` checkpoint, a CTranslate2 (faster-whisper) folder, or a short name such as `tiny.en`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import UserError
from ..formats.checkpoint import Checkpoint, ModelLoadError, resolve
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
    """Write an MLX folder that this package and mlx-whisper load (export/mlx_folder.py says what is in it),
    in `dtype` (default: the model's own)."""
    from ..export.mlx_folder import save_mlx_folder

    if dtype is None:
        floats = [v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
        dtype = floats[0] if floats else mx.float32
    return save_mlx_folder(as_fused(model), path, str(parse_dtype(dtype)).rpartition(".")[2])


def quantize_model(model: Whisper, bits: int = 4, group_size: int = 64) -> Whisper:
    """Quantize linear and embedding layers in place (as mlx-whisper's convert -q does)."""
    if bits not in (2, 3, 4, 6, 8):
        raise UserError(f"--q-bits {bits} is not supported; use 4 or 8")
    nn.quantize(model, group_size=group_size, bits=bits,
                class_predicate=lambda p, m: isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.shape[-1] % group_size == 0)
    model.quantization = {"group_size": group_size, "bits": bits}
    return model


def numpy_weights(model: Whisper) -> dict:
    """Every parameter as numpy in MLX names (alignment heads left out): floats widened to float32 (numpy has no
    bfloat16), quantized layers' packed integers as they are."""
    return {k: np.array(v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v)
            for k, v in tree_flatten(model.parameters()) if k != "alignment_heads"}


def float_weights(model: Whisper) -> dict:
    """Every floating-point parameter as float32 numpy, in MLX names (alignment heads left out)."""
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters()) if k != "alignment_heads"}


def as_fused(model: Whisper, adapter_tensors: Optional[dict] = None):
    """The model as the framework-free export writers read it (export/fused_model.py)."""
    from ..export.fused_model import FusedModel

    return FusedModel(model.dims, numpy_weights(model), [tuple(map(int, h)) for h in model.alignment_heads.tolist()],
                      str(model.source), model.folder, model.case_style, model.punctuation,
                      getattr(model, "quantization", None) or None, dict(adapter_tensors or {}))


def save_hf(model: Whisper, path: Union[str, Path], dtype: str = "float32") -> Path:
    """The model as a transformers folder (export/hf.py); a quantized model is refused."""
    from ..export.hf import save_hf_folder

    if getattr(model, "quantization", None):
        raise ValueError("dequantize the model before exporting it to transformers")
    return save_hf_folder(float_weights(model), model.dims, model.alignment_heads.tolist(), path, model.folder, dtype)
