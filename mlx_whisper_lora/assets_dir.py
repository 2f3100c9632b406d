"""Where the bundled assets live: `mlx_whisper_lora/assets` (vocabularies, demo clip, demo data set, demo adapter)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_CLIP = ASSETS / "demo.flac"  # what `transcribe` transcribes when given no file
DEMO_ADAPTER = ASSETS / "demo_adapter"  # tiny.en decoder LoRA for synthetic voices (scripts/make_demo_adapter.py)
