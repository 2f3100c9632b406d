"""safetensors files as numpy arrays, bfloat16 included, written atomically.

`safetensors.numpy` reads and writes every dtype numpy has; numpy has no bfloat16, which MLX
and PyTorch checkpoints use. Such tensors are widened to float32 here (exactly: bfloat16 is the
top half of a float32), from the file's own header, so no framework is needed to read them.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..files import atomic_write


def _read_with_bfloat16(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Tensor by tensor from the file's header (memory-mapped, so a large checkpoint is never held twice)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:
            out[name] = np.zeros(shape, dtype=np.float32 if info["dtype"] == "BF16" else _numpy_dtype(info["dtype"]))
            continue
        raw_dtype = np.dtype("<u2") if info["dtype"] == "BF16" else _numpy_dtype(info["dtype"])
        raw = np.memmap(path, dtype=raw_dtype, mode="r", offset=8 + header_len + start, shape=shape)
        if info["dtype"] == "BF16":
            out[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = np.array(raw)
        del raw
    return out, meta


def _numpy_dtype(name: str) -> np.dtype:
    table = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
             "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
    if name not in table:
        raise ValueError(f"unsupported safetensors dtype {name}")
    return np.dtype(table[name])


def read_safetensors_with_metadata(path: Union[str, Path]) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except TypeError:  # bfloat16, which numpy lacks
        return _read_with_bfloat16(path)


def read_safetensors(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    return read_safetensors_with_metadata(path)[0]


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The metadata of a safetensors file without reading its tensors."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(header_len)).get("__metadata__") or {}


def write_safetensors(path: Union[str, Path], tensors: Dict[str, np.ndarray], metadata: Optional[dict] = None) -> Path:
    """Write numpy tensors atomically (the previous file stays intact on any failure)."""
    from safetensors.numpy import save_file

    arrays = {k: np.require(v, requirements="C") for k, v in tensors.items()}  # 0-d arrays stay 0-d
    meta = {k: str(v) for k, v in (metadata or {}).items()}

    def write(tmp: Path) -> None:
        try:
            save_file(arrays, str(tmp), metadata=meta)
        except Exception as e:  # the Rust writer reports a full disk as SafetensorError: make it the OSError it is
            if type(e).__name__ != "SafetensorError":
                raise
            code = re.search(r"os error (\d+)", str(e))
            number = int(code.group(1)) if code else errno.EIO
            raise OSError(number, os.strerror(number), str(tmp)) from None

    return atomic_write(path, write)


def bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 as its uint16 bit pattern, rounded to nearest even (as MLX and PyTorch cast)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def write_safetensors_bfloat16(path: Union[str, Path], tensors: Dict[str, np.ndarray],
                               metadata: Optional[dict] = None) -> Path:
    """Write floating-point tensors as bfloat16 (other dtypes as they are). By hand, because numpy, and so
    safetensors.numpy, has no bfloat16: the format is a JSON header of dtypes, shapes and byte offsets,
    then the raw little-endian bytes."""
    names = {_numpy_dtype(kind): kind for kind in ("F16", "F32", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "BOOL")}
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            data, kind = bfloat16_bits(value), "BF16"
        else:
            data = np.ascontiguousarray(value)
            kind = names.get(data.dtype.newbyteorder("<"))
            if kind is None:
                raise ValueError(f"unsupported dtype {data.dtype} for {name}")
        raw = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": kind, "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for blob in blobs:
                f.write(blob)

    return atomic_write(path, write)
