"""Convert any supported Whisper checkpoint to an MLX folder (optionally cast or quantized), or to a
transformers folder (for example the base a PEFT adapter loads on).

python -m mlx_whisper_lora.convert SRC --save-path DST [--dtype float16|float32|bfloat16]
                                   [-q --q-bits 4|8 --q-group-size 64] [--export-format mlx|hf]
"""

from __future__ import annotations

import argparse

from .errors import UserError, cli_entry


def convert(src: str, save_path: str, dtype: str = "float16", quantize: bool = False,
            q_bits: int = 4, q_group_size: int = 64, export_format: str = "mlx"):
    from .load import require_mlx

    require_mlx("convert")
    from .backend_mlx.load import load_model, quantize_model, save_hf, save_model

    if export_format == "hf":
        if quantize:
            raise UserError("-q/--quantize writes MLX quantized weights; a transformers folder holds floats")
        return save_hf(load_model(src), save_path, "float16" if dtype == "float16" else "float32")
    model = load_model(src, dtype=dtype)
    if quantize:
        quantize_model(model, bits=q_bits, group_size=q_group_size)
    return save_model(model, save_path)


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.convert", description=__doc__.splitlines()[0])
    p.add_argument("src", help="MLX/transformers/CTranslate2 folder, .pt file, hub id or short name")
    p.add_argument("--save-path", required=True, help="output MLX folder")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    p.add_argument("-q", "--quantize", action="store_true", help="quantize linear and embedding layers")
    p.add_argument("--q-bits", type=int, default=4, choices=[4, 8])
    p.add_argument("--q-group-size", type=int, default=64, choices=[32, 64, 128])
    p.add_argument("--export-format", default="mlx", choices=["mlx", "hf"],
                   help="mlx: an MLX folder; hf: a transformers folder (float32 unless --dtype float16)")
    args = p.parse_args(argv)
    out = convert(args.src, args.save_path, args.dtype, args.quantize, args.q_bits, args.q_group_size, args.export_format)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    main()
