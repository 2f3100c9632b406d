"""Fine-tune Whisper with LoRA (or DoRA, or fully), and score it.

    python -m mlx_whisper_lora.lora --train --data DATA_DIR --adapter-path adapters --iters 200
    python -m mlx_whisper_lora.lora --test  --data DATA_DIR --adapter-path adapters

Options come from the command line, then a YAML file given with -c (keys as the long flags with
underscores), then the defaults shown in --help. With no --data the bundled demo set is used.
The run itself is `recipes/run.py`; both back ends train through the one loop in `tuner/loop.py`.
"""

from __future__ import annotations

import sys

from .errors import cli_entry
from .formats.adapter_files import BASE_STYLE_FILE  # noqa: F401 - the file name scripts and tests look for
from .tuner.run_config import build_parser, merge_options


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@cli_entry
def main(argv=None):
    parser = build_parser("python -m mlx_whisper_lora.lora", __doc__.split("\n\n")[0])
    cli = vars(parser.parse_args(argv))
    config = merge_options(cli, cli.pop("config", None))
    from .recipes.run import run  # after parsing: --help and flag errors answer without loading MLX or torch

    result = run(config, log)
    if result.get("train", {}).get("status") == "interrupted":
        raise SystemExit(130)
    return 0


if __name__ == "__main__":
    main()
