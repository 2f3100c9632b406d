"""Put adapters into a Whisper model, and save, load, validate and fuse them.

An adapter folder holds `adapters.safetensors` (the trainable weights only, in model names such as
`decoder.blocks.3.attn.query.lora_a`) and `adapter_config.json` (everything needed to rebuild the
same model: base model, dimensions, fine-tune type, modules, rank, alpha, layers, run arguments).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .errors import UserError
from .lora_layers import DoRALinear, LoRALinear
from .model import ModelDimensions, Whisper

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT_NAME = "mlx-whisper-lora"
FINE_TUNE_TYPES = ("lora", "dora", "full")

# Canonical module names inside a residual block.
MODULES = (
    "attn.query", "attn.key", "attn.value", "attn.out",
    "cross_attn.query", "cross_attn.key", "cross_attn.value", "cross_attn.out",
    "mlp1", "mlp2",
)
DEFAULT_MODULES = ("attn.query", "attn.value", "cross_attn.query", "cross_attn.value")

_SHORT = {"query": "query", "q": "query", "q_proj": "query", "key": "key", "k": "key", "k_proj": "key",
          "value": "value", "v": "value", "v_proj": "value", "out": "out", "o": "out", "out_proj": "out"}
_STACK = {"attn": "attn", "self_attn": "attn", "cross_attn": "cross_attn", "encoder_attn": "cross_attn"}
_MLP = {"mlp1": "mlp1", "fc1": "mlp1", "mlp2": "mlp2", "fc2": "mlp2"}


class AdapterError(UserError):
    """Adapters that do not fit the model, or options that cannot build them."""


def parse_modules(names: Union[str, Sequence[str], None]) -> List[str]:
    """Canonical module names from user spellings: `query` (both attentions), `attn.value`,
    `cross_attn.q`, transformers names (`q_proj`, `encoder_attn.v_proj`, `fc1`), or `all`."""
    if names is None:
        return list(DEFAULT_MODULES)
    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    out: List[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name == "all":
            picked = list(MODULES)
        elif name in _MLP:
            picked = [_MLP[name]]
        elif name in _SHORT:
            picked = [f"attn.{_SHORT[name]}", f"cross_attn.{_SHORT[name]}"]
        elif "." in name and name.split(".", 1)[0] in _STACK and name.split(".", 1)[1] in _SHORT:
            stack, proj = name.split(".", 1)
            picked = [f"{_STACK[stack]}.{_SHORT[proj]}"]
        else:
            raise AdapterError(
                f"unknown LoRA module {raw!r}; use any of {', '.join(MODULES)} "
                "(or query/key/value/out for both attentions, or all)"
            )
        out.extend(p for p in picked if p not in out)
    if not out:
        raise AdapterError("--lora-modules is empty; name at least one module (for example query value)")
    return [m for m in MODULES if m in out]


@dataclass
class AdapterConfig:
    """How adapters were put into the model; saved as adapter_config.json."""

    fine_tune_type: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    modules: List[str] = field(default_factory=lambda: list(DEFAULT_MODULES))
    num_layers: int = -1  # last N blocks of the encoder and of the decoder; -1: all
    freeze_encoder: bool = False
    layers: Optional[dict] = None  # explicit block indices {"encoder": [...], "decoder": [...]} (imported adapters)
    base_model: Optional[str] = None
    dims: Optional[dict] = None
    language: Optional[str] = None
    task: str = "transcribe"
    case_style: str = "keep"  # "upper"/"lower": one-case data, trained in the vocabulary's case, rendered back (case_style.py)
    punctuation: str = "keep"  # "none": the training transcripts had no punctuation, so transcripts are rendered without
    run: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.fine_tune_type not in FINE_TUNE_TYPES:
            raise AdapterError(f"--fine-tune-type {self.fine_tune_type!r}: use one of {', '.join(FINE_TUNE_TYPES)}")
        if int(self.rank) < 1:
            raise AdapterError(f"--rank must be at least 1, got {self.rank}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"--dropout must be in [0, 1), got {self.dropout}")
        self.modules = parse_modules(self.modules)

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)

    def to_json(self) -> dict:
        data = asdict(self)
        data["format"] = FORMAT_NAME
        data["version"] = 1
        # The mlx-lm layout too, so tools that read those keys find them.
        data["lora_parameters"] = {"rank": self.rank, "alpha": self.alpha, "scale": self.scale,
                                   "dropout": self.dropout, "keys": list(self.modules)}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "AdapterConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _target_blocks(blocks: list, num_layers: int) -> list:
    if num_layers is None or num_layers < 0 or num_layers >= len(blocks):
        return list(blocks)
    return list(blocks[len(blocks) - num_layers:]) if num_layers else []


def _stacks(model: Whisper, config: AdapterConfig):
    stacks = [] if config.freeze_encoder else [model.encoder]
    return stacks + [model.decoder]


def _blocks(model: Whisper, stack, config: AdapterConfig) -> list:
    if config.layers is not None:
        wanted = config.layers.get("encoder" if stack is model.encoder else "decoder", [])
        return [stack.blocks[i] for i in wanted if i < len(stack.blocks)]
    return _target_blocks(stack.blocks, config.num_layers)


def apply_adapters(model: Whisper, config: AdapterConfig) -> Whisper:
    """Freeze the model and add trainable adapters (or unfreeze blocks for full fine-tuning) in place."""
    if config.dims is None:
        config.dims = model.dims.to_dict()
    model.freeze()
    if config.fine_tune_type == "full":
        if config.layers is None and (config.num_layers is None or config.num_layers < 0):
            for stack in _stacks(model, config):
                stack.unfreeze()
        else:
            for stack in _stacks(model, config):
                for block in _blocks(model, stack, config):
                    block.unfreeze()
        return model
    layer_cls = DoRALinear if config.fine_tune_type == "dora" else LoRALinear
    for stack in _stacks(model, config):
        for block in _blocks(model, stack, config):
            for name in config.modules:
                parent_name, _, attr = name.rpartition(".")
                parent = getattr(block, parent_name) if parent_name else block
                if parent is None:  # cross-attention in an encoder block
                    continue
                base = getattr(parent, attr)
                if isinstance(base, LoRALinear):
                    raise AdapterError(f"{name} already carries an adapter; fuse it before adding another")
                setattr(parent, attr, layer_cls.from_base(base, config.rank, config.alpha, config.dropout))
    return model


def trainable_weights(model: nn.Module) -> Dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


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


# ---------------------------------------------------------------- files
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_adapter_weights(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write the trainable weights to `path` atomically (a crash leaves the previous file intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.safetensors")  # mlx wants the suffix
    try:
        mx.save_safetensors(str(tmp), trainable_weights(model), metadata={"format": "mlx"})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_adapter_config(config: AdapterConfig, folder: Union[str, Path]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    _atomic_write_bytes(path, (json.dumps(config.to_json(), indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def save_adapters(model: nn.Module, config: AdapterConfig, folder: Union[str, Path]) -> Path:
    folder = Path(folder)
    save_adapter_config(config, folder)
    return save_adapter_weights(model, folder / ADAPTER_FILE)


def _adapter_files(path: Union[str, Path]):
    """(weights file, config file) for a folder or a weights file inside one."""
    path = Path(path)
    if path.is_dir():
        return path / ADAPTER_FILE, path / CONFIG_FILE
    return path, path.parent / CONFIG_FILE


def is_peft_folder(path: Union[str, Path]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "adapter_model.safetensors").exists() and not (path / ADAPTER_FILE).exists()


def read_adapter_config(path: Union[str, Path]) -> AdapterConfig:
    if is_peft_folder(path):
        from .peft_format import read_peft_config

        return read_peft_config(path)
    weights, config_path = _adapter_files(path)
    if not Path(path).exists():
        raise AdapterError(f"adapter path not found: {path}")
    if not config_path.exists():
        raise AdapterError(f"{config_path} is missing; an adapter folder needs {CONFIG_FILE} beside {ADAPTER_FILE}")
    try:
        data = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"cannot read {config_path}: {e}") from None
    return AdapterConfig.from_json(data)


def read_adapter_weights(path: Union[str, Path]) -> Dict[str, mx.array]:
    if is_peft_folder(path):
        from .peft_format import read_peft_weights

        return read_peft_weights(path)
    weights_path, _ = _adapter_files(path)
    if not weights_path.exists():
        raise AdapterError(f"adapter weights not found: {weights_path}")
    try:
        return dict(mx.load(str(weights_path)))
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise AdapterError(f"cannot read adapter weights {weights_path}: {e}") from None


def check_compatible(model: Whisper, config: AdapterConfig, path) -> None:
    if config.dims is None:
        return
    trained = ModelDimensions.from_dict(config.dims)
    if trained != model.dims:
        diff = [f"{k} {v} vs {getattr(model.dims, k)}" for k, v in trained.to_dict().items() if getattr(model.dims, k) != v]
        raise AdapterError(
            f"the adapters in {path} were trained on {config.base_model or 'another model'}, whose shapes differ "
            f"from {getattr(model, 'source', 'this model')} ({', '.join(diff[:3])}); pass --model {config.base_model}"
        )


def load_weights_into(model: nn.Module, weights: Dict[str, mx.array], source) -> None:
    """Set adapter weights after checking that every name and shape matches the adapted model."""
    expected = trainable_weights(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        detail = f"lacks {missing[:3]}" if missing else f"has weights the model does not: {unexpected[:3]}"
        raise AdapterError(f"adapters in {source} do not fit this model: the file {detail}")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise AdapterError(
                f"adapters in {source}: {name} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[name].shape)} (another rank or base model?)"
            )
    model.update(tree_unflatten([(k, v.astype(expected[k].dtype)) for k, v in weights.items()]))
    mx.eval(model.parameters())


def load_adapters(model: Whisper, path: Union[str, Path]) -> AdapterConfig:
    """Add the adapters saved at `path` (our folder, a weights file, or a PEFT folder) to `model`."""
    config = read_adapter_config(path)
    check_compatible(model, config, path)
    weights = read_adapter_weights(path)
    apply_adapters(model, config)
    load_weights_into(model, weights, path)
    model.eval()
    model.case_style = config.case_style
    model.punctuation = config.punctuation
    return config


def fuse_adapters(model: Whisper, dequantize: bool = False) -> Whisper:
    """Fold every adapter into its base layer, leaving a plain (or quantized) Whisper."""
    fused = [(name, module.fuse(dequantize)) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize and getattr(model, "quantization", None):
        _dequantize_all(model)
    model.unfreeze()
    return model


def _dequantize_all(model: Whisper) -> None:
    """Replace every quantized layer by its floating-point equivalent."""
    from .lora_layers import dense_weight

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
