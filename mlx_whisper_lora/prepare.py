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
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import UserError, cli_entry
from .preparing.recordings import (AUDIO_SUFFIXES, TRANSCRIPT_SUFFIXES, Recording, default_aligner,  # noqa: F401
                               done_before, find_recordings, remember, split_recordings)

REPORT_FILE = "prepare_report.json"


def prepare(inputs: Sequence[str], output: Path, model_name: Optional[str] = None, language: Optional[str] = None,
            valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, progress: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Prepare every recording INPUT names into `output`; returns the report (also written as prepare_report.json).
    A recording that cannot be prepared is reported in one line and left out; the others are still prepared."""
    from .preparing.recording import prepare_recording
    from .load import default_inference_backend, load_for_inference

    recordings = find_recordings(inputs, log)
    if not recordings:
        raise UserError(f"no audio files found in {', '.join(inputs)} ({', '.join(AUDIO_SUFFIXES)})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = load_for_inference(model_name or default_aligner(language), None, backend=default_inference_backend())
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
