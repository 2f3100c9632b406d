"""One long recording and its transcript (plain text or subtitles) into training windows and their files.

The model's word timestamps are the clock both paths check against: plain text is aligned to them
(text_alignment.py); subtitle cues keep their own times once a fit of the recognised words' times against the
cues' (an offset, and a drift when the fit says so) shows they agree, corrected by that fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from .text_alignment import Alignment, TimedWord, adopt, align_words, segments_from, untimed_stretches
from ..data.windows import Segment, cut_windows

TIMING_LINE = re.compile(r"-->")
VALID_TIMING = re.compile(r"^\s*(\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}\s*-->\s*(\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}(\s.*)?$")
MIN_CHECKED_SHARE = 0.3  # subtitle words the model must recognise for their times to be checked at all
MAX_RESIDUAL = 0.5  # seconds: cues further than this from the recognised words after the fit are refused
GAP_PADDING = 3.0  # seconds of the neighbours' audio around a stretch recognised again (their times can be off too)
DRIFT_SECONDS = 0.2  # drift that moves the cues less than this over the file is left alone (only the offset)


@dataclass
class PreparedRecording:
    rows: List[dict]
    summary: dict
    dropped: List[dict] = field(default_factory=list)


def read_text(path: Path) -> str:
    """A transcript file's text: UTF-8 (with or without a byte-order mark), not empty."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (save it as UTF-8)") from None
    if not text.strip():
        raise UserError(f"{path}: the transcript is empty")
    return text


def read_cues(path: Path) -> List[Tuple[float, float, str]]:
    """A .srt/.vtt file's cues as (start, end, text), read by pysubs2 after checking every timing line."""
    import pysubs2

    text = read_text(path)
    for number, line in enumerate(text.splitlines(), 1):
        if TIMING_LINE.search(line) and not VALID_TIMING.match(line):
            raise UserError(f"{path} line {number}: malformed cue timing {line.strip()!r} "
                            "(expected HH:MM:SS,mmm --> HH:MM:SS,mmm)")
    try:
        subs = pysubs2.SSAFile.from_string(text, format_="vtt" if path.suffix.lower() == ".vtt" else "srt")
    except Exception as e:  # noqa: BLE001 - the library's own parse errors
        raise UserError(f"{path}: cannot read the subtitles ({e})") from None
    cues = [(e.start / 1000, e.end / 1000, " ".join(e.plaintext.split())) for e in subs if e.plaintext.strip()]
    if not cues:
        raise UserError(f"{path}: no cues with text")
    return cues


def recognised_words(audio, model, language: Optional[str], progress: bool,
                     timed: bool = True) -> Tuple[List[tuple], str]:
    """(word, start, end) of everything the model hears in the recording (a path, or samples), and the language
    it used. `timed=False`: greedy, without the temperature fallback or word timestamps (each word takes its
    segment's times), for a probe that only counts matching words: a language the model writes badly sends
    every window through the fallback, most of the probe's time otherwise."""
    from ..inference.transcriber import transcribe

    options = {"word_timestamps": True} if timed else {"temperature": 0.0}
    result = transcribe(str(audio) if isinstance(audio, Path) else audio, model, language=language, verbose=None,
                        progress=progress, **options)
    if not timed:
        return [(w, s["start"], s["end"]) for s in result["segments"] for w in s["text"].split()], result["language"]
    words = [(w["word"].strip(), float(w["start"]), float(w["end"]))
             for s in result["segments"] for w in s.get("words", []) if w["word"].strip()]
    return words, result["language"]


def fit_cue_clock(cues: Sequence[Tuple[float, float, str]], words: Sequence[tuple], source: Path) -> Tuple[float, float, str]:
    """(scale, offset, note) mapping cue times onto the audio's clock: audio = scale * cue + offset, fitted on the
    words the model recognised in the cues' text (each cue word's time shared out over its cue by length)."""
    reference, cue_times, edges = [], [], []
    for start, end, text in cues:
        parts = text.split()
        total = sum(len(p) for p in parts) or 1
        t = start
        for n, p in enumerate(parts):
            reference.append(p)
            cue_times.append((t, t + (end - start) * len(p) / total))
            edges.append((n == 0, n == len(parts) - 1))
            t += (end - start) * len(p) / total
    alignment = align_words(" ".join(reference), words)
    # a cue starts where its first word starts and ends where its last word ends: the exact evidence (the
    # recogniser's word starts run late and its ends early, so both, or its bias moves the offset)
    exact = [(c[0], w.start) for c, w, e in zip(cue_times, alignment.words, edges) if w.timed and e[0]] + \
            [(c[1], w.end) for c, w, e in zip(cue_times, alignment.words, edges) if w.timed and e[1]]
    matched = exact if len(exact) >= 20 else [(c[0], w.start) for c, w in zip(cue_times, alignment.words) if w.timed]
    heard = np.array([h for _, h in matched], dtype=float)
    told = np.array([c for c, _ in matched], dtype=float)
    recognised = sum(w.timed for w in alignment.words)
    if recognised < max(5, MIN_CHECKED_SHARE * len(reference)):
        raise UserError(f"{source}: the cue times cannot be checked: the model recognised only {recognised} of "
                        f"{len(reference)} words of the subtitles (wrong file, or another language: try --language)")
    offset = float(np.median(heard - told))
    keep = np.abs(heard - told - offset) < 2.0  # words matched to the wrong place are not evidence
    scale = 1.0
    if keep.sum() >= 10 and np.ptp(told[keep]) > 60:
        slope, intercept = np.polyfit(told[keep], heard[keep], 1)
        if abs(slope - 1) * np.ptp(told[keep]) > DRIFT_SECONDS:  # drift that moves cues within this file
            scale, offset = float(slope), float(intercept)
    residual = float(np.median(np.abs(scale * told + offset - heard)))
    if residual > MAX_RESIDUAL:
        raise UserError(f"{source}: the cues do not follow the audio: after the best offset ({offset:+.2f} s"
                        f"{f', drift {(scale - 1) * 3600:+.1f} s an hour' if scale != 1 else ''}) they are still "
                        f"{residual:.2f} s from the recognised words; fix the subtitle timing")
    notes = []
    if abs(offset) >= 0.1:
        notes.append(f"cue times shifted by {offset:+.2f} s")
    if scale != 1.0:
        notes.append(f"drift of {(scale - 1) * 3600:+.1f} s an hour corrected")
    return scale, offset, "; ".join(notes)


PAUSE_FOR_CUTS = 0.2  # seconds: silences at least this long between forced words are opened as pauses
FORCED_BELOW = 0.5  # a share of the text's words the transcript writes as the text does below this: forced alignment


PROBE_SECONDS = 120.0  # a longer recording's start is recognised first, to see whether matching words can align it
PROBE_BELOW = 0.7  # a probe matching less of its text goes to forced alignment without recognising the rest (read
# English: 93% of words written as the text does, tiny.en on LibriSpeech; Yoruba, base: 5%. A language the model
# half-knows is slow to recognise and aligns better forced)


def probe_share(text: str, read, duration: float, model, language: Optional[str]) -> Tuple[Optional[float], Optional[str]]:
    """(the share of the text's first words, as many as the first PROBE_SECONDS hold at the recording's average
    rate, that the model's transcript of those seconds matches; the language it heard), or (None, None) for a
    recording too short to probe."""
    if duration < 2 * PROBE_SECONDS:
        return None, None
    words = text.split()
    heard, detected = recognised_words(read(0, int(PROBE_SECONDS * 16000)), model, language, False, timed=False)
    expected = max(1, int(len(words) * PROBE_SECONDS / duration))
    return align_words(" ".join(words[:expected]), heard).matched_share, detected


def forced_alignment(read, n_samples: int, text: str, model, language: Optional[str]) -> Alignment:
    """The text's words timed by forced alignment (inference/forced_alignment.py), with the pauses silero-vad
    finds opened between them (windows are cut at pauses); words where it could not follow untimed."""
    import importlib.util

    from ..inference.forced_alignment import forced_words, open_pauses
    from ..inference.vad_chunks import silences

    if importlib.util.find_spec("silero_vad") is None:
        raise UserError("aligning a language the model writes badly finds the pauses with PyPI silero-vad: "
                        "pip install 'mlx-whisper-lora[vad]' (or pip install silero-vad), then run prepare again")
    timed = open_pauses(forced_words(read, n_samples, text.split(), model, language),
                        silences(read, n_samples, PAUSE_FOR_CUTS))
    alignment = Alignment([TimedWord(w, s, e) for w, s, e in timed])
    run: List[str] = []
    for w, s, _ in timed + [("", 0.0, 0.0)]:  # each untimed run of words reported on its own
        if s is None:
            run.append(w)
        elif run:
            alignment.dropped.append({"start": None, "end": None, "reason": "text with no matching speech",
                                      "text": " ".join(run)[:200]})
            run = []
    return alignment


def audio_reader(path: Path):
    """(read(start_sample, stop_sample), n_samples, close): long files through the block-decoded temporary
    file (memory does not grow with the recording), others read whole."""
    from ..data.audio import load_audio
    from ..data.long_audio import store_long_audio

    stored = store_long_audio(path)
    if stored is not None:
        return stored.read, stored.n_samples, stored.close
    samples = load_audio(path)
    return (lambda a, b: samples[a:b]), len(samples), (lambda: None)


def prepare_recording(recording, model, output: Path, language: Optional[str], progress: bool,
                      limit: float = 30.0) -> PreparedRecording:
    """Windows of one recording (at most `limit` seconds each) written under `output`/audio/NAME/, with their rows."""
    import soundfile as sf

    from ..data.audio import SAMPLE_RATE

    source = recording.transcript
    if recording.text is None and source is None:
        raise UserError(f"no transcript beside it: add {recording.audio.with_suffix('.txt').name} (plain text), "
                        f"{recording.audio.with_suffix('.srt').name} or {recording.audio.with_suffix('.vtt').name}")
    cues = read_cues(source) if source is not None and source.suffix.lower() in (".srt", ".vtt") else None
    text = None if cues else (recording.text if recording.text is not None else read_text(source))
    if text is not None and not text.strip():
        raise UserError(f"{recording.audio}: the transcript is empty")
    read, n_samples, close = audio_reader(recording.audio)
    try:
        duration = n_samples / SAMPLE_RATE
        note = ""
        dropped: List[dict] = []
        share, heard_as = (None, None) if cues is not None else \
            probe_share(text, read, duration, model, language or recording.language)
        if share is not None and share < PROBE_BELOW:  # the model does not write this language well enough
            words, detected = [], language or recording.language or heard_as
        else:
            words, detected = recognised_words(recording.audio, model, language or recording.language, progress)
        if cues is not None:
            scale, offset, note = fit_cue_clock(cues, words, source)
            segments = [Segment(max(scale * s + offset, 0.0), min(scale * e + offset, duration), t) for s, e, t in cues]
            words_in = sum(len(t.split()) for _, _, t in cues)
        else:
            alignment = align_words(text, words)
            forced = alignment.matched_share < FORCED_BELOW
            if forced:
                share = share if share is not None and share < PROBE_BELOW else alignment.matched_share
                alignment = forced_alignment(read, n_samples, text, model, language or recording.language or detected)
                note = (f"the model's transcript matched only {100 * share:.0f}% of the text's words (a language it "
                        f"writes badly?): the text was aligned by forced alignment instead, which cannot check that "
                        f"text and speech agree")
            for first, stop, start, end in [] if forced else list(untimed_stretches(alignment, duration)):
                # long-form recognition skips a phrase now and then: the stretch alone, recognised again
                pad = min(GAP_PADDING, max(30.0 - (end - start), 0.0) / 2)
                a, b = max(start - pad, 0.0), min(end + pad, duration)
                heard, _ = recognised_words(read(int(a * SAMPLE_RATE), int(b * SAMPLE_RATE)), model,
                                            language or recording.language or detected, False)
                adopt(alignment, first, stop, [(w, s + a, e + a) for w, s, e in heard])
            segments = segments_from(alignment, duration)
            words_in = len(alignment.words)
            dropped = [dict(d, text=d["text"][:200]) for d in alignment.dropped if d["reason"] == "speech not in the text"]
        for s in segments:
            if not s.usable and s.text:
                dropped.append({"start": round(s.start, 2), "end": round(s.end, 2),
                                "reason": "text and speech disagree (or no speech for the text)", "text": s.text[:200]})
        windows = cut_windows(segments, duration, min(limit, 30.0))
        folder = output / "audio" / recording.name
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, w in enumerate(windows):
            path = folder / f"{recording.name}_{i:05d}.flac"
            sf.write(str(path), read(int(round(w.start * SAMPLE_RATE)), int(round(w.end * SAMPLE_RATE))), SAMPLE_RATE)
            rows.append({"id": f"{recording.name}_{i:05d}", "audio": str(path.relative_to(output)), "text": w.text,
                         "language": language or recording.language or detected, "recording": str(recording.audio),
                         "start": round(w.start, 3), "end": round(w.end, 3), "duration": round(w.duration, 3),
                         "segments": [list(s) for s in w.segments], "previous_text": w.previous_text})
    finally:
        close()
    kept_words = sum(len(w.text.split()) for w in windows)
    summary = {"recording": str(recording.audio), "name": recording.name, "seconds_in": round(duration, 2),
               "seconds_kept": round(sum(w.duration for w in windows), 2), "windows": len(windows),
               "words_in": words_in, "words_kept": kept_words, "note": note,
               "transcript": str(source) if source else "manifest"}
    return PreparedRecording(rows, summary, dropped)

