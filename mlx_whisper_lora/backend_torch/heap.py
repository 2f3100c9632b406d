"""Keep freed activation-sized blocks in the process heap instead of giving them back to the kernel.

PyTorch on the CPU takes each tensor from malloc. glibc serves every block over 32 MB (the most its
mmap threshold can be raised to) with a fresh mmap and unmaps it on free, so the next step's
activation of the same size faults every page in again, zeroed by the kernel: a base-model training
step here took about 5 million page faults. Switching glibc's mmap off (and trimming the heap top only
past 1 GB) lets freed blocks be reused as they are: the step timed 13-17% faster, for 0.4-0.8 GB more
peak resident memory (docs/benchmarks.md). jemalloc or tcmalloc would do the same, but would have to be
preloaded before Python starts; glibc's own `mallopt` can be called at any time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_ABOVE = 1 << 30  # bytes free at the heap's top before glibc gives them back

_done = False


def keep_freed_blocks() -> bool:
    """Tune glibc's malloc once (Linux only); False where it does not apply: another C library, or a
    user who already set these knobs through GLIBC_TUNABLES or MALLOC_*_ variables."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or _user_chose():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
    return _done


KNOBS = ("mmap_max", "trim_threshold", "mmap_threshold")


def _user_chose() -> bool:
    """The user's own settings of these knobs win (others, such as MALLOC_ARENA_MAX, do not bear on them)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(f"glibc.malloc.{k}" in tunables or f"MALLOC_{k.upper()}_" in os.environ for k in KNOBS)
