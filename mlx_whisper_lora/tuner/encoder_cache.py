"""Frozen-encoder outputs, computed once per utterance and reused every epoch.

When the encoder is frozen and carries no adapter, its output for an utterance never changes, so
the training loop asks the back end to compute it once (with the fast inference kernels) and keeps
it: in memory up to a byte budget, beyond that in a memory-mapped file. Training then runs only
the decoder. The cache stores whatever the back end returns (an mx.array, a torch tensor) and
spills it as float32 numpy; the back end turns spilled rows back into its own arrays.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


class EncoderCache:
    """Per-utterance encoder states of one example set."""

    def __init__(self, n: int, shape: tuple, memory_limit_bytes: int, folder: Optional[Path] = None):
        self.n, self.shape = n, tuple(shape)
        self.limit, self.used = memory_limit_bytes, 0
        self.memory: Dict[int, object] = {}
        self.folder = folder
        self.disk: Optional[np.memmap] = None
        self.on_disk = np.zeros(n, dtype=bool)
        self.disk_path: Optional[str] = None

    def has(self, i: int) -> bool:
        return i in self.memory or bool(self.on_disk[i])

    def reserve(self, nbytes: int) -> bool:
        """Count `nbytes` against the memory budget if they fit (back ends keep extras this way)."""
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def put(self, i: int, states, nbytes: int, as_numpy: Callable[[object], np.ndarray]) -> None:
        if self.reserve(nbytes):
            self.memory[i] = states
        else:
            self.spill(i, as_numpy(states))

    def spill(self, i: int, states: np.ndarray) -> None:
        """Write one utterance's states to the memory-mapped file (created on first use)."""
        if self.disk is None:
            folder = str(self.folder) if self.folder else None
            if folder:
                os.makedirs(folder, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="encoder_states_", suffix=".f32", dir=folder)
            os.close(fd)
            self.disk = np.memmap(path, dtype=np.float32, mode="w+", shape=(self.n, *self.shape))
            try:  # the mapping outlives the name, so a killed run leaves no file behind
                os.unlink(path)
            except OSError:  # a system that will not remove an open file: close() does
                self.disk_path = path
        self.disk[i] = states
        self.on_disk[i] = True

    def get(self, i: int):
        """The states in memory (back-end array), or a numpy row read from disk."""
        if i in self.memory:
            return self.memory[i]
        return np.asarray(self.disk[i])

    def missing(self, indices: Sequence[int]) -> List[int]:
        return [i for i in indices if not self.has(i)]

    def close(self) -> None:
        if self.disk is not None:
            del self.disk
            self.disk = None
            if self.disk_path and os.path.exists(self.disk_path):
                os.unlink(self.disk_path)
        self.memory.clear()


def audio_key(utterance) -> object:
    """What identifies an utterance's audio: its file, or the very bytes or samples object (rows
    replayed from the training audio, `--replay-data self`, carry their utterance's)."""
    return utterance.audio if isinstance(utterance.audio, str) else ("object", id(utterance.audio))


def same_audio(utterances) -> List[int]:
    """For each row, the first row with the same audio (audio_key). Their encoder states are the same."""
    first: Dict[object, int] = {}
    return [first.setdefault(audio_key(u), i) for i, u in enumerate(utterances)]


class CachedStates:
    """Encoder states of an example set's utterances through a back end, computed on first use
    (in batches) and then served from an EncoderCache; rows that read the same audio file share one."""

    def __init__(self, examples, backend, memory_limit_bytes: int, folder: Optional[Path] = None, batch_size: int = 8,
                 for_training: bool = True):
        self.examples, self.backend, self.batch_size = examples, backend, batch_size
        self.for_training = for_training  # the back end may keep extras that only training steps use
        self.cache = EncoderCache(len(examples), backend.states_shape, memory_limit_bytes, folder)
        self.source = same_audio(examples.utterances)

    def __call__(self, indices: Sequence[int]) -> list:
        keys = [self.source[i] for i in indices]
        missing = self.cache.missing(list(dict.fromkeys(keys)))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            for i, states in zip(chunk, self.backend.encode(self.examples, chunk, self.for_training)):
                self.cache.put(i, states, self.backend.states_nbytes(states), self.backend.states_numpy)
                self._keep_extras(i, states)
            self.examples.forget_mels(chunk)  # the log-mels are no longer needed
        self.examples.forget_mels(indices)  # a row served from another's states may have read its own
        return [self.cache.get(k) for k in keys]

    def adopt(self, other: "CachedStates") -> int:
        """Take the states `other` holds for the same audio instead of encoding it again (the base
        model's passes over the training audio before training: recipes/self_replay.py); returns how
        many utterances. Kept states are shared, not copied; `other` may be closed afterwards."""
        theirs: Dict[object, int] = {}
        for j, k in enumerate(other.source):
            if other.cache.has(k):
                theirs.setdefault(audio_key(other.examples.utterances[j]), k)
        taken = []
        for i in sorted(set(self.source)):
            j = theirs.get(audio_key(self.examples.utterances[i]))
            if j is None or self.cache.has(i):
                continue
            if j in other.cache.memory:
                states = other.cache.memory[j]
                self.cache.put(i, states, self.backend.states_nbytes(states), self.backend.states_numpy)
                self._keep_extras(i, states)
            else:  # a row of its file: into this cache's own file
                self.cache.spill(i, np.asarray(other.cache.disk[j]))
            taken.append(i)
        self.examples.mark_readable(taken)
        return len(taken)

    def _keep_extras(self, i: int, states) -> None:
        extra = self.backend.extras_nbytes(states) if i in self.cache.memory else 0
        if extra and not self.cache.reserve(extra):  # the states fit, their extras do not
            self.cache.memory[i] = self.backend.without_extras(states)

    def fill(self, progress: Optional[Callable] = None, world=None) -> None:
        """Compute every usable utterance's states now (with a progress bar). In a data-parallel run
        (`world`, tuner/distributed.py) each process computes its share into one file that all
        then read; where the processes do not see the same folder, each computes them all."""
        shared = self._shared_file(world) if world is not None and world.parallel else None
        if shared is not None:
            return self._fill_shared(shared, progress, world)
        todo = self.cache.missing(sorted(set(self.source)))
        chunks = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        for chunk in (progress(chunks) if progress else chunks):
            usable = self.examples.usable(chunk)
            if usable:
                self(usable)
        failed, copies = self.examples.failed, [(i, k) for i, k in enumerate(self.source) if i != k]
        for i, k in copies:  # the same file: read (or not) already
            if k in failed:
                failed.setdefault(i, failed[k])
        self.examples.mark_readable([i for i, k in copies if k not in failed])

    def _shared_file(self, world) -> Optional[Path]:
        """The file the processes share the states through, when they all see the main one's folder."""
        if self.cache.folder is None:
            return None
        ids = "\n".join(u.id for u in self.examples.utterances).encode()
        path = Path(self.cache.folder) / f"encoder_states.{hashlib.sha1(ids).hexdigest()[:12]}.shared.f32"
        token_file = path.with_suffix(".token")
        token = 0
        if world.is_main:
            token = secrets.randbelow(1 << 30) + 1
            path.parent.mkdir(parents=True, exist_ok=True)
            world.leftovers.append(str(path))
            np.memmap(path, dtype=np.float32, mode="w+", shape=(len(self.examples), *self.cache.shape)).flush()
            token_file.write_text(str(token))
        token = int(world.sum([token])[0])  # also waits for the file
        seen = token_file.read_text() if token_file.exists() else ""
        shared = world.all_agree(seen == str(token))
        if world.is_main:
            token_file.unlink()
            if not shared:
                path.unlink()
        return path if shared else None

    def _fill_shared(self, path: Path, progress: Optional[Callable], world) -> None:
        n = len(self.examples)
        disk = np.memmap(path, dtype=np.float32, mode="r+", shape=(n, *self.cache.shape))
        mine = world.shard([i for i in range(n) if i not in self.examples.failed])
        chunks = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        for chunk in (progress(chunks) if progress else chunks):
            usable = self.examples.usable(chunk)
            if not usable:
                continue
            for i, states in zip(usable, self.backend.encode(self.examples, usable, self.for_training)):
                disk[i] = self.backend.states_numpy(states)
                if self.cache.reserve(self.backend.states_nbytes(states)):
                    self.cache.memory[i] = states
                    self._keep_extras(i, states)
            self.examples.forget_mels(usable)
        disk.flush()
        failed = np.zeros(n, dtype=np.int32)
        failed[list(self.examples.failed)] = 1
        for i in np.flatnonzero(world.sum(failed)):  # also waits for every share to be written
            self.examples.failed.setdefault(int(i), "unreadable (found by another process)")
        self.cache.disk = disk
        self.cache.disk_path = str(path) if world.is_main else None  # the main process removes it
        if not world.is_main:  # the main process listed it when it made it
            world.leftovers.append(str(path))
        read = [i for i in range(n) if i not in self.examples.failed]
        self.examples.mark_readable(read)
        self.cache.on_disk[read] = True

    def close(self) -> None:
        self.cache.close()
