"""The MLX Whisper's side of the decoding seam (inference/decoding_model.py): numpy in and out.

A mixin of backend_mlx/model.py's Whisper, so a loaded model decodes as it is. Features cross as
float32 (bfloat16 has no numpy type; float16 and bfloat16 round-trip through float32 exactly) and go
back to the model's dtype on the way in; on the CPU the inference-only kernels run (`fast_kernels`).
"""

from __future__ import annotations

from typing import Sequence

import mlx.core as mx
import numpy as np


def _numpy32(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


class NumpyDecoding:
    """encode_audio, decode_step, select_rows over the model's encoder and decoder (alignment_scores is the model's)."""

    def _features(self, audio_features) -> mx.array:
        return mx.array(audio_features).astype(self.dtype)

    def encode_audio(self, mel: np.ndarray) -> np.ndarray:
        return _numpy32(self.embed_audio(mx.array(np.asarray(mel, dtype=np.float32))))

    def decode_step(self, tokens: np.ndarray, audio_features, cache=None, positions: Sequence[int] = (-1,)):
        fast = mx.default_device() == mx.cpu
        xa = self._features(audio_features) if cache is None else None
        if xa is None:  # the cross-attention keys and values are in the cache; the states only set the dtype
            xa = mx.zeros((1, 1, 1), dtype=self.dtype)
        logits, cache, _ = self.decoder(mx.array(np.asarray(tokens, dtype=np.int32)), xa, cache, fast_kernels=fast)
        return _numpy32(logits[:, mx.array(np.asarray(positions, dtype=np.int32))]), cache

    def select_rows(self, cache, rows, audio_too: bool = False) -> list:
        if not audio_too:
            return self.decoder.select_rows(cache, rows)
        idx = mx.array(np.asarray(rows, dtype=np.int32))
        return [tuple(tuple(mx.take(t, idx, 0) for t in pair) for pair in layer) for layer in cache]
