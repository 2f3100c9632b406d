"""whisper.cpp's model file (`ggml-model.bin`): hyper-parameters, the mel filter bank, the BPE
vocabulary and every tensor under openai-whisper's names.

Written by hand because whisper.cpp's own converter is a script in its source tree, not a package:
the layout below is the one its loader (`whisper_model_load`) reads. Matrices are float16 (or float32);
biases, norms and the positional tables stay float32, as whisper.cpp expects. (A file whose matrices are
all float32 is valid too, but the whisper.cpp of pywhispercpp 1.5.1 aborts on its float32 convolution
kernels, so the exporter offers float16 only.)
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Dict, Optional, Union

import numpy as np

from ..files import atomic_write
from ..formats.dims import ModelDimensions, sinusoids
from .ggml_quantize import GGML_QUANTIZATIONS, header_ftype, quantize, tensor_type

MAGIC = 0x67676D6C  # "ggml"
GGML_TYPES = ("float16", "float32")


def openai_names(weights: Dict[str, np.ndarray], dims: ModelDimensions) -> Dict[str, np.ndarray]:
    """MLX-named float weights -> openai-whisper's names and layouts (conv kernels (out, in, width))."""
    out = {}
    for name, value in weights.items():
        if name == "alignment_heads":
            continue
        value = np.asarray(value, dtype=np.float32)
        if name in ("encoder.conv1.weight", "encoder.conv2.weight"):
            value = value.transpose(0, 2, 1)
        out[name.replace(".mlp1.", ".mlp.0.").replace(".mlp2.", ".mlp.2.")] = value
    out["encoder.positional_embedding"] = sinusoids(dims.n_audio_ctx, dims.n_audio_state).astype(np.float32)
    return out


def _keeps_float32(name: str, array: np.ndarray) -> bool:
    return array.ndim < 2 or name in ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
                                      "decoder.positional_embedding")


def _write(f: BinaryIO, weights: Dict[str, np.ndarray], dims: ModelDimensions, filters: np.ndarray,
           ranks: Dict[bytes, int], use_f16: bool, quantization: Optional[str] = None) -> None:
    f.write(struct.pack("i", MAGIC))
    ftype = header_ftype(quantization) if quantization else int(use_f16)
    f.write(struct.pack("iiiiiiiiiii", dims.n_vocab, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                        dims.n_audio_layer, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer,
                        dims.n_mels, ftype))
    f.write(struct.pack("ii", *filters.shape))
    f.write(np.ascontiguousarray(filters, dtype="<f4").tobytes())
    tokens = sorted(ranks.items(), key=lambda kv: kv[1])
    f.write(struct.pack("i", len(tokens)))
    for token, _ in tokens:
        f.write(struct.pack("i", len(token)))
        f.write(token)
    for name, array in weights.items():
        if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            array = array.reshape(array.shape[0], 1)
        float32 = not use_f16 or _keeps_float32(name, array)
        data = np.ascontiguousarray(array, dtype="<f4" if float32 else "<f2")
        kind, payload = (0 if float32 else 1), data.tobytes()
        if quantization and data.ndim == 2 and not float32:  # every matrix but the kept ones, as whisper.cpp's tool
            kind, payload = tensor_type(quantization), quantize(array, quantization, name)
        encoded = name.encode("utf-8")
        f.write(struct.pack("iii", data.ndim, len(encoded), kind))
        f.write(struct.pack(f"{data.ndim}i", *reversed(data.shape)))
        f.write(encoded)
        f.write(payload)


def write_ggml(path: Union[str, Path], weights: Dict[str, np.ndarray], dims: ModelDimensions, filters: np.ndarray,
               ranks: Dict[bytes, int], dtype: str = "float16", quantization: Optional[str] = None) -> Path:
    """Write `path` atomically; weights in MLX names, `filters` the (n_mels, 201) mel filter bank,
    `ranks` the BPE vocabulary (tokens by rank); `quantization`: q8_0, q5_0 or q4_0 matrices
    (export/ggml_quantize.py), the rest float16 and float32 as in a float16 file."""
    if dtype not in GGML_TYPES:
        raise ValueError(f"whisper.cpp export in {dtype!r}: use float16 or float32")
    if quantization is not None and (quantization not in GGML_QUANTIZATIONS or dtype != "float16"):
        raise ValueError(f"whisper.cpp quantization {quantization!r}: use one of {', '.join(GGML_QUANTIZATIONS)} "
                         "over float16")
    named = openai_names(weights, dims)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            _write(f, named, dims, filters, ranks, dtype == "float16", quantization)

    return atomic_write(Path(path), write)
