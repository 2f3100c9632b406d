"""Everything benchmarks/benchmark_transcribe.py needs on a CUDA machine that has PyTorch and transformers but
no package index and no ../shared/data, in one folder small enough to carry there (the device tool's 64 MiB).

It holds: the benchmark's English clips and the LibriSpeech rows its long file is made of (`data/`, the
same layout as ../shared/data); the model as a transformers folder (`hf/`: this package's torch back end
and transformers both read it) whose weight matrices travel as int8 with a float16 scale per row
(`weights_int8.npz`, compressed: 27 MB where tiny.en's float16 file alone is 75 MB), written back as
float16 there by `--unpack`, so every system there runs the same, slightly rounded, weights; and the
packages the inference path needs beyond that machine's, for CPython 3.12 x86-64: MLX's CPU wheels as
wheels (`wheels/`, installed into `site/` there: the inference core computes log-mels and decodes with
MLX arrays; unpacked they would not fit), the rest unpacked (`site/`, silero-vad with only the model file
it loads).

Usage, here:   python benchmarks/pack_transcribe_benchmark.py [--out .device_carry/transcribe] [--long-seconds 300]
then there (the folder carried; benchmarks/gpu_benchmarks.sh part 3 does this):
    python3 -m pip install -q --no-index --no-deps --target .device_carry/transcribe/site .device_carry/transcribe/wheels/*.whl
    python3 benchmarks/pack_transcribe_benchmark.py --unpack .device_carry/transcribe
    PYTHONPATH=.device_carry/transcribe/site python3 benchmarks/benchmark_transcribe.py --device cuda \\
        --data .device_carry/transcribe/data --model .device_carry/transcribe/hf \\
        --hf-model .device_carry/transcribe/hf --long-seconds 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import numpy as np  # noqa: E402
from benchmark_transcribe import DATA, DEFAULT_CLIPS, long_file_rows  # noqa: E402

# What the inference path imports that the CUDA image lacks (KINDS.md's package list), with what they need.
WHEELS = ["soundfile", "cffi", "pycparser", "soxr", "whisper-normalizer", "indic-numtowords", "text2num",
          "more-itertools", "silero-vad"]
PLATFORMS = ["manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any"]


def copy_rows(src: Path, dst: Path, keep) -> float:
    """The rows of src/manifest.jsonl that `keep` accepts, with their audio; returns their seconds."""
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    kept = [r for r in rows if keep(r)]
    for row in kept:
        (dst / row["audio"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / row["audio"], dst / row["audio"])
    (dst / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    return sum(r["duration"] for r in kept)


def download(names, out) -> None:
    """Wheels for CPython 3.12 x86-64 (the CUDA machine's Python) into `out`."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(out), *names], check=True)


def packages(out: Path) -> None:
    """`out`/site: WHEELS unzipped (what pip would install), silero-vad's model files but the one vad_chunks
    loads left out; `out`/wheels: MLX's, at the version installed here."""
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as wheels:
        download(WHEELS, wheels)
        for wheel in sorted(Path(wheels).glob("*.whl")):
            zipfile.ZipFile(wheel).extractall(out / "site")
    for model in (out / "site" / "silero_vad" / "data").iterdir():
        if model.name != "silero_vad_16k_sequence.onnx":
            model.unlink()
    download([f"mlx=={version('mlx')}", f"mlx-cpu=={version('mlx')}"], out / "wheels")


def pack_weights(hf: Path) -> None:
    """model.safetensors -> weights_int8.npz: each matrix as int8 with a float16 scale per row (symmetric),
    everything else float16."""
    from safetensors.numpy import load_file

    arrays = {}
    for name, w in load_file(str(hf / "model.safetensors")).items():
        w = w.astype(np.float32)
        if w.ndim >= 2:
            scale = np.abs(w).reshape(len(w), -1).max(axis=1) / 127
            scale = np.where(scale > 0, scale, 1).astype(np.float16)
            shape = (-1,) + (1,) * (w.ndim - 1)
            arrays[f"{name}.int8"] = np.round(w / scale.astype(np.float32).reshape(shape)).astype(np.int8)
            arrays[f"{name}.scale"] = scale
        else:
            arrays[name] = w.astype(np.float16)
    np.savez_compressed(hf.parent / "weights_int8.npz", **arrays)
    (hf / "model.safetensors").unlink()


def unpack_weights(pack: Path) -> None:
    """weights_int8.npz -> hf/model.safetensors in float16 (numpy and safetensors only: no MLX there)."""
    from safetensors.numpy import save_file

    arrays, out = np.load(pack / "weights_int8.npz"), {}
    for key in arrays.files:
        if key.endswith(".int8"):
            name = key[: -len(".int8")]
            q, scale = arrays[key], arrays[f"{name}.scale"].astype(np.float32)
            out[name] = (q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1))).astype(np.float16)
        elif not key.endswith(".scale"):
            out[key] = arrays[key]
    save_file(out, str(pack / "hf" / "model.safetensors"), {"format": "pt"})


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / ".device_carry" / "transcribe"))
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--long-seconds", type=float, default=300.0, help="the long file's length (benchmark --long-seconds)")
    p.add_argument("--no-wheels", action="store_true", help="leave the packages out (a machine that has them)")
    p.add_argument("--unpack", metavar="FOLDER", help="there: write FOLDER/hf/model.safetensors from the int8 file")
    args = p.parse_args(argv)
    if args.unpack:
        unpack_weights(Path(args.unpack))
        print(f"wrote {Path(args.unpack) / 'hf' / 'model.safetensors'}")
        return
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    for name, language in DEFAULT_CLIPS:
        seconds = copy_rows(DATA / name, out / "data" / name, lambda r, language=language: r.get("language", "en") == language)
        print(f"{name}: {seconds:.1f} s")
    src = DATA / "librispeech_2spk"
    chosen = {row["audio"] for row in long_file_rows(src, args.long_seconds)}
    seconds = copy_rows(src, out / "data" / "librispeech_2spk", lambda row: row["audio"] in chosen)
    print(f"librispeech_2spk (the long file's rows): {seconds:.1f} s")
    from mlx_whisper_lora.convert import convert

    convert(args.model, str(out / "hf"), dtype="float16", export_format="hf")
    pack_weights(out / "hf")
    if not args.no_wheels:
        packages(out)
    parts = ", ".join(f"{name} {size_mb(out / name):.1f}" for name in ("data", "hf", "site", "wheels") if (out / name).exists())
    print(f"wrote {out}: {size_mb(out):.1f} MiB ({parts}, weights_int8.npz "
          f"{(out / 'weights_int8.npz').stat().st_size / 2**20:.1f})")


if __name__ == "__main__":
    main()
