"""`fuse` and `convert` as steps: choose the engine that folds the adapters in (MLX where installed, else
PyTorch), write the format's files through the registry (export/registry.py), then `--verify`.

The PEFT export needs no engine at all: it rewrites the adapter file and, when the base is not a hub id,
writes the base as a transformers folder from the checkpoint's own arrays."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..errors import UserError
from ..export.fused_model import FusedModel, base_model
from ..export.hf import save_hf_folder
from ..export.registry import FORMATS, ExportJob, check_export_options, get_format
from ..export.writing import write_export
from ..formats.adapter_config import AdapterConfig
from ..formats.adapter_files import check_dims, read_adapter_config, read_adapter_tensors, scale_adapters
from ..formats.checkpoint import resolve

MLX_BITS = {"int8": 8, "int4": 4}


def export_engine() -> str:
    """The engine that folds adapters in: MLX where it is installed, else PyTorch; a one-line error with neither."""
    if importlib.util.find_spec("mlx") is not None:
        return "mlx"
    if importlib.util.find_spec("torch") is not None:
        return "torch"
    raise UserError("fusing adapters needs an engine: pip install 'mlx-whisper-lora[mlx]' (Linux, macOS) "
                    "or 'mlx-whisper-lora[torch]'")


def fold(name: Optional[str], adapter_path=None, scale: float = 1.0, keep_quantized: bool = False,
         mlx_quantize: Optional[str] = None, group_size: int = 64) -> Tuple[FusedModel, Optional[AdapterConfig]]:
    """The model with its adapters folded in, by whichever engine is here. `keep_quantized`: an MLX folder keeps
    a quantized base as it is; `mlx_quantize` (int8/int4): MLX's own quantization, which only MLX writes."""
    engine = export_engine()
    if engine == "torch":
        if mlx_quantize or keep_quantized and resolve(str(name)).quantization:
            raise UserError("MLX-quantized weights are written with MLX, which is not installed here: "
                            "pip install 'mlx-whisper-lora[mlx]', or leave --quantize out")
        from ..backend_torch.fused import fused_model

        return fused_model(name, adapter_path, scale)
    from ..backend_mlx.fused import fused_model

    return fused_model(name, adapter_path, scale, dequantize=not keep_quantized,
                       quantize_bits=MLX_BITS.get(mlx_quantize or ""), group_size=group_size)


def peft_base(base_name: str, save_path: Path, base_path: Optional[str], log: Callable) -> str:
    """What the PEFT adapter names as its base: a hub id as given, else a transformers folder of the base written
    here (`base_path`, default beside the adapter)."""
    if base_path is None and "/" in base_name and not Path(base_name).exists():
        return base_name  # a hub id transformers resolves itself
    folder = Path(base_path) if base_path else save_path.parent / f"{save_path.name}_base"
    ckpt = resolve(base_name)
    base = fold(base_name)[0] if ckpt.quantization else base_model(ckpt)
    save_hf_folder(base.weights, base.dims, base.alignment_heads, folder, base.folder)
    log(f"wrote the base model as a transformers folder: {folder} (the PEFT adapter names it as its base)")
    return str(folder.resolve())


def peft_job(name: str, adapter_path: Path, save_path: Path, dtype: str, scale: float, base_path: Optional[str],
             log: Callable) -> Tuple[ExportJob, AdapterConfig]:
    config = read_adapter_config(adapter_path)
    ckpt = resolve(name)
    check_dims(ckpt.dims, ckpt.source, config, adapter_path)
    scale_adapters(config, scale, adapter_path)
    model = base_model(ckpt)
    model.adapter_tensors = read_adapter_tensors(adapter_path)
    base_ref = peft_base(name, save_path, base_path, log)
    return ExportJob(model, save_path, dtype, base_ref=base_ref, adapter_config=config), config


def export_adapted(name: str, adapter_path: Path, save_path, fmt: str = "mlx", dtype: Optional[str] = None,
                   quantize: Optional[str] = None, base_path: Optional[str] = None, dequantize: bool = False,
                   scale: float = 1.0, verify: int = 0, log: Callable = print) -> Path:
    """Base `name` + the adapters at `adapter_path`, written in `fmt` to `save_path` with a model card;
    `verify`: that many held-out clips decoded here and in the export's runtime, and how they agree."""
    dtype = check_export_options(fmt, dtype, quantize)
    save_path = Path(save_path)
    if get_format(fmt).adapter_only:
        job, config = peft_job(name, adapter_path, save_path, dtype, scale, base_path, log)
    else:
        model, config = fold(name, adapter_path, scale, keep_quantized=fmt == "mlx" and not dequantize,
                             mlx_quantize=quantize if fmt == "mlx" else None)
        job = ExportJob(model, save_path, dtype, None if fmt == "mlx" else quantize, adapter_config=config)
    out = write_export(fmt, job, config, adapter_path, name, log)
    if verify:
        from ..export.verify import verify_export
        from ..load import default_inference_backend, load_for_inference

        reference = load_for_inference(name, str(adapter_path), backend=default_inference_backend(), adapter_scale=scale)
        verify_export(fmt, out, adapter_path, reference, verify, log)
    return out


def convert_checkpoint(src: str, save_path, fmt: str = "mlx", dtype: Optional[str] = None, quantize: Optional[str] = None,
                       group_size: int = 64, log: Callable = print) -> Path:
    """A checkpoint of any kind written in `fmt` (no adapters, no model card); `quantize` in the format's terms."""
    record = get_format(fmt)
    if record.adapter_only:
        models = ", ".join(n for n, f in FORMATS.items() if not f.adapter_only)
        raise UserError(f"--export-format {fmt} writes adapters and convert writes whole models: use fuse "
                        f"--export-format {fmt} with --adapter-path, or convert to {models}")
    dtype = check_export_options(fmt, dtype, quantize)
    ckpt = resolve(src)
    if ckpt.quantization or (fmt == "mlx" and quantize):  # MLX's packed integers: read or written by MLX
        model = fold(src, keep_quantized=fmt == "mlx" and not quantize, mlx_quantize=quantize if fmt == "mlx" else None,
                     group_size=group_size)[0]
    else:
        model = base_model(ckpt)  # floats are rewritten without an engine
    return write_export(fmt, ExportJob(model, Path(save_path), dtype, None if fmt == "mlx" else quantize,
                                       group_size=group_size), log=log)
