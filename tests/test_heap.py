"""backend_torch.heap: freed activation-sized blocks stay in the heap, so allocating one again
costs no page faults (glibc would unmap it and fault every page back in)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
from mlx_whisper_lora.backend_torch.heap import keep_freed_blocks
if sys.argv[1] == "tuned":
    assert keep_freed_blocks()
for _ in range(2):
    a = np.ones(64 << 18, dtype=np.float32)  # 64 MB, over glibc's largest mmap threshold
    del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(64 << 18, dtype=np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is tuned on Linux only")
def test_a_freed_large_block_is_reused_without_page_faults():
    pytest.importorskip("torch")
    untuned, tuned = faults("plain"), faults("tuned")
    assert untuned >= 32  # 64 MB faulted in again: 16,384 pages of 4 KB, or 32 huge pages of 2 MB at least
    assert tuned <= untuned // 10, (tuned, untuned)


@pytest.mark.parametrize("name, value", [("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                                         ("MALLOC_MMAP_THRESHOLD_", "131072")])
def test_a_users_own_malloc_settings_are_left_alone(monkeypatch, name, value):
    from mlx_whisper_lora.backend_torch import heap

    monkeypatch.setattr(heap, "_done", False)
    monkeypatch.setenv(name, value)
    assert heap._user_chose() and heap.keep_freed_blocks() is False
    monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # set by some hosts: not these knobs
    assert not heap._user_chose()
