"""The seam between the decoders here and an engine's network: what `inference/` asks of a model.

Both engines implement it (backend_mlx/model.py's Whisper through backend_mlx/decoding.py, and
backend_torch/decoding.py's TorchDecodingModel), with numpy at the boundary: log-mels in, audio
features and logits out as float32 arrays, token ids as integers. So the search (greedy, sampling,
beam, fallback, timestamps, word timing) is written once, and runs where only one framework is installed.
What crosses is small: a window's features once per decoding call, the logits of the last position per
step; the cache stays inside the engine.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np


@runtime_checkable
class DecodingModel(Protocol):
    """A Whisper network for decoding. Besides the methods: `dims` (formats/dims.py), `folder`, `case_style`,
    `punctuation`, `is_multilingual`, `num_languages` and `alignment_heads` ((layer, head) pairs)."""

    def encode_audio(self, mel: np.ndarray) -> np.ndarray:
        """Encoder states (batch, n_audio_ctx, n_audio_state), float32, of log-mel windows (batch, frames, n_mels)."""

    def decode_step(self, tokens: np.ndarray, audio_features: np.ndarray, cache: Optional[Any] = None,
                    positions: Sequence[int] = (-1,)) -> Tuple[np.ndarray, Any]:
        """Feed `tokens` (rows, n) after what `cache` holds (None: a new sequence over `audio_features`,
        (rows, n_audio_ctx, n_state)); returns float32 logits at the fed `positions` (rows, len(positions),
        vocab) and the cache to pass next."""

    def select_rows(self, cache: Any, rows: np.ndarray, audio_too: bool = False) -> Any:
        """The cache of those rows, in that order. Beam search reorders rows among the beams of one audio,
        whose cross-attention keys and values are the same: those stay as they are (no copy of the
        largest part of the cache each step); `audio_too` selects them as well (finished rows leaving)."""

    def alignment_scores(self, tokens: np.ndarray, audio_features: np.ndarray,
                         heads: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """For word timing: float32 logits (tokens, vocab) of one sequence (1, n) and the pre-softmax
        cross-attention scores of the (layer, head) pairs (default: the alignment heads), (heads, tokens, audio)."""

    def set_alignment_heads(self, heads) -> None:
        """Use these (layer, head) pairs for word timing."""


def require_decoding_model(model) -> DecodingModel:
    """`model` itself when it offers the decoding methods; else a TypeError naming what it lacks (a
    training engine's raw network passed where the decoders need the engine's decoding model)."""
    missing = [name for name in ("encode_audio", "decode_step", "select_rows", "alignment_scores")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"{type(model).__name__} cannot be decoded: it lacks {', '.join(missing)} "
                        "(inference/decoding_model.py)")
    return model
