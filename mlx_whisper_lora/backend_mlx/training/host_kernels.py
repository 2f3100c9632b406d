"""Whether the MLX engine's training graph may leave MLX for numpy kernels (cpu_softmax.py,
frozen_head_loss.py): only on the CPU device, and never while a step is traced by mx.compile
(compiled_step.py), whose function must stay one MLX graph (a numpy kernel evaluates its input).

Tests also use `mlx_ops_only` to run the GPU's path (MLX ops throughout) on the CPU."""

from __future__ import annotations

import contextlib

import mlx.core as mx

_mlx_only = 0


def numpy_allowed() -> bool:
    """True on the CPU device outside `mlx_ops_only`."""
    return _mlx_only == 0 and mx.default_device() == mx.cpu


@contextlib.contextmanager
def mlx_ops_only():
    """Within it, the training graph uses MLX ops only, as on a GPU."""
    global _mlx_only
    _mlx_only += 1
    try:
        yield
    finally:
        _mlx_only -= 1
