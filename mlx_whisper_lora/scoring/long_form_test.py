"""`--test` on whole recordings: each transcribed long-form with `transcribe`'s defaults by the base and the
adapted model, scored by long_form.py, with a warning when the adapters make any of it worse.

The recordings come from `--test-long` (audio files with a .txt/.srt/.vtt beside them, folders of such, or a
manifest of long audio with its text, as `prepare` reads them), or from a test split that `prepare` wrote
(its windows name their recording). A clip-by-clip score cannot see what breaks long files: segments that
all run to the window's end, stretches skipped after a bad seek, loops.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UserError
from .long_form import pooled, regressions, score_recording


@dataclass
class LongRecording:
    name: str
    audio: Path
    text: str
    language: Optional[str] = None
    speech: List[Tuple[float, float]] = field(default_factory=list)  # reference speech times, when known


def from_inputs(inputs: Sequence[str], log: Callable) -> List[LongRecording]:
    """--test-long: recordings with their transcripts, as `prepare` finds them (subtitle cues give speech times)."""
    from ..preparing.recordings import find_recordings
    from ..preparing.recording import read_cues, read_text

    out = []
    for r in find_recordings(inputs, log):
        if r.text is not None:
            out.append(LongRecording(r.name, r.audio, r.text, r.language))
        elif r.transcript is None:
            log(f"--test-long: {r.audio} has no transcript beside it (NAME.txt, .srt or .vtt); left out")
        elif r.transcript.suffix.lower() in (".srt", ".vtt"):
            cues = read_cues(r.transcript)
            out.append(LongRecording(r.name, r.audio, " ".join(t for _, _, t in cues), r.language,
                                     [(s, e) for s, e, _ in cues]))
        else:
            out.append(LongRecording(r.name, r.audio, read_text(r.transcript), r.language))
    if not out:
        raise UserError(f"--test-long {' '.join(inputs)}: no recording with a transcript found")
    return out


def from_prepared(utterances: Sequence) -> List[LongRecording]:
    """The recordings a prepared test split's windows were cut from (their `recording`, `start` and segments);
    the reference is the windows' text in order (stretches prepare left out are not in it)."""
    by_recording: Dict[str, list] = {}
    for u in utterances:
        if u.group and u.group.startswith("recording:") and u.start is not None:
            by_recording.setdefault(u.group.split(":", 1)[1], []).append(u)
    out = []
    for path, windows in by_recording.items():
        if not Path(path).exists():
            continue
        windows.sort(key=lambda u: u.start)
        speech = [(u.start + a, u.start + b) for u in windows for a, b, _ in (u.segments or [(0.0, u.duration or 0, "")])]
        out.append(LongRecording(Path(path).stem, Path(path), " ".join(u.text for u in windows), windows[0].language,
                                 speech))
    return out


def recordings_key(recordings: Sequence[LongRecording]) -> str:
    """What identifies the recordings and references (part of the base model's cache key)."""
    h = hashlib.sha256()
    for r in recordings:
        stat = r.audio.stat()
        h.update(f"{r.audio.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{r.text}|{r.language}".encode())
    return h.hexdigest()


def transcribe_recordings(model, recordings: Sequence[LongRecording], language: Optional[str], task: str,
                          progress: bool, log: Callable) -> List[dict]:
    """Each recording transcribed whole with `transcribe`'s defaults; [{"text", "segments"}]."""
    from ..inference.transcriber import transcribe

    results = []
    for number, r in enumerate(recordings, 1):
        log(f"long form: transcribing {r.audio} ({number}/{len(recordings)})")
        result = transcribe(str(r.audio), model, language=r.language or language, task=task, verbose=None,
                            progress=progress)
        results.append({"text": result["text"],
                        "segments": [{"start": s["start"], "end": s["end"], "text": s["text"]}
                                     for s in result["segments"]]})
    return results


def score_results(recordings: Sequence[LongRecording], results: Sequence[dict], language: Optional[str],
                  speech_from: Optional[Sequence[dict]] = None) -> dict:
    """Pooled and per-recording scores. Where a recording's speech times are unknown (plain text), the
    segments of `speech_from` (the base model's transcripts) stand for them."""
    per = {}
    for i, (r, result) in enumerate(zip(recordings, results)):
        speech = r.speech or ([(s["start"], s["end"]) for s in speech_from[i]["segments"]] if speech_from else [])
        per[r.name] = score_recording(r.text, result, speech, r.language or language)
    return dict(pooled(list(per.values())), by_recording=per)


def warning_for(base: dict, adapted: dict) -> Optional[str]:
    worse = regressions(base, adapted)
    if not worse:
        return None
    return ("warning: the adapters transcribe the long recordings worse than the base model: " + "; ".join(worse) +
            ". Train with --pack-fraction and --prompt-fraction (or on prepared recordings), fewer --iters or a "
            "lower --learning-rate")


def log_comparison(base: dict, adapted: dict, log: Callable) -> None:
    log(f"long form ({adapted['recordings']} recordings, {adapted['words']} words, transcribe's defaults): "
        f"base -> adapted")
    for key, label in (("wer", "WER %"), ("deletion_rate", "deletions %"), ("insertion_rate", "insertions %"),
                       ("median_segment_seconds", "median segment s"), ("looped_words", "words in loops"),
                       ("longest_silent_speech_seconds", "longest speech with no output s")):
        log(f"  {label:<34}{base[key]:>8g} -> {adapted[key]:g}")
