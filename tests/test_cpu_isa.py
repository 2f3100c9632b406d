"""MLX_WHISPER_LORA_CPU_ISA: a process told to act as an older CPU caps the numerical libraries' kernels and
stops seeing the newer CPU flags in its own choices (int8 with VNNI, bf16 products), whatever this CPU is."""

import json
import os
import subprocess
import sys


PROBE = """
import json, os
import mlx_whisper_lora
from mlx_whisper_lora.backend_torch.cpu_flags import cpu_has
out = {name: os.environ.get(name) for name in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")}
out["flags"] = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "avx2") if cpu_has(f)]
try:
    import torch
    out["torch"] = torch.backends.cpu.get_cpu_capability()
except ImportError:
    out["torch"] = None
print(json.dumps(out))
"""


def _probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                             "ONEDNN_MAX_CPU_ISA", "MLX_WHISPER_LORA_CPU_ISA")}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=dict(base, **env), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_avx2_level_caps_the_libraries_and_hides_newer_flags():
    got = _probe(MLX_WHISPER_LORA_CPU_ISA="avx2")
    assert got["ATEN_CPU_CAPABILITY"] == "avx2" and got["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert got["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert not any(f.startswith(("avx512", "avx_vnni", "amx")) for f in got["flags"])
    if got["torch"] is not None:
        assert got["torch"] in ("AVX2", "DEFAULT")  # never AVX512, whatever this CPU has


def test_default_level_and_a_users_own_setting_wins():
    got = _probe(MLX_WHISPER_LORA_CPU_ISA="default", MKL_ENABLE_INSTRUCTIONS="AVX")
    assert got["ATEN_CPU_CAPABILITY"] == "default" and got["MKL_ENABLE_INSTRUCTIONS"] == "AVX"
    assert got["flags"] == [] and got["torch"] in (None, "DEFAULT")


def test_unknown_level_is_one_line_naming_the_variable():
    proc = subprocess.run([sys.executable, "-c", "import mlx_whisper_lora"], capture_output=True, text=True,
                          env=dict(os.environ, MLX_WHISPER_LORA_CPU_ISA="avx3"))
    assert proc.returncode != 0 and "MLX_WHISPER_LORA_CPU_ISA='avx3'" in proc.stderr and "Traceback" not in proc.stderr
