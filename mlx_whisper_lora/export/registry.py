"""Every export format in one place: a record per format (export/formats/<name>.py), found by listing that
folder, so `fuse`, `convert`, `--verify`, `--help` and the model card read their choices from here and adding
a format is one new file with its record.

A record says what the format writes, which dtypes and quantizations it takes, whether it carries the
adapters' text style, the runtime that verifies it (and how to run it there), and how the model card
shows loading it."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import UserError
from ..formats.adapter_config import AdapterConfig
from .fused_model import FusedModel

Writer = Callable[["ExportJob"], Path]
Runner = Callable[[Path, Optional[str]], Callable[[np.ndarray], str]]


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --export-format NAME
    description: str  # "a transformers folder": --help and the model card
    dtypes: Tuple[str, ...]  # the first is the default
    write: Writer
    quantizations: Tuple[str, ...] = ()  # --quantize choices
    bits: Optional[Dict[int, str]] = None  # convert's -q --q-bits N: the quantization it means here
    text_style: bool = False  # the folder itself makes its runtime render the adapters' case and punctuation
    library: str = ""  # the model card's library_name
    loading: str = ""  # the model card's snippet: {path}, {name} (the folder's), {language}, {base} filled in
    runtime: str = ""  # the pip package --verify runs the export in
    runtime_module: str = ""  # ... and its import name (checked before the slow part)
    runner: Optional[Runner] = None  # (folder, language) -> transcribe(16 kHz audio) -> text, greedy
    needs: Tuple[str, ...] = ()  # import names the writer needs: refused early, naming the extra to install
    install: str = ""  # how to get `needs`
    adapter_only: bool = False  # writes the adapters, not a model (no `convert`)
    rank: int = 50  # order in --help

    @property
    def default_dtype(self) -> str:
        return self.dtypes[0]


@dataclass
class ExportJob:
    """One export: the model, where it goes and how; `base_ref` is what a PEFT adapter names as its base."""

    model: FusedModel
    save_path: Path
    dtype: str
    quantize: Optional[str] = None
    base_ref: Optional[str] = None
    group_size: int = 64  # MLX quantization's group (convert --q-group-size)
    adapter_config: Optional[AdapterConfig] = None  # the adapters' config (the PEFT export writes it)


def _discover() -> Dict[str, ExportFormat]:
    from . import formats

    found = {}
    for info in pkgutil.iter_modules(formats.__path__):
        record = getattr(importlib.import_module(f"{formats.__name__}.{info.name}"), "FORMAT", None)
        if isinstance(record, ExportFormat):
            found[record.name] = record
    return dict(sorted(found.items(), key=lambda item: (item[1].rank, item[0])))


FORMATS: Dict[str, ExportFormat] = _discover()
NAMES: Tuple[str, ...] = tuple(FORMATS)
DTYPES: Tuple[str, ...] = tuple(dict.fromkeys(d for f in FORMATS.values() for d in f.dtypes))
QUANTIZATIONS: Tuple[str, ...] = tuple(dict.fromkeys(q for f in FORMATS.values() for q in f.quantizations))


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UserError(f"--export-format {name!r}: use one of {', '.join(NAMES)}")
    return FORMATS[name]


def check_export_options(name: str, dtype: Optional[str], quantize: Optional[str]) -> str:
    """The dtype to write, after refusing what the format cannot hold or this machine cannot write (one line
    naming the flag or the package)."""
    record = get_format(name)
    dtype = dtype or record.default_dtype
    if dtype not in record.dtypes:
        raise UserError(f"--dtype {dtype} is not available for --export-format {name}: use {', '.join(record.dtypes)}")
    if quantize and quantize not in record.quantizations:
        options = ", ".join(record.quantizations) or "none"
        raise UserError(f"--quantize {quantize} is not available for --export-format {name} (available: {options})")
    missing = [m for m in record.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--export-format {name} needs {', '.join(missing)}, which is not installed: {record.install}")
    return dtype


def quantization_for_bits(name: str, bits: int) -> str:
    """convert's `-q --q-bits N` in a format's own terms (mlx int4/int8, ct2 int8, ggml q4_0/q8_0, ...)."""
    record = get_format(name)
    if not record.bits or bits not in record.bits:
        options = ", ".join(str(b) for b in (record.bits or {})) or "none"
        raise UserError(f"-q --q-bits {bits} is not available for --export-format {name} (bits available: {options})")
    return record.bits[bits]


def help_lines() -> str:
    """One line a format for --help: name, what it writes, dtypes (default first) and quantizations."""
    return "; ".join(f"{f.name}: {f.description} (dtype {'/'.join(f.dtypes)}"
                     + (f"; --quantize {'/'.join(f.quantizations)}" if f.quantizations else "") + ")"
                     for f in FORMATS.values())
