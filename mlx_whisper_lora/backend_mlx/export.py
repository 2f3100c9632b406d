"""Write a fine-tuned model (adapters in place) for the runtime a user serves with: MLX (mlx-whisper),
transformers, PEFT (adapter + a loadable base), CTranslate2 (faster-whisper), GGML (whisper.cpp), each
folder with a model card. `fuse` is the command line over `export_model`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from .. import __version__
from ..errors import UserError
from ..files import atomic_write_text
from ..formats.adapter_config import AdapterConfig
from ..export.model_card import PLOTS, model_card, style_note

EXPORT_FORMATS = ("mlx", "hf", "peft", "ct2", "ggml")
DEFAULT_DTYPES = {"mlx": "float16", "hf": "float32", "peft": "float32", "ct2": "float16", "ggml": "float16"}
DTYPES = {"mlx": ("float16", "float32", "bfloat16"), "hf": ("float32", "float16"), "peft": ("float32", "float16"),
          "ct2": ("float16", "float32", "bfloat16"),
          "ggml": ("float16",)}  # whisper.cpp's convolution needs float16 kernels (a float32 file aborts it)
QUANTIZE = {"mlx": ("int8", "int4"), "ct2": ("int8",), "hf": (), "peft": (), "ggml": ("q8_0", "q5_0", "q4_0")}
DESCRIPTIONS = {"mlx": "an MLX folder (mlx-whisper, mlx-whisper-lora)", "hf": "a transformers folder",
                "peft": "a PEFT adapter", "ct2": "a CTranslate2 folder (faster-whisper)",
                "ggml": "a whisper.cpp model (ggml-model.bin)"}


def check_export_options(fmt: str, dtype: Optional[str], quantize: Optional[str]) -> str:
    """The dtype to write, after refusing combinations a format cannot hold (one line naming the flag)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--export-format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    dtype = dtype or DEFAULT_DTYPES[fmt]
    if dtype not in DTYPES[fmt]:
        raise UserError(f"--dtype {dtype} is not available for --export-format {fmt}: use {', '.join(DTYPES[fmt])}")
    if quantize and quantize not in QUANTIZE[fmt]:
        options = ", ".join(QUANTIZE[fmt]) or "none"
        raise UserError(f"--quantize {quantize} is not available for --export-format {fmt} (available: {options})")
    if fmt == "ct2":
        from ..export.ctranslate2 import check_converter_available

        check_converter_available()
    return dtype


def _peft_base(base_name: str, save_path: Path, base_path: Optional[str], log: Callable) -> str:
    """What the PEFT adapter names as its base: a hub id as given, else a transformers folder of the
    base written here (`base_path`, default beside the adapter)."""
    from .load import load_model, save_hf

    if base_path is None and "/" in base_name and not Path(base_name).exists():
        return base_name  # a hub id transformers resolves itself
    folder = Path(base_path) if base_path else save_path.parent / f"{save_path.name}_base"
    save_hf(load_model(base_name), folder)
    log(f"wrote the base model as a transformers folder: {folder} (the PEFT adapter names it as its base)")
    return str(folder.resolve())


def export_model(model, config: AdapterConfig, adapter_path: Path, save_path, fmt: str = "mlx",
                 dtype: Optional[str] = None, quantize: Optional[str] = None, base_name: Optional[str] = None,
                 base_path: Optional[str] = None, dequantize: bool = False, log: Callable = print) -> Path:
    """Write `model` (the base with `config`'s adapters loaded, unfused) in `fmt` to `save_path`."""
    from ..formats.peft import export_peft
    from .adapters import fuse_adapters, trainable_numpy
    from .load import quantize_model, save_hf, save_model

    dtype = check_export_options(fmt, dtype, quantize)
    save_path = Path(save_path)
    base_name = base_name or config.base_model or str(model.source)
    note = style_note(config)
    if note and fmt != "mlx":
        log(f"note: {note} ({fmt} export; the model card in {save_path} says so too)")
    base_ref = None
    if fmt == "peft":
        base_ref = _peft_base(base_name, save_path, base_path, log)
        out = export_peft(trainable_numpy(model), config, save_path, base_model_name=base_ref)
    else:
        fuse_adapters(model, dequantize=dequantize or fmt != "mlx")
        if fmt == "mlx":
            if quantize:
                quantize_model(model, bits=8 if quantize == "int8" else 4)
            out = save_model(model, save_path, dtype=dtype)
        elif fmt == "hf":
            out = save_hf(model, save_path, dtype)
        elif fmt == "ct2":
            out = _export_ct2(model, save_path, dtype, quantize)
        else:
            out = _export_ggml(model, save_path, dtype, quantize)
    card = model_card(fmt, out, base_name, config, adapter_path, __version__, DESCRIPTIONS[fmt], base_ref)
    for plot in PLOTS:  # the card shows the training curves and test scores
        if adapter_path and (Path(adapter_path) / plot).exists():
            shutil.copyfile(Path(adapter_path) / plot, out / plot)
    atomic_write_text(out / "README.md", card + "\n")
    return out


def _export_ct2(model, save_path: Path, dtype: str, quantize: Optional[str]) -> Path:
    from ..export.ctranslate2 import convert_hf_folder
    from .load import save_hf

    quantization = dtype if not quantize else ("int8" if dtype == "float32" else f"int8_{dtype}")
    with tempfile.TemporaryDirectory(prefix="hf_for_ct2_") as tmp:
        save_hf(model, Path(tmp) / "hf")
        return convert_hf_folder(Path(tmp) / "hf", save_path, quantization)


def _export_ggml(model, save_path: Path, dtype: str, quantize: Optional[str] = None) -> Path:
    from ..data.audio import mel_filters
    from ..export.ggml import write_ggml
    from ..text.tokenizer import read_ranks
    from .load import float_weights

    save_path.mkdir(parents=True, exist_ok=True)
    ranks = read_ranks(model.folder, model.is_multilingual)
    write_ggml(save_path / "ggml-model.bin", float_weights(model), model.dims, mel_filters(model.dims.n_mels), ranks, dtype,
               quantize)
    return save_path
