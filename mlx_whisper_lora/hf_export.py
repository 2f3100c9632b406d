"""Write a model as a Hugging Face transformers folder (WhisperForConditionalGeneration).

From there `ct2-transformers-converter` makes a faster-whisper model, and `load_model` reads it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from . import weight_names
from .model import ModelDimensions, Whisper


def hf_config(dims: ModelDimensions) -> dict:
    eot = 50257 if dims.is_multilingual else 50256
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": dims.n_vocab,
        "num_mel_bins": dims.n_mels,
        "d_model": dims.n_audio_state,
        "encoder_layers": dims.n_audio_layer,
        "encoder_attention_heads": dims.n_audio_head,
        "encoder_ffn_dim": 4 * dims.n_audio_state,
        "decoder_layers": dims.n_text_layer,
        "decoder_attention_heads": dims.n_text_head,
        "decoder_ffn_dim": 4 * dims.n_text_state,
        "max_source_positions": dims.n_audio_ctx,
        "max_target_positions": dims.n_text_ctx,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": eot + 1,
        "torch_dtype": "float32",
    }


def save_hf_folder(model: Whisper, path: Union[str, Path]) -> Path:
    """config.json, generation_config.json (with alignment heads) and model.safetensors in fp32."""
    from safetensors.numpy import save_file

    if getattr(model, "quantization", None):
        raise ValueError("dequantize the model before exporting it to transformers")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
    hf = weight_names.mlx_to_hf(weights)
    # transformers keeps the encoder's sinusoidal table as a weight.
    hf["model.encoder.embed_positions.weight"] = np.array(model.encoder._positional_embedding, dtype=np.float32)
    hf = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in hf.items()}
    tmp = path / "model.safetensors.tmp"
    save_file(hf, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / "model.safetensors")
    config = hf_config(model.dims)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        "decoder_start_token_id": config["decoder_start_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "alignment_heads": model.alignment_heads.tolist(),
        "is_multilingual": model.dims.is_multilingual,
    }
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    folder = getattr(model, "folder", None)
    if folder is not None and (Path(folder) / "tokenizer.json").exists():
        (path / "tokenizer.json").write_bytes((Path(folder) / "tokenizer.json").read_bytes())
    return path
