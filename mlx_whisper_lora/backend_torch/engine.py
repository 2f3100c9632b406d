"""The PyTorch back end of the shared training loop (tuner/backend.py).

fp16/bf16 autocast (fp16 on CUDA only, with a gradient scaler), gradient checkpointing, logits
only at target positions. With a frozen encoder the loop caches encoder states; this back end
adds, while the cache's memory allows, the decoder's cross-attention base keys and values (frozen
projections of those states), so a step computes only the adapters' terms over the audio frames.
"""

from __future__ import annotations

import resource
import sys
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..errors import UserError
from ..formats.adapter_config import AdapterConfig
from ..formats.safetensors_io import write_safetensors
from . import lora as tlora
from .cpu_flags import cpu_has
from .data_parallel import sum_gradients
from .decoding import greedy_decode
from .frozen_head_loss import frozen_head_cross_entropy

AUTOCAST = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def loss_and_count(model, audio, is_states: bool, cross_kv, inputs, targets, mask, autocast_dtype, smoothing=0.0,
                   taught=None):
    """Mean loss over the target tokens, and their number; logits are computed only at those positions.
    `smoothing`: label smoothing (training only). `taught`: (batch,) bool, rows whose loss is the
    cross-entropy against the base model's next-token distribution instead of their target tokens
    (--replay-distill)."""
    with torch.autocast(audio.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        xa = audio if is_states else model.embed_audio(audio)
        hidden = model.decoder.hidden(inputs, xa, cross_kv)
        keep = mask > 0
        count = keep.sum()
        soft = None
        if taught is not None and bool(taught.any()):
            soft = keep & taught[:, None]
            keep = keep & ~taught[:, None]
            teacher = base_distribution(model, audio, is_states, cross_kv, inputs, taught, soft)
            student = model.decoder.logits(hidden[soft])
        head = model.decoder.token_embedding.weight
        if not bool(keep.any()):
            total = hidden.sum() * 0.0
        elif torch.is_grad_enabled() and not head.requires_grad:  # the usual case: the projection frozen
            total = frozen_head_cross_entropy(hidden[keep], head, targets[keep], smoothing, autocast_dtype)
        else:
            total = None
            logits = model.decoder.logits(hidden[keep])
    if total is None:
        total = torch.nn.functional.cross_entropy(logits.float(), targets[keep].long(), reduction="sum",
                                                  label_smoothing=smoothing)
    if soft is not None:
        total = total - (teacher * torch.log_softmax(student.float(), dim=-1)).sum()
    return total / count.clamp(min=1), count


@torch.no_grad()
def base_distribution(model, audio, is_states: bool, cross_kv, inputs, rows, positions) -> torch.Tensor:
    """The base model's next-token probabilities (adapters switched off) at `positions` of the `rows`,
    in the order `hidden[positions]` takes them: the teacher of --replay-distill."""
    picked = rows.nonzero().flatten()
    with tlora.adapters_switched_off(model):
        xa = audio[picked] if is_states else model.embed_audio(audio[picked])
        kv = None if cross_kv is None else [tuple([side[i] for i in picked.tolist()] for side in layer)
                                            for layer in cross_kv]
        hidden = model.decoder.hidden(inputs[picked], xa, kv)
        return torch.softmax(model.decoder.logits(hidden[positions[picked]]).float(), dim=-1)


def make_optimizer(name: str, params: list, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer at a placeholder rate: the loop sets the scheduled rate before every update."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=weight_decay)
    if name in ("adamw", "adam"):
        return torch.optim.AdamW(params, lr=0.0, weight_decay=weight_decay if name == "adamw" else 0.0)
    raise UserError(f"unknown optimizer {name!r}; use adamw, adam or sgd")


class TorchBackend:
    """The torch Whisper (with adapters in place) behind the loop's interface."""

    name = "torch"

    def __init__(self, model, device: str = "cpu", dtype: str = "float32", log: Callable = print, world=None):
        """`world`: the processes of a data-parallel run under torchrun (tuner/distributed.py's World; None
        for one), whose gradients each update sums."""
        self.model, self.device, self.world = model, device, world
        self.autocast_dtype = AUTOCAST.get(dtype)
        if device != "cuda" and self.autocast_dtype == torch.float16:
            log("float16 autocast is for CUDA; training in float32 on the CPU (bfloat16 works there)")
            self.autocast_dtype = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.replay_distill = False  # set by start_training from --replay-distill
        self.data_parallel = bool(world is not None and world.parallel)  # gradients summed before each update
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        dims = model.dims
        self.states_shape = (dims.n_audio_ctx, dims.n_audio_state)

    # ---- adapters
    def apply_adapters(self, config: AdapterConfig) -> None:
        tlora.apply_adapters(self.model, config)

    def load_adapter_weights(self, weights: Dict[str, np.ndarray], source) -> None:
        tlora.load_weights_into(self.model, weights, source)

    def load_adapters(self, path, scale: float = 1.0) -> AdapterConfig:
        return tlora.load_adapters(self.model, path, scale)

    def count_parameters(self) -> tuple:
        trainable = sum(p.numel() for p in tlora.trainable_weights(self.model).values())
        return trainable, sum(p.numel() for p in self.model.parameters())

    @property
    def encoder_trained(self) -> bool:
        return any(p.requires_grad for p in self.model.encoder.parameters())

    # ---- encoder states: (states, cross-attention base K/V or None) per utterance
    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def encode(self, examples, indices, for_training: bool = True) -> list:
        """(states, cross-attention base K/V per layer, or None) per utterance; the K/V only for
        training steps, and only while the keys and values carry no trained base weight."""
        with torch.no_grad():
            states = self.model.embed_audio(self._tensor(examples.mels(indices)))
            kv = [None] * len(indices)
            if for_training and self.model.decoder.cross_kv_cacheable():
                # kept in the autocast dtype: the step's products would cast them to it every time
                # (the same rounding, done once; half the memory in bf16). Layer by layer, each
                # utterance's own copy: the peak is the kept cache plus one layer's batch.
                kv = [[] for _ in indices]
                for keys, values in self.model.decoder.base_cross_kv(states, self.autocast_dtype or states.dtype):
                    for j, item in enumerate(kv):
                        item.append((keys[j].clone(), values[j].clone()))
                    del keys, values
        return [(s.clone(), item) for s, item in zip(states, kv)]

    def states_nbytes(self, states) -> int:
        return states[0].numel() * states[0].element_size()

    def extras_nbytes(self, states) -> int:
        return sum(t.numel() * t.element_size() for layer in (states[1] or []) for t in layer)

    def without_extras(self, states):
        return states[0], None

    def states_numpy(self, states) -> np.ndarray:
        return states[0].float().cpu().numpy()

    def model_inputs(self, examples, indices, states, augment=None) -> tuple:
        """(audio, is_states, cross_kv or None) on the device."""
        if states is not None:
            items = [s if isinstance(s, tuple) else (self._tensor(s), None) for s in states]
            audio = torch.stack([s for s, _ in items])
            return audio, True, self.cross_kv(audio, [kv for _, kv in items])
        mels = self._tensor(examples.mels(indices, augment))
        if self.encoder_trained:
            return mels, False, None
        with torch.no_grad():
            audio = self.model.embed_audio(mels)
        return audio, True, self.cross_kv(audio, [None] * len(indices))

    def cross_kv(self, audio: torch.Tensor, kept: list) -> Optional[list]:
        """Per layer, (keys, values) lists with one tensor per utterance: the base cross-attention
        K/V kept in the cache, and those of the other rows computed now from their states (None when
        the projections train). Why now rather than inside the step: the frozen projections then run
        once a step, without gradient, where the step ran them for the student and again for the
        --replay-distill teacher; and the adapters on keys and values take their rank-r route
        (`_attend_cached`). Measured on Yoruba (base, batch 8, 546 utterances whose K/V do not fit
        the cache): docs/benchmarks.md."""
        if not self.model.decoder.cross_kv_cacheable():
            return None
        missing = [j for j, kv in enumerate(kept) if kv is None]
        layers = [([None] * len(kept), [None] * len(kept)) for _ in self.model.decoder.blocks]
        if missing:
            rows = audio[missing] if len(missing) < len(kept) else audio
            for layer, pair in zip(layers, self.model.decoder.base_cross_kv(rows, self.autocast_dtype or audio.dtype)):
                for side, batch in zip(layer, pair):
                    for j, row in zip(missing, batch.unbind(0)):
                        side[j] = row
        for j, kv in enumerate(kept):
            if kv is not None:
                for layer, pair in zip(layers, kv):
                    layer[0][j], layer[1][j] = pair
        return [tuple(layer) for layer in layers]

    def _labels(self, labels) -> list:
        return [self._tensor(a) for a in labels]

    # ---- steps
    def start_training(self, args) -> None:
        torch.manual_seed(args.seed)
        self.model.encoder.grad_checkpoint = self.model.decoder.grad_checkpoint = bool(args.grad_checkpoint)
        keep = self.keeps_attention_weights(int(args.batch_size), bool(args.grad_checkpoint))
        for block in self.model.encoder.blocks:
            block.attn.keep_weights = keep
        self.params = tlora.trainable_weights(self.model)
        self.optimizer = make_optimizer(args.optimizer, list(self.params.values()), args.weight_decay)
        self.optimizer.zero_grad(set_to_none=True)
        self.label_smoothing = float(args.label_smoothing)
        self.replay_distill = bool(args.replay_distill)

    def keeps_attention_weights(self, batch_size: int, grad_checkpoint: bool) -> bool:
        """Whether the encoder's self-attention trains through plain bf16 products that keep their
        weights (model.attention_keeping_weights): bf16 on a CPU with bf16 dot products, and only while
        the kept weights take at most a quarter of the machine's memory. Measured on the 2-core EPYC
        (tiny.en, batch 8, encoder+decoder LoRA): 1.73 s a step against 2.44 through the flash kernel,
        peak RSS 2.7 GB against 1.6 (benchmarks/benchmark_train.py --dtype bfloat16; docs/benchmarks.md)."""
        if self.device != "cpu" or self.autocast_dtype != torch.bfloat16 or not _cpu_has_bf16_products():
            return False
        dims = self.model.dims
        layers = 1 if grad_checkpoint else dims.n_audio_layer  # checkpointing keeps one layer's at a time
        needed = batch_size * dims.n_audio_head * dims.n_audio_ctx ** 2 * 2 * layers
        return needed <= _physical_memory() // 4

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def accumulate_gradients(self, examples, indices, states, labels, scale: float, augment=None) -> tuple:
        audio, is_states, kv = self.model_inputs(examples, indices, states, augment)
        taught = None
        if self.replay_distill:
            taught = torch.tensor(examples.replayed(indices), device=self.device)
        loss, n = loss_and_count(self.model, audio, is_states, kv, *self._labels(labels), self.autocast_dtype,
                                 self.label_smoothing, taught)
        self.scaler.scale(loss * scale).backward()
        return loss.item() * n.item(), n.item()

    def update(self, learning_rate: float, max_grad_norm: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        if self.data_parallel:
            sum_gradients(list(self.params.values()))
        if max_grad_norm and max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def batch_loss(self, examples, indices, states, labels) -> tuple:
        with torch.no_grad():
            audio, is_states, kv = self.model_inputs(examples, indices, states)
            loss, n = loss_and_count(self.model, audio, is_states, kv, *self._labels(labels), self.autocast_dtype)
        return loss.item() * n.item(), n.item()

    def peak_memory_gb(self) -> float:
        if self.device == "cuda":
            return round(torch.cuda.max_memory_allocated() / 1e9, 3)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
        return round(rss / 1024 if sys.platform == "darwin" else rss, 3)

    # ---- tensors for the files: optimizer state by parameter name ("decoder...lora_a.exp_avg")
    def adapter_tensors(self) -> Dict[str, np.ndarray]:
        return tlora.adapter_tensors(self.model)

    def optimizer_tensors(self) -> Dict[str, np.ndarray]:
        names = list(self.params)
        out = {}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                out[f"{names[index]}.{key}"] = torch.as_tensor(value).detach().float().cpu().numpy()
        return out

    def load_optimizer_tensors(self, tensors: Dict[str, np.ndarray]) -> None:
        state_dict = self.optimizer.state_dict()
        state: Dict[int, dict] = {}
        for index, name in enumerate(self.params):
            entries = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".") and
                       k[len(name) + 1:].isidentifier()}
            if entries:
                state[index] = {key: torch.from_numpy(np.array(value)).to(self.device) if key != "step"
                                else torch.tensor(float(np.asarray(value).reshape(-1)[0])) for key, value in entries.items()}
        missing = [name for index, name in enumerate(self.params) if index not in state]
        if missing and len(missing) < len(self.params):
            raise UserError(f"the optimizer state lacks {missing[:3]}; it belongs to other adapters")
        self.optimizer.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})

    def convert_legacy_optimizer_file(self, path, log: Callable):
        """An optimizer_state.pt of an earlier version, read with weights_only=True (no code runs)
        and written once as the safetensors file beside it."""
        try:
            legacy = torch.load(path, map_location="cpu", weights_only=True)
            step, saved = int(legacy["step"]), legacy["optimizer"]["state"]
        except Exception as e:  # noqa: BLE001 - any unreadable file
            raise UserError(f"cannot read the old optimizer file {path} ({e}); delete it to resume with a fresh optimizer") from None
        names = list(self.params)
        tensors = {f"{names[i]}.{key}": torch.as_tensor(value).float().numpy()
                   for i, state in saved.items() for key, value in state.items()}
        target = path.with_suffix(".safetensors")
        write_safetensors(target, tensors, {"format": "mlx", "step": str(step), "back_end": self.name})
        log(f"resume: converted {path.name} (an earlier version's pickle) to {target.name}")
        return target

    # ---- decoding
    def adapters_off(self):
        return tlora.adapters_switched_off(self.model)

    def decoding_model(self):
        from .decoding import TorchDecodingModel

        return TorchDecodingModel(self.model)

    def decode(self, examples, indices: List[int], states, language: str, task: str,
               sample_len: Optional[int] = None, stop_loops_at: Optional[float] = None) -> List[str]:
        if states is not None:  # the states alone: decoding computes its keys and values with the adapters
            features = torch.stack([s[0] if isinstance(s, tuple) else self._tensor(s) for s in states])
            return greedy_decode(self.model, None, language, task, sample_len, features=features,
                                 stop_loops_at=stop_loops_at)
        return greedy_decode(self.model, self._tensor(examples.mels(indices)), language, task, sample_len,
                             stop_loops_at=stop_loops_at)


def _cpu_has_bf16_products() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 itself (else bf16 products are emulated, no faster)."""
    return cpu_has("avx512_bf16", "amx_bf16")


def _physical_memory() -> int:
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def pick_device(requested: Optional[str]) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def load_base(config, log: Callable, world=None) -> TorchBackend:
    """The base model of a run (`config`: tuner.run_config.RunConfig), quantized when --bits asks."""
    from .model import load_model

    device = pick_device(config.device)
    log(f"torch back end on {device}")
    torch.manual_seed(int(config.seed))
    model = load_model(config.model, device=device)
    if config.bits:
        from .quantize import quantize_base

        count = quantize_base(model, int(config.bits), AUTOCAST.get(config.dtype, torch.float32))
        log(f"base quantized to {config.bits} bits through bitsandbytes ({count} linear layers); "
            "adapters train in floating point")
    return TorchBackend(model, device, config.dtype, log, world)
