"""The torch engine where MLX is not installed (a Windows box, a Linux GPU box with the torch extra): a
virtual environment holding this environment's packages less MLX (and what needs it) runs the README's
commands, and its transcripts equal the MLX engine's here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch")
pytest.importorskip("mlx.core")  # the comparison's other side


def _needs_mlx(name: str) -> bool:
    """MLX itself, its libraries, packages built on it (mlx-whisper), and this package's editable install (the
    venv reaches the source tree through its own .pth)."""
    lowered = name.lower()
    return lowered.startswith(("mlx", "__editable__"))


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> str:
    """A venv whose site-packages links every package of this one except MLX's; the package itself from the
    source tree. No MLX file is reachable from it (checked)."""
    venv = tmp_path_factory.mktemp("no_mlx") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not _needs_mlx(entry.name) and not (site / entry.name).exists():
            (site / entry.name).symlink_to(entry)
    (site / "mlx_whisper_lora_source.pth").write_text(str(ROOT) + "\n")
    probe = subprocess.run([py, "-c", "import importlib.util as u; print(u.find_spec('mlx'), u.find_spec('torch') is not None)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["None", "True"], probe.stdout
    return str(py)


def run(python: str, *args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([python, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done


def test_the_first_command_prints_what_the_mlx_engine_prints(python, tmp_path):
    """README's first command (the demo: base and adapted side by side), without MLX, then with it here."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "mlx").mkdir()
    without = run(python, "mlx_whisper_lora.transcribe", cwd=tmp_path / "torch")
    with_mlx = run(sys.executable, "mlx_whisper_lora.transcribe", cwd=tmp_path / "mlx")
    assert "with the adapter" in without.stdout
    assert without.stdout == with_mlx.stdout
    assert (tmp_path / "torch" / "demo.txt").read_text() == (tmp_path / "mlx" / "demo.txt").read_text()


def test_fuse_without_mlx_writes_what_the_mlx_engine_writes(python, tmp_path):
    """The torch engine folds the adapters in where MLX is not installed: the transformers export's weights equal
    the MLX engine's within float32 rounding of W + scale * A @ B (each engine sums the rank-r product in its own
    order), every other file is byte-equal, and the default MLX folder (float16) within one float16 step. MLX's
    own quantization is refused in one line."""
    import numpy as np

    from mlx_whisper_lora.formats.safetensors_io import read_safetensors

    adapter = ROOT / "mlx_whisper_lora" / "assets" / "demo_adapter"
    for python_, side in ((python, "torch"), (sys.executable, "mlx")):
        for fmt, extra in (("hf", ["--dtype", "float32"]), ("mlx", [])):
            run(python_, "mlx_whisper_lora.fuse", "--adapter-path", str(adapter), "--save-path",
                str(tmp_path / side / fmt), "--export-format", fmt, *extra, cwd=tmp_path)
    torch_hf, mlx_hf = (read_safetensors(tmp_path / side / "hf" / "model.safetensors") for side in ("torch", "mlx"))
    assert torch_hf.keys() == mlx_hf.keys()
    for name in mlx_hf:
        bound = 1e-6 * max(1.0, float(np.abs(mlx_hf[name]).max()))
        assert np.abs(torch_hf[name] - mlx_hf[name]).max() <= bound, name
    for name in ("config.json", "generation_config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / "torch" / "hf" / name).read_bytes() == (tmp_path / "mlx" / "hf" / name).read_bytes(), name
    torch_mlx, mlx_mlx = (read_safetensors(tmp_path / side / "mlx" / "weights.safetensors") for side in ("torch", "mlx"))
    assert torch_mlx.keys() == mlx_mlx.keys()
    for name, value in mlx_mlx.items():
        if value.dtype == np.float16:
            step = np.spacing(np.abs(value).astype(np.float16)).astype(np.float32)
            assert (np.abs(torch_mlx[name].astype(np.float32) - value.astype(np.float32)) <= step).all(), name
        else:
            assert np.array_equal(torch_mlx[name], value), name
    refused = subprocess.run([python, "-m", "mlx_whisper_lora.fuse", "--adapter-path", str(adapter), "--save-path",
                              str(tmp_path / "q"), "--quantize", "int4"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "pip install 'mlx-whisper-lora[mlx]'" in refused.stderr


@pytest.mark.slow
def test_english_transcripts_equal_the_mlx_engines(python, shared_data, tiny_en, tmp_path):
    from mlx_whisper_lora.inference.transcriber import transcribe

    clips = sorted((shared_data / "librispeech_test_clean_4" / "audio").glob("*.flac"))
    clips.append(shared_data / "whisper_mlx_classics" / "audio" / "jfk.flac")
    run(python, "mlx_whisper_lora.transcribe", *map(str, clips), "--model", "tiny.en", "--output-format", "json",
        "--output-dir", str(tmp_path), "--verbose", "False", cwd=tmp_path)
    for clip in clips:
        theirs = json.loads((tmp_path / f"{clip.stem}.json").read_text())["text"]
        assert theirs == transcribe(clip, tiny_en, verbose=False)["text"], clip.name


@pytest.mark.slow
def test_train_test_and_serve_without_mlx(python, tmp_path):
    """README's fine-tune, test and serve commands on the bundled demo data, PyTorch chosen without a flag."""
    from server_process import start_server

    data = ROOT / "mlx_whisper_lora" / "assets" / "demo_data"
    trained = run(python, "mlx_whisper_lora.lora", "--train", "--test", "--data", str(data), "--model", "tiny.en",
                  "--iters", "4", "--batch-size", "4", "--steps-per-eval", "2", "--val-batches", "1",
                  "--adapter-path", "adapters", "--no-progress", cwd=tmp_path, timeout=1800)
    log = trained.stdout + trained.stderr
    assert "MLX is not installed here" in log and "test" in log.lower()
    assert (tmp_path / "adapters" / "adapters.safetensors").exists()
    import httpx

    proc, url = start_server("--adapter", f"mine={tmp_path / 'adapters'}", python=python)
    try:
        with open(ROOT / "mlx_whisper_lora" / "assets" / "demo.flac", "rb") as f:
            reply = httpx.post(url + "/v1/audio/transcriptions", data={"model": "mine"},
                               files={"file": ("demo.flac", f, "audio/flac")}, timeout=300)
        assert reply.status_code == 200 and reply.json()["text"].strip(), reply.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
