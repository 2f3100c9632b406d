"""What every export writer reads: a model with its adapters folded in, as float32 numpy arrays in MLX
names, with what the runtimes need beside the weights. Either engine makes one (backend_mlx/fused.py,
backend_torch/fused.py), so the writers never touch a framework and run where MLX is not installed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..formats.checkpoint import Checkpoint
from ..formats.dims import ModelDimensions
from ..formats.model_metadata import default_alignment_heads


@dataclass
class FusedModel:
    dims: ModelDimensions
    weights: Dict[str, np.ndarray]  # MLX names; float32, or MLX-packed integers when `quantization` is set
    alignment_heads: List[Tuple[int, int]]
    source: str  # the base model's path or id
    folder: Optional[Path] = None  # where the base's tokenizer vocabulary may be found
    case_style: Optional[str] = None  # the adapters' text style, rendered by this package (and MLX folders)
    punctuation: str = "keep"
    quantization: Optional[dict] = None  # MLX affine quantization ({"bits", "group_size"}) of packed weights
    adapter_tensors: Dict[str, np.ndarray] = field(default_factory=dict)  # the LoRA weights as loaded (PEFT)

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    def float_weights(self) -> Dict[str, np.ndarray]:
        """The weights for a floating-point runtime (every format but a quantized MLX folder)."""
        if self.quantization:
            raise ValueError("this model holds MLX-quantized weights: fuse with dequantize for this format")
        return self.weights


def base_model(ckpt: Checkpoint) -> FusedModel:
    """A checkpoint as it is, without adapters (`convert`, and the base a PEFT adapter names)."""
    heads = ckpt.alignment_heads or default_alignment_heads(ckpt.dims)
    weights = {k: v for k, v in ckpt.weights.items() if k != "alignment_heads"}
    if not ckpt.quantization:
        weights = {k: np.asarray(v, dtype=np.float32) if np.issubdtype(v.dtype, np.floating) else v
                   for k, v in weights.items()}
    return FusedModel(ckpt.dims, weights, [(int(a), int(b)) for a, b in heads], ckpt.source, ckpt.folder,
                      ckpt.case_style, ckpt.punctuation, ckpt.quantization)

