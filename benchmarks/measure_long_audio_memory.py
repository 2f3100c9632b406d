"""Peak memory of `transcribe` on a two-minute and a two-hour 16 kHz file (the whole process, as a
user runs it), printed with their ratio: memory must not grow with the length of the file.

    python benchmarks/measure_long_audio_memory.py                 # tiny.en, 2 min vs 2 h
    python benchmarks/measure_long_audio_memory.py --hours 0.5     # a shorter long file
    python benchmarks/measure_long_audio_memory.py --vad           # transcribe --vad --batch-size 8

The files are LibriSpeech clips of ../shared/data laid end to end with a second of silence between
them, repeated to length, written as 16-bit PCM WAV. Each transcription runs in its own process;
its peak resident memory comes from the kernel (getrusage of the finished child).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MLX_WHISPER_LORA_SHARED", ROOT.parent / "shared")) / "data"


def speech_file(path: Path, seconds: float) -> Path:
    """`seconds` of LibriSpeech speech (clips with 1 s gaps, repeated) as a 16 kHz WAV."""
    folder = SHARED / "librispeech_2spk"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    gap = np.zeros(16000, dtype=np.int16)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        written = 0
        while written < seconds * 16000:
            for row in rows:
                audio, rate = sf.read(folder / row["audio"], dtype="int16")
                assert rate == 16000
                for part in (audio, gap):
                    part = part[: int(seconds * 16000) - written]
                    out.write(part)
                    written += len(part)
                if written >= seconds * 16000:
                    break
    return path


def child_peak(argv: list, first: str) -> tuple:
    """(wall seconds, peak RSS in MB) of one child process running `argv`; it exits with the child's stderr when
    the child fails. The peak comes from getrusage of the finished children, so the runs must grow in size:
    `first` names the smaller run to do first, for the message when one does not."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        sys.exit(f"the child's peak is hidden behind an earlier, larger one: run {first} first")
    return wall, peak / 1024


def transcribe_peak(path: Path, model: str, out: Path, extra: list) -> dict:
    """Peak RSS (MB) and wall time of one `transcribe` process on `path`."""
    wall, peak_mb = child_peak(["-m", "mlx_whisper_lora.transcribe", str(path), "--model", model, "--language", "en",
                                "--temperature", "0", "-o", str(out), "-f", "txt", "--verbose", "False", *extra],
                               "the short file")
    words = len((out / (path.stem + ".txt")).read_text().split())
    return {"peak_mb": peak_mb, "wall_s": wall, "words": words}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--short-minutes", type=float, default=2.0)
    p.add_argument("--hours", type=float, default=2.0)
    p.add_argument("--vad", action="store_true", help="transcribe --vad --batch-size 8 (batched chunks)")
    args = p.parse_args(argv)
    extra = ["--vad", "--batch-size", "8"] if args.vad else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for name, seconds in (("short", args.short_minutes * 60), ("long", args.hours * 3600)):
            path = speech_file(tmp / f"{name}.wav", seconds)
            result = transcribe_peak(path, args.model, tmp, extra)
            rows.append((seconds, path.stat().st_size, result))
            path.unlink()
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min, at the end), "
          f"{args.model}, transcribe --temperature 0 {' '.join(extra)}".rstrip())
    print("| file | WAV size | words | peak memory | wall | ratio to the short file |")
    print("|---|---|---|---|---|---|")
    for seconds, size, r in rows:
        print(f"| {seconds / 60:.0f} min | {size / 1e6:.0f} MB | {r['words']} | {r['peak_mb']:.0f} MB | {r['wall_s']:.0f} s | "
              f"{r['peak_mb'] / rows[0][2]['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
