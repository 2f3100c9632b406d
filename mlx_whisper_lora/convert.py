"""Convert any supported Whisper checkpoint to another format (optionally cast or quantized): an MLX
folder by default, or any whole-model format `fuse` writes (the same names, one registry).

python -m mlx_whisper_lora.convert SRC --save-path DST [--export-format NAME] [--dtype D]
                                   [-q --q-bits N --q-group-size 64]
"""

from __future__ import annotations

import argparse
from typing import Optional

from .errors import cli_entry
from .export.registry import DTYPES, FORMATS, NAMES, help_lines


def convert(src: str, save_path: str, dtype: Optional[str] = None, quantize: bool = False,
            q_bits: int = 4, q_group_size: int = 64, export_format: str = "mlx"):
    """`quantize`: the format's own quantization of `q_bits` bits (mlx int4/int8, ct2 int8, ggml q4_0/q5_0/q8_0)."""
    from .export.registry import quantization_for_bits
    from .recipes.export_run import convert_checkpoint

    quantization = quantization_for_bits(export_format, q_bits) if quantize else None
    return convert_checkpoint(src, save_path, export_format, dtype, quantization, q_group_size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.convert", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("src", help="MLX/transformers/CTranslate2 folder, .pt file, hub id or short name")
    p.add_argument("--save-path", required=True, help="output folder")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights (default: " + ", ".join(f"{k} {f.default_dtype}" for k, f in FORMATS.items()) + ")")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize in the format's own scheme (see --q-bits)")
    p.add_argument("--q-bits", type=int, default=4,
                   choices=sorted({b for f in FORMATS.values() for b in (f.bits or {})}),
                   help="bits a weight: " + "; ".join(f"{k} {', '.join(f'{b}={q}' for b, q in f.bits.items())}"
                                                      for k, f in FORMATS.items() if f.bits) + " (default 4)")
    p.add_argument("--q-group-size", type=int, default=64, choices=[32, 64, 128], help="MLX quantization's group")
    p.add_argument("--export-format", default="mlx", choices=NAMES, help=help_lines())
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    out = convert(args.src, args.save_path, args.dtype, args.quantize, args.q_bits, args.q_group_size, args.export_format)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    main()
