"""A CTranslate2 folder that faster-whisper (`WhisperModel(path)`) loads, made from a transformers folder.

The conversion itself is CTranslate2's own converter (the one behind `ct2-transformers-converter`), so
the model.bin layout is what CTranslate2 expects of every version; this module supplies what it needs
and what faster-whisper reads beside model.bin: tokenizer.json and preprocessor_config.json (without
them faster-whisper would try the Hub), and the alignment heads, language and suppressed token ids,
which the converter reads from generation_config.json.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Union

from ..errors import UserError

QUANTIZATIONS = ("float16", "float32", "bfloat16", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "int16")


def check_converter_available() -> None:
    missing = [name for name in ("ctranslate2", "transformers", "torch") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--export-format ct2 converts through CTranslate2's converter, which needs "
                        f"{', '.join(missing)}: pip install ctranslate2 transformers torch")


def convert_hf_folder(hf_folder: Union[str, Path], out: Union[str, Path], quantization: str = "float16") -> Path:
    """Convert a transformers Whisper folder into `out` (replaced if present) with weights in `quantization`."""
    if quantization not in QUANTIZATIONS:
        raise UserError(f"CTranslate2 quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    check_converter_available()
    import ctranslate2.converters

    hf_folder, out = Path(hf_folder), Path(out)
    staging = Path(tempfile.mkdtemp(prefix=".ct2_", dir=out.parent if out.parent.exists() else None))
    try:
        converter = ctranslate2.converters.TransformersConverter(
            str(hf_folder), copy_files=["tokenizer.json", "preprocessor_config.json"])
        converter.convert(str(staging / "model"), quantization=quantization, force=True)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staging / "model"), str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
