"""Write a transcription as txt, srt, vtt, tsv or json, named `<output dir>/<audio stem>.<format>`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, TextIO

from ..files import atomic_write


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    if seconds < 0:
        raise ValueError("timestamps cannot be negative")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def write_txt(result: dict, f: TextIO) -> None:
    for s in result["segments"]:
        print(s["text"].strip(), file=f)


def write_vtt(result: dict, f: TextIO) -> None:
    print("WEBVTT\n", file=f)
    for s in result["segments"]:
        print(f"{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}\n{s['text'].strip()}\n", file=f)


def write_srt(result: dict, f: TextIO) -> None:
    for i, s in enumerate(result["segments"], start=1):
        start = format_timestamp(s["start"], True, ",")
        end = format_timestamp(s["end"], True, ",")
        print(f"{i}\n{start} --> {end}\n{s['text'].strip()}\n", file=f)


def write_tsv(result: dict, f: TextIO) -> None:
    """Start and end in integer milliseconds, as openai-whisper writes them."""
    print("start\tend\ttext", file=f)
    for s in result["segments"]:
        text = s["text"].strip().replace("\t", " ")
        print(f"{round(1000 * s['start'])}\t{round(1000 * s['end'])}\t{text}", file=f)


def write_json(result: dict, f: TextIO) -> None:
    json.dump({"text": result["text"], "segments": result["segments"], "language": result["language"]},
              f, ensure_ascii=False)


FORMATS: Dict[str, Callable[[dict, TextIO], None]] = {
    "txt": write_txt, "vtt": write_vtt, "srt": write_srt, "tsv": write_tsv, "json": write_json,
}


def write_result(result: dict, output_dir, stem: str, fmt: str) -> Path:
    """Write one format atomically (temporary file, then rename) and return its path."""
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            FORMATS[fmt](result, f)

    return atomic_write(out_dir / f"{stem}.{fmt}", write)
