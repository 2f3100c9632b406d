"""whisper.cpp's integer quantizations (q8_0, q5_0, q4_0) of the matrices in ggml-model.bin.

Written here because whisper.cpp's `quantize` is a C++ tool built from its source tree, not a
package. Blocks of 32 weights along a row share one float16 scale, as ggml's reference quantizers
(`quantize_row_q8_0_reference` and its siblings) make them; whisper.cpp quantizes every matrix
except the positional tables and the convolution biases, and keeps the convolution kernels in
float16. The header's ftype carries the quantization version, as whisper.cpp's tool writes it.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

BLOCK = 32
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION; whisper.cpp reads ftype % 1000 and the version from ftype // 1000
# name: (the file's ftype, ggml's tensor type id)
GGML_QUANTIZATIONS: Dict[str, Tuple[int, int]] = {"q4_0": (2, 2), "q5_0": (8, 6), "q8_0": (7, 8)}
# one block of 32 weights: its float16 scale, then the packed values (q5_0: the fifth bits in qh)
_LAYOUTS = {"q8_0": [("d", "<f2"), ("qs", "i1", BLOCK)], "q4_0": [("d", "<f2"), ("qs", "u1", 16)],
            "q5_0": [("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]}
_LEVELS = {"q4_0": 8, "q5_0": 16}  # the offset that makes the 4- or 5-bit values unsigned


def header_ftype(quantization: str) -> int:
    return GGML_QUANTIZATIONS[quantization][0] + 1000 * QUANTIZATION_VERSION


def tensor_type(quantization: str) -> int:
    return GGML_QUANTIZATIONS[quantization][1]


def _blocks(matrix: np.ndarray, name: str) -> np.ndarray:
    rows, cols = matrix.shape
    if cols % BLOCK:
        raise ValueError(f"{name}: rows of {cols} values cannot be cut into blocks of {BLOCK}")
    return np.ascontiguousarray(matrix, dtype=np.float32).reshape(rows * cols // BLOCK, BLOCK)


def _signed_peak(blocks: np.ndarray) -> np.ndarray:
    """Per block, the value of largest magnitude with its sign (the first one on ties)."""
    return np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0).astype(np.float32)


def quantize(matrix: np.ndarray, quantization: str, name: str = "tensor") -> bytes:
    """The bytes of `matrix` (rows, cols) in ggml's block layout for `quantization`."""
    x = _blocks(matrix, name)
    if quantization == "q8_0":
        d = (np.abs(x).max(axis=1) / 127).astype(np.float32)
        scaled = x * _inverse(d)[:, None]
        qs = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)  # C's roundf: halves away from 0
        out = np.zeros(len(x), dtype=_LAYOUTS[quantization])
        out["d"], out["qs"] = d.astype(np.float16), qs
        return out.tobytes()
    levels = _LEVELS[quantization]
    d = (_signed_peak(x) / -levels).astype(np.float32)
    q = np.minimum(2 * levels - 1, np.trunc(x * _inverse(d)[:, None] + (levels + 0.5)).astype(np.int8)).astype(np.uint8)
    low, high = q[:, :16], q[:, 16:]
    qs = (low & 0x0F) | ((high & 0x0F) << 4)
    out = np.zeros(len(x), dtype=_LAYOUTS[quantization])
    if quantization == "q5_0":
        bits = np.concatenate([(low >> 4) & 1, (high >> 4) & 1], axis=1).astype(np.uint32)
        out["qh"] = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    out["d"], out["qs"] = d.astype(np.float16), qs
    return out.tobytes()


def dequantize(data: bytes, shape: Tuple[int, int], quantization: str) -> np.ndarray:
    """The float32 values ggml computes with (its `dequantize_row_*`), for checking a file."""
    blocks = np.frombuffer(data, dtype=_LAYOUTS[quantization])
    if quantization == "q8_0":
        values = blocks["d"].astype(np.float32)[:, None] * blocks["qs"].astype(np.float32)
        return values.reshape(shape)
    levels = _LEVELS[quantization]
    if quantization == "q4_0":
        low, high = blocks["qs"] & 0x0F, blocks["qs"] >> 4
    else:
        bits = (blocks["qh"][:, None] >> np.arange(32, dtype=np.uint32)) & 1
        low = (blocks["qs"] & 0x0F) | (bits[:, :16] << 4).astype(np.uint8)
        high = (blocks["qs"] >> 4) | (bits[:, 16:] << 4).astype(np.uint8)
    q = np.concatenate([low, high], axis=1).astype(np.float32) - levels
    return (blocks["d"].astype(np.float32)[:, None] * q).reshape(shape)
