"""Time and peak memory of `prepare` on a 12-minute and a one-hour recording with their plain transcripts (the
whole process, as a user runs it): an hour must prepare in under 10 minutes here, and memory must not grow with
the recording's length.

    python benchmarks/measure_prepare.py                     # the default aligner for English (tiny.en)
    python benchmarks/measure_prepare.py --model base        # the multilingual base as the aligner

The recordings are LibriSpeech clips of ../shared/data/librispeech_2spk in order, 0.4 s apart, repeated to
length, as 16-bit PCM WAV, with their texts as one plain transcript. Each prepare runs in its own process; its
peak resident memory comes from the kernel (getrusage of the finished child).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from measure_long_audio_memory import child_peak  # noqa: E402

SHARED = Path(os.environ.get("MLX_WHISPER_LORA_SHARED", ROOT.parent / "shared")) / "data"


def recording(path: Path, seconds: float) -> int:
    """`seconds` of speech as `path` (WAV) with its text as path.txt; returns the words of the text."""
    folder = SHARED / "librispeech_2spk"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    rows.sort(key=lambda r: (r["id"].rsplit("-", 1)[0], int(r["id"].rsplit("-", 1)[1])))
    gap = np.zeros(6400, dtype=np.int16)
    texts, written = [], 0
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        while written < seconds * 16000:
            for row in rows:
                audio, rate = sf.read(folder / row["audio"], dtype="int16")
                assert rate == 16000
                if written + len(audio) > seconds * 16000:
                    break
                out.write(audio)
                out.write(gap)
                written += len(audio) + len(gap)
                texts.append(row["text"])
            else:
                continue
            break
    path.with_suffix(".txt").write_text(" ".join(texts) + "\n")
    return sum(len(t.split()) for t in texts)


def prepare_peak(path: Path, model: str, out: Path) -> dict:
    wall, peak_mb = child_peak(["-m", "mlx_whisper_lora.prepare", str(path), "--output", str(out), "--model", model,
                                "--language", "en", "--no-progress", "--valid-fraction", "0", "--test-fraction", "0"],
                               "the short recording")
    report = json.loads((out / "prepare_report.json").read_text())
    return {"peak_mb": peak_mb, "wall_s": wall, "report": report}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--short-minutes", type=float, default=12.0)
    p.add_argument("--hours", type=float, default=1.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for name, seconds in (("short", args.short_minutes * 60), ("long", args.hours * 3600)):
            path = tmp / name / f"{name}.wav"
            path.parent.mkdir()
            words = recording(path, seconds)
            rows.append((sf.info(str(path)).duration, words, prepare_peak(path, args.model, tmp / f"{name}_data")))
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          f"(1 min, at the end), prepare --model {args.model} --language en")
    print("| recording | words | windows | words kept | wall | peak memory | ratio to the short one |")
    print("|---|---|---|---|---|---|---|")
    for seconds, words, r in rows:
        rep = r["report"]
        print(f"| {seconds / 60:.1f} min | {words} | {rep['windows']} | {100 * rep['words_kept'] / words:.1f}% | "
              f"{r['wall_s'] / 60:.1f} min | {r['peak_mb']:.0f} MB | {r['peak_mb'] / rows[0][2]['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
