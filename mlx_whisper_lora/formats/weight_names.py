"""Turn weights of other Whisper formats into this package's (MLX / openai) names and layouts.

Each function takes {name: numpy array} in the source format and returns {MLX name: array}.
Conv kernels move from PyTorch's (out, in, kernel) to MLX's (out, kernel, in).
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

import numpy as np

from .dims import ModelDimensions

Weights = Dict[str, np.ndarray]


def _conv_to_mlx(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(0, 2, 1))


def _conv_to_torch(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(0, 2, 1))


# ---------------------------------------------------------------- Hugging Face transformers
_HF_RULES: List[Tuple[str, str]] = [
    (r"^model\.", ""),
    (r"\.layers\.", ".blocks."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp1."),
    (r"\.fc2\.", ".mlp2."),
    (r"^encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^decoder\.layer_norm\.", "decoder.ln."),
    (r"^decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
]


def hf_dims(config: dict) -> ModelDimensions:
    return ModelDimensions(
        n_mels=config["num_mel_bins"],
        n_audio_ctx=config["max_source_positions"],
        n_audio_state=config["d_model"],
        n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"],
        n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"],
        n_text_state=config["d_model"],
        n_text_head=config["decoder_attention_heads"],
        n_text_layer=config["decoder_layers"],
    )


def hf_name_to_mlx(name: str) -> str:
    """'model.decoder.layers.3.self_attn.q_proj.weight' -> 'decoder.blocks.3.attn.query.weight'."""
    for pattern, repl in _HF_RULES:
        name = re.sub(pattern, repl, name)
    return name


def hf_to_mlx(weights: Weights) -> Weights:
    out = {}
    for name, w in weights.items():
        if name in ("proj_out.weight", "model.encoder.embed_positions.weight"):
            continue  # tied output projection; the encoder's sinusoids are recomputed
        new = hf_name_to_mlx(name)
        if new.endswith(("conv1.weight", "conv2.weight")):
            w = _conv_to_mlx(w)
        out[new] = w
    return out


def mlx_to_hf(weights: Weights) -> Weights:
    """Reverse of hf_to_mlx, for exporting to transformers (and from there to CTranslate2)."""
    reverse = [
        (r"^encoder\.ln_post\.", "encoder.layer_norm."),
        (r"^decoder\.ln\.", "decoder.layer_norm."),
        (r"^decoder\.token_embedding\.", "decoder.embed_tokens."),
        (r"^decoder\.positional_embedding$", "decoder.embed_positions.weight"),
        (r"\.blocks\.", ".layers."),
        (r"\.cross_attn_ln\.", ".encoder_attn_layer_norm."),
        (r"\.attn_ln\.", ".self_attn_layer_norm."),
        (r"\.mlp_ln\.", ".final_layer_norm."),
        (r"\.cross_attn\.", ".encoder_attn."),
        (r"\.attn\.", ".self_attn."),
        (r"\.query\.", ".q_proj."),
        (r"\.key\.", ".k_proj."),
        (r"\.value\.", ".v_proj."),
        (r"\.out\.", ".out_proj."),
        (r"\.mlp1\.", ".fc1."),
        (r"\.mlp2\.", ".fc2."),
    ]
    out = {}
    for name, w in weights.items():
        if name == "alignment_heads":
            continue
        new = name
        for pattern, repl in reverse:
            new = re.sub(pattern, repl, new)
        if new.endswith(("conv1.weight", "conv2.weight")):
            w = _conv_to_torch(w)
        out["model." + new] = w
    return out


# ---------------------------------------------------------------- openai-whisper .pt
def openai_to_mlx(state_dict: Weights) -> Weights:
    out = {}
    for name, w in state_dict.items():
        if name == "alignment_heads":
            continue
        new = name.replace(".mlp.0.", ".mlp1.").replace(".mlp.2.", ".mlp2.")
        if new.endswith(("conv1.weight", "conv2.weight")):
            w = _conv_to_mlx(w)
        if new == "encoder.positional_embedding":
            continue
        out[new] = w
    return out


# ---------------------------------------------------------------- CTranslate2
def _count_layers(variables: Weights, stack: str) -> int:
    ids = {int(m.group(1)) for k in variables if (m := re.match(rf"^{stack}/layer_(\d+)/", k))}
    return max(ids) + 1 if ids else 0


def ct2_dims(variables: Weights) -> ModelDimensions:
    conv1 = variables["encoder/conv1/weight"]
    emb = variables["decoder/embeddings/weight"]
    return ModelDimensions(
        n_mels=conv1.shape[1],
        n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=conv1.shape[0],
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=_count_layers(variables, "encoder"),
        n_vocab=emb.shape[0],
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
        n_text_state=emb.shape[1],
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=_count_layers(variables, "decoder"),
    )


def _ln(out: Weights, dst: str, variables: Weights, src: str) -> None:
    out[f"{dst}.weight"] = variables[f"{src}/gamma"]
    out[f"{dst}.bias"] = variables[f"{src}/beta"]


def _linear(out: Weights, dst: str, variables: Weights, src: str) -> None:
    out[f"{dst}.weight"] = variables[f"{src}/weight"]
    if f"{src}/bias" in variables:
        out[f"{dst}.bias"] = variables[f"{src}/bias"]


def _split_fused(out: Weights, dst: str, names: List[str], variables: Weights, src: str) -> None:
    """Un-fuse stacked projections (QKV or KV); the key projection has no bias in Whisper."""
    weights = np.split(variables[f"{src}/weight"], len(names), axis=0)
    biases = np.split(variables[f"{src}/bias"], len(names), axis=0)
    for name, w, b in zip(names, weights, biases):
        out[f"{dst}.{name}.weight"] = w
        if name != "key":
            out[f"{dst}.{name}.bias"] = b


def ct2_to_mlx(variables: Weights) -> Weights:
    dims = ct2_dims(variables)
    out: Weights = {}
    for conv in ("conv1", "conv2"):
        out[f"encoder.{conv}.weight"] = _conv_to_mlx(variables[f"encoder/{conv}/weight"])
        out[f"encoder.{conv}.bias"] = variables[f"encoder/{conv}/bias"]
    for stack, n_layer in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n_layer):
            src, dst = f"{stack}/layer_{i}", f"{stack}.blocks.{i}"
            _split_fused(out, f"{dst}.attn", ["query", "key", "value"], variables, f"{src}/self_attention/linear_0")
            _linear(out, f"{dst}.attn.out", variables, f"{src}/self_attention/linear_1")
            _ln(out, f"{dst}.attn_ln", variables, f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                _linear(out, f"{dst}.cross_attn.query", variables, f"{src}/attention/linear_0")
                _split_fused(out, f"{dst}.cross_attn", ["key", "value"], variables, f"{src}/attention/linear_1")
                _linear(out, f"{dst}.cross_attn.out", variables, f"{src}/attention/linear_2")
                _ln(out, f"{dst}.cross_attn_ln", variables, f"{src}/attention/layer_norm")
            _linear(out, f"{dst}.mlp1", variables, f"{src}/ffn/linear_0")
            _linear(out, f"{dst}.mlp2", variables, f"{src}/ffn/linear_1")
            _ln(out, f"{dst}.mlp_ln", variables, f"{src}/ffn/layer_norm")
    _ln(out, "encoder.ln_post", variables, "encoder/layer_norm")
    _ln(out, "decoder.ln", variables, "decoder/layer_norm")
    out["decoder.token_embedding.weight"] = variables["decoder/embeddings/weight"]
    out["decoder.positional_embedding"] = variables["decoder/position_encodings/encodings"]
    return out
