"""LoRA and DoRA in PyTorch with the MLX layers' names, shapes, scale and initialisation.

lora_a is (in, rank), uniform in +-1/sqrt(in); lora_b is (rank, out), zero; scale = alpha / rank;
DoRA adds the magnitude `m` (out,). Adapter files are the MLX ones: safetensors with keys like
`decoder.blocks.0.attn.query.lora_a`. The base may be a bitsandbytes 8/4-bit layer (QLoRA); the
adapters then stay in floating point.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch
from torch import nn

from ..formats.adapter_config import AdapterConfig, adapted_blocks, adapted_layers, adapted_stacks, wrappers_swapped_out
from ..formats.adapter_files import check_fits, add_saved_adapters


class LoRALinear(nn.Module):
    additive = True  # output = base output + delta(x), so a cached base projection can be reused

    def __init__(self, linear: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        self.linear = linear
        in_dims, out_dims = linear.in_features, linear.out_features
        self.scale = float(alpha) / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        bound = 1.0 / math.sqrt(in_dims)
        device, dtype = linear.weight.device, linear.weight.dtype
        if not dtype.is_floating_point:  # a bitsandbytes-quantized base: the adapters train in fp32
            dtype = torch.float32
        self.lora_a = nn.Parameter(torch.empty(in_dims, rank, device=device, dtype=dtype).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(rank, out_dims, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's term alone."""
        low, up = self.low_rank_terms(x)
        return low @ up

    def low_rank_terms(self, x: torch.Tensor):
        """(dropout(x) @ A, scale * B): the adapter's term is their product; a caller that multiplies
        it by something else (attention over cached base keys) can take the rank-r route."""
        return self.dropout(x) @ self.lora_a.to(x.dtype), self.scale * self.lora_b.to(x.dtype)

    def weight_delta(self) -> torch.Tensor:
        """The (out, in) update this adapter adds to the base weight."""
        return self.scale * (self.lora_a @ self.lora_b).T

    def fused_weight(self) -> torch.Tensor:
        return dense_weight(self.linear).float() + self.weight_delta().float()

    def fuse(self) -> nn.Linear:
        fused = nn.Linear(self.linear.in_features, self.linear.out_features, bias=self.linear.bias is not None)
        with torch.no_grad():
            fused.weight.copy_(self.fused_weight())
            if self.linear.bias is not None:
                fused.bias.copy_(self.linear.bias.float())
        return fused.to(self.lora_a.device)


class DoRALinear(LoRALinear):
    """Weight-decomposed LoRA, as the MLX DoRALinear: the rows of W + delta rescaled to a trained
    magnitude m, the norm itself not differentiated through (the DoRA paper, PEFT)."""

    additive = False  # the whole projection is rescaled: no cached base term to add to

    def __init__(self, linear: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__(linear, rank, alpha, dropout)
        with torch.no_grad():
            self.m = nn.Parameter(dense_weight(linear).float().norm(dim=1).to(self.lora_a.dtype))

    def _row_scale(self) -> torch.Tensor:
        adapted = dense_weight(self.linear).float() + self.weight_delta().float()
        return self.m.float() / adapted.norm(dim=1).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.linear.bias
        y = x @ dense_weight(self.linear).to(x.dtype).T + self.delta(x)
        y = y * self._row_scale().to(y.dtype)
        return y if bias is None else y + bias.to(y.dtype)

    def fused_weight(self) -> torch.Tensor:
        adapted = dense_weight(self.linear).float() + self.weight_delta().float()
        return adapted * (self.m.float() / adapted.norm(dim=1))[:, None]


def dense_weight(linear: nn.Module) -> torch.Tensor:
    """The (out, in) floating-point weight of a plain or bitsandbytes-quantized linear layer."""
    weight = linear.weight
    if weight.dtype.is_floating_point:
        return weight
    import bitsandbytes.functional as bf  # only a quantized base gets here

    if getattr(weight, "quant_state", None) is not None:  # 4-bit
        return bf.dequantize_4bit(weight.data, weight.quant_state)
    scb = getattr(weight, "SCB", None)
    if scb is None:
        scb = getattr(linear.state, "SCB", None)
    return (weight.data.float() * scb.float()[:, None] / 127.0)


def apply_adapters(model, config: AdapterConfig):
    """Freeze the model and add LoRA or DoRA (or unfreeze blocks for full fine-tuning), as the MLX back end does."""
    if config.dims is None:
        config.dims = model.dims.to_dict()
    for p in model.parameters():
        p.requires_grad_(False)
    if config.fine_tune_type == "full":
        targets = [stack for _, stack in adapted_stacks(model, config)] if config.whole_stacks else \
            [block for _, block in adapted_blocks(model, config)]
        for module in targets:
            for p in module.parameters():
                p.requires_grad_(True)
        return model
    layer_cls = DoRALinear if config.fine_tune_type == "dora" else LoRALinear
    for parent, attr in adapted_layers(model, config):
        setattr(parent, attr, layer_cls(getattr(parent, attr), config.rank, config.alpha, config.dropout))
    return model


@contextmanager
def adapters_switched_off(model):
    """The base model for the duration of the block: every adapter layer swapped for the frozen layer
    it wraps, then put back (the teacher of --replay-distill, computed without a second model)."""
    wrappers = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
                if isinstance(child, LoRALinear)]
    with wrappers_swapped_out(wrappers):
        yield model


def trainable_weights(model) -> Dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


CONV_WEIGHTS = ("encoder.conv1.weight", "encoder.conv2.weight")  # (out, in, kernel) here, (out, kernel, in) in files


def adapter_tensors(model) -> Dict[str, np.ndarray]:
    """The trainable weights as float32 numpy in the files' names and layout."""
    out = {}
    for name, p in trainable_weights(model).items():
        value = p.detach().float().cpu()
        if name in CONV_WEIGHTS:
            value = value.transpose(1, 2)
        out[name] = value.contiguous().numpy()
    return out


def load_weights_into(model, weights: Dict[str, np.ndarray], source) -> None:
    """Copy adapter weights (files' layout) into an adapted model after checking names and shapes."""
    expected = trainable_weights(model)
    shapes = {k: tuple(v.shape[i] for i in (0, 2, 1)) if k in CONV_WEIGHTS else tuple(v.shape) for k, v in expected.items()}
    check_fits(shapes, weights, source)
    with torch.no_grad():
        for name, value in weights.items():
            tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            if name in CONV_WEIGHTS:
                tensor = tensor.transpose(1, 2)
            expected[name].copy_(tensor.to(expected[name].dtype))


def load_adapters(model, path: Union[str, Path], scale: float = 1.0) -> AdapterConfig:
    """Add the adapters saved at `path` (by either back end, or PEFT) to a torch Whisper."""
    return add_saved_adapters(model, path, apply_adapters, load_weights_into, scale)
