"""Utterances made ready for the model: labels, log-mels, and cached encoder states.

When the encoder is frozen and carries no adapter, its output for an utterance never changes, so
it is computed once (with the fast inference kernels) and reused every epoch: training then runs
only the decoder. States stay in memory up to a limit, beyond that in a memory-mapped file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import mlx.core as mx
import numpy as np

from .case_style import training_text
from .audio import N_FRAMES, N_SAMPLES, AudioError, log_mel_spectrogram, pad_or_trim
from .data import Utterance
from .objective import Label, make_label


class ExampleSet:
    """A split's utterances with their labels; hands out batches of model inputs."""

    def __init__(self, utterances: List[Utterance], labels: List[Label], n_mels: int, name: str = "train"):
        self.utterances = utterances
        self.labels = labels
        self.n_mels = n_mels
        self.name = name
        self.lengths = [len(lab.tokens) for lab in labels]
        self.failed: Dict[int, str] = {}  # index -> why its audio could not be read at batch time
        self._mels: Dict[int, mx.array] = {}
        self._mel_bytes = 0
        self._states: Optional["EncoderCache"] = None

    def __len__(self) -> int:
        return len(self.utterances)

    @classmethod
    def build(cls, utterances: List[Utterance], tokenizer, task: str, n_mels: int, max_tokens: int,
              timestamp_fraction: float = 0.0, seed: int = 0, name: str = "train", case_style: str = "keep") -> tuple:
        """(ExampleSet, number of labels cut at the decoder context). Labels are the transcripts in
        the training case of `case_style` (the vocabulary's case for one-case data, see case_style.py)."""
        rng = np.random.default_rng([int(seed), 7])
        with_times = rng.random(len(utterances)) < timestamp_fraction
        labels = [make_label(tokenizer, training_text(u.text, case_style, tokenizer, u.language), u.language, task,
                             u.duration, bool(t), max_tokens)
                  for u, t in zip(utterances, with_times)]
        return cls(utterances, labels, n_mels, name), sum(lab.truncated for lab in labels)

    def seconds(self, indices: Sequence[int]) -> float:
        return float(sum(self.utterances[i].duration or 0.0 for i in indices))

    # ---- audio
    def mel(self, index: int, cache_limit_bytes: int = 2 << 30) -> mx.array:
        """(3000, n_mels) log-mel of a 30 s window, cached while under the limit."""
        if index in self._mels:
            return self._mels[index]
        audio = self.utterances[index].load()
        mel = log_mel_spectrogram(pad_or_trim(audio, N_SAMPLES), self.n_mels)[:N_FRAMES]
        mx.eval(mel)
        if self._mel_bytes + mel.nbytes <= cache_limit_bytes:
            self._mels[index] = mel
            self._mel_bytes += mel.nbytes
        return mel

    def usable(self, indices: Sequence[int]) -> List[int]:
        """The indices whose audio can be read; the others are recorded in `failed` and dropped."""
        out = []
        for i in indices:
            if i in self.failed:
                continue
            if self._states is not None and self._states.has(i):
                out.append(i)
                continue
            try:
                self.mel(i)
            except AudioError as e:
                self.failed[i] = str(e)
                continue
            out.append(i)
        return out

    def mels(self, indices: Sequence[int]) -> mx.array:
        return mx.stack([self.mel(i) for i in indices])

    # ---- frozen encoder
    def use_encoder_cache(self, model, memory_limit_bytes: int = 4 << 30, folder: Optional[Path] = None,
                          batch_size: int = 8, progress: Optional[Callable] = None) -> None:
        self._states = EncoderCache(len(self), model.dims.n_audio_ctx, model.dims.n_audio_state,
                                    memory_limit_bytes, folder)
        self._encoder = model
        self._cache_batch = batch_size
        self._progress = progress

    def encoder_states(self, indices: Sequence[int]) -> mx.array:
        """Audio states for a batch from the cache, computing the missing ones."""
        missing = [i for i in indices if not self._states.has(i)]
        for start in range(0, len(missing), self._cache_batch):
            chunk = missing[start:start + self._cache_batch]
            states = self._encoder.embed_audio(self.mels(chunk))
            mx.eval(states)
            for i, s in zip(chunk, states):
                self._states.put(i, s)
            for i in chunk:  # the mel is no longer needed
                mel = self._mels.pop(i, None)
                if mel is not None:
                    self._mel_bytes -= mel.nbytes
        return mx.stack([self._states.get(i) for i in indices])

    def fill_encoder_cache(self) -> None:
        """Compute every utterance's encoder states now (with a progress bar)."""
        todo = [i for i in range(len(self)) if not self._states.has(i)]
        chunks = [todo[i:i + self._cache_batch] for i in range(0, len(todo), self._cache_batch)]
        iterator = self._progress(chunks) if self._progress else chunks
        for chunk in iterator:
            ok = self.usable(chunk)
            if ok:
                self.encoder_states(ok)

    @property
    def caches_encoder(self) -> bool:
        return self._states is not None

    def close(self) -> None:
        if self._states is not None:
            self._states.close()


class EncoderCache:
    """Encoder states per utterance: in memory while under the limit, then in a memory-mapped file."""

    def __init__(self, n: int, n_ctx: int, n_state: int, memory_limit_bytes: int, folder: Optional[Path]):
        self.shape = (n_ctx, n_state)
        self.memory: Dict[int, mx.array] = {}
        self.bytes = 0
        self.limit = memory_limit_bytes
        self.n = n
        self.folder = folder
        self.disk: Optional[np.memmap] = None
        self.on_disk = np.zeros(n, dtype=bool)
        self._path: Optional[str] = None

    def has(self, i: int) -> bool:
        return i in self.memory or bool(self.on_disk[i])

    def put(self, i: int, states: mx.array) -> None:
        nbytes = states.size * 4
        if self.bytes + nbytes <= self.limit:
            self.memory[i] = states.astype(mx.float32)
            self.bytes += nbytes
            return
        self.spill(i, np.array(states.astype(mx.float32)))

    def spill(self, i: int, states: np.ndarray) -> None:
        """Write one utterance's states to the memory-mapped file (created on first use)."""
        if self.disk is None:
            folder = str(self.folder) if self.folder else None
            if folder:
                os.makedirs(folder, exist_ok=True)
            fd, self._path = tempfile.mkstemp(prefix="encoder_states_", suffix=".f32", dir=folder)
            os.close(fd)
            self.disk = np.memmap(self._path, dtype=np.float32, mode="w+", shape=(self.n, *self.shape))
        self.disk[i] = states
        self.on_disk[i] = True

    def get(self, i: int) -> mx.array:
        if i in self.memory:
            return self.memory[i]
        return mx.array(self.disk[i])

    def close(self) -> None:
        if self.disk is not None:
            del self.disk
            self.disk = None
            if self._path and os.path.exists(self._path):
                os.unlink(self._path)
