"""Decoding with the torch model: greedy 30 s windows, and a bridge that lets the MLX port's
decoder and long-form transcriber (beam search, fallback, timestamps) drive the torch model.

Both keep a self-attention cache and compute the cross-attention keys and values (adapters
included) once per window, as the MLX decoder does.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional

import mlx.core as mx
import numpy as np
import torch

from ..inference.decoding import DecodingOptions, SuppressBlank, SuppressTokens, looping_rows, suppressed_ids
from ..text.tokenizer import get_tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.no_grad()
def greedy_decode(model, mel: Optional[torch.Tensor], language: Optional[str] = "en", task: str = "transcribe",
                  sample_len: Optional[int] = None, features: Optional[torch.Tensor] = None,
                  stop_loops_at: Optional[float] = None) -> List[str]:
    """Texts of greedy, timestamp-free decoding of log-mel windows (batch, 3000, n_mels), or of
    their encoder states `features` when those are at hand. `stop_loops_at`: as DecodingOptions'."""
    model.eval()
    tok = get_tokenizer(model.is_multilingual, model.num_languages, language=language, task=task,
                        model_dir=model.folder)
    initial = list(tok.sot_sequence) + [tok.no_timestamps]
    options = DecodingOptions(language=language, task=task, without_timestamps=True)
    filters = [SuppressBlank(tok, len(initial)), SuppressTokens(suppressed_ids(options, tok))]
    device = next(model.parameters()).device
    if features is None:
        features = model.embed_audio(mel.to(device))
    cache = model.decoder.new_cache(features.to(device))
    tokens = np.array([initial] * features.shape[0], dtype=np.int64)
    rows = np.arange(features.shape[0])  # the rows still decoding, in the cache's order
    new = tokens
    for _ in range(sample_len or model.dims.n_text_ctx // 2):
        logits, cache = model.decoder.step(torch.from_numpy(new).to(device), cache)
        logits = logits[:, -1].float().cpu().numpy()
        for f in filters:
            f.apply(logits, tokens[rows])
        nxt = np.full(len(tokens), tok.eot, dtype=np.int64)
        nxt[rows] = logits.argmax(-1)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        going = nxt[rows] != tok.eot
        if stop_loops_at is not None and going.any():
            going[going] = ~looping_rows(tok, tokens[rows[going], len(initial):], stop_loops_at)
        if not going.any():
            break
        if not going.all():  # finished rows leave the batch: their keys and values are read no more
            cache = keep_rows(cache, torch.from_numpy(np.flatnonzero(going)).to(device))
            rows = rows[going]
        new = nxt[rows][:, None]
    return [tok.decode([t for t in row[len(initial):] if t != tok.eot]).strip() for row in tokens.tolist()]


def keep_rows(cache: list, index: torch.Tensor) -> list:
    """The decoding cache of those rows alone, self- and cross-attention alike."""
    return [tuple(t.index_select(0, index) for t in layer) for layer in cache]


class _DecoderBridge:
    def __init__(self, bridge: "TorchDecodingModel"):
        self.bridge = bridge

    def __call__(self, tokens: mx.array, xa: mx.array, kv_cache=None, fast_kernels: bool = False):
        b = self.bridge
        with torch.no_grad(), b.autocast():
            if kv_cache is None:
                kv_cache = b.model.decoder.new_cache(b.to_torch(xa))
            logits, kv_cache = b.model.decoder.step(torch.from_numpy(np.array(tokens).astype(np.int64)).to(b.device),
                                                    kv_cache)
        return mx.array(logits.float().cpu().numpy()), kv_cache, None

    def select_rows(self, kv_cache, rows):
        return self.bridge.model.decoder.select_rows(kv_cache, rows)


class TorchDecodingModel:
    """The torch Whisper seen through the interface `inference.decoding` and `inference.transcriber`
    call (embed_audio, logits, decoder with a cache), so `transcribe --backend torch` shares the
    long-form logic instead of copying it. Arrays cross as numpy: audio features once per window,
    logits once per step."""

    def __init__(self, model, dtype: str = "float32"):
        self.model = model.eval()
        self.dims = model.dims
        self.folder = model.folder
        self.case_style = model.case_style
        self.punctuation = model.punctuation
        self.device = next(model.parameters()).device
        self.dtype = DTYPES[dtype]
        self.decoder = _DecoderBridge(self)

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

    def to_torch(self, x: mx.array) -> torch.Tensor:
        return torch.from_numpy(np.array(x.astype(mx.float32))).to(self.device)

    def embed_audio(self, mel: mx.array) -> mx.array:
        with torch.no_grad(), self.autocast():
            features = self.model.embed_audio(self.to_torch(mel))
        return mx.array(features.float().cpu().numpy())

    @property
    def alignment_heads(self):
        return self.model.alignment_heads

    def set_alignment_heads(self, heads) -> None:
        self.model.set_alignment_heads(heads)

    def alignment_scores(self, tokens: np.ndarray, audio_features: mx.array, heads=None):
        """The MLX model's `alignment_scores`: float32 logits (tokens, vocab) and the chosen heads'
        cross-attention scores (heads, tokens, audio positions), as numpy."""
        with torch.no_grad(), self.autocast():
            logits, scores = self.model.decoder.cross_attention_scores(
                torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(self.device), self.to_torch(audio_features))
        pairs = self.model.alignment_heads if heads is None else heads
        qk = torch.stack([scores[int(layer)][0, int(head)] for layer, head in pairs])
        return logits[0].float().cpu().numpy(), qk.float().cpu().numpy()

    def logits(self, tokens: mx.array, audio_features: mx.array) -> mx.array:
        return self.decoder(tokens, audio_features)[0]
