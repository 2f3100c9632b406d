"""Measure `prepare` on long recordings made from ../shared/data/librispeech_2spk: each chapter's utterances
joined in order (0.4 s apart) into one recording, with the chapter's text as one plain transcript (and, with
--srt, as subtitles made from the forced aligner's word times, shifted by --shift seconds).

Prints, against the Montreal Forced Aligner's word times (word_alignments.jsonl): the share of reference words
that land in a window holding their text, and the share of window boundaries that fall in a pause (inside no
word by more than --slack seconds); with --srt, the offset prepare found. With --forced, the plain text goes
through forced alignment (the path of a language the model writes badly) instead of recognition, to measure
that path where the truth is known.

    python benchmarks/evaluate_prepare.py [--model tiny.en] [--srt] [--shift 2.0] [--forced] [--chapters N] [--work DIR]
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx_whisper_lora  # noqa: E402,F401  (fast BLAS before mlx)
from mlx_whisper_lora.preparing.text_alignment import key  # noqa: E402

GAP = 0.4


def build_recordings(data: Path, work: Path, srt: bool, shift: float, chapters: int) -> dict:
    """WAV + .txt (or .srt) per chapter; returns {name: [(word, start, end) in recording time]}."""
    import soundfile as sf

    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.formats.transcript_writers import format_timestamp

    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    aligned = {r["id"]: r["words"] for r in map(json.loads, (data / "word_alignments.jsonl").read_text().splitlines())}
    by_chapter: dict = {}
    for r in sorted(rows, key=lambda r: (r["id"].rsplit("-", 1)[0], int(r["id"].rsplit("-", 1)[1]))):
        by_chapter.setdefault(r["id"].rsplit("-", 1)[0], []).append(r)
    truth = {}
    work.mkdir(parents=True, exist_ok=True)
    for name, chapter in list(by_chapter.items())[:chapters]:
        pieces, words, t = [], [], 0.0
        gap = np.zeros(int(GAP * 16000), np.float32)
        cues = []
        for r in chapter:
            audio = load_audio(data / r["audio"])
            words += [(w, t + s, t + e) for w, s, e in aligned[r["id"]]]
            utterance_words = [(w, t + s, t + e) for w, s, e in aligned[r["id"]]]
            for i in range(0, len(utterance_words), 12):  # a cue per 12 words, as subtitles are laid out
                part = utterance_words[i:i + 12]
                cues.append((part[0][1] + shift, part[-1][2] + shift, " ".join(w for w, _, _ in part)))
            pieces += [audio, gap]
            t += len(audio) / 16000 + GAP
        sf.write(str(work / f"{name}.wav"), np.concatenate(pieces), 16000)
        if srt:
            (work / f"{name}.srt").write_text("".join(
                f"{i}\n{format_timestamp(max(s, 0), True, ',')} --> {format_timestamp(e, True, ',')}\n{text}\n\n"
                for i, (s, e, text) in enumerate(cues, 1)))
            (work / f"{name}.txt").unlink(missing_ok=True)
        else:
            (work / f"{name}.txt").write_text(" ".join(r["text"] for r in chapter) + "\n")
            (work / f"{name}.srt").unlink(missing_ok=True)
        truth[name] = words
    return truth


def measure(truth: dict, prepared: Path, slack: float) -> dict:
    rows = [json.loads(line) for split in ("train", "valid", "test") if (prepared / f"{split}.jsonl").exists()
            for line in (prepared / f"{split}.jsonl").read_text().splitlines()]
    words_total = words_kept = boundaries = in_pause = 0
    for name, words in truth.items():
        windows = sorted((r for r in rows if Path(r["recording"]).stem == name), key=lambda r: r["start"])
        words_total += len(words)
        for w in windows:
            inside = [key(x) for x, s, e in words if w["start"] <= (s + e) / 2 < w["end"]]
            said = [key(x) for x in w["text"].split()]
            words_kept += sum(b.size for b in difflib.SequenceMatcher(None, inside, said, autojunk=False).get_matching_blocks())
            for b in (w["start"], w["end"]):
                boundaries += 1
                in_pause += not any(s + slack < b < e - slack for _, s, e in words)
    return {"words": words_total, "word_share": words_kept / max(words_total, 1), "boundaries": boundaries,
            "boundary_share": in_pause / max(boundaries, 1), "windows": len(rows)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "librispeech_2spk")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "prepare_eval")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--srt", action="store_true")
    p.add_argument("--shift", type=float, default=2.0)
    p.add_argument("--chapters", type=int, default=4)
    p.add_argument("--slack", type=float, default=0.15)
    p.add_argument("--forced", action="store_true", help="align the plain text by forced alignment")
    args = p.parse_args(argv)
    from mlx_whisper_lora.prepare import prepare
    from mlx_whisper_lora.preparing import recording

    if args.forced:
        recording.PROBE_BELOW = 1.01  # every probed recording (over 4 minutes) counts as one the model writes badly

    recordings = args.work / "recordings"
    truth = build_recordings(args.data, recordings, args.srt, args.shift, args.chapters)
    out = args.work / ("prepared_srt" if args.srt else "prepared_forced" if args.forced else "prepared_txt")
    started = time.time()
    report = prepare([str(recordings)], out, args.model, "en", 0.0, 0.0, progress=False,
                     log=lambda m: print(m, file=sys.stderr))
    seconds = time.time() - started
    result = measure(truth, out, args.slack)
    result.update(seconds=round(seconds, 1), audio_seconds=round(report["seconds_in"], 1),
                  notes=[r["note"] for r in report["recordings"]])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
