"""Whisper's shape (layers, widths, vocabulary) and its fixed encoder position table, without a framework.

Both back ends build their model from a `ModelDimensions`, and adapter files record it, so a
config can be read and checked without importing MLX or PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_dict(cls, config: dict) -> "ModelDimensions":
        names = {f.name for f in fields(cls)}
        missing = names - set(config)
        if missing:
            raise ValueError(f"model config lacks {sorted(missing)}")
        return cls(**{k: int(config[k]) for k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.n_vocab - 51765 - int(self.is_multilingual)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """The encoder's fixed positional table (computed, never stored), float32 throughout."""
    assert channels % 2 == 0
    log_increment = np.float32(math.log(max_timescale) / (channels // 2 - 1))
    inv = np.exp(-log_increment * np.arange(channels // 2, dtype=np.float32))
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)
