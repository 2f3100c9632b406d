"""Start `python -m mlx_whisper_lora.serve` as a user would, on a free loopback port, and the things the server
tests share: seeded adapter folders, the CLI's transcript, short and long clips of real speech."""

from __future__ import annotations

import json
import os
import tempfile
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args, timeout: float = 180, python: str = sys.executable, env=None):
    """`python -m mlx_whisper_lora.serve ARGS` on a free loopback port; returns (process, base url).
    The server's log (stdout and stderr) is the file `proc.log_path`."""
    import httpx

    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"serve-{port}.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen([python, "-m", "mlx_whisper_lora.serve", "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=None if env is None else {**os.environ, **env})
    proc.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the server exited: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("the server did not start")


def stop_server(proc) -> int:
    proc.terminate()
    return proc.wait(timeout=60)


def make_adapter(folder: Path, kind: str, rank: int, seed: int, modules=None, freeze_encoder=True,
                 model: str = "tiny.en", std: float = 0.01) -> Path:
    """Real adapter files (our format) with seeded weights that change the transcript a little (more with `std`)."""
    import mlx_whisper_lora  # noqa: F401  (before mlx: the fast BLAS, as the server and the CLI have it)
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from mlx_whisper_lora.backend_mlx.adapters import apply_adapters, save_adapters
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.formats.adapter_config import AdapterConfig

    whisper = load_model(model)
    config = AdapterConfig(fine_tune_type=kind, rank=rank, alpha=2.0 * rank, freeze_encoder=freeze_encoder,
                           base_model=model, modules=modules)
    apply_adapters(whisper, config)
    rng = np.random.default_rng(seed)
    updated = []
    for name, value in tree_flatten(whisper.trainable_parameters()):
        if name.endswith("lora_b"):
            updated.append((name, mx.array(rng.normal(0, std, value.shape).astype(np.float32))))
        elif name.endswith(".m"):
            updated.append((name, value * mx.array(rng.uniform(0.97, 1.03, value.shape).astype(np.float32))))
    whisper.update(tree_unflatten(updated))
    save_adapters(whisper, config, folder)
    return folder


def cli_text(clip, adapter, out_dir, *more) -> str:
    """What `python -m mlx_whisper_lora.transcribe CLIP [--adapter-path ADAPTER] [MORE]` writes as the text."""
    from mlx_whisper_lora.transcribe import main

    args = [str(clip), "--output-dir", str(out_dir), "--output-format", "json", "--verbose", "False", *more]
    main(args + (["--adapter-path", str(adapter)] if adapter else ["--model", "tiny.en"]))
    return json.loads((Path(out_dir) / f"{Path(clip).stem}.json").read_text())["text"]


def librispeech_clips(shared_data: Path, count: int, longest: float = 4.0):
    """The `count` shortest LibriSpeech utterances under `longest` seconds (quick to decode)."""
    folder = shared_data / "librispeech_2spk"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if r["duration"] <= longest), key=lambda r: (r["duration"], r["id"]))
    return [folder / r["audio"] for r in rows[:count]]


def long_recording(shared_data: Path, out: Path, seconds: float = 43.0) -> Path:
    """One chapter's consecutive LibriSpeech utterances joined into a recording of about `seconds` (two windows)."""
    import soundfile as sf

    folder = shared_data / "librispeech_2spk"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if r["id"].startswith("4088-158077-")), key=lambda r: int(r["id"].rsplit("-", 1)[1]))
    pieces, total = [], 0.0
    for r in rows:
        if total + r["duration"] > seconds + 1:
            continue
        audio, rate = sf.read(folder / r["audio"], dtype="float32")
        pieces += [audio, np.zeros(rate // 2, np.float32)]
        total += r["duration"] + 0.5
        if total >= seconds - 1:
            break
    sf.write(out, np.concatenate(pieces), rate)
    return out
