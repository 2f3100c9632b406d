"""Read CTranslate2 `model.bin` files (as faster-whisper ships them) with numpy alone.

The binary layout (version 6): u32 version, a length-prefixed spec name, u32 revision, u32 variable
count, then per variable a name, rank, dims, dtype code, byte count and raw data, then aliases.
Parsing it ourselves lets users reuse faster-whisper folders without installing CTranslate2.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Dict, Iterable, Union

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bf16


class CTranslate2FormatError(ValueError):
    """The file is not a CTranslate2 model or is truncated."""


class _Reader:
    def __init__(self, data: memoryview, origin: str):
        self.data = data
        self.pos = 0
        self.origin = origin

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CTranslate2FormatError(
                f"{self.origin} is truncated: needed {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)}; download it again"
            )
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        n = self.u16()
        raw = bytes(self.take(n))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise CTranslate2FormatError(f"{self.origin} is damaged: a name at offset {self.pos - n} is not text; "
                                         "download it again") from None


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_model_bin(parts: Union[str, Path, Iterable[Union[str, Path]]]) -> Dict[str, np.ndarray]:
    """Return {variable name: array} from a `model.bin`, or from its split parts read in order.

    Aliases (for example the output projection sharing the token embedding) are resolved to the
    same array. bf16 variables are widened to float32 since numpy has no bfloat16.
    """
    paths = [Path(parts)] if isinstance(parts, (str, Path)) else [Path(p) for p in parts]
    blob = b"".join(p.read_bytes() for p in paths)
    origin = str(paths[0]) if len(paths) == 1 else " + ".join(str(p) for p in paths)
    r = _Reader(memoryview(blob), origin)
    if len(blob) < 8:
        raise CTranslate2FormatError(f"{origin} is too small to be a CTranslate2 model.bin")
    version = r.u32()
    if version < 5 or version > 6:
        raise CTranslate2FormatError(
            f"{origin}: unsupported CTranslate2 binary version {version} (expected 5 or 6)"
        )
    r.string()  # spec name, e.g. "WhisperSpec"
    r.u32()  # spec revision
    variables: Dict[str, np.ndarray] = {}
    for _ in range(r.u32()):
        name = r.string()
        rank = r.u8()
        dims = [r.u32() for _ in range(rank)]
        dtype_code = r.u8()
        nbytes = r.u32()
        raw = r.take(nbytes)
        if dtype_code not in _DTYPES:
            raise CTranslate2FormatError(f"{origin}: unknown dtype code {dtype_code} for {name}")
        width = 2 if dtype_code == 5 else np.dtype(_DTYPES[dtype_code]).itemsize
        if nbytes != width * math.prod(dims):  # exact: a numpy product of damaged dims can overflow and pass
            raise CTranslate2FormatError(f"{origin} is damaged: {name} has shape {dims} but {nbytes} bytes; "
                                         "download it again")
        if dtype_code == 5:
            arr = _bf16_to_f32(np.frombuffer(raw, dtype=np.uint16))
        else:
            arr = np.frombuffer(raw, dtype=_DTYPES[dtype_code])
        try:
            variables[name] = arr.reshape(dims) if dims else arr.reshape(())
        except ValueError:  # an empty tensor whose other dimensions numpy cannot even count
            raise CTranslate2FormatError(f"{origin} is damaged: {name} has shape {dims}; download it again") from None
    if r.pos < len(blob):
        for _ in range(r.u32()):
            alias, target = r.string(), r.string()
            if target in variables:
                variables[alias] = variables[target]
    return variables
