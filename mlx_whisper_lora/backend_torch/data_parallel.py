"""PyTorch's side of data-parallel training (tuner/distributed.py): the process group `torchrun`
set up (gloo on CPUs, NCCL on GPUs), a sum of numpy arrays over it, and the gradient sum in one
flat all-reduce (the adapters' gradients are many small tensors)."""

from __future__ import annotations

import os
from typing import Callable, Tuple

import numpy as np
import torch

from ..errors import UserError


def join_group(device: str) -> Tuple[int, int, str, Callable[[np.ndarray], np.ndarray]]:
    """(rank, size, engine, sum of a numpy array) of the processes torchrun started."""
    import torch.distributed as dist

    engine = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        try:
            dist.init_process_group(engine)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"torchrun started this process but torch.distributed could not join the others "
                            f"({str(e).splitlines()[0]}); check --nnodes/--rdzv-endpoint") from None

    def sum_arrays(array: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    return dist.get_rank(), dist.get_world_size(), f"torchrun, {engine}", sum_arrays


def sum_gradients(params: list) -> None:
    """Sum every parameter's gradient over the processes, in place (zeros where there was none)."""
    import torch.distributed as dist

    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
