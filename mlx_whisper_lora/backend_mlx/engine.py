"""The MLX back end of the shared training loop (tuner/backend.py): loss, gradients, optimizer
step, tensors for the files, and greedy decoding of test utterances."""

from __future__ import annotations

import resource
import sys
from typing import Callable, Dict, List, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from ..errors import UserError
from ..formats.adapter_config import AdapterConfig
from ..inference.decoding import DecodingOptions, decode
from ..text.tokenizer import get_tokenizer
from . import adapters
from .training.compiled_step import CompiledStep, compiled_by_default
from .data_parallel import sum_gradients
from .training.frozen_head_loss import frozen_head_cross_entropy


# A training encoder's step goes through the batch this many rows at a time (accumulate_gradients): its
# activations (each layer's attention probabilities above all) are held for one pass, not for the batch.
# tiny.en at batch 8 on the CPU, one process, interleaved (load 7): 35.6 s and 4.51 GB by MLX's counter in one
# pass, 34.5 s and 2.34 GB in passes of 4, 34.7 s and 1.25 GB in passes of 2 (docs/benchmarks.md).
ENCODER_ROWS_PER_PASS = 2


def masked_cross_entropy(logits: mx.array, targets: mx.array, mask: mx.array, smoothing: float = 0.0) -> tuple:
    """(sum of token losses, number of counted tokens); divide for the mean."""
    losses = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none", label_smoothing=smoothing)
    return (losses * mask).sum(), mask.sum()


def loss_fn(model, audio: mx.array, inputs: mx.array, targets: mx.array, mask: mx.array, states: bool,
            smoothing: float = 0.0, taught: Optional[mx.array] = None, teacher: Optional[mx.array] = None,
            cross_kv: Optional[list] = None, positions: Optional[mx.array] = None,
            weights: Optional[mx.array] = None):
    """Mean token loss and the number of tokens. `states`: audio holds encoder outputs already;
    `smoothing`: label smoothing (training only); `taught`: indices of rows whose loss is the
    cross-entropy against `teacher`, the base model's next-token probabilities for those rows
    (--replay-distill), instead of their target tokens; `cross_kv`: the cross-attention's cached base
    keys and values; `positions`: the flat indices of the target tokens (mask > 0), where alone the
    logits are formed (through the frozen-projection loss when the projection does not train); `weights`:
    each position's weight, 0 for the padding of a compiled step's bucketed batch (compiled_step.py)."""
    xa = audio.astype(model.dtype) if states else model.encoder(audio.astype(model.dtype))
    hidden = model.decoder.hidden(inputs, xa, cross_kv)
    if taught is None and positions is not None:
        picked = hidden.reshape(-1, hidden.shape[-1])[positions]
        wanted = targets.reshape(-1)[positions]
        embedding = model.decoder.token_embedding
        if "scales" not in embedding and not tree_flatten(embedding.trainable_parameters()):
            total = frozen_head_cross_entropy(picked, embedding.weight, wanted, smoothing, small_graph=states,
                                              row_weights=weights)
        else:
            losses = nn.losses.cross_entropy(embedding.as_linear(picked).astype(mx.float32), wanted,
                                             reduction="none", label_smoothing=smoothing)
            total = (losses if weights is None else losses * weights).sum()
        if weights is None:
            return total / max(positions.size, 1), mx.array(positions.size, dtype=mx.float32)
        count = weights.sum()
        return total / mx.maximum(count, 1.0), count
    logits = model.decoder.token_embedding.as_linear(hidden)
    if taught is None:
        total, count = masked_cross_entropy(logits, targets, mask, smoothing)
    else:
        rows = mx.zeros((mask.shape[0],)).at[taught].add(1.0)[:, None]
        total, _ = masked_cross_entropy(logits, targets, mask * (1.0 - rows), smoothing)
        soft = -(teacher * nn.log_softmax(logits[taught].astype(mx.float32), axis=-1)).sum(-1)
        total, count = total + (soft * mask[taught]).sum(), mask.sum()
    return total / mx.maximum(count, 1.0), count


def target_positions(mask: np.ndarray) -> mx.array:
    """The flat indices of a label batch's counted tokens."""
    return mx.array(np.flatnonzero(np.asarray(mask).reshape(-1) > 0).astype(np.int32))


def base_distribution(model, audio: mx.array, inputs: mx.array, states: bool) -> mx.array:
    """The base model's next-token probabilities (adapters switched off): the teacher of --replay-distill."""
    with adapters.adapters_switched_off(model):
        xa = audio.astype(model.dtype) if states else model.encoder(audio.astype(model.dtype))
        logits = model.decoder.token_embedding.as_linear(model.decoder.hidden(inputs, xa))
    return mx.stop_gradient(mx.softmax(logits.astype(mx.float32), axis=-1))


def set_blockwise_attention(model, enabled: bool) -> None:
    """The encoder's self-attention without a kept (frames x frames) matrix (chunked_attention.py)."""
    for block in model.encoder.blocks:
        block.attn.blockwise = enabled


def set_grad_checkpoint(model, enabled: bool) -> None:
    """Recompute each block's activations in the backward pass (less memory, slower)."""
    for block in list(model.encoder.blocks) + list(model.decoder.blocks):
        block.grad_checkpoint = enabled


def make_optimizer(name: str, weight_decay: float) -> optim.Optimizer:
    """The optimizer at a placeholder rate: the loop sets the scheduled rate before every update."""
    if name == "adamw":
        return optim.AdamW(learning_rate=0.0, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(learning_rate=0.0)
    if name == "sgd":
        return optim.SGD(learning_rate=0.0, momentum=0.9, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {name!r}; use adamw, adam or sgd")


class MLXBackend:
    """The MLX Whisper (with adapters in place) behind the loop's interface."""

    name = "mlx"

    def __init__(self, model, world=None, group=None):
        """`world`: the processes of a data-parallel run (tuner/distributed.py's World; None for one), `group`:
        their mx.distributed group (join_group), whose gradients each update sums."""
        self.model = model
        self.world, self.group = world, group
        self.optimizer: Optional[optim.Optimizer] = None
        self.grads = None
        self.replay_distill = False  # set by start_training from --replay-distill
        self.compiled: Optional[CompiledStep] = None  # set by start_training (compiled_step.py)
        self.rows_per_pass: Optional[int] = None  # set by start_training: ENCODER_ROWS_PER_PASS, or None
        dims = model.dims
        self.states_shape = (dims.n_audio_ctx, dims.n_audio_state)

    # ---- adapters
    def apply_adapters(self, config: AdapterConfig) -> None:
        adapters.apply_adapters(self.model, config)

    def load_adapter_weights(self, weights: Dict[str, np.ndarray], source) -> None:
        adapters.load_weights_into(self.model, weights, source)

    def load_adapters(self, path, scale: float = 1.0) -> AdapterConfig:
        return adapters.load_adapters(self.model, path, scale)

    def count_parameters(self) -> tuple:
        return adapters.count_parameters(self.model)

    @property
    def encoder_trained(self) -> bool:
        return bool(tree_flatten(self.model.encoder.trainable_parameters()))

    # ---- encoder states: (states, cross-attention base K/V per layer, or None) per utterance
    def encode(self, examples, indices, for_training: bool = True) -> list:
        """Each utterance's encoder states and, for training steps while the decoder's cross-attention
        keys and values carry no trained base weight, those keys and values (the torch engine's cache)."""
        mels = mx.array(examples.mels(indices))
        # in passes of a few rows, each evaluated before the next: MLX's attention on the CPU forms every
        # (rows, heads, 1500, 1500) score matrix, 0.86 GB a pass of 8 at --dims small, twice with the softmax
        passes = []
        for start in range(0, len(indices), ENCODER_ROWS_PER_PASS):
            passes.append(self.model.embed_audio(mels[start:start + ENCODER_ROWS_PER_PASS]).astype(mx.float32))
            mx.eval(passes[-1])
        states = mx.concatenate(passes) if len(passes) > 1 else passes[0]
        kv = [None] * len(indices)
        if for_training and self.model.decoder.cross_kv_cacheable():
            # utterance by utterance: each keeps buffers of its own, which the cache can drop alone
            kv = [[(k[0], v[0]) for k, v in self.model.decoder.base_cross_kv(states[j:j + 1].astype(self.model.dtype))]
                  for j in range(len(indices))]
        mx.eval(states, [pair for item in kv if item for pair in item])
        return [(s, item) for s, item in zip(states, kv)]

    def states_nbytes(self, states) -> int:
        return states[0].nbytes

    def extras_nbytes(self, states) -> int:
        return sum(a.nbytes for pair in (states[1] or []) for a in pair)

    def without_extras(self, states):
        return states[0], None

    def states_numpy(self, states) -> np.ndarray:
        return np.array(states[0])

    def model_inputs(self, examples, indices, states, augment=None) -> tuple:
        """(audio, is_states, cross_kv): cached encoder states, frozen-encoder states, or log-mels; the
        cross-attention base keys and values per layer (stacked) when the encoder is frozen."""
        if states is not None:
            items = [s if isinstance(s, tuple) else (mx.array(s), None) for s in states]
            audio = mx.stack([s for s, _ in items])
            return audio, True, self.cross_kv(audio, [kv for _, kv in items])
        mels = mx.array(examples.mels(indices, augment))
        if self.encoder_trained:
            return mels, False, None
        audio = mx.stop_gradient(self.model.embed_audio(mels))
        return audio, True, self.cross_kv(audio, [None] * len(indices))

    def cross_kv(self, audio: mx.array, kept: list) -> Optional[list]:
        """Per layer, the batch's base cross-attention (keys, values): those kept in the cache (as lists of
        each utterance's arrays), the others computed now from their states, once a step and without
        gradient (None when the key or value projections train)."""
        if not self.model.decoder.cross_kv_cacheable():
            return None
        if all(kv is None for kv in kept):
            return [tuple(mx.stop_gradient(a) for a in pair)
                    for pair in self.model.decoder.base_cross_kv(audio.astype(self.model.dtype))]
        missing = [j for j, kv in enumerate(kept) if kv is None]
        if missing:
            fresh = self.model.decoder.base_cross_kv(audio[mx.array(missing)].astype(self.model.dtype))
            for n, j in enumerate(missing):
                kept[j] = [(k[n], v[n]) for k, v in fresh]
        # per utterance, not stacked: a stacked copy of the batch's keys and values would be held to the end of
        # the backward pass (0.92 GB for small dims at batch 8; docs/benchmarks.md)
        return [([kv[layer][0] for kv in kept], [kv[layer][1] for kv in kept]) for layer in range(len(kept[0]))]

    # ---- steps
    def start_training(self, args) -> None:
        mx.random.seed(args.seed)
        set_grad_checkpoint(self.model, bool(args.grad_checkpoint))
        # blockwise: on a GPU always (memory is what limits encoder training there); on the CPU, where each
        # recomputed exp is slow, when --grad-checkpoint asks for memory over time
        on_cpu = mx.default_device() == mx.cpu
        set_blockwise_attention(self.model, self.encoder_trained and (not on_cpu or bool(args.grad_checkpoint)))
        self.rows_per_pass = ENCODER_ROWS_PER_PASS if self.encoder_trained else None
        self.optimizer = make_optimizer(args.optimizer, args.weight_decay)
        self.optimizer.init(self.model.trainable_parameters())
        states, smoothing = not self.encoder_trained, float(args.label_smoothing)
        self._loss_and_grad = nn.value_and_grad(
            self.model, lambda m, a, i, t, k, kv, pos: loss_fn(m, a, i, t, k, states, smoothing, cross_kv=kv,
                                                                positions=pos))
        self._distilled_loss_and_grad = nn.value_and_grad(
            self.model, lambda m, a, i, t, k, rows, p, kv: loss_fn(m, a, i, t, k, states, smoothing, rows, p, kv))
        self.compiled = None
        if compiled_by_default():
            self.compiled = CompiledStep(
                self.model, self.optimizer, lambda m, a, i, t, kv, pos, w: loss_fn(
                    m, a, i, t, None, states, smoothing, cross_kv=kv, positions=pos, weights=w),
                self.model.dims.n_text_ctx)
        self.replay_distill = bool(args.replay_distill)

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def accumulate_gradients(self, examples, indices, states, labels, scale: float, augment=None) -> tuple:
        """Adds the batch's gradients (times `scale`) to those held for the update; (summed loss, tokens). With
        `rows_per_pass`, the batch goes through in passes of that many rows, each pass's gradients weighted by
        its share of the batch's tokens: the same step, with one pass's activations alive at a time."""
        passes = self.rows_per_pass or len(indices)
        if passes >= len(indices):
            return self._accumulate(examples, indices, states, labels, scale, augment)
        labels = tuple(np.asarray(a) for a in labels)
        total = max(float(labels[2].sum()), 1.0)
        loss_sum = tokens = 0.0
        for start in range(0, len(indices), passes):
            part = slice(start, start + passes)
            share = float(labels[2][part].sum()) / total
            loss, n = self._accumulate(examples, list(indices[part]), None if states is None else list(states[part]),
                                       tuple(a[part] for a in labels), scale * share, augment)
            loss_sum, tokens = loss_sum + loss, tokens + n
        return loss_sum, tokens

    def _accumulate(self, examples, indices, states, labels, scale: float, augment=None) -> tuple:
        audio, is_states, kv = self.model_inputs(examples, indices, states, augment)
        inputs, targets, mask = (mx.array(a) for a in labels)
        rows = [j for j, replayed in enumerate(examples.replayed(indices)) if replayed] if self.replay_distill else []
        if rows:
            rows = mx.array(rows)
            teacher = base_distribution(self.model, audio[rows], inputs[rows], is_states)
            (loss, ntok), grads = self._distilled_loss_and_grad(self.model, audio, inputs, targets, mask, rows, teacher,
                                                                kv)
        elif self.compiled is not None:
            (loss, ntok), grads = self.compiled.loss_and_grad(audio, labels, kv)
        else:
            (loss, ntok), grads = self._loss_and_grad(self.model, audio, inputs, targets, mask, kv,
                                                      target_positions(labels[2]))
        if scale != 1.0:
            grads = tree_map(lambda g: g * scale, grads)
        self.grads = grads if self.grads is None else tree_map(lambda a, b: a + b, self.grads, grads)
        mx.eval(loss, ntok, self.grads)
        return loss.item() * ntok.item(), ntok.item()

    def update(self, learning_rate: float, max_grad_norm: float) -> None:
        grads, self.grads = self.grads, None
        if self.group is not None and self.group.size() > 1:
            grads = sum_gradients(grads, self.model.trainable_parameters(), self.group)
            mx.eval(grads)  # a lost process fails here, before the weights take the update
        if self.compiled is not None:
            self.compiled.update(grads, learning_rate, max_grad_norm)
        else:
            if max_grad_norm and max_grad_norm > 0:
                grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
            self.optimizer.learning_rate = mx.array(learning_rate, dtype=mx.float32)
            self.optimizer.update(self.model, grads)
        mx.eval(self.model.parameters(), self.optimizer.state)

    def batch_loss(self, examples, indices, states, labels) -> tuple:
        audio, is_states, kv = self.model_inputs(examples, indices, states)
        loss, n = loss_fn(self.model, audio, *(mx.array(a) for a in labels), is_states, cross_kv=kv,
                          positions=target_positions(labels[2]))
        mx.eval(loss, n)
        return loss.item() * n.item(), n.item()

    def peak_memory_gb(self) -> float:
        """Peak resident memory of this process (MLX's own counter where it has one); on a CUDA GPU,
        MLX's peak there alone, as the torch back end reports its GPU's."""
        try:
            mlx_peak = mx.get_peak_memory() / 1e9
        except AttributeError:
            mlx_peak = 0.0
        cuda = getattr(mx, "cuda", None)
        if cuda is not None and cuda.is_available() and mx.default_device() == mx.gpu:
            return round(mlx_peak, 3)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # kB on Linux
        if sys.platform == "darwin":
            rss /= 1024
        return round(max(rss, mlx_peak), 3)

    # ---- tensors for the files
    def adapter_tensors(self) -> Dict[str, np.ndarray]:
        return adapters.trainable_numpy(self.model)

    def optimizer_tensors(self) -> Dict[str, np.ndarray]:
        """The optimizer state as numpy (bfloat16 moments widened to float32, numpy has no bfloat16)."""
        return {k: np.array(v.astype(mx.float32) if v.dtype == mx.bfloat16 else v)
                for k, v in tree_flatten(self.optimizer.state)}

    def load_optimizer_tensors(self, tensors: Dict[str, np.ndarray]) -> None:
        dtypes = {k: v.dtype for k, v in tree_flatten(self.optimizer.state)}  # as initialised for these weights
        self.optimizer.state = tree_unflatten([(k, mx.array(v).astype(dtypes[k]) if k in dtypes else mx.array(v))
                                               for k, v in tensors.items()])

    def convert_legacy_optimizer_file(self, path, log: Callable):
        log(f"resume: {path} is the torch back end's optimizer state of an earlier version, which the MLX back "
            "end does not read; the weights are loaded, the optimizer starts fresh at step 0")
        return None

    # ---- decoding
    def adapters_off(self):
        return adapters.adapters_switched_off(self.model)

    def decoding_model(self):
        self.set_training(False)
        return self.model

    def decode(self, examples, indices: List[int], states, language: str, task: str,
               sample_len: Optional[int] = None, stop_loops_at: Optional[float] = None) -> List[str]:
        model = self.model
        tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, language=language, task=task,
                                  model_dir=model.folder)
        options = DecodingOptions(task=task, language=language, without_timestamps=True, temperature=0.0,
                                  sample_len=sample_len, stop_loops_at=stop_loops_at)
        features = self.model_inputs(examples, indices, states)[0] if states is not None else \
            model.embed_audio(mx.array(examples.mels(indices)))
        texts = [r.text for r in decode(model, None, options, tokenizer, audio_features=features)]
        mx.clear_cache()
        return texts


def load_base(config, log: Callable, world=None, group=None) -> MLXBackend:
    """The base model of a run (`config`: tuner.run_config.RunConfig), quantized when --bits asks."""
    from .load import load_model, quantize_model

    log(f"mlx back end on {'gpu' if mx.default_device() == mx.gpu else 'cpu'}")
    mx.random.seed(int(config.seed))
    model = load_model(config.model, dtype=config.dtype)  # the base cast once; adapters are made in float32
    if config.dtype != "float32" and mx.default_device() == mx.cpu:
        # allowed (the GPU's arithmetic, checkable here), but MLX's CPU multiplies half precision without BLAS:
        # a (224 x 384) @ (384 x 1536) product took 99 ms in bfloat16 against 12 ms in float32 (docs/training.md)
        log(f"--dtype {config.dtype} on the CPU: MLX multiplies it several times slower than float32 here; "
            "it saves memory, not time")
    if config.bits:
        if any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
            raise UserError(f"--bits {config.bits}: {config.model} is already quantized; drop --bits")
        quantize_model(model, bits=int(config.bits))
        log(f"base quantized to {config.bits} bits (MLX affine, group size 64); adapters train in floating point")
    return MLXBackend(model, world, group)
