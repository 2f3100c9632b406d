"""Training-time augmentation (--augment): additive noise, tempo and pitch changes on the waveform
through audiomentations (a maintained library), and SpecAugment masks on the log-mel.

SpecAugment is two frequency masks and two time masks on a numpy array, written here because the
maintained implementations (torchaudio's, tensorflow's) would tie the MLX path to a framework for
ten lines of indexing. Each call draws from a generator seeded once, so runs repeat.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..errors import UserError
from .audio import SAMPLE_RATE

KINDS = ("specaugment", "noise", "speed", "pitch")


def check_kinds(kinds: Sequence[str]) -> tuple:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UserError(f"--augment {' '.join(unknown)}: use any of {', '.join(KINDS)}")
    return tuple(dict.fromkeys(kinds))


class Augmenter:
    """Changes a training utterance's audio or log-mel anew every time it is drawn."""

    def __init__(self, kinds: Sequence[str], seed: int = 0):
        self.kinds = check_kinds(kinds)
        self.rng = np.random.default_rng([int(seed), 11])
        self.waveform_chain = None
        steps = []
        if {"noise", "speed", "pitch"} & set(self.kinds):
            try:
                import audiomentations as am
            except ImportError:
                raise UserError("--augment noise/speed/pitch needs audiomentations: "
                                "pip install 'mlx-whisper-lora[augment]'") from None
            if "noise" in self.kinds:
                steps.append(am.AddGaussianSNR(min_snr_db=10.0, max_snr_db=40.0, p=0.5))
            if "speed" in self.kinds:
                steps.append(am.TimeStretch(min_rate=0.9, max_rate=1.1, leave_length_unchanged=False, p=0.5))
            if "pitch" in self.kinds:
                steps.append(am.PitchShift(min_semitones=-2.0, max_semitones=2.0, p=0.5))
            self.waveform_chain = am.Compose(steps)

    @property
    def changes_audio(self) -> bool:
        return self.waveform_chain is not None

    def waveform(self, audio: np.ndarray) -> np.ndarray:
        if self.waveform_chain is None:
            return audio
        import random

        seed = int(self.rng.integers(2**31))  # audiomentations draws from the global generators
        np.random.seed(seed)
        random.seed(seed)
        return self.waveform_chain(samples=audio.astype(np.float32), sample_rate=SAMPLE_RATE)

    def mel(self, mel: np.ndarray, frames: Optional[int] = None) -> np.ndarray:
        """SpecAugment (LibriSpeech 'basic' policy): 2 frequency masks of up to 27 of 80 bins (scaled to
        the mel count), 2 time masks of up to 100 frames within the `frames` that hold speech."""
        if "specaugment" not in self.kinds:
            return mel
        out = mel.copy()  # (frames, n_mels)
        n_frames, n_mels = out.shape
        frames = min(n_frames, frames or n_frames)
        fill = out.mean()
        for _ in range(2):
            width = int(self.rng.integers(0, max(1, round(27 * n_mels / 80)) + 1))
            start = int(self.rng.integers(0, max(1, n_mels - width)))
            out[:, start:start + width] = fill
        for _ in range(2):
            width = int(self.rng.integers(0, min(100, max(1, frames // 5)) + 1))
            start = int(self.rng.integers(0, max(1, frames - width)))
            out[start:start + width, :] = fill
        return out
