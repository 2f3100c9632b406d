"""The torch engine's side of an export, so `fuse` and `convert` run where MLX is not installed: load a base
(and adapters), fold every LoRA/DoRA layer into a plain Linear, and hand the weights to the framework-free
writers as numpy in MLX names (export/fused_model.py)."""

from __future__ import annotations

from typing import Optional, Tuple

from ..export.fused_model import FusedModel
from ..formats.adapter_config import AdapterConfig
from .lora import LoRALinear, adapter_tensors, load_adapters
from .model import load_model, mlx_weights


def fold_adapters(model) -> None:
    """Replace every adapter layer by the Linear it adds up to (DoRA's rescaling included)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.fuse())


def fused_model(name: Optional[str], adapter_path=None, scale: float = 1.0) -> Tuple[FusedModel, Optional[AdapterConfig]]:
    """(the model with its adapters folded in, the adapters' config or None), on the CPU in float32."""
    model = load_model(name, device="cpu")
    config = load_adapters(model, adapter_path, scale) if adapter_path else None
    tensors = adapter_tensors(model) if adapter_path else {}
    fold_adapters(model)
    return FusedModel(model.dims, mlx_weights(model), [tuple(map(int, h)) for h in model.alignment_heads],
                      str(model.source), model.folder, model.case_style, model.punctuation, None, tensors), config
