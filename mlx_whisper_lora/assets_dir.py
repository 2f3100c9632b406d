"""Where the bundled assets live: `mlx_whisper_lora/assets` (vocabularies, demo clip, demo data set)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
