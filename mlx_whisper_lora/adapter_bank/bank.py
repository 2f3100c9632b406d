"""Many LoRA/DoRA adapters on one loaded base model, chosen per request or per batch row.

Why not `load_adapters` per request: that would reload or copy the base for every adapter. Here the
base stays as it is; each adapted linear layer is wrapped once in a bank layer that holds the small
A/B matrices of every adapter that touches it, and a shared selection says which adapter applies to
each row of the batch being computed. Rows of different adapters therefore run in one batch: the
base product is shared and each row adds its own low-rank term (zero-padded to the largest rank, so
the sum is exact). DoRA's per-row magnitude rescale is constant at inference and precomputed.

The selection is set by the caller (the serving worker) before each model call through `select`;
`inference.transcriber.transcribe_many` calls it with the files it is about to compute.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..formats.adapter_config import AdapterConfig, AdapterError, adapted_layers
from ..formats.adapter_files import check_dims, read_adapter_config, read_adapter_tensors
from .layer_terms import BASE, LayerUpdate, Selection


@dataclass
class LoadedAdapter:
    name: str
    path: str
    config: AdapterConfig
    updates: Dict[str, LayerUpdate] = field(default_factory=dict)  # layer name -> its term

    @property
    def size_bytes(self) -> int:
        return sum(u.a.nbytes + u.b.nbytes + (0 if u.rescale is None else u.rescale.nbytes) for u in self.updates.values())


class AdapterBank:
    """The base model and the adapters loaded on it; `select(names)` picks one per row.

    `model` is the MLX Whisper or the torch back end's TorchDecodingModel; either way the text style
    (case, punctuation) and alignment heads of a single selected adapter are set on it, as
    `load_adapters` would."""

    def __init__(self, model, backend: str = "mlx"):
        self.model = model
        self.backend = backend
        self.modules = model.model if backend == "torch" else model  # where the linear layers are
        self.selection = Selection()
        self.adapters: Dict[str, LoadedAdapter] = {}
        self.lock = threading.RLock()  # one selection at a time
        self._base_style = (model.case_style, model.punctuation, _heads_of(model))
        self._layers: Dict[str, object] = {}

    # ------------------------------------------------------------ loading
    def add(self, name: str, path) -> LoadedAdapter:
        """Load the adapters at `path` under `name`; the base model is not copied."""
        if not name or name in self.adapters:
            raise UserError(f"adapter name {name!r} is {'empty' if not name else 'already loaded'}; give each a new name")
        config = read_adapter_config(path)
        if config.fine_tune_type == "full":
            raise AdapterError(f"{path} holds a full fine-tune (whole weights), not adapters: serve it as a model "
                               "(--model, after fuse), not as --adapter")
        check_dims(self.model.dims, getattr(self.model, "source", None) or getattr(self.modules, "source", None),
                   config, path)
        weights = read_adapter_tensors(path)
        adapter = LoadedAdapter(name, str(path), config, self._updates(config, weights, path))
        with self.lock:
            for key in adapter.updates:
                self._layer(key).bank.terms[name] = adapter.updates[key]
            self.adapters[name] = adapter
            self.selection.version += 1
        return adapter

    def remove(self, name: str) -> None:
        """Unload adapter `name`: its terms leave every bank layer (the wrapped layers stay, computing the base)."""
        if name is BASE:
            raise UserError("the base model cannot be removed")
        with self.lock:
            self.check(name)
            for layer in self._layers.values():
                layer.bank.terms.pop(name, None)
            del self.adapters[name]
            self.selection.version += 1
            if name in self.selection.rows:
                self.select([BASE])

    def _updates(self, config: AdapterConfig, weights: Dict[str, np.ndarray], path) -> Dict[str, LayerUpdate]:
        names = _module_names(self.modules)
        wanted = {}
        for parent, attr in adapted_layers(self.modules, config):
            wanted[f"{names[id(parent)]}.{attr}"] = (parent, attr)
        expected = {f"{k}.{leaf}" for k in wanted for leaf in ("lora_a", "lora_b") + (("m",) if config.fine_tune_type == "dora" else ())}
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            detail = f"lacks {missing[:3]}" if missing else f"has weights the model does not: {unexpected[:3]}"
            raise AdapterError(f"adapters in {path} do not fit this model: the file {detail}")
        updates = {}
        for key, (parent, attr) in wanted.items():
            base = getattr(parent, attr)
            base = getattr(base, "linear", base)
            weight = _dense_numpy(base, self.backend)
            a = np.asarray(weights[f"{key}.lora_a"], np.float32)
            b = np.asarray(weights[f"{key}.lora_b"], np.float32) * config.scale
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise AdapterError(f"adapters in {path}: {key} holds NaN or infinite weights (a diverged training run?)")
            if a.shape != (weight.shape[1], config.rank) or b.shape != (config.rank, weight.shape[0]):
                raise AdapterError(f"adapters in {path}: {key} has shapes {a.shape}, {b.shape}; the model's layer is "
                                   f"{weight.shape[::-1]} at rank {config.rank} (another base model?)")
            rescale = None
            if config.fine_tune_type == "dora":
                adapted = weight.astype(np.float32) + (a @ b).T
                rescale = np.asarray(weights[f"{key}.m"], np.float32) / np.linalg.norm(adapted, axis=1)
                if not np.isfinite(rescale).all():
                    raise AdapterError(f"adapters in {path}: {key} holds NaN or infinite magnitudes (DoRA's m)")
            updates[key] = LayerUpdate(a, b, rescale)
        return updates

    def _layer(self, key: str):
        """The bank layer at `key`, wrapping the base layer there the first time."""
        if key in self._layers:
            return self._layers[key]
        parent = self.modules
        *path, attr = key.split(".")
        for part in path:
            parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
        base = getattr(parent, attr)
        if self.backend == "torch":
            from .layer_torch import TorchBankLinear

            layer = TorchBankLinear(base, key, self.selection)
        else:
            from .layer_mlx import MLXBankLinear

            layer = MLXBankLinear(base, key, self.selection)
        setattr(parent, attr, layer)
        self._layers[key] = layer
        return layer

    # ------------------------------------------------------------ choosing
    def check(self, name: Optional[str]) -> None:
        if name is not BASE and name not in self.adapters:
            raise UserError(f"no adapter named {name!r}; loaded: {', '.join(sorted(self.adapters)) or 'none'}")

    def select(self, names: Sequence[Optional[str]]) -> None:
        """Rows of the next model calls use these adapters (one name: every row)."""
        names = tuple(names)
        for n in set(names):
            self.check(n)
        self.selection.rows = names
        if len(set(names)) == 1:
            self._style(names[0])

    def _style(self, name: Optional[str]) -> None:
        case_style, punctuation, heads = self._base_style
        if name is not BASE:
            config = self.adapters[name].config
            case_style, punctuation = config.case_style, config.punctuation
            heads = config.alignment_heads or heads
        self.model.case_style, self.model.punctuation = case_style, punctuation
        if hasattr(self.modules, "case_style"):
            self.modules.case_style, self.modules.punctuation = case_style, punctuation
        if heads is not None:
            self.model.set_alignment_heads(heads)


def _heads_of(model) -> Optional[List[List[int]]]:
    heads = getattr(model, "alignment_heads", None)
    if heads is None:
        return None
    return [[int(a), int(b)] for a, b in (heads.tolist() if hasattr(heads, "tolist") else heads)]


def _module_names(root) -> Dict[int, str]:
    """id(module) -> dotted name, in either framework's module tree (both have named_modules)."""
    return {id(m): n for n, m in root.named_modules()}


def _dense_numpy(linear, backend: str) -> np.ndarray:
    if backend == "torch":
        from ..backend_torch.lora import dense_weight

        return dense_weight(linear).detach().float().cpu().numpy()
    import mlx.core as mx

    from ..backend_mlx.lora_layers import dense_weight

    return np.array(dense_weight(linear).astype(mx.float32))


def adapter_paths(specs: Sequence[str]) -> Dict[str, Path]:
    """NAME=PATH specs (a bare PATH is named after its folder) as {name: path}, checked."""
    out: Dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        name = name.strip()
        if not name or not path:
            raise UserError(f"--adapter {spec!r}: write NAME=PATH (for example --adapter voice=adapters)")
        if name in out:
            raise UserError(f"--adapter {spec!r}: the name {name!r} is given twice")
        if not Path(path).exists():
            raise UserError(f"--adapter {spec!r}: {path} not found")
        out[name] = Path(path)
    return out
