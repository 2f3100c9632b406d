"""Whisper in PyTorch with the MLX model's parameter names and shapes (conv kernels aside).

Parameter names match `mlx_whisper_lora.model` exactly (`decoder.blocks.3.cross_attn.query.weight`),
so adapter files are shared as they are. Only the two conv kernels differ in layout: PyTorch keeps
(out, in, kernel), MLX (out, kernel, in); `load_mlx_weights` / `mlx_weights` transpose them.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import model as mlx_model
from ..model import ModelDimensions


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """The MLX model's positional table, so both back ends add the same numbers."""
    return torch.from_numpy(np.array(mlx_model.sinusoids(length, channels)))


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, xa: Optional[torch.Tensor] = None, causal: bool = False) -> torch.Tensor:
        source = x if xa is None else xa
        b, n, d = x.shape
        h = self.n_head
        q = self.query(x).view(b, n, h, d // h).transpose(1, 2)
        k = self.key(source).view(b, source.shape[1], h, d // h).transpose(1, 2)
        v = self.value(source).view(b, source.shape[1], h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and n > 1)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


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

    def forward(self, x, xa=None, causal=False):
        x = x + self.attn(self.attn_ln(x), causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa)
        return x + self.mlp2(F.gelu(self.mlp1(self.mlp_ln(x))))


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

    def forward(self, tokens: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[-1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = x.to(xa.dtype)
        for block in self.blocks:
            if self.grad_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, xa, True, use_reentrant=False)
            else:
                x = block(x, xa, causal=True)
        x = self.ln(x)
        return x @ self.token_embedding.weight.to(x.dtype).T


class Whisper(nn.Module):
    def __init__(self, dims: ModelDimensions):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
        self.decoder = TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)

    def forward(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens, self.encoder(mel))

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    @property
    def num_languages(self) -> int:
        return self.dims.num_languages


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
    """Whisper from any source `mlx_whisper_lora.load` reads (folders, hub ids, .pt, CTranslate2)."""
    from ..load import resolve
    from ..offline_models import DEFAULT_MODEL

    ckpt = resolve(str(path_or_id or DEFAULT_MODEL))
    if ckpt.quantization:
        raise ValueError("the torch back end loads floating-point weights; pass a non-quantized model")
    model = Whisper(ckpt.dims)
    load_mlx_weights(model, ckpt.weights)
    model.source = ckpt.source
    model.folder = ckpt.folder
    return model.to(device=device, dtype=dtype).eval()
