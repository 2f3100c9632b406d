"""The wheel holds the whole package, and the installed copy (not the checkout) runs the CLIs as a
user's `pip install` would: the back end that `--backend auto` picks on this machine included."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True, text=True)
    return next(out.glob("mlx_whisper_lora-*.whl"))


def tracked_package_files() -> list:
    try:
        listed = subprocess.run(["git", "ls-files", "mlx_whisper_lora"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return listed


def test_wheel_holds_every_tracked_module_and_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = tracked_package_files()
    missing = [p for p in expected if p not in names]
    assert not missing, f"the wheel lacks {missing[:5]}"
    assert any(p.startswith("mlx_whisper_lora/backend_torch/") for p in expected)
    assert "mlx_whisper_lora/assets/demo.flac" in names
    # the lab notebook stays out: no benchmark, measurement script or test goes to users
    strays = [n for n in names if n.startswith(("benchmarks/", "scripts/", "tests/")) or "/benchmark" in n]
    assert not strays, strays


def test_building_the_wheel_prints_no_setuptools_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", str(ROOT),
                           "-w", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "would be ignored" not in proc.stdout + proc.stderr


def test_installed_wheel_trains_and_transcribes_outside_the_checkout(wheel, tmp_path):
    pytest.importorskip("torch")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    where = run("-c", "import mlx_whisper_lora; print(mlx_whisper_lora.__file__)")
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    trained = run("-m", "mlx_whisper_lora.lora", "--train", "--iters", "1", "--batch-size", "2", "--freeze-encoder",
                  "--no-progress", "--adapter-path", str(tmp_path / "adapters"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "adapters" / "adapters.safetensors").exists()
    transcribed = run("-m", "mlx_whisper_lora.transcribe", "--adapter-path", str(tmp_path / "adapters"),
                      "--output-dir", str(tmp_path), "--verbose", "False")
    assert transcribed.returncode == 0, transcribed.stderr[-2000:]
    assert (tmp_path / "demo.txt").read_text().strip()
    prepared = run("-m", "mlx_whisper_lora.prepare", "--help")
    assert prepared.returncode == 0 and "--valid-fraction" in prepared.stdout, prepared.stderr[-2000:]
