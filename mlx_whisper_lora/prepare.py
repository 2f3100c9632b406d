"""Turn long recordings with their transcripts into a --data folder that `lora --train/--test` read as it is.

    python -m mlx_whisper_lora.prepare INPUT... --output DATA [--model M] [--language L]
        [--valid-fraction F] [--test-fraction F]

INPUT: audio files or folders; each recording NAME.<audio ext> has its transcript beside it as NAME.txt (plain
text), NAME.srt or NAME.vtt; or a manifest (.jsonl/.csv) whose rows hold long audio and its text. Each recording
is cut at pauses into windows of at most 30 s (each its own FLAC file), with the segments inside each window and the
text said before it; recordings are split into train/valid/test whole. Plain text is aligned to the audio with the
base model's own word timestamps; subtitle cues are checked against them (a constant offset or a drift is measured
and corrected). What could not be aligned is left out and listed in prepare_report.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from .errors import UserError, cli_entry

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac", ".wma", ".webm", ".mp4")
TRANSCRIPT_SUFFIXES = (".txt", ".srt", ".vtt")
REPORT_FILE = "prepare_report.json"


@dataclass
class Recording:
    name: str  # unique within the run: the file's stem (a number added on a clash)
    audio: Path
    transcript: Optional[Path] = None  # .txt/.srt/.vtt
    text: Optional[str] = None  # from a manifest row
    language: Optional[str] = None


def find_recordings(inputs: Sequence[str], log: Callable[[str], None]) -> List[Recording]:
    """The recordings INPUT names: audio files with a transcript beside them, folders of such, manifests."""
    from .data.manifests import read_manifest

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
    from .tuner.recording_prep import PreparedRecording

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
    from .files import atomic_write_text

    folder = output / "audio" / recording.name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / DONE_FILE, json.dumps({
        "fingerprint": _fingerprint(recording, model_name, language), "rows": result.rows,
        "summary": result.summary, "dropped": result.dropped}, ensure_ascii=False))


def prepare(inputs: Sequence[str], output: Path, model_name: Optional[str] = None, language: Optional[str] = None,
            valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, progress: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Prepare every recording INPUT names into `output`; returns the report (also written as prepare_report.json).
    A recording that cannot be prepared is reported in one line and left out; the others are still prepared."""
    from .tuner.recording_prep import prepare_recording
    from .load import load_for_inference

    recordings = find_recordings(inputs, log)
    if not recordings:
        raise UserError(f"no audio files found in {', '.join(inputs)} ({', '.join(AUDIO_SUFFIXES)})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = load_for_inference(model_name or default_aligner(language), None)
    if not model.is_multilingual and language not in (None, "en"):
        raise UserError(f"--model {model_name}: an English-only model cannot align --language {language}; "
                        "use a multilingual one (base, small, ...)")
    splits = split_recordings([r.name for r in recordings], valid_fraction, test_fraction, seed)
    rows = {"train": [], "valid": [], "test": []}
    report = {"recordings": [], "failed": [], "seconds_in": 0.0, "seconds_kept": 0.0, "windows": 0,
              "words_in": 0, "words_kept": 0, "dropped": []}
    for number, recording in enumerate(recordings, 1):
        log(f"[{number}/{len(recordings)}] {recording.audio}")
        try:
            result = done_before(recording, output, model_name or default_aligner(language), language)
            if result is not None:
                log("  prepared by an earlier run (same audio, transcript and model): its windows are kept")
            else:
                result = prepare_recording(recording, model, output, language, progress)
                remember(recording, output, model_name or default_aligner(language), language, result)
        except UserError as e:
            log(f"skipped {recording.audio}: {e}")
            report["failed"].append({"recording": str(recording.audio), "error": str(e)})
            continue
        split = splits[recording.name]
        rows[split].extend(result.rows)
        report["recordings"].append(dict(result.summary, split=split))
        for k in ("seconds_in", "seconds_kept", "words_in", "words_kept"):
            report[k] += result.summary[k]
        report["windows"] += len(result.rows)
        report["dropped"].extend(dict(d, recording=recording.name) for d in result.dropped)
        log(f"  {result.summary['windows']} windows, {result.summary['seconds_kept']:.0f} of "
            f"{result.summary['seconds_in']:.0f} s kept, {result.summary['words_kept']} of "
            f"{result.summary['words_in']} words" + (f"; {result.summary['note']}" if result.summary.get("note") else ""))
    for split, split_rows in rows.items():
        path = output / f"{split}.jsonl"
        if split_rows:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows), encoding="utf-8")
        elif path.exists():
            path.unlink()
    report["splits"] = {split: sorted({r["recording"] for r in split_rows}) for split, split_rows in rows.items()}
    (output / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    hours_in, hours_kept = report["seconds_in"] / 3600, report["seconds_kept"] / 3600
    log(f"prepared {len(report['recordings'])} of {len(recordings)} recordings: {hours_in:.2f} h in, {hours_kept:.2f} h "
        f"kept in {report['windows']} windows; {report['words_kept']} of {report['words_in']} words kept; "
        f"{len(report['dropped'])} stretches left out (why: {output / REPORT_FILE})")
    log("splits: " + ", ".join(f"{s} {len(v)} recordings ({sum(1 for r in rows[s])} windows)"
                               for s, v in report["splits"].items()))
    if not rows["train"]:
        log("no window went to the train split: nothing to train on (see the report)")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders of them, or manifests")
    p.add_argument("--output", "-o", required=True, type=Path, help="the --data folder to write")
    p.add_argument("--model", default=None, help="the Whisper model whose word timestamps align the text "
                                                 "(default: tiny.en with --language en, else base)")
    p.add_argument("--language", default=None, help="the recordings' language (default: detected)")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of the recordings for valid (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of the recordings for test (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--valid-fraction", args.valid_fraction), ("--test-fraction", args.test_fraction)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} {value}: give a share between 0 and 1")
    if args.valid_fraction + args.test_fraction >= 1:
        raise UserError("--valid-fraction and --test-fraction leave nothing to train on: their sum must be under 1")
    prepare(args.inputs, args.output, args.model, args.language, args.valid_fraction, args.test_fraction, args.seed,
            not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    main()
