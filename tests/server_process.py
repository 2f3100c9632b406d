"""Start `python -m mlx_whisper_lora.serve` as a user would, on a free loopback port (for the server tests)."""

from __future__ import annotations

import tempfile
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args, timeout: float = 180, python: str = sys.executable):
    """`python -m mlx_whisper_lora.serve ARGS` on a free loopback port; returns (process, base url)."""
    import httpx

    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"serve-{port}.log", "w+")
    proc = subprocess.Popen([python, "-m", "mlx_whisper_lora.serve", "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
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
