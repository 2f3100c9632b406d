"""The MLX engine's side of an export: load a base (and adapters), fold the adapters in, optionally quantize
with MLX's affine scheme, and hand the result to the framework-free writers as numpy (export/fused_model.py)."""

from __future__ import annotations

from typing import Optional, Tuple

from ..export.fused_model import FusedModel
from ..formats.adapter_config import AdapterConfig
from .adapters import fuse_adapters, load_adapters, trainable_numpy
from .load import as_fused, load_model, quantize_model


def fused_model(name: Optional[str], adapter_path=None, scale: float = 1.0, dequantize: bool = True,
                quantize_bits: Optional[int] = None, group_size: int = 64,
                dtype: str = "float32") -> Tuple[FusedModel, Optional[AdapterConfig]]:
    """(the model with its adapters folded in, the adapters' config or None). `dequantize`: floats from a
    quantized base (every format but an MLX folder needs them); `quantize_bits`: MLX-quantize after fusing."""
    model = load_model(name, dtype=dtype)
    config = load_adapters(model, adapter_path, scale) if adapter_path else None
    tensors = trainable_numpy(model) if adapter_path else {}
    fuse_adapters(model, dequantize=dequantize)
    if quantize_bits:
        quantize_model(model, bits=quantize_bits, group_size=group_size)
    return as_fused(model, tensors), config
