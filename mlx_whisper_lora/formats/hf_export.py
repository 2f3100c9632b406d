"""Write a model as a Hugging Face transformers folder (WhisperForConditionalGeneration).

From there `ct2-transformers-converter` makes a faster-whisper model, and `load_model` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..files import atomic_write_bytes, atomic_write_text
from . import weight_names
from .dims import ModelDimensions, sinusoids
from .safetensors_io import write_safetensors


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


def save_hf_folder(weights: Dict[str, np.ndarray], dims: ModelDimensions, alignment_heads: List[Tuple[int, int]],
                   path: Union[str, Path], tokenizer_folder: Optional[Path] = None) -> Path:
    """config.json, generation_config.json (with alignment heads) and model.safetensors in fp32,
    from floating-point weights in MLX names."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = weight_names.mlx_to_hf({k: v for k, v in weights.items() if k != "alignment_heads"})
    # transformers keeps the encoder's sinusoidal table as a weight.
    hf["model.encoder.embed_positions.weight"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    hf = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in hf.items()}
    write_safetensors(path / "model.safetensors", hf, {"format": "pt"})
    config = hf_config(dims)
    atomic_write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    generation = {
        "decoder_start_token_id": config["decoder_start_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "alignment_heads": [list(map(int, h)) for h in alignment_heads],
        "is_multilingual": dims.is_multilingual,
    }
    atomic_write_text(path / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    if tokenizer_folder is not None and (Path(tokenizer_folder) / "tokenizer.json").exists():
        atomic_write_bytes(path / "tokenizer.json", (Path(tokenizer_folder) / "tokenizer.json").read_bytes())
    return path
