"""Adapter folders, framework-free: read and write `adapters.safetensors` and `adapter_config.json`.

Both back ends save and load exactly these files through this module, as numpy arrays; a PEFT
folder is read as if it were ours (formats/peft.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ..files import atomic_write_text
from .adapter_config import AdapterConfig, AdapterError
from .dims import ModelDimensions
from .safetensors_io import read_metadata, read_safetensors, write_safetensors

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
OPTIMIZER_FILE = "optimizer_state.safetensors"
BASE_STYLE_FILE = "base_style_targets.jsonl"  # --base-style-targets' restyled references, reused on resume


# ---------------------------------------------------------------- files
def adapter_files(path: Union[str, Path]) -> Tuple[Path, Path]:
    """(weights file, config file) for a folder or a weights file inside one."""
    path = Path(path)
    if path.is_dir():
        return path / ADAPTER_FILE, path / CONFIG_FILE
    return path, path.parent / CONFIG_FILE


def is_peft_folder(path: Union[str, Path]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "adapter_model.safetensors").exists() and not (path / ADAPTER_FILE).exists()


def save_adapter_config(config: AdapterConfig, folder: Union[str, Path]) -> Path:
    return atomic_write_text(Path(folder) / CONFIG_FILE,
                             json.dumps(config.to_json(), indent=2, sort_keys=True, default=str) + "\n")


def read_adapter_config(path: Union[str, Path]) -> AdapterConfig:
    """Our adapter_config.json, or the equivalent of a PEFT folder's."""
    if is_peft_folder(path):
        from .peft import read_peft_config

        return read_peft_config(path)
    _, config_path = adapter_files(path)
    if not Path(path).exists():
        raise AdapterError(f"adapter path not found: {path}")
    if not config_path.exists():
        raise AdapterError(f"{config_path} is missing; an adapter folder needs {CONFIG_FILE} beside {ADAPTER_FILE}")
    try:
        data = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"cannot read {config_path}: {e}") from None
    return AdapterConfig.from_json(data)


def read_adapter_tensors(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """The adapter weights at `path` (our folder or file, or a PEFT folder) in our names and layout."""
    if is_peft_folder(path):
        from .peft import read_peft_weights

        return read_peft_weights(path)
    weights_path, _ = adapter_files(path)
    if not weights_path.exists():
        raise AdapterError(f"adapter weights not found: {weights_path}")
    try:
        tensors = read_safetensors(weights_path)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise AdapterError(f"cannot read adapter weights {weights_path}: {e}") from None
    for name, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise AdapterError(f"{weights_path}: {name} holds NaN or infinite values (the training that wrote it "
                               "diverged); use an earlier checkpoint")
    return tensors


def write_adapter_tensors(path: Union[str, Path], tensors: Mapping[str, np.ndarray], step: Optional[int] = None) -> Path:
    """Write adapter weights atomically; `step` goes into the metadata (for resuming)."""
    meta = {"format": "mlx", **({"step": str(step)} if step is not None else {})}
    return write_safetensors(path, dict(tensors), meta)


def saved_step(path: Union[str, Path]) -> int:
    """The training step recorded in a weights or optimizer-state file (0 when none)."""
    try:
        return int(read_metadata(path).get("step", 0))
    except Exception:  # noqa: BLE001 - a file written elsewhere may have no or odd metadata
        return 0


def optimizer_file_for(adapter_file: Union[str, Path]) -> Optional[Path]:
    """optimizer_state.safetensors beside adapters.safetensors (0000100_adapters... -> 0000100_optimizer_state...);
    None for a weights file named otherwise (no optimizer state goes with it)."""
    adapter_file = Path(adapter_file)
    if ADAPTER_FILE not in adapter_file.name:
        return None
    return adapter_file.with_name(adapter_file.name.replace(ADAPTER_FILE, OPTIMIZER_FILE))


def check_dims(dims: ModelDimensions, source: Optional[str], config: AdapterConfig, path) -> None:
    """Adapters trained on a model of other shapes are refused, naming the model they need."""
    if config.dims is None:
        return
    trained = ModelDimensions.from_dict(config.dims)
    if trained != dims:
        diff = [f"{k} {v} vs {getattr(dims, k)}" for k, v in trained.to_dict().items() if getattr(dims, k) != v]
        raise AdapterError(
            f"the adapters in {path} were trained on {config.base_model or 'another model'}, whose shapes differ "
            f"from {source or 'this model'} ({', '.join(diff[:3])}); pass --model {config.base_model}"
        )


def check_fits(expected_shapes: Mapping[str, tuple], weights: Mapping[str, np.ndarray], source) -> None:
    """Every name and shape in `weights` matches the adapted model's trainable weights."""
    missing = sorted(set(expected_shapes) - set(weights))
    unexpected = sorted(set(weights) - set(expected_shapes))
    if missing or unexpected:
        detail = f"lacks {missing[:3]}" if missing else f"has weights the model does not: {unexpected[:3]}"
        raise AdapterError(f"adapters in {source} do not fit this model: the file {detail}")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(expected_shapes[name]):
            raise AdapterError(
                f"adapters in {source}: {name} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected_shapes[name])} (another rank or base model?)"
            )


def scale_adapters(config: AdapterConfig, scale: float, path) -> None:
    """--adapter-scale: LoRA's update B·A·alpha/r times `scale`, through alpha (so exports carry it)."""
    scale = float(scale)
    if scale == 1.0:
        return
    if not 0.0 <= scale <= 4.0:
        raise AdapterError(f"--adapter-scale {scale:g}: use a value from 0 (the base model) to 4; 1 is the adapters as trained")
    if config.fine_tune_type != "lora":
        raise AdapterError(f"--adapter-scale applies to LoRA adapters; {path} holds {config.fine_tune_type} weights")
    config.alpha = float(config.alpha) * scale


def add_saved_adapters(model, path, apply_adapters: Callable, load_weights_into: Callable,
                       scale: float = 1.0) -> AdapterConfig:
    """Add the adapters saved at `path` (ours, from either back end, or a PEFT folder) to `model`,
    through the back end's `apply_adapters(model, config)` and `load_weights_into(model, weights, source)`.
    Adapters trained on a model of other shapes are refused. The model then renders transcripts in
    the adapters' text style (its `case_style` and `punctuation`). `scale` multiplies LoRA updates
    (--adapter-scale: 0 is the base model, 1 the adapters as trained)."""
    config = read_adapter_config(path)
    check_dims(model.dims, model.source, config, path)
    scale_adapters(config, scale, path)
    weights = read_adapter_tensors(path)
    apply_adapters(model, config)
    load_weights_into(model, weights, path)
    model.eval()
    model.case_style, model.punctuation = config.case_style, config.punctuation
    if config.alignment_heads:
        model.set_alignment_heads(config.alignment_heads)
    return config
