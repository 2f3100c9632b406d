"""LoRA in PyTorch with the MLX layer's names, shapes, scale and initialisation.

lora_a is (in, rank), uniform in +-1/sqrt(in); lora_b is (rank, out), zero; scale = alpha / rank.
Adapter files are the MLX ones: safetensors with keys like `decoder.blocks.0.attn.query.lora_a`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from ..adapters import ADAPTER_FILE, AdapterConfig, AdapterError, _blocks, _stacks, check_compatible, read_adapter_config


class LoRALinear(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        self.linear = linear
        in_dims, out_dims = linear.in_features, linear.out_features
        self.scale = float(alpha) / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        bound = 1.0 / math.sqrt(in_dims)
        device, dtype = linear.weight.device, linear.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(in_dims, rank, device=device, dtype=dtype).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(rank, out_dims, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's term alone (added to a cached base projection)."""
        return self.scale * ((self.dropout(x) @ self.lora_a.to(x.dtype)) @ self.lora_b.to(x.dtype))

    def fuse(self) -> nn.Linear:
        fused = nn.Linear(self.linear.in_features, self.linear.out_features, bias=self.linear.bias is not None)
        with torch.no_grad():
            fused.weight.copy_(self.linear.weight + self.scale * (self.lora_a @ self.lora_b).T)
            if self.linear.bias is not None:
                fused.bias.copy_(self.linear.bias)
        return fused.to(self.linear.weight.device)


def apply_adapters(model, config: AdapterConfig):
    """Freeze the model and add LoRA (or unfreeze blocks for full fine-tuning), as the MLX back end does."""
    if config.fine_tune_type == "dora":
        raise AdapterError("DoRA is not available in the torch back end yet; use --fine-tune-type lora or the MLX back end")
    if config.dims is None:
        config.dims = model.dims.to_dict()
    for p in model.parameters():
        p.requires_grad_(False)
    if config.fine_tune_type == "full":
        for stack in _stacks(model, config):
            blocks = list(stack.blocks) if config.layers is None and config.num_layers < 0 else _blocks(model, stack, config)
            targets = [stack] if config.layers is None and config.num_layers < 0 else blocks
            for module in targets:
                for p in module.parameters():
                    p.requires_grad_(True)
        return model
    for stack in _stacks(model, config):
        for block in _blocks(model, stack, config):
            for name in config.modules:
                parent_name, _, attr = name.rpartition(".")
                parent = getattr(block, parent_name) if parent_name else block
                if parent is None:
                    continue
                setattr(parent, attr, LoRALinear(getattr(parent, attr), config.rank, config.alpha, config.dropout))
    return model


def trainable_weights(model) -> Dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_adapter_weights(model, path: Union[str, Path], metadata: Optional[dict] = None) -> Path:
    """The trainable weights in the MLX back end's names and layout, written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    tensors = {}
    for name, p in trainable_weights(model).items():
        value = p.detach().float().cpu()
        if name in ("encoder.conv1.weight", "encoder.conv2.weight"):
            value = value.transpose(1, 2)
        tensors[name] = value.contiguous()
    try:
        save_file(tensors, str(tmp), metadata={"format": "mlx", **(metadata or {})})
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_adapters(model, path: Union[str, Path]) -> AdapterConfig:
    """Add the adapters saved at `path` (by either back end) to a torch Whisper."""
    config = read_adapter_config(path)
    check_compatible(model, config, path)
    apply_adapters(model, config)
    load_weights_into(model, path)
    model.eval()
    model.case_style = config.case_style
    return config


def load_weights_into(model, path: Union[str, Path]) -> None:
    """Copy saved adapter weights into an adapted model after checking names and shapes."""
    from safetensors.torch import load_file

    weights_path = Path(path) / ADAPTER_FILE if Path(path).is_dir() else Path(path)
    if not weights_path.exists():
        raise AdapterError(f"adapter weights not found: {weights_path}")
    weights = load_file(str(weights_path))
    expected = trainable_weights(model)
    if set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights))[:3]
        raise AdapterError(f"adapters in {path} do not fit this model (missing {missing})")
    with torch.no_grad():
        for name, value in weights.items():
            if name in ("encoder.conv1.weight", "encoder.conv2.weight"):
                value = value.transpose(1, 2)
            if tuple(value.shape) != tuple(expected[name].shape):
                raise AdapterError(f"adapters in {path}: {name} has shape {tuple(value.shape)}, expected {tuple(expected[name].shape)}")
            expected[name].copy_(value.to(expected[name].dtype))
