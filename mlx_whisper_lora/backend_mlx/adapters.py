"""Adapters in the MLX model: put them in, count, load, save and fuse them.

Which modules and blocks, and the files, are `formats/adapter_files.py`, shared with the torch
back end; this module holds only what needs MLX.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..formats.adapter_config import (AdapterConfig, AdapterError, adapted_blocks, adapted_layers, adapted_stacks,
                                      wrappers_swapped_out)
from ..formats.adapter_files import ADAPTER_FILE, check_fits, add_saved_adapters, save_adapter_config, write_adapter_tensors
from .lora_layers import DoRALinear, LoRALinear, dense_weight
from .model import Whisper


def apply_adapters(model: Whisper, config: AdapterConfig) -> Whisper:
    """Freeze the model and add trainable adapters (or unfreeze blocks for full fine-tuning) in place."""
    if config.dims is None:
        config.dims = model.dims.to_dict()
    model.freeze()
    if config.fine_tune_type == "full":
        if config.whole_stacks:
            for _, stack in adapted_stacks(model, config):
                stack.unfreeze()
        else:
            for _, block in adapted_blocks(model, config):
                block.unfreeze()
        return model
    layer_cls = DoRALinear if config.fine_tune_type == "dora" else LoRALinear
    for parent, attr in adapted_layers(model, config):
        base = getattr(parent, attr)
        if isinstance(base, LoRALinear):
            raise AdapterError(f"{attr} already carries an adapter; fuse it before adding another")
        setattr(parent, attr, layer_cls.from_base(base, config.rank, config.alpha, config.dropout))
    return model


@contextmanager
def adapters_switched_off(model: nn.Module):
    """The base model for the duration of the block: every adapter layer swapped for the frozen layer
    it wraps, then put back (the teacher of --replay-distill, computed without a second model)."""
    modules = dict(model.named_modules())
    wrappers = [(modules[path.rpartition(".")[0]], path.rpartition(".")[2], module)
                for path, module in modules.items() if isinstance(module, LoRALinear)]
    with wrappers_swapped_out(wrappers):
        yield model


def trainable_weights(model: nn.Module) -> Dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def trainable_numpy(model: nn.Module) -> Dict[str, np.ndarray]:
    """The trainable weights as numpy (bfloat16 widened to float32), for the shared file writers."""
    return {k: np.array(v.astype(mx.float32) if v.dtype == mx.bfloat16 else v) for k, v in trainable_weights(model).items()}


def count_parameters(model: nn.Module) -> tuple:
    """(trainable, total) parameter counts; packed quantized weights count as their unpacked size."""
    bits = {name: m.bits for name, m in model.named_modules() if hasattr(m, "bits")}
    total = 0
    for name, p in tree_flatten(model.parameters()):
        module_name, _, leaf = name.rpartition(".")
        if name == "alignment_heads" or (module_name in bits and leaf in ("scales", "biases")):
            continue
        total += p.size * 32 // bits[module_name] if p.dtype == mx.uint32 else p.size
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return trainable, total


def save_adapters(model: nn.Module, config: AdapterConfig, folder: Union[str, Path]) -> Path:
    save_adapter_config(config, folder)
    return write_adapter_tensors(Path(folder) / ADAPTER_FILE, trainable_numpy(model))


def load_weights_into(model: nn.Module, weights: Dict[str, np.ndarray], source) -> None:
    """Set adapter weights after checking that every name and shape matches the adapted model."""
    expected = trainable_weights(model)
    check_fits({k: v.shape for k, v in expected.items()}, weights, source)
    model.update(tree_unflatten([(k, mx.array(v).astype(expected[k].dtype)) for k, v in weights.items()]))
    mx.eval(model.parameters())


def load_adapters(model: Whisper, path: Union[str, Path], scale: float = 1.0) -> AdapterConfig:
    """Add the adapters saved at `path` (our folder, a weights file, or a PEFT folder) to `model`."""
    return add_saved_adapters(model, path, apply_adapters, load_weights_into, scale)


def fuse_adapters(model: Whisper, dequantize: bool = False) -> Whisper:
    """Fold every adapter into its base layer, leaving a plain (or quantized) Whisper."""
    fused = [(name, module.fuse(dequantize)) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize and getattr(model, "quantization", None):
        dequantize_all(model)
    model.unfreeze()
    return model


def dequantize_all(model: Whisper) -> None:
    """Replace every quantized layer by its floating-point equivalent."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            w = dense_weight(module)
            linear = nn.Linear(w.shape[1], w.shape[0], bias="bias" in module)
            linear.weight = w
            if "bias" in module:
                linear.bias = module.bias
            layers.append((name, linear))
        elif isinstance(module, nn.QuantizedEmbedding):
            w = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
            emb = nn.Embedding(w.shape[0], w.shape[1])
            emb.weight = w
            layers.append((name, emb))
    if layers:
        model.update_modules(tree_unflatten(layers))
    model.quantization = None
