"""Bake adapters into a standalone model for the runtime you serve with, or export them for PEFT.

    python -m mlx_whisper_lora.fuse --adapter-path adapters --save-path fused_model            # an MLX folder
    python -m mlx_whisper_lora.fuse --adapter-path adapters --save-path out --export-format NAME [--quantize Q]

The formats, what each writes and the dtypes and quantizations it takes come from one registry
(mlx_whisper_lora/export/formats/, one file a format): `--help` lists them. Every folder gets a model card
(README.md) saying how to load it. `--verify [N]` then runs N held-out clips here and in the export's
runtime and prints how they agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from .errors import UserError, cli_entry
from .export.registry import DTYPES, FORMATS, NAMES, QUANTIZATIONS, help_lines


def fuse(model_name: Optional[str], adapter_path, save_path, export_format: str = "mlx",
         dequantize: bool = False, log=print, dtype: Optional[str] = None, quantize: Optional[str] = None,
         base_path: Optional[str] = None, verify: int = 0, adapter_scale: float = 1.0) -> Path:
    """Load base + adapters and write the result in `export_format`; returns the folder written.
    `verify`: decode that many held-out clips here and in the export's runtime, and print how they agree."""
    from .export.registry import check_export_options
    from .formats.adapter_files import read_adapter_config
    from .recipes.export_run import export_adapted

    check_export_options(export_format, dtype, quantize)  # before the (slow) load
    adapter_path = Path(adapter_path)
    if not adapter_path.exists():
        raise UserError(f"adapter path not found: {adapter_path}")
    adapter_folder = adapter_path if adapter_path.is_dir() else adapter_path.parent
    if Path(save_path).resolve() == adapter_folder.resolve():
        raise UserError(f"--save-path {save_path} is the adapter folder: the export would replace its "
                        "adapter_config.json (and the adapters would no longer load); pass another --save-path")
    name = model_name or read_adapter_config(adapter_path).base_model
    if not name:
        raise UserError(f"the adapters in {adapter_path} do not name their base model; pass --model")
    return export_adapted(name, adapter_path, save_path, export_format, dtype, quantize, base_path, dequantize,
                          adapter_scale, verify, log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.fuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="base model (default: the one named in adapter_config.json)")
    p.add_argument("--adapter-path", default="adapters", help="adapter folder (ours or a PEFT one)")
    p.add_argument("--save-path", default="fused_model", help="output folder")
    p.add_argument("--export-format", default="mlx", choices=NAMES, help=help_lines())
    p.add_argument("--dequantize", action="store_true", help="write a floating-point model from a quantized base")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights of the export (default: " + ", ".join(f"{k} {f.default_dtype}" for k, f in FORMATS.items())
                        + ")")
    p.add_argument("--quantize", default=None, choices=QUANTIZATIONS,
                   help="integer weights, in the format's own terms (see --export-format); ct2 keeps --dtype as the "
                        "compute type")
    p.add_argument("--base-path", default=None,
                   help="peft: where the base model is written as a transformers folder (default: SAVE_PATH_base; "
                        "a hub id base is named as it is unless this is given)")
    p.add_argument("--adapter-scale", type=float, default=1.0,
                   help="LoRA updates times this before fusing (0: the base model, 1: as trained)")
    p.add_argument("--verify", type=int, nargs="?", const=20, default=0, metavar="N",
                   help="decode N held-out clips (default 20; the adapter's test split) with this package and with the "
                        "export's runtime, and print how many transcripts agree and each WER")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = fuse(args.model, args.adapter_path, args.save_path, args.export_format, args.dequantize,
               log=lambda message: print(message, file=sys.stderr), dtype=args.dtype, quantize=args.quantize,
               base_path=args.base_path, verify=args.verify, adapter_scale=args.adapter_scale)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
