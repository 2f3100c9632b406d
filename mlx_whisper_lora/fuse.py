"""Bake adapters into a standalone model, or export them for transformers + PEFT.

    python -m mlx_whisper_lora.fuse --adapter-path adapters --save-path fused_model
    python -m mlx_whisper_lora.fuse --adapter-path adapters --save-path hf_model --export-format hf
    python -m mlx_whisper_lora.fuse --adapter-path adapters --save-path peft_adapter --export-format peft

mlx: an MLX folder (this package and PyPI mlx-whisper load it). hf: a transformers folder
(WhisperForConditionalGeneration; `ct2-transformers-converter` turns it into a faster-whisper model).
peft: adapter_model.safetensors + adapter_config.json for `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .errors import UserError, cli_entry

EXPORT_FORMATS = ("mlx", "hf", "peft")


def fuse(model_name: Optional[str], adapter_path, save_path, export_format: str = "mlx",
         dequantize: bool = False, log=print, dtype: str = "float16") -> Path:
    """Load base + adapters and write the result in `export_format`; returns the folder written.
    `dtype`: the floating-point type of the mlx export (float16, as mlx-whisper runs by default)."""
    from .backend_mlx.adapters import fuse_adapters, load_adapters, trainable_numpy
    from .backend_mlx.load import load_model, save_hf, save_model
    from .formats.adapter_files import read_adapter_config
    from .formats.peft import export_peft

    if export_format not in EXPORT_FORMATS:
        raise UserError(f"--export-format {export_format!r}: use one of {', '.join(EXPORT_FORMATS)}")
    adapter_path = Path(adapter_path)
    if not adapter_path.exists():
        raise UserError(f"adapter path not found: {adapter_path}")
    config = read_adapter_config(adapter_path)
    name = model_name or config.base_model
    if not name:
        raise UserError(f"the adapters in {adapter_path} do not name their base model; pass --model")
    model = load_model(name)
    load_adapters(model, adapter_path)
    save_path = Path(save_path)
    if config.case_style in ("upper", "lower") and export_format != "mlx":
        log(f"note: these adapters were trained on lower-case text and their transcripts are rendered in "
            f"{config.case_style} case (case style in adapter_config.json); a {export_format} export cannot carry "
            f"that, so apply str.{config.case_style}() to its transcripts. The mlx export keeps it in config.json.")
    if config.punctuation == "none" and export_format != "mlx":
        log(f"note: the training transcripts had no punctuation, so transcripts made with these adapters are rendered "
            f"without it (mlx_whisper_lora.text.case_style.strip_punctuation); a {export_format} export cannot carry that.")
    if export_format == "peft":
        return export_peft(trainable_numpy(model), config, save_path, base_model_name=name)
    fuse_adapters(model, dequantize=dequantize or export_format == "hf")
    if export_format == "hf":
        return save_hf(model, save_path)
    return save_model(model, save_path, dtype=dtype)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.fuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="base model (default: the one named in adapter_config.json)")
    p.add_argument("--adapter-path", default="adapters", help="adapter folder (ours or a PEFT one)")
    p.add_argument("--save-path", default="fused_model", help="output folder")
    p.add_argument("--export-format", default="mlx", choices=EXPORT_FORMATS)
    p.add_argument("--dequantize", action="store_true", help="write a floating-point model from a quantized base")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"],
                   help="weights of the mlx export (default: float16, which mlx-whisper runs with its defaults)")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = fuse(args.model, args.adapter_path, args.save_path, args.export_format, args.dequantize, dtype=args.dtype)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
