"""The MLX engine's training step compiled by mx.compile, as mlx-lm's tuner compiles its step: the loss and
gradients, and the optimizer's update, each one traced function with the model's, the optimizer's and the
random state captured through `inputs=`/`outputs=`.

Why: a compiled step is built once, not op by op every step, and MLX fuses its elementwise chains (one
kernel and one pass over memory instead of several); that is what MLX on a GPU is tuned for. A traced
function recompiles for every new input shape, so each batch is bucketed: its token length padded to a
multiple of TOKEN_MULTIPLE (masked out of the loss: padding sits after the last real token, which the
causal mask keeps from mattering) and its target positions padded to a multiple of POSITION_MULTIPLE with
weight 0. A compiled function is one MLX graph, so the CPU's numpy kernels (cpu_softmax.py,
frozen_head_loss.py; host_kernels.py) cannot be in it: on the CPU the eager step with them is used unless
MLX_WHISPER_LORA_COMPILED_STEP=1 (benchmarks/benchmark_mlx_step.py measures both; docs/benchmarks.md)."""

from __future__ import annotations

import os
from functools import partial
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from .host_kernels import mlx_ops_only

ENV_VAR = "MLX_WHISPER_LORA_COMPILED_STEP"
TOKEN_MULTIPLE = 16
POSITION_MULTIPLE = 64


def compiled_by_default() -> bool:
    """MLX_WHISPER_LORA_COMPILED_STEP=1 or 0 decides; otherwise compiled on a GPU and eager on the CPU, where
    MLX computes exp one element at a time and the eager step's numpy exps are faster."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower()
    if choice in ("1", "true", "on", "yes"):
        return True
    if choice in ("0", "false", "off", "no"):
        return False
    return mx.default_device() == mx.gpu


def bucket(n: int, multiple: int, limit: Optional[int] = None) -> int:
    """n rounded up to a multiple (at most `limit`, when n itself is not above it)."""
    up = -(-n // multiple) * multiple
    return up if limit is None or up <= limit or n > limit else limit


def bucketed_labels(labels: tuple, limit: int) -> tuple:
    """(inputs, targets, mask) padded along the tokens to a bucket; the padding is masked out."""
    inputs, targets, mask = (np.asarray(a) for a in labels)
    n = inputs.shape[1]
    pad = bucket(n, TOKEN_MULTIPLE, limit) - n
    if pad <= 0:
        return inputs, targets, mask
    widen = lambda a: np.pad(a, ((0, 0), (0, pad)))  # noqa: E731  (token 0, weight 0)
    return widen(inputs), widen(targets), widen(mask)


def bucketed_positions(mask: np.ndarray) -> tuple:
    """(flat indices of the counted tokens, their weights), padded to a bucket with index 0 at weight 0."""
    positions = np.flatnonzero(np.asarray(mask).reshape(-1) > 0).astype(np.int32)
    size = bucket(max(len(positions), 1), POSITION_MULTIPLE)
    weights = np.zeros(size, dtype=np.float32)
    weights[:len(positions)] = 1.0
    return mx.array(np.pad(positions, (0, size - len(positions)))), mx.array(weights)


class CompiledStep:
    """The compiled loss-and-gradient function of a model and its compiled optimizer update."""

    def __init__(self, model, optimizer: optim.Optimizer, loss, n_text_ctx: int):
        """`loss(model, audio, inputs, targets, cross_kv, positions, weights)` -> (mean loss, tokens)."""
        self.model, self.optimizer, self.n_text_ctx = model, optimizer, n_text_ctx
        self.traces = 0  # how many times the loss function was traced (a new shape or structure)
        value_and_grad = nn.value_and_grad(model, self._counted(loss))
        state = [model.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def loss_and_grad(audio, inputs, targets, cross_kv, positions, weights):
            return value_and_grad(model, audio, inputs, targets, cross_kv or None, positions, weights)

        self._loss_and_grad = loss_and_grad
        self._updates: dict = {}

    def _counted(self, loss):
        def counted(*args):
            self.traces += 1
            return loss(*args)
        return counted

    def loss_and_grad(self, audio: mx.array, labels: tuple, cross_kv: Optional[list]) -> tuple:
        """((mean loss, tokens), gradients) of a batch, its labels bucketed."""
        inputs, targets, mask = bucketed_labels(labels, self.n_text_ctx)
        positions, weights = bucketed_positions(mask)
        with mlx_ops_only():
            return self._loss_and_grad(audio, mx.array(inputs), mx.array(targets), list(cross_kv or []),
                                       positions, weights)

    def update(self, grads, learning_rate: float, max_grad_norm: float) -> None:
        """The optimizer's update (after clipping the gradients' norm to max_grad_norm, when above 0)."""
        self.optimizer.learning_rate = mx.array(learning_rate, dtype=mx.float32)
        clip = float(max_grad_norm) if max_grad_norm and max_grad_norm > 0 else 0.0
        key = (clip, id(self.optimizer.state))  # a resumed optimizer's state is a new tree: trace it anew
        if key not in self._updates:
            state = [self.model.state, self.optimizer.state]

            @partial(mx.compile, inputs=state, outputs=state)
            def apply(grads):
                if clip:
                    grads, _ = optim.clip_grad_norm(grads, clip)
                self.optimizer.update(self.model, grads)

            self._updates[key] = apply
        self._updates[key](grads)
