"""Whisper's encoder-decoder transformer in MLX.

Parameter names follow openai-whisper and mlx-whisper (`encoder.blocks.0.attn.query`, `mlp1`,
`cross_attn_ln`, ...) so weights, adapters and diffs line up with those projects.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..formats import dims
from ..formats.dims import ModelDimensions
from ..formats.model_metadata import ModelMetadata, default_alignment_heads
from . import cpu_kernels
from .training import chunked_attention, cpu_softmax
from .decoding import NumpyDecoding

KVCache = Tuple[mx.array, mx.array]


def sinusoids(length: int, channels: int) -> mx.array:
    """The encoder's fixed positional table (formats/dims.py: the same numbers in both back ends)."""
    return mx.array(dims.sinusoids(length, channels))


class MultiHeadAttention(nn.Module):
    # Set by training when the encoder trains: its self-attention keeps no (frames x frames) matrix for
    # the backward pass (chunked_attention.py)
    blockwise = False

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def __call__(
        self,
        x: mx.array,
        xa: Optional[mx.array] = None,
        mask: Optional[mx.array] = None,
        kv_cache: Optional[KVCache] = None,
        fast_kernels: bool = False,
        numpy_attention: bool = False,
        scores: bool = False,
    ) -> Tuple[mx.array, KVCache, Optional[mx.array]]:
        """Returns the output, the keys/values to cache and, when `scores` or with the CPU kernels, the
        attention scores (else the fused attention runs and gives none).

        numpy_attention: the encoder's unmasked self-attention in numpy (inference only); no
        scores or cache are returned then.

        Cached keys and values are kept split into heads, (batch, heads, positions, head_dim), with
        the key already scaled, so a decoding step reuses them without reshaping 1500 audio positions.
        """
        if numpy_attention:
            scale = self._scale(x) ** 2
            out = cpu_kernels.attention(self.query(x), self.key(x), self.value(x), self.n_head, scale)
            return self.out(out), (None, None), None
        q = self._heads(self.query(x)) * self._scale(x)
        if xa is None:  # self-attention: append this step's keys/values to the cache
            k, v = self._heads(self.key(x)) * self._scale(x), self._heads(self.value(x))
            if kv_cache is not None:
                k = mx.concatenate([kv_cache[0], k], axis=2)
                v = mx.concatenate([kv_cache[1], v], axis=2)
        elif kv_cache is None:  # cross-attention, first call for this audio
            # Materialise the head layout once: every decoding step reads these.
            k = mx.contiguous(self._heads(self.key(xa)) * self._scale(xa))
            v = mx.contiguous(self._heads(self.value(xa)))
        else:  # cross-attention: keys/values of the audio were computed once
            k, v = kv_cache
        b, _, n_q, _ = q.shape
        if self.blockwise and xa is None and mask is None and not (scores or fast_kernels):
            out = chunked_attention.attention(q, k, v)
            return self.out(out.transpose(0, 2, 1, 3).reshape(b, n_q, -1)), (k, v), None
        if not (scores or fast_kernels):  # queries and keys are scaled already
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)
            return self.out(out.transpose(0, 2, 1, 3).reshape(b, n_q, -1)), (k, v), None
        qk = q @ k.swapaxes(-1, -2)
        if mask is not None:
            qk = qk + mask
        if fast_kernels:
            w = cpu_kernels.softmax_last_axis(qk).astype(q.dtype)
        else:
            w = mx.softmax(qk.astype(mx.float32), axis=-1).astype(q.dtype)
        out = (w @ v).transpose(0, 2, 1, 3).reshape(b, n_q, -1)
        return self.out(out), (k, v), qk

    def attend_cached(self, x: mx.array, xa: mx.array, base_kv) -> mx.array:
        """Cross-attention of `x` over audio states `xa` whose frozen base keys and values were computed
        before (`base_keys_values`, kept by the training cache). An adapter on the key or value adds
        s * (xa @ A) @ B; it enters through the rank-r term (xa @ A): its product with the queries or
        the attention weights is taken before the (frames, state) delta would be formed, which is what
        recomputing the keys and values costs every step otherwise (the same numbers, reassociated).
        `base_kv` is stacked (batch, heads, frames, head_dim) arrays or, per utterance, lists of (heads, frames,
        head_dim) arrays as the training cache keeps them: read in place, without a batch-sized copy."""
        base_k, base_v = base_kv
        scale = self._scale(x)
        q = self._heads(self.query(x)) * scale
        b, h, n, dh = q.shape
        per_row = isinstance(base_k, (list, tuple))  # each utterance's cached arrays, not a stacked copy
        frames = (base_k[0] if per_row else base_k).shape[-2]
        if per_row:
            scores = mx.stack([q[j] @ base_k[j].swapaxes(-1, -2) for j in range(b)])
        else:
            scores = q @ base_k.swapaxes(-1, -2)
        if getattr(self.key, "additive", False):
            low, up = self.key.low_rank_terms(xa)  # (batch, frames, r), (r, state)
            q_up = q @ up.reshape(-1, h, dh).transpose(1, 2, 0)  # (batch, heads, n, r)
            scores = scores + (q_up.reshape(b, h * n, -1) @ low.swapaxes(1, 2)).reshape(b, h, n, frames) * scale
        w = cpu_softmax.softmax(scores).astype(q.dtype)
        out = mx.stack([w[j] @ base_v[j] for j in range(b)]) if per_row else w @ base_v
        if getattr(self.value, "additive", False):
            low, up = self.value.low_rank_terms(xa)
            mixed = (w.reshape(b, h * n, frames) @ low).reshape(b, h, n, -1)  # (batch, heads, n, r)
            out = out + mixed @ up.reshape(-1, h, dh).transpose(1, 0, 2)
        return self.out(out.transpose(0, 2, 1, 3).reshape(b, n, -1))

    def frozen_keys_values(self) -> bool:
        """Whether the key and value base projections get no gradient, so their outputs can be cached."""
        for m in (self.key, self.value):
            if isinstance(m, (nn.Linear, nn.QuantizedLinear)):
                base = m
            elif getattr(m, "additive", False):
                base = m.linear
            else:
                return False  # DoRA rescales the whole projection
            if tree_flatten(base.trainable_parameters()):
                return False
        return True

    def base_keys_values(self, xa: mx.array) -> KVCache:
        """The frozen base keys (scaled, as the inference cache keeps them) and values of audio states
        `xa`, split into heads: what `attend_cached` reads."""
        base = lambda m: getattr(m, "linear", m)  # noqa: E731
        return (mx.contiguous(self._heads(base(self.key)(xa)) * self._scale(xa)),
                mx.contiguous(self._heads(base(self.value)(xa))))

    def _heads(self, x: mx.array) -> mx.array:
        b, n, d = x.shape
        return x.reshape(b, n, self.n_head, d // self.n_head).transpose(0, 2, 1, 3)

    def _scale(self, x: mx.array) -> float:
        # Whisper scales queries and keys each by head_dim^-1/4 (together 1/sqrt(head_dim)).
        return (x.shape[-1] // self.n_head) ** -0.25


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        n_mlp = n_state * 4
        self.mlp1 = nn.Linear(n_state, n_mlp)
        self.mlp2 = nn.Linear(n_mlp, n_state)
        self.mlp_ln = nn.LayerNorm(n_state)

    # Set by training with --grad-checkpoint: recompute this block's activations in the backward pass.
    grad_checkpoint = False

    def __call__(self, x, xa=None, mask=None, kv_cache=None, fast_kernels=False, base_kv=None, scores=False):
        """`base_kv`: the cross-attention's cached frozen base keys and values (training); `scores`: also
        return the cross-attention scores (word timing), which the fused attention does not give."""
        if self.grad_checkpoint and kv_cache is None and not (fast_kernels or scores):
            return self._checkpointed(x, xa, mask, base_kv), (None, None), None
        return self._forward(x, xa, mask, kv_cache, fast_kernels, base_kv, scores)

    def _checkpointed(self, x, xa, mask, base_kv):
        given = {"xa": xa, "mask": mask, "base_kv": base_kv}
        names = [k for k, v in given.items() if v is not None]

        def inner(params, x, *extra):
            self.update(params)
            return self._forward(x, **dict(zip(names, extra)))[0]

        return mx.checkpoint(inner)(self.trainable_parameters(), x, *[given[k] for k in names])

    def _forward(self, x, xa=None, mask=None, kv_cache=None, fast_kernels=False, base_kv=None, scores=False):
        self_kv, cross_kv = kv_cache if kv_cache is not None else (None, None)
        encoder_fast = fast_kernels and self.cross_attn is None
        y, self_kv, _ = self.attn(self.attn_ln(x), mask=mask, kv_cache=self_kv, fast_kernels=fast_kernels,
                                  numpy_attention=encoder_fast)
        x = x + y
        cross_qk = None
        if self.cross_attn is not None and base_kv is not None:
            x = x + self.cross_attn.attend_cached(self.cross_attn_ln(x), xa, base_kv)
        elif self.cross_attn is not None:
            y, cross_kv, cross_qk = self.cross_attn(self.cross_attn_ln(x), xa, kv_cache=cross_kv,
                                                    fast_kernels=fast_kernels, scores=scores)
            x = x + y
        gelu = cpu_kernels.gelu if fast_kernels else nn.gelu
        x = x + self.mlp2(gelu(self.mlp1(self.mlp_ln(x))))
        return x, (self_kv, cross_kv), cross_qk


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self._positional_embedding = sinusoids(n_ctx, n_state)
        self.blocks = [ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)]
        self.ln_post = nn.LayerNorm(n_state)

    def __call__(self, mel: mx.array, fast_kernels: bool = False) -> mx.array:
        """mel: (batch, frames, n_mels) -> audio states (batch, frames // 2, n_state).

        fast_kernels: use the inference-only CPU kernels (not differentiable)."""
        gelu = cpu_kernels.gelu if fast_kernels else nn.gelu
        x = gelu(self.conv1(mel))
        x = gelu(self.conv2(x))
        n = x.shape[1]
        if n > self._positional_embedding.shape[0]:
            raise ValueError(f"audio features have {n} frames, more than the encoder's {self._positional_embedding.shape[0]}")
        x = x + self._positional_embedding[:n].astype(x.dtype)
        for block in self.blocks:
            x, _, _ = block(x, fast_kernels=fast_kernels)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = mx.zeros((n_ctx, n_state))
        self.blocks = [ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)]
        self.ln = nn.LayerNorm(n_state)
        self._mask = nn.MultiHeadAttention.create_additive_causal_mask(n_ctx)

    def hidden(self, tokens: mx.array, xa: mx.array, base_cross_kv: Optional[List[KVCache]] = None) -> mx.array:
        """The training forward pass up to the final layer norm: (batch, n, n_state), no logits.
        `base_cross_kv`: per block, the cross-attention's cached frozen keys and values."""
        n = tokens.shape[-1]
        x = (self.token_embedding(tokens) + self.positional_embedding[:n]).astype(xa.dtype)
        mask = self._mask[:n, :n].astype(x.dtype) if n > 1 else None
        for i, block in enumerate(self.blocks):
            x, _, _ = block(x, xa, mask=mask, base_kv=None if base_cross_kv is None else base_cross_kv[i])
        return self.ln(x)

    def cross_kv_cacheable(self) -> bool:
        return all(block.cross_attn.frozen_keys_values() for block in self.blocks)

    def base_cross_kv(self, xa: mx.array) -> List[KVCache]:
        return [block.cross_attn.base_keys_values(xa) for block in self.blocks]

    def __call__(
        self, tokens: mx.array, xa: mx.array, kv_cache: Optional[List] = None, fast_kernels: bool = False,
        scores: bool = False,
    ) -> Tuple[mx.array, List, List[mx.array]]:
        """tokens: (batch, n) -> logits (batch, n, n_vocab), the updated cache, cross-attention scores
        (with `scores` or the CPU kernels; else Nones).

        fast_kernels: inference-only CPU kernels (numpy softmax, a transposed copy of the output
        projection, which CPU BLAS reads ~2.5x faster); not differentiable."""
        offset = kv_cache[0][0][0].shape[2] if kv_cache and kv_cache[0][0] is not None else 0
        n = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.positional_embedding[offset : offset + n]
        x = x.astype(xa.dtype)
        mask = None
        if n > 1:
            mask = self._mask[:n, :n].astype(x.dtype)
            if offset:
                mask = mx.concatenate([mx.zeros((n, offset), dtype=x.dtype), mask], axis=1)
        if kv_cache is None:
            kv_cache = [None] * len(self.blocks)
        cross_qk = []
        new_cache = []
        for block, cache in zip(self.blocks, kv_cache):
            x, cache, qk = block(x, xa, mask=mask, kv_cache=cache, fast_kernels=fast_kernels, scores=scores)
            new_cache.append(cache)
            cross_qk.append(qk)
        x = self.ln(x)
        if fast_kernels and "scales" not in self.token_embedding:
            return x @ self._output_projection(), new_cache, cross_qk
        return self.token_embedding.as_linear(x), new_cache, cross_qk

    @staticmethod
    def select_rows(kv_cache: List, rows) -> List:
        """The cache with its self-attention rows reordered (beam search); cross keys/values are per audio."""
        idx = mx.array(np.asarray(rows, dtype=np.int32))
        return [((mx.take(sk, idx, 0), mx.take(sv, idx, 0)), cross) for (sk, sv), cross in kv_cache]

    def _output_projection(self) -> mx.array:
        """The embedding transposed to (n_state, n_vocab), cached until the embedding array changes."""
        weight = self.token_embedding.weight
        cached = getattr(self, "_projection_cache", None)
        if cached is None or cached[0] is not weight:
            cached = (weight, mx.contiguous(weight.T))
            self._projection_cache = cached
        return cached[1]


class Whisper(ModelMetadata, NumpyDecoding, nn.Module):
    def __init__(self, dims: ModelDimensions, dtype: mx.Dtype = mx.float32):
        super().__init__()
        self.init_metadata(dims)
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        self.decoder = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
        )
        # cross-attention heads that follow the audio in time (word timing)
        self.alignment_heads = mx.array(default_alignment_heads(dims), dtype=mx.int32)
        self.set_dtype(dtype)

    def set_alignment_heads(self, heads) -> None:
        self.alignment_heads = mx.array([[int(a), int(b)] for a, b in heads], dtype=mx.int32)

    def set_dtype(self, dtype: mx.Dtype) -> None:
        """Cast floating parameters to dtype (layer norms too: MLX computes them in fp32 inside)."""
        self.update(
            nn.utils.tree_map(
                lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p, self.parameters()
            )
        )

    @property
    def dtype(self) -> mx.Dtype:
        return self.decoder.ln.weight.dtype  # layer norms are never quantized

    def embed_audio(self, mel) -> mx.array:
        """Audio states for inference (uses the fast CPU kernels on the CPU device); `mel`: MLX or numpy."""
        return self.encoder(mx.array(mel).astype(self.dtype), fast_kernels=mx.default_device() == mx.cpu)

    def logits(self, tokens: mx.array, audio_features: mx.array) -> mx.array:
        return self.decoder(tokens, audio_features)[0]

    def alignment_scores(self, tokens: np.ndarray, audio_features, heads=None) -> Tuple[np.ndarray, np.ndarray]:
        """For word timing (inference/timing.py): float32 logits (tokens, vocab) of one token sequence
        (1, n) and the pre-softmax cross-attention scores of the given (layer, head) pairs (heads,
        tokens, audio positions); heads default to the model's alignment heads."""
        logits, _, cross_qk = self.decoder(mx.array(np.asarray(tokens, dtype=np.int32)), self._features(audio_features),
                                           scores=True)
        pairs = self.alignment_heads.tolist() if heads is None else [list(h) for h in heads]
        qk = mx.stack([cross_qk[layer][0, head] for layer, head in pairs])
        return np.array(logits[0].astype(mx.float32)), np.array(qk.astype(mx.float32))

    def __call__(self, mel: mx.array, tokens: mx.array) -> mx.array:
        """Logits with exact, differentiable ops (the training forward pass)."""
        return self.decoder(tokens, self.encoder(mel.astype(self.dtype)))[0]
