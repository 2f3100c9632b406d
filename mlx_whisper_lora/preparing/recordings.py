"""Recordings with their transcripts as `prepare` finds them, which split each goes to, and what an earlier
run already prepared (so an interrupted `prepare` goes on where it stopped)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac", ".wma", ".webm", ".mp4")
TRANSCRIPT_SUFFIXES = (".txt", ".srt", ".vtt")


@dataclass
class Recording:
    name: str  # unique within the run: the file's stem (a number added on a clash)
    audio: Path
    transcript: Optional[Path] = None  # .txt/.srt/.vtt
    text: Optional[str] = None  # from a manifest row
    language: Optional[str] = None


def find_recordings(inputs: Sequence[str], log: Callable[[str], None]) -> List[Recording]:
    """The recordings INPUT names: audio files with a transcript beside them, folders of such, manifests."""
    from ..data.manifests import read_manifest

    found: List[Recording] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise UserError(f"{item}: no such file or folder")
        if path.suffix.lower() in (".jsonl", ".csv"):
            for u in read_manifest(path):
                found.append(Recording(Path(u.audio).stem, Path(u.audio), text=u.text, language=u.language))
            continue
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if path.is_dir() else [path]
        if path.is_file() and path.suffix.lower() not in AUDIO_SUFFIXES:
            raise UserError(f"{item}: not an audio file ({', '.join(AUDIO_SUFFIXES)}), folder or manifest (.jsonl/.csv)")
        for audio in files:
            transcript = next((audio.with_suffix(s) for s in TRANSCRIPT_SUFFIXES if audio.with_suffix(s).exists()), None)
            found.append(Recording(audio.stem, audio, transcript))
    names: dict = {}
    for r in found:  # window files are named after their recording: names must not clash
        count = names[r.name] = names.get(r.name, 0) + 1
        if count > 1:
            r.name = f"{r.name}_{count}"
    return found


def split_recordings(names: Sequence[str], valid_fraction: float, test_fraction: float, seed: int) -> dict:
    """Each recording to one split, by a seeded shuffle: test and valid get their share (at least one recording
    each when asked for and there are three or more), train the rest."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n = len(order)

    def share(fraction: float) -> int:
        return 0 if fraction <= 0 or n < 3 else max(1, round(n * fraction))

    n_test, n_valid = share(test_fraction), share(valid_fraction)
    n_valid = min(n_valid, max(n - n_test - 1, 0))
    splits = {name: "test" for name in order[:n_test]}
    splits.update({name: "valid" for name in order[n_test:n_test + n_valid]})
    splits.update({name: "train" for name in order[n_test + n_valid:]})
    return splits


def default_aligner(language: Optional[str]) -> str:
    """tiny.en for English (fast, and as good at English word times), else the multilingual base."""
    return "tiny.en" if language == "en" else "base"


DONE_FILE = "prepared.json"  # in a recording's window folder, written last: that recording need not be done again


def _fingerprint(recording: Recording, model_name: str, language: Optional[str]) -> dict:
    """What a recording's windows depend on: its audio and transcript files (size, time), its text, the model."""
    def stat(path: Optional[Path]):
        return None if path is None else [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]

    return {"audio": stat(recording.audio), "transcript": stat(recording.transcript), "text": recording.text,
            "language": language or recording.language, "model": model_name}


def done_before(recording: Recording, output: Path, model_name: str, language: Optional[str]):
    """The result of an earlier run for this recording when nothing it depends on changed (an interrupted
    prepare goes on where it stopped), else None."""
    from .recording import PreparedRecording

    path = output / "audio" / recording.name / DONE_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if saved.get("fingerprint") != _fingerprint(recording, model_name, language):
        return None
    if not all((output / row["audio"]).exists() for row in saved["rows"]):
        return None
    return PreparedRecording(saved["rows"], saved["summary"], saved["dropped"])


def remember(recording: Recording, output: Path, model_name: str, language: Optional[str], result) -> None:
    from ..files import atomic_write_text

    folder = output / "audio" / recording.name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / DONE_FILE, json.dumps({
        "fingerprint": _fingerprint(recording, model_name, language), "rows": result.rows,
        "summary": result.summary, "dropped": result.dropped}, ensure_ascii=False))
