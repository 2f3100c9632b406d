"""The C heap's free pages given back to the system. glibc keeps freed blocks resident (and the torch engine
asks it to, backend_torch/heap.py, so a training step reuses them): resident memory then shows the largest
step or batch so far, not what the process holds now. The memory plan measures after this; the server runs it
after every batch, whose sizes vary with the requests (without it its RSS doubled over 10 minutes of load,
benchmarks/load_test_server.py)."""

from __future__ import annotations

import sys


def release_free_heap() -> None:
    """glibc's malloc_trim(0): every arena's free pages back to the system; nothing elsewhere (another C library)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
