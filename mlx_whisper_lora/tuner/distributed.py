"""Data-parallel training on the engines users already launch: `mlx.launch` (MLX's mx.distributed:
ring, MPI, NCCL) and `torchrun` (torch.distributed: gloo on CPUs, NCCL on GPUs).

Every process runs the same program on the same seeded batch order; each takes its share of every
global batch (`World.shard`), and the back end sums the gradients over the processes before the
update. The loop scales each process's gradient by its tokens over the batch's tokens on all
processes, so K processes make the update one process would make with the whole batch. Only the
main process (rank 0) writes files and prints.

This module is framework-free: a back end gives the world its sum (`World.sum`) over numpy arrays.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError


class PeerLost(UserError):
    """Another process of the run stopped: this one cannot go on (the loop saves and says how to resume)."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause or message


def launcher() -> Optional[str]:
    """The launcher that started this process ("torchrun", "mlx.launch"), or None for a plain run."""
    env = os.environ
    if env.get("TORCHELASTIC_RUN_ID") or (env.get("WORLD_SIZE") and env.get("RANK") and env.get("MASTER_ADDR")):
        return "torchrun" if int(env.get("WORLD_SIZE", "1")) > 1 else None
    if env.get("MLX_RANK") is not None or env.get("OMPI_COMM_WORLD_SIZE") or env.get("MLX_JACCL_DEVICES"):
        return "mlx.launch"
    return None


def backend_for_launcher(requested: str) -> Optional[str]:
    """The back end a launcher implies (torchrun: torch, mlx.launch: mlx); an error when --backend says otherwise."""
    started_by = launcher()
    if started_by is None:
        return None
    wanted = "torch" if started_by == "torchrun" else "mlx"
    if requested not in ("auto", wanted):
        other = "mlx.launch" if requested == "mlx" else "torchrun"
        raise UserError(f"this process was started by {started_by}, which runs the {wanted} back end, but --backend "
                        f"is {requested}; drop --backend (or pass --backend {wanted}), or launch with {other}")
    return wanted


@dataclass
class World:
    """The processes of one run. `sum` adds a float32/int32 numpy array over all of them."""

    rank: int = 0
    size: int = 1
    engine: str = "one process"
    sum_arrays: Optional[Callable[[np.ndarray], np.ndarray]] = field(default=None, repr=False)
    adapter_dir: str = "ADAPTER_PATH"  # named in the messages of a stopped run
    leftovers: List[str] = field(default_factory=list)  # files to remove when the launcher stops this process
    leave: Optional[Callable[[], None]] = field(default=None, repr=False)  # the engine's goodbye (torch: destroy the group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence) -> list:
        """This process's share of a global batch: every size-th item from its rank (lengths stay
        balanced when the batch is sorted by length)."""
        return list(items)[self.rank::self.size]

    def sum(self, values) -> np.ndarray:
        """Element-wise sum of `values` over the processes (float32 unless given int32)."""
        array = np.asarray(values)
        array = array.astype(np.int32 if array.dtype.kind in "iub" else np.float32)
        if not self.parallel:
            return array
        try:
            return np.asarray(self.sum_arrays(array))
        except RuntimeError as e:
            raise peer_lost(e) from None

    def all_agree(self, flag: bool) -> bool:
        """True when the flag is true in every process (for choices that decide which collectives run)."""
        return int(self.sum(np.array([1 if flag else 0], dtype=np.int32))[0]) == self.size

    def gather(self, values: Dict[int, str]) -> Dict[int, str]:
        """Every process's {index: text}, merged, in every process (texts travel as UTF-8 bytes
        through the sum: each process fills its own slice of a zeroed buffer)."""
        if not self.parallel:
            return dict(values)
        payload = np.frombuffer(json.dumps(values, ensure_ascii=False).encode(), dtype=np.uint8).astype(np.int32)
        lengths = np.zeros(self.size, dtype=np.int32)
        lengths[self.rank] = len(payload)
        lengths = self.sum(lengths)
        buffer = np.zeros(int(lengths.sum()), dtype=np.int32)
        start = int(lengths[:self.rank].sum())
        buffer[start:start + len(payload)] = payload
        buffer = self.sum(buffer)
        merged: Dict[int, str] = {}
        offset = 0
        for n in lengths:
            part = bytes(buffer[offset:offset + int(n)].astype(np.uint8))
            merged.update({int(k): v for k, v in json.loads(part.decode()).items()})
            offset += int(n)
        return merged

    def close(self) -> None:
        """Leave the process group at the end of a run (a no-op for one process and for MLX's groups)."""
        if self.leave is not None:
            self.leave()

    def describe(self) -> str:
        return f"{self.size} processes ({self.engine}), this one rank {self.rank}"


SINGLE = World()


def world_of(backend) -> World:
    """The processes a back end trains with (given to it at construction by recipes/run.py's open_backend; one
    by default)."""
    return getattr(backend, "world", None) or SINGLE


def peer_lost(error: BaseException) -> PeerLost:
    cause = f"another process of this data-parallel run stopped ({str(error).splitlines()[0][:200]})"
    return PeerLost(f"{cause}; this process stops too. The last checkpoint in the adapter folder is intact: resume "
                    "with --resume-adapter-file ADAPTER_PATH/adapters.safetensors (with any number of processes)", cause)


def join_world(backend_name: str, device: Optional[str] = None) -> Tuple[World, object]:
    """(the processes the launcher started, MLX's group or None); one process when not launched."""
    started_by = launcher()
    if started_by is None:
        return SINGLE, None
    if backend_name == "mlx":
        from ..backend_mlx.data_parallel import join_group

        group, sum_arrays = join_group()
        world, handle = World(group.rank(), group.size(), started_by, sum_arrays), group
    else:
        from ..backend_torch.data_parallel import join_group, leave_group
        from ..backend_torch.engine import pick_device

        rank, size, engine, sum_arrays = join_group(pick_device(device))
        world, handle = World(rank, size, engine, sum_arrays, leave=leave_group), None
    stop_on_terminate(world)
    return world, handle


def quiet(message: str) -> None:
    """The log of the processes other than the main one."""


def stop_on_terminate(world: World) -> None:
    """The launchers stop every process (SIGTERM) when one of them ends: say so in one line, exit 1."""
    if not world.parallel:
        return

    def handle(signum, frame):
        for path in world.leftovers:
            try:
                os.unlink(path)
            except OSError:
                pass
        sys.stderr.write(f"rank {world.rank}: stopped by the launcher, because another process of this data-parallel "
                         f"run ended (see above). The last checkpoint in {world.adapter_dir} is intact: resume with "
                         f"--resume-adapter-file {os.path.join(world.adapter_dir, 'adapters.safetensors')} (with any "
                         "number of processes)\n")
        sys.stderr.flush()
        os._exit(1)

    try:
        signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread (tests)
        pass
