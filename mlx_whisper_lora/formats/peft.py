"""PEFT (Hugging Face) LoRA adapters for Whisper: export ours, import theirs.

PEFT stores `base_model.model.model.decoder.layers.3.self_attn.q_proj.lora_A.weight` (rank, in)
and `...lora_B.weight` (out, rank) with scaling lora_alpha / r, the convention we train with, so
the conversion is a renaming and a transpose; the numbers stay the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Union

import numpy as np

from ..files import atomic_write_text
from .adapter_config import AdapterConfig, AdapterError
from .safetensors_io import read_safetensors, write_safetensors
from .weight_names import hf_name_to_mlx, mlx_to_hf

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def _hf_module_name(mlx_module: str) -> str:
    """'decoder.blocks.3.attn.query' -> 'model.decoder.layers.3.self_attn.q_proj'."""
    return next(iter(mlx_to_hf({mlx_module + ".weight": np.zeros(1)}))).rsplit(".", 1)[0]


def _mlx_module_name(hf_module: str) -> str:
    return hf_name_to_mlx(hf_module + ".weight").rsplit(".", 1)[0]


def export_peft(adapter_tensors: Dict[str, np.ndarray], config: AdapterConfig, folder: Union[str, Path],
                base_model_name: str = None) -> Path:
    """Write adapter_model.safetensors + adapter_config.json that `PeftModel.from_pretrained` loads
    on transformers' WhisperForConditionalGeneration, from adapter weights in our names."""
    if config.fine_tune_type not in ("lora", "dora"):
        raise AdapterError(f"a {config.fine_tune_type} fine-tune has no PEFT form; use --export-format mlx or hf")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, np.ndarray] = {}
    targets = []
    for name, value in adapter_tensors.items():
        module, leaf = name.rsplit(".", 1)
        hf = PEFT_PREFIX + _hf_module_name(module)
        array = np.asarray(value, dtype=np.float32)
        if leaf == "lora_a":
            tensors[f"{hf}.lora_A.weight"] = np.ascontiguousarray(array.T)
            targets.append(_hf_module_name(module))
        elif leaf == "lora_b":
            tensors[f"{hf}.lora_B.weight"] = np.ascontiguousarray(array.T)
        elif leaf == "m":
            tensors[f"{hf}.lora_magnitude_vector"] = array
        else:
            raise AdapterError(f"cannot express {name} as a PEFT LoRA weight")
    write_safetensors(folder / PEFT_WEIGHTS, tensors, {"format": "pt"})
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name or config.base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(set(targets)),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": config.fine_tune_type == "dora",
        "use_rslora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    atomic_write_text(folder / PEFT_CONFIG, json.dumps(peft_config, indent=2) + "\n")
    return folder


def _read_peft_config(folder: Path) -> dict:
    try:
        data = json.loads((Path(folder) / PEFT_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"cannot read {Path(folder) / PEFT_CONFIG}: {e}") from None
    if data.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{folder}: PEFT type {data.get('peft_type')} is not supported (LoRA only)")
    for unsupported in ("use_rslora", "rank_pattern", "alpha_pattern"):
        if data.get(unsupported):
            raise AdapterError(f"{folder}: PEFT option {unsupported} is not supported")
    return data


def _peft_tensors(folder: Path) -> Dict[str, np.ndarray]:
    try:
        return read_safetensors(Path(folder) / PEFT_WEIGHTS)
    except Exception as e:  # noqa: BLE001
        raise AdapterError(f"cannot read {Path(folder) / PEFT_WEIGHTS}: {e}") from None


def _convert(folder: Path) -> tuple:
    """(AdapterConfig, {mlx name: array}) from a PEFT folder, with the modules and layers it covers."""
    data = _read_peft_config(folder)
    weights: Dict[str, np.ndarray] = {}
    modules, enc_layers, dec_layers = set(), set(), set()
    for key, value in _peft_tensors(folder).items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.default)?\.weight$", key)
        mag = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$", key)
        if m:
            hf_module, kind = m.groups()
            leaf = "lora_a" if kind == "lora_A" else "lora_b"
            value = value.T
        elif mag:
            hf_module, leaf = mag.group(1), "m"
        else:
            raise AdapterError(f"{folder}: unexpected PEFT tensor {key}")
        module = _mlx_module_name(hf_module)
        parts = re.match(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)$", module)
        if not parts:
            raise AdapterError(f"{folder}: {key} is not inside an encoder or decoder block")
        stack, layer, inner = parts.groups()
        (enc_layers if stack == "encoder" else dec_layers).add(int(layer))
        modules.add(inner)
        weights[f"{module}.{leaf}"] = np.ascontiguousarray(value)
    config = AdapterConfig(
        fine_tune_type="dora" if data.get("use_dora") else "lora",
        rank=int(data["r"]), alpha=float(data.get("lora_alpha", data["r"])), dropout=float(data.get("lora_dropout") or 0.0),
        modules=sorted(modules), num_layers=-1, freeze_encoder=not enc_layers,
        base_model=data.get("base_model_name_or_path"), dims=None,  # shapes are checked tensor by tensor
        layers={"encoder": sorted(enc_layers), "decoder": sorted(dec_layers)},
    )
    return config, weights


def read_peft_config(folder) -> AdapterConfig:
    return _convert(Path(folder))[0]


def read_peft_weights(folder) -> Dict[str, np.ndarray]:
    return _convert(Path(folder))[1]
