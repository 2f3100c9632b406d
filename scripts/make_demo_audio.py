"""Generate the bundled demo clip `mlx_whisper_lora/assets/demo.flac` (synthetic speech, 16 kHz mono) and its text.

Usage: python scripts/make_demo_audio.py   (needs the `espeak-ng` program on PATH)
The clip is what `python -m mlx_whisper_lora.transcribe` transcribes when given no file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("Whisper can be adapted to your own voice with low rank adapters. "
        "This short clip was spoken by a speech synthesizer.")


def synthesize(text: str, voice: str = "en-us", speed: int = 150) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("espeak-ng is not on PATH (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
        audio, sr = sf.read(wav, dtype="float32")
    return soxr.resample(audio, sr, 16000).astype(np.float32)


def main():
    audio = synthesize(TEXT)
    out = ROOT / "mlx_whisper_lora" / "assets" / "demo.flac"
    sf.write(out, audio, 16000, subtype="PCM_16")
    (ROOT / "mlx_whisper_lora" / "assets" / "demo.txt").write_text(TEXT + "\n")
    print(f"wrote {out} ({len(audio) / 16000:.1f} s)")


if __name__ == "__main__":
    main()
