"""Utterances made ready for a model: labels, lengths for batching, and log-mels on demand.

Log-mels are computed when a batch first needs them and kept while under a memory limit; audio
that cannot be read at that point is recorded in `failed` and left out, never stopping a run.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Set

import numpy as np

from ..text.case_style import training_text
from .audio import N_FRAMES, N_SAMPLES, AudioError, log_mel_spectrogram, pad_or_trim
from .labels import Label, make_label
from .manifests import Utterance

REPLAY_ID_PREFIX = "replay:"  # ids of rows mixed in against forgetting (--replay-data), whatever their source


class ExampleSet:
    """A split's utterances with their labels; hands out log-mels by index."""

    def __init__(self, utterances: List[Utterance], labels: List[Label], n_mels: int, name: str = "train"):
        self.utterances = utterances
        self.labels = labels
        self.n_mels = n_mels
        self.name = name
        self.lengths = [len(lab.tokens) for lab in labels]
        self.failed: Dict[int, str] = {}  # index -> why its audio could not be read at batch time
        self._mels: Dict[int, np.ndarray] = {}
        self._mel_bytes = 0
        self._readable: Set[int] = set()  # audio read once already (its log-mel may since be forgotten)

    def __len__(self) -> int:
        return len(self.utterances)

    @classmethod
    def build(cls, utterances: List[Utterance], tokenizer, task: str, n_mels: int, max_tokens: int,
              timestamp_fraction: float = 0.0, seed: int = 0, name: str = "train", case_style: str = "keep",
              prompt_fraction: float = 0.0) -> tuple:
        """(ExampleSet, number of labels cut at the decoder context). Labels are the transcripts in
        the training case of `case_style` (the vocabulary's case for one-case data, see case_style.py); a
        `timestamp_fraction` share is timed (by segment where a row knows its segments), a `prompt_fraction`
        share of the rows that know their previous text is conditioned on it."""
        rng = np.random.default_rng([int(seed), 7])
        with_times = rng.random(len(utterances)) < timestamp_fraction
        with_prompt = rng.random(len(utterances)) < prompt_fraction

        def styled(text: str, u: Utterance) -> str:
            return training_text(text, case_style, tokenizer, u.language)

        # a packed window without timestamps leaves out its open last clip (packing.py)
        utterances = [u if t or not hasattr(u, "untimed") else u.untimed() for u, t in zip(utterances, with_times)]
        labels = [make_label(tokenizer, styled(u.text, u), u.language, task, u.duration, bool(t), max_tokens,
                             [(a, b, styled(x, u)) for a, b, x in (u.segments or u.sentences)]
                             if (u.segments or u.sentences) else None,
                             styled(u.previous_text, u) if p and u.previous_text else None)
                  for u, t, p in zip(utterances, with_times, with_prompt)]
        return cls(utterances, labels, n_mels, name), sum(lab.truncated for lab in labels)

    def replayed(self, indices: Sequence[int]) -> List[bool]:
        """Which of these rows were mixed in by --replay-data (their loss may be the base model's distribution)."""
        return [self.utterances[i].id.startswith(REPLAY_ID_PREFIX) for i in indices]

    def seconds(self, indices: Sequence[int]) -> float:
        return float(sum(self.utterances[i].duration or 0.0 for i in indices))

    def mel(self, index: int, cache_limit_bytes: int = 2 << 30) -> np.ndarray:
        """(3000, n_mels) float32 log-mel of a 30 s window, cached while under the limit."""
        if index in self._mels:
            return self._mels[index]
        audio = self.utterances[index].load()
        mel = np.array(log_mel_spectrogram(pad_or_trim(audio, N_SAMPLES), self.n_mels)[:N_FRAMES])
        self._readable.add(index)
        if self._mel_bytes + mel.nbytes <= cache_limit_bytes:
            self._mels[index] = mel
            self._mel_bytes += mel.nbytes
        return mel

    def mels(self, indices: Sequence[int], augment=None) -> np.ndarray:
        """The utterances' log-mels; changed by `augment` (data/augment.py's Augmenter) when given."""
        if augment is None:
            return np.stack([self.mel(i) for i in indices])
        return np.stack([self.augmented_mel(i, augment) for i in indices])

    def augmented_mel(self, index: int, augment) -> np.ndarray:
        """The log-mel of an utterance changed by `augment` (waveform first, then SpecAugment)."""
        if augment.changes_audio:
            audio = augment.waveform(self.utterances[index].load())
            mel = np.array(log_mel_spectrogram(pad_or_trim(audio, N_SAMPLES), self.n_mels)[:N_FRAMES])
            speech = len(audio) // 160
        else:
            mel = self.mel(index)
            speech = int((self.utterances[index].duration or 30.0) * 100)
        return augment.mel(mel, speech)

    def forget_mels(self, indices: Sequence[int]) -> None:
        for i in indices:
            mel = self._mels.pop(i, None)
            if mel is not None:
                self._mel_bytes -= mel.nbytes

    def mark_readable(self, indices: Sequence[int]) -> None:
        """Record audio another process has read (a data-parallel run's shared encoder states), so
        that `usable` does not read it again here."""
        self._readable.update(i for i in indices if i not in self.failed)

    def usable(self, indices: Sequence[int]) -> List[int]:
        """The indices whose audio can be read; the others are recorded in `failed` and dropped.
        (Reading the audio computes and keeps its log-mel, which the batch needs next.)"""
        out = []
        for i in indices:
            if i in self.failed:
                continue
            if i not in self._readable:
                try:
                    self.mel(i)
                except AudioError as e:
                    self.failed[i] = str(e)
                    continue
            out.append(i)
        return out
