"""Files the package writes: atomic, and with the mode any new file of the user's gets, whichever
library wrote them (safetensors' writer alone would make them 0600, MLX's 0644)."""

import os
import stat

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.files import atomic_write, atomic_write_text
from mlx_whisper_lora.formats.safetensors_io import write_safetensors


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_gives_the_mode_of_a_plain_new_file(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = [
        write_safetensors(tmp_path / "numpy.safetensors", {"a": np.zeros(3, np.float32)}),
        atomic_write_text(tmp_path / "config.json", "{}"),
        atomic_write(tmp_path / "mlx.safetensors", lambda tmp: mx.save_safetensors(str(tmp), {"a": mx.zeros(3)})),
    ]
    assert {mode(p) for p in written} == {mode(plain)}


def test_the_mode_follows_the_umask(tmp_path):
    from mlx_whisper_lora.files import default_file_mode

    default_file_mode.cache_clear()
    old = os.umask(0o077)
    try:
        path = write_safetensors(tmp_path / "private.safetensors", {"a": np.zeros(1, np.float32)})
        assert mode(path) == 0o600
    finally:
        os.umask(old)
        default_file_mode.cache_clear()
    assert mode(write_safetensors(tmp_path / "usual.safetensors", {"a": np.zeros(1, np.float32)})) == 0o666 & ~old


@pytest.fixture
def nearly_full_disk(tmp_path):
    """A 64 KB tmpfs with 4 KB left (needs root and mount; skipped elsewhere)."""
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        (folder / "filler").write_bytes(os.urandom(60000))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_full_disk_keeps_the_transcripts_elsewhere_with_one_line(nearly_full_disk, jfk, tmp_path, monkeypatch):
    import subprocess
    import sys

    rescue_root = tmp_path / "rescue_root"
    rescue_root.mkdir()
    proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.transcribe", str(jfk), "--model", "tiny.en",
                           "-o", str(nearly_full_disk), "-f", "all", "--verbose", "False"],
                          capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(rescue_root)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr and "they are saved in" in proc.stderr
    [rescue] = rescue_root.iterdir()
    assert sorted(p.suffix for p in rescue.iterdir()) == [".json", ".srt", ".tsv", ".txt", ".vtt"]
    assert "ask what you can do for your country" in (rescue / "jfk.txt").read_text().lower()
    assert not list(nearly_full_disk.glob("*.tmp.*"))  # no half-written file left behind


def test_training_onto_a_full_disk_keeps_the_adapters_elsewhere(nearly_full_disk, shared_data, tmp_path):
    import json
    import subprocess
    import sys

    from mlx_whisper_lora.formats.adapter_files import read_adapter_tensors, saved_step

    source = shared_data / "librispeech_2spk"
    data = tmp_path / "data"
    data.mkdir()
    rows = [json.loads(line) for line in (source / "manifest.jsonl").read_text().splitlines()[:2]]
    (data / "train.jsonl").write_text("".join(json.dumps({"audio": str(source / r["audio"]), "text": r["text"]}) + "\n"
                                              for r in rows))
    rescue_root = tmp_path / "rescue_root"
    rescue_root.mkdir()
    proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.lora", "--train", "--data", str(data),
                           "--iters", "2", "--batch-size", "2", "--adapter-path", str(nearly_full_disk / "adapters"),
                           "--no-progress", "--alignment-heads", "keep", "--rank", "4"],
                          capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(rescue_root)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "could not be written" in proc.stderr and "they are saved in" in proc.stderr
    [rescue] = rescue_root.glob("mlx_whisper_lora_adapters_*")
    assert saved_step(rescue / "adapters.safetensors") == 2 and read_adapter_tensors(rescue)
    assert (rescue / "adapter_config.json").exists() and (rescue / "optimizer_state.safetensors").exists()
