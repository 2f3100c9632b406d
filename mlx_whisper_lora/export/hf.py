"""Write a model as a Hugging Face transformers folder (WhisperForConditionalGeneration).

From there `ct2-transformers-converter` makes a faster-whisper model, and `load_model` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..files import atomic_write_bytes, atomic_write_text
from ..formats import weight_names
from ..formats.dims import ModelDimensions, sinusoids
from ..formats.safetensors_io import write_safetensors


def hf_config(dims: ModelDimensions) -> dict:
    eot = 50257 if dims.is_multilingual else 50256
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "is_encoder_decoder": True,  # transformers implies it; transformers.js reads the JSON as written and needs it
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


HF_DTYPES = {"float32": np.float32, "float16": np.float16}


def save_hf_folder(weights: Dict[str, np.ndarray], dims: ModelDimensions, alignment_heads: List[Tuple[int, int]],
                   path: Union[str, Path], tokenizer_folder: Optional[Path] = None, dtype: str = "float32") -> Path:
    """config.json, generation_config.json (with alignment heads) and model.safetensors in fp32,
    from floating-point weights in MLX names."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = weight_names.mlx_to_hf({k: v for k, v in weights.items() if k != "alignment_heads"})
    # transformers keeps the encoder's sinusoidal table as a weight.
    hf["model.encoder.embed_positions.weight"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    if dtype not in HF_DTYPES:
        raise ValueError(f"transformers export in {dtype!r}: use {' or '.join(HF_DTYPES)}")
    hf = {k: np.ascontiguousarray(v, dtype=HF_DTYPES[dtype]) for k, v in hf.items()}
    write_safetensors(path / "model.safetensors", hf, {"format": "pt"})
    config = hf_config(dims)
    config["torch_dtype"] = dtype
    atomic_write_text(path / "config.json", json.dumps(config, indent=2) + "\n")
    generation = generation_config(dims, alignment_heads, tokenizer_folder)
    atomic_write_text(path / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    atomic_write_text(path / "preprocessor_config.json", json.dumps(preprocessor_config(dims), indent=2) + "\n")
    write_tokenizer_files(path, dims, tokenizer_folder)
    return path


def generation_config(dims: ModelDimensions, alignment_heads: List[Tuple[int, int]],
                      tokenizer_folder: Optional[Path] = None) -> dict:
    """What transformers' `generate` reads for Whisper (language and task tokens, timestamps,
    suppressed tokens, alignment heads), from the same tokenizer this package decodes with."""
    from ..text.tokenizer import get_tokenizer

    tok = get_tokenizer(dims.is_multilingual, dims.num_languages, model_dir=tokenizer_folder)
    config = {
        "alignment_heads": [list(map(int, h)) for h in alignment_heads],
        "begin_suppress_tokens": tok.encode(" ") + [tok.eot],
        "bos_token_id": tok.eot,
        "decoder_start_token_id": tok.sot,
        "eos_token_id": tok.eot,
        "pad_token_id": tok.eot,
        "is_multilingual": dims.is_multilingual,
        "max_initial_timestamp_index": 50,  # 1 s, openai-whisper's max_initial_timestamp
        "max_length": dims.n_text_ctx,
        "no_timestamps_token_id": tok.no_timestamps,
        "prev_sot_token_id": tok.sot_prev,
        "return_timestamps": False,
        # openai-whisper's default suppression: non-speech symbols and the special tokens that only start a text
        "suppress_tokens": sorted(set(tok.non_speech_tokens) | {tok.transcribe, tok.translate, tok.sot, tok.sot_prev,
                                                                  tok.sot_lm, tok.no_speech}),
    }
    if dims.is_multilingual:
        config["lang_to_id"] = {f"<|{code}|>": tok.language_token_for(code) for code in tok.all_language_codes}
        config["task_to_id"] = {"transcribe": tok.transcribe, "translate": tok.translate}
    return config


def preprocessor_config(dims: ModelDimensions) -> dict:
    """transformers' WhisperFeatureExtractor settings: 16 kHz, 25 ms windows every 10 ms, 30 s chunks."""
    return {
        "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": dims.n_mels,
        "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
        "padding_value": 0.0, "processor_class": "WhisperProcessor", "return_attention_mask": False,
        "sampling_rate": 16000,
    }


def write_tokenizer_files(path: Path, dims: ModelDimensions, tokenizer_folder: Optional[Path]) -> None:
    """tokenizer.json (transformers' fast tokenizer, which faster-whisper reads too) and
    tokenizer_config.json. Copied from the source folder when it has one; otherwise built from the
    tiktoken vocabulary this package ships, through transformers' own converter."""
    source = Path(tokenizer_folder) / "tokenizer.json" if tokenizer_folder is not None else None
    if source is not None and source.exists():
        atomic_write_bytes(path / "tokenizer.json", source.read_bytes())
    else:
        from ..formats.hf_tokenizer import tokenizer_json

        atomic_write_text(path / "tokenizer.json", tokenizer_json(dims))
    eot = "<|endoftext|>"
    atomic_write_text(path / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "WhisperTokenizer", "model_max_length": 1024, "bos_token": eot, "eos_token": eot,
        "unk_token": eot, "pad_token": eot, "clean_up_tokenization_spaces": False,
        "processor_class": "WhisperProcessor"}, indent=2) + "\n")
