"""Whisper in PyTorch with the MLX model's parameter names and shapes (conv kernels aside).

Parameter names match `mlx_whisper_lora.backend_mlx.model` exactly (`decoder.blocks.3.cross_attn.query.weight`),
so adapter files are shared as they are. Only the two conv kernels differ in layout: PyTorch keeps
(out, in, kernel), MLX (out, kernel, in); `load_mlx_weights` / `mlx_weights` transpose them.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizedBase
from ..formats import dims as model_dims
from ..formats.dims import ModelDimensions
from ..formats.model_metadata import ModelMetadata, default_alignment_heads


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """The encoder's positional table, the same numbers as the MLX model's."""
    return torch.from_numpy(model_dims.sinusoids(length, channels))


def attention_keeping_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int = 125) -> torch.Tensor:
    """Softmax attention over (batch, heads, length, head_dim) in blocks of `rows` queries, through
    plain matrix products whose attention weights autograd keeps for the backward pass.

    Why: in bf16 on a CPU with bf16 dot products (AVX512-BF16) these products run near 600 GFLOP/s, three
    times the fp32 rate, while PyTorch's CPU flash kernel takes as long in bf16 as in fp32 (measured: 0.154 s
    forward over 1500 frames, batch 8, 6 heads, either way). The price is memory, the weights in bf16:
    batch x heads x length^2 x 2 bytes a layer (288 MB for base at batch 8), and precision: the scores are
    rounded to bf16 before the softmax (the flash kernel keeps them in fp32). Blocks of 125 rows measured
    faster than 64 or 250 (the scores of a block stay in cache)."""
    scale = q.shape[-1] ** -0.5
    keys_t, values = k.transpose(-1, -2).contiguous(), v.contiguous()  # laid out once, not for every block
    return torch.cat([torch.softmax((q[:, :, i:i + rows] * scale) @ keys_t, dim=-1).to(values.dtype) @ values
                      for i in range(0, q.shape[2], rows)], dim=2)


class MultiHeadAttention(nn.Module):
    keep_weights = False  # self-attention through attention_keeping_weights while training (set by the engine)

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, xa: Optional[torch.Tensor] = None, causal: bool = False,
                kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        source = x if xa is None else xa
        b, n, d = x.shape
        h = self.n_head
        q = self.query(x).view(b, n, h, d // h).transpose(1, 2)
        if kv is not None:
            return self.out(self._attend_cached(q, source, kv).transpose(1, 2).reshape(b, n, d))
        k, v = self.key(source), self.value(source)
        k = k.view(b, source.shape[1], h, d // h).transpose(1, 2)
        v = v.view(b, source.shape[1], h, d // h).transpose(1, 2)
        if xa is not None and n < source.shape[1] // 8:
            # few queries over many audio frames (training the decoder): plain products beat the
            # flash kernel here, and autograd then skips the gradient of keys that need none
            weights = torch.softmax((q * (d // h) ** -0.5) @ k.transpose(-1, -2), dim=-1)
            out = weights @ v
        elif self.keep_weights and xa is None and not causal and self.training and torch.is_grad_enabled():
            out = attention_keeping_weights(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and n > 1)
        return self.out(out.transpose(1, 2).reshape(b, n, d))

    def _attend_cached(self, q: torch.Tensor, source: torch.Tensor,
                       kv: Tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]) -> torch.Tensor:
        """Attention of queries (batch, heads, n, head_dim) over `source` whose frozen base keys and
        values were computed earlier (`base_keys_values`' layout). An adapter on the key or value adds
        s * (source @ A) @ B; its product with the queries or the attention weights is taken through
        the rank-r term (source @ A) rather than over a full (frames, state) delta, which is what the
        step costs otherwise (the same numbers, reassociated)."""
        # one (heads, head_dim, frames) key and (heads, frames, head_dim) value tensor per utterance, as the
        # training cache keeps them: taken one by one, they need no stacking copy per step (147 MB for tiny)
        keys_t, values = kv
        b, h, n, dh = q.shape
        frames = keys_t[0].shape[-1]
        q = q * dh ** -0.5
        scores = torch.stack([a @ k for a, k in zip(q.unbind(0), keys_t)])
        if hasattr(self.key, "delta"):
            low, up = self.key.low_rank_terms(source)  # (batch, frames, r), (r, state)
            q_up = q @ up.view(-1, h, dh).permute(1, 2, 0)  # (batch, heads, n, r)
            # the heads as rows of one product per utterance: no copy of `low` per head
            scores = scores + (q_up.reshape(b, h * n, -1) @ low.transpose(1, 2)).view(b, h, n, frames)
        weights = torch.softmax(scores, dim=-1)
        out = torch.stack([w @ v for w, v in zip(weights.unbind(0), values)])
        if hasattr(self.value, "delta"):
            low, up = self.value.low_rank_terms(source)
            mixed = (weights.reshape(b, h * n, frames) @ low).view(b, h, n, -1)  # (batch, heads, n, r)
            out = out + mixed @ up.view(-1, h, dh).transpose(0, 1)
        return out

    def keys_values(self, source: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.key(source), self.value(source)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
               fixed_keys: bool = False) -> torch.Tensor:
        """Attention over already projected (batch, length, state) queries, keys and values;
        `fixed_keys`: the same keys and values at every step of a window (the cross-attention's)."""
        b, n, d = q.shape
        split = lambda t: t.reshape(b, t.shape[1], self.n_head, d // self.n_head).transpose(1, 2)  # noqa: E731
        if fixed_keys and mask is None and n * 8 <= k.shape[1]:
            # a decoding step over the audio: with the keys laid out once per window, plain products take
            # 0.35 ms where the flash kernel takes 0.87 (batch 8 over 1500 frames, 2 CPU threads)
            keys_t, values = self._heads_of(k, v, split)
            weights = torch.softmax(((split(q) * (d // self.n_head) ** -0.5) @ keys_t).float(), dim=-1)
            out = weights.to(v.dtype) @ values
        else:
            out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(b, n, d))

    def _heads_of(self, k: torch.Tensor, v: torch.Tensor, split) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys as contiguous (batch, heads, head_dim, length) and values as (batch, heads, length,
        head_dim). Kept for the last keys seen: the cross-attention's are the same tensor at every step
        of a window, so they are laid out once per window instead of copied at each step."""
        last = getattr(self, "_laid_out", None)
        if last is not None and last[0] is k and last[1] is v:
            return last[2], last[3]
        laid = (split(k).transpose(-1, -2).contiguous(), split(v).contiguous())
        self._laid_out = (k, v) + laid
        return laid

    def frozen_keys_values(self) -> bool:
        """Whether the key and value base projections get no gradient (so they can be cached)."""
        base = lambda m: getattr(m, "linear", m)  # noqa: E731
        if any(getattr(m, "additive", True) is False for m in (self.key, self.value)):
            return False  # DoRA rescales the whole projection
        return not any(p.requires_grad for m in (self.key, self.value) for p in base(m).parameters())

    def base_keys_values(self, source: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The frozen base keys and values of `source` laid out for `_attend_cached`: keys as
        (batch, heads, head_dim, frames), values as (batch, heads, frames, head_dim), contiguous, so each
        utterance's slice is read by the products as it lies."""
        base = lambda m: getattr(m, "linear", m)  # noqa: E731
        b, t, d = source.shape
        split = lambda y: y.view(b, t, self.n_head, d // self.n_head)  # noqa: E731
        return (split(base(self.key)(source)).permute(0, 2, 3, 1).contiguous(),
                split(base(self.value)(source)).transpose(1, 2).contiguous())


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp1 = nn.Linear(n_state, 4 * n_state)
        self.mlp2 = nn.Linear(4 * n_state, n_state)
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x, xa=None, causal=False, kv=None):
        x = x + self.attn(self.attn_ln(x), causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa, kv=kv)
        return x + self.mlp2(F.gelu(self.mlp1(self.mlp_ln(x))))


    def step(self, x: torch.Tensor, cache: tuple) -> Tuple[torch.Tensor, tuple]:
        """Decode new tokens given the cache (self keys, self values, cross keys, cross values)."""
        self_k, self_v, cross_k, cross_v = cache
        y = self.attn_ln(x)
        k, v = self.attn.key(y), self.attn.value(y)
        if self_k is not None:
            k, v = torch.cat([self_k, k], dim=1), torch.cat([self_v, v], dim=1)
        n = x.shape[1]
        mask = None if n == 1 else torch.ones(n, k.shape[1], dtype=torch.bool, device=x.device).tril(k.shape[1] - n)
        x = x + self.attn.attend(self.attn.query(y), k, v, mask)
        x = x + self.cross_attn.attend(self.cross_attn.query(self.cross_attn_ln(x)), cross_k, cross_v, fixed_keys=True)
        x = x + self.mlp2(F.gelu(self.mlp1(self.mlp_ln(x))))
        return x, (k, v, cross_k, cross_v)


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("_positional_embedding", sinusoids(n_ctx, n_state), persistent=False)
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer)])
        self.ln_post = nn.LayerNorm(n_state)
        self.grad_checkpoint = False

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel: (batch, frames, n_mels), the MLX layout."""
        x = F.gelu(self.conv1(mel.transpose(1, 2)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self._positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.zeros(n_ctx, n_state))
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(n_state)
        self.grad_checkpoint = False

    def forward(self, tokens: torch.Tensor, xa: torch.Tensor, cross_kv: Optional[List[tuple]] = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, xa, cross_kv))

    def hidden(self, tokens: torch.Tensor, xa: torch.Tensor, cross_kv: Optional[List[tuple]] = None) -> torch.Tensor:
        """Final normalized states; `cross_kv`: per block, the cross-attention's cached base keys and values."""
        n = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = x.to(xa.dtype)
        for i, block in enumerate(self.blocks):
            kv = cross_kv[i] if cross_kv is not None else None
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, xa, True, kv, use_reentrant=False)
            else:
                x = block(x, xa, causal=True, kv=kv)
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.token_embedding.weight.to(hidden.dtype).T

    @torch.no_grad()
    def new_cache(self, xa: torch.Tensor) -> List[tuple]:
        """A decoding cache for audio features xa: the cross-attention keys and values (adapters
        included), computed once per window; the self-attention part fills as tokens are fed."""
        return [(None, None, b.cross_attn.key(xa), b.cross_attn.value(xa)) for b in self.blocks]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: List[tuple]) -> Tuple[torch.Tensor, List[tuple]]:
        """Logits (batch, n, vocab) of n new tokens after those already in the cache, and the new cache."""
        offset = cache[0][0].shape[1] if cache[0][0] is not None else 0
        n = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.positional_embedding[offset:offset + n]
        x = x.to(cache[0][2].dtype)
        new_cache = []
        for block, layer in zip(self.blocks, cache):
            x, layer = block.step(x, layer)
            new_cache.append(layer)
        return self.logits(self.ln(x)), new_cache

    @staticmethod
    def select_rows(cache: List[tuple], rows) -> List[tuple]:
        """The cache with its self-attention rows reordered (beam search); cross keys/values are per audio."""
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=cache[0][0].device)
        return [(k.index_select(0, idx), v.index_select(0, idx), ck, cv) for k, v, ck, cv in cache]

    @torch.no_grad()
    def cross_attention_scores(self, tokens: torch.Tensor, xa: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Logits of a whole token sequence and, per block, its cross-attention scores before the
        softmax (batch, heads, tokens, audio positions), queries and keys each scaled by head_dim^-1/4
        as openai-whisper returns them (word timing reads them)."""
        n = tokens.shape[-1]
        x = (self.token_embedding(tokens) + self.positional_embedding[:n]).to(xa.dtype)
        scores = []
        for block in self.blocks:
            x = x + block.attn(block.attn_ln(x), causal=True)
            attn = block.cross_attn
            y = block.cross_attn_ln(x)
            b, _, d = y.shape
            h = attn.n_head
            scale = (d // h) ** -0.25
            q = attn.query(y).view(b, n, h, d // h).transpose(1, 2) * scale
            k, v = attn.keys_values(xa)
            k = k.view(b, xa.shape[1], h, d // h).transpose(1, 2) * scale
            v = v.view(b, xa.shape[1], h, d // h).transpose(1, 2)
            qk = (q @ k.transpose(-1, -2)).float()
            out = torch.softmax(qk, dim=-1).to(v.dtype) @ v
            x = x + attn.out(out.transpose(1, 2).reshape(b, n, d))
            x = x + block.mlp2(F.gelu(block.mlp1(block.mlp_ln(x))))
            scores.append(qk)
        return self.logits(self.ln(x)), scores

    def cross_kv_cacheable(self) -> bool:
        return all(block.cross_attn.frozen_keys_values() for block in self.blocks)

    def base_cross_kv(self, xa: torch.Tensor, dtype: Optional[torch.dtype] = None) -> Iterator[tuple]:
        """Each layer's base cross-attention (keys, values) in `dtype`, one layer at a time, so a
        caller that keeps them in a narrower dtype never holds every layer's float32 copy at once
        (large-v2, batch 8: 3.9 GB). No `@torch.no_grad()` here: on a generator it holds the last
        value yielded while the next layer is computed."""
        for block in self.blocks:
            with torch.no_grad():
                pair = block.cross_attn.base_keys_values(xa)
                if dtype is not None:
                    pair = tuple(t.to(dtype) for t in pair)
            yield pair
            del pair  # before the next layer's: a suspended generator would keep it alive


class Whisper(ModelMetadata, nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.init_metadata(dims)
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)
        # cross-attention heads that follow the audio in time (word timing)
        self.alignment_heads: List[Tuple[int, int]] = default_alignment_heads(dims)

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens, self.encoder(mel))

    def set_alignment_heads(self, heads) -> None:
        self.alignment_heads = [(int(a), int(b)) for a, b in heads]

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)


_CONVS = ("encoder.conv1.weight", "encoder.conv2.weight")


def load_mlx_weights(model: Whisper, weights: Dict[str, np.ndarray], strict: bool = True) -> None:
    """Set parameters from MLX-named numpy arrays (conv kernels transposed to PyTorch's layout)."""
    state = {}
    for name, value in weights.items():
        if name == "alignment_heads":
            continue
        array = np.asarray(value, dtype=np.float32)
        if name in _CONVS:
            array = array.transpose(0, 2, 1)
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")


def mlx_weights(model: Whisper) -> Dict[str, np.ndarray]:
    """Parameters as MLX-named float32 numpy arrays."""
    out = {}
    for name, value in model.state_dict().items():
        array = value.detach().float().cpu().numpy()
        out[name] = np.ascontiguousarray(array.transpose(0, 2, 1)) if name in _CONVS else array
    return out


def load_model(path_or_id: Optional[str] = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Whisper:
    """Whisper from any source `formats.checkpoint.resolve` reads (folders, hub ids, .pt, CTranslate2)."""
    from ..formats.checkpoint import resolve
    from ..formats.offline_models import DEFAULT_MODEL

    if str(device).startswith("cpu"):
        from .heap import keep_freed_blocks

        keep_freed_blocks()  # CPU tensors come from malloc: keep its freed blocks for the next step
    ckpt = resolve(str(path_or_id or DEFAULT_MODEL))
    if ckpt.quantization:
        raise QuantizedBase(f"{ckpt.source} is MLX-quantized and the torch back end loads floating-point weights: "
                            "pass a floating-point model, or --backend mlx (QLoRA)")
    model = Whisper(ckpt.dims)
    load_mlx_weights(model, ckpt.weights)
    model.source = ckpt.source
    model.folder = ckpt.folder
    if ckpt.alignment_heads:
        model.alignment_heads = [(int(a), int(b)) for a, b in ckpt.alignment_heads]
    return model.to(device=device, dtype=dtype).eval()
