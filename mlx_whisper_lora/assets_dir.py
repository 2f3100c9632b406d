"""Where the bundled assets live: the installed `mlx_whisper_lora/assets`, or `assets/` of a checkout."""

from pathlib import Path

_installed = Path(__file__).parent / "assets"
ASSETS = _installed if _installed.is_dir() else Path(__file__).resolve().parent.parent / "assets"
