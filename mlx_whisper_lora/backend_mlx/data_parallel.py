"""MLX's side of data-parallel training (tuner/distributed.py): the mx.distributed group that
`mlx.launch` set up (ring, MPI, NCCL or JACCL, as the launcher chose), a sum of numpy arrays over
it, and the gradient sum (through mlx.nn's average_gradients, which packs the many small adapter
gradients into few messages)."""

from __future__ import annotations

from typing import Callable, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from ..errors import UserError


def join_group() -> Tuple[object, Callable[[np.ndarray], np.ndarray]]:
    """(group, sum of a numpy array over the group) of the processes mlx.launch started."""
    try:
        group = mx.distributed.init(strict=True)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"mlx.launch started this process but MLX could not join the others ({e}); check the "
                        "--hosts/--hostfile and that every host runs the same mlx version") from None

    def sum_arrays(array: np.ndarray) -> np.ndarray:
        out = mx.distributed.all_sum(mx.array(array), group=group)
        mx.eval(out)
        return np.array(out)

    return group, sum_arrays


def sum_gradients(grads, params, group):
    """The gradients summed over the group (zeros where this process had no batch)."""
    if grads is None:
        grads = tree_map(mx.zeros_like, params)
    size = group.size()
    return tree_map(lambda g: g * size, nn.average_gradients(grads, group=group))
