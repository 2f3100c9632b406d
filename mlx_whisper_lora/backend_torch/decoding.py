"""The torch Whisper's side of the decoding seam (inference/decoding_model.py): numpy in and out, so
the one decoder in inference/decoding.py (greedy, sampling, beam search, fallback, timestamps, word
timing) drives it, and nothing here needs MLX.

The decoder keeps a self-attention cache and computes the cross-attention keys and values (adapters
included) once per window.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..inference.decoding import DecodingOptions, decode

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def greedy_decode(model, mel: Optional[torch.Tensor], language: Optional[str] = "en", task: str = "transcribe",
                  sample_len: Optional[int] = None, features: Optional[torch.Tensor] = None,
                  stop_loops_at: Optional[float] = None) -> List[str]:
    """Texts of greedy, timestamp-free decoding of log-mel windows (batch, 3000, n_mels), or of
    their encoder states `features` when those are at hand (inference/decoding.py's decoder).
    `stop_loops_at`: as DecodingOptions'."""
    decoding = TorchDecodingModel(model)
    options = DecodingOptions(language=language, task=task, without_timestamps=True, temperature=0.0,
                              sample_len=sample_len, stop_loops_at=stop_loops_at, finished_rows_leave=True)
    if features is None:
        features = decoding.encode_audio(mel)
    return [r.text for r in decode(decoding, None, options, audio_features=_numpy32(features))]


def _numpy32(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


class TorchDecodingModel:
    """The torch Whisper behind the interface `inference/` decodes and aligns through; arrays cross as
    numpy: audio features once per window, the last position's logits once per step."""

    def __init__(self, model, dtype: str = "float32"):
        self.model = model.eval()
        self.dims = model.dims
        self.folder = model.folder
        self.case_style = model.case_style
        self.punctuation = model.punctuation
        self.device = next(model.parameters()).device
        self.dtype = DTYPES[dtype]

    @property
    def is_multilingual(self) -> bool:
        return self.model.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.model.num_languages

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_torch(self, x) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(self.device)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    def encode_audio(self, mel) -> np.ndarray:
        with torch.no_grad(), self.autocast():
            return _numpy32(self.model.embed_audio(self.to_torch(mel)))

    def decode_step(self, tokens: np.ndarray, audio_features, cache=None, positions: Sequence[int] = (-1,)):
        with torch.no_grad(), self.autocast():
            if cache is None:
                cache = self.model.decoder.new_cache(self.to_torch(audio_features))
            ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.device)
            logits, cache = self.model.decoder.step(ids, cache)
        return _numpy32(logits[:, list(positions)]), cache

    def select_rows(self, cache, rows, audio_too: bool = False) -> list:
        if not audio_too:
            return self.model.decoder.select_rows(cache, rows)
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=self.device)
        return [tuple(t.index_select(0, idx) for t in layer) for layer in cache]

    @property
    def alignment_heads(self):
        return self.model.alignment_heads

    def set_alignment_heads(self, heads) -> None:
        self.model.set_alignment_heads(heads)

    def alignment_scores(self, tokens: np.ndarray, audio_features, heads=None):
        """Float32 logits (tokens, vocab) and the chosen heads' cross-attention scores (heads, tokens,
        audio positions), as numpy."""
        with torch.no_grad(), self.autocast():
            logits, scores = self.model.decoder.cross_attention_scores(
                torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.device), self.to_torch(audio_features))
        pairs = self.model.alignment_heads if heads is None else heads
        qk = torch.stack([scores[int(layer)][0, int(head)] for layer, head in pairs])
        return logits[0].float().cpu().numpy(), qk.float().cpu().numpy()
