"""Write a transcription as txt, srt, vtt, tsv or json, named `<output dir>/<audio stem>.<format>`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TextIO, Tuple

from ..errors import UserError
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


@dataclass(frozen=True)
class SubtitleOptions:
    """How word-timed subtitles are laid out (openai-whisper's options; they need word timestamps)."""

    max_line_width: Optional[int] = None  # characters per line; with max_line_count, segments are re-flowed
    max_line_count: Optional[int] = None  # lines per subtitle
    highlight_words: bool = False  # one cue per word, the spoken word underlined
    max_words_per_line: Optional[int] = None  # ignored when max_line_width is set

    @classmethod
    def checked(cls, word_timestamps: bool, **options) -> "SubtitleOptions":
        """The options, refused (one line naming the flag) where they would be silently ignored."""
        opts = cls(**options)
        flags = {"--highlight-words": opts.highlight_words, "--max-line-width": opts.max_line_width,
                 "--max-words-per-line": opts.max_words_per_line}
        for flag, value in flags.items():
            if value and not word_timestamps:
                raise UserError(f"{flag} lays out word-timed subtitles: add --word-timestamps True")
        if opts.max_line_count and not opts.max_line_width:
            raise UserError("--max-line-count needs --max-line-width (the width decides where lines break)")
        if opts.max_words_per_line and opts.max_line_width:
            raise UserError("--max-words-per-line has no effect with --max-line-width: give one of them")
        for flag, value in (("--max-line-width", opts.max_line_width), ("--max-line-count", opts.max_line_count),
                            ("--max-words-per-line", opts.max_words_per_line)):
            if value is not None and value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        return opts


def _subtitle_groups(segments: List[dict], opts: SubtitleOptions) -> Iterator[List[dict]]:
    """Words grouped into subtitles. Without both a width and a line count each segment stays one
    subtitle (lines broken at the width); with both, words flow across segments into subtitles of at
    most max_line_count lines, and a pause over 3 s starts a new one."""
    keep_segments = opts.max_line_count is None or opts.max_line_width is None
    width = opts.max_line_width or 1000
    per_line = opts.max_words_per_line or 1000
    line_len, line_count = 0, 1
    subtitle: List[dict] = []
    last = next((w["start"] for s in segments for w in s.get("words", [])), 0.0)
    for segment in segments:
        words = segment.get("words", [])
        for chunk_start in range(0, len(words), per_line):
            for i, original in enumerate(words[chunk_start : chunk_start + per_line]):
                word = dict(original)
                long_pause = not keep_segments and word["start"] - last > 3.0
                fits = line_len + len(word["word"]) <= width
                segment_break = i == 0 and subtitle and keep_segments
                if line_len > 0 and fits and not long_pause and not segment_break:
                    line_len += len(word["word"])
                else:
                    word["word"] = word["word"].strip()
                    if subtitle and ((opts.max_line_count is not None and (long_pause or line_count >= opts.max_line_count))
                                     or segment_break):
                        yield subtitle
                        subtitle, line_count = [], 1
                    elif line_len > 0:
                        line_count += 1
                        word["word"] = "\n" + word["word"]
                    line_len = len(word["word"].strip())
                subtitle.append(word)
                last = word["start"]
    if subtitle:
        yield subtitle


def subtitle_cues(result: dict, opts: SubtitleOptions = SubtitleOptions()) -> Iterator[Tuple[float, float, str]]:
    """(start, end, text) of every cue: one per segment, or laid out from the words when the result
    has them."""
    segments = result["segments"]
    if not (segments and "words" in segments[0]):
        for s in segments:
            yield s["start"], s["end"], s["text"].strip().replace("-->", "->")
        return
    for group in _subtitle_groups(segments, opts):
        text = "".join(w["word"] for w in group)
        if not opts.highlight_words:
            yield group[0]["start"], group[-1]["end"], text
            continue
        last = group[0]["start"]
        for i, word in enumerate(group):
            if word["start"] > last:  # a gap before this word: the plain line fills it
                yield last, word["start"], text
            underlined = "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w["word"]) if j == i else w["word"]
                                 for j, w in enumerate(group))
            yield word["start"], word["end"], underlined
            last = word["end"]


def write_vtt(result: dict, f: TextIO, opts: SubtitleOptions = SubtitleOptions()) -> None:
    print("WEBVTT\n", file=f)
    for start, end, text in subtitle_cues(result, opts):
        print(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n", file=f)


def write_srt(result: dict, f: TextIO, opts: SubtitleOptions = SubtitleOptions()) -> None:
    for i, (start, end, text) in enumerate(subtitle_cues(result, opts), start=1):
        print(f"{i}\n{format_timestamp(start, True, ',')} --> {format_timestamp(end, True, ',')}\n{text}\n", file=f)


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


def write_result(result: dict, output_dir, stem: str, fmt: str, subtitles: SubtitleOptions = SubtitleOptions()) -> Path:
    """Write one format atomically (temporary file, then rename) and return its path."""
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            if fmt in ("srt", "vtt"):
                FORMATS[fmt](result, f, subtitles)
            else:
                FORMATS[fmt](result, f)

    return atomic_write(out_dir / f"{stem}.{fmt}", write)


def write_results(results: List[dict], stems: List[str], output_dir, formats: List[str],
                  subtitles: SubtitleOptions = SubtitleOptions(), log: Callable[[str], None] = print) -> List[Path]:
    """Write every result in every format. When the output folder fails (a full disk, a folder made
    read-only meanwhile), the transcripts are written to a new temporary folder instead and a
    UserError names the failure and where they are: hours of transcription are never lost."""
    written: List[Path] = []
    try:
        for result, stem in zip(results, stems):
            for fmt in formats:
                written.append(write_result(result, output_dir, stem, fmt, subtitles))
                log(f"wrote {written[-1]}")
    except OSError as e:
        import tempfile

        rescue = Path(tempfile.mkdtemp(prefix="mlx_whisper_lora_transcripts_"))
        try:
            for result, stem in zip(results, stems):
                for fmt in formats:
                    write_result(result, rescue, stem, fmt, subtitles)
        except OSError as again:
            raise UserError(f"cannot write the transcripts to {output_dir} ({e.strerror or e}) nor to {rescue} "
                            f"({again.strerror or again}); free some disk space and run again") from None
        raise UserError(f"cannot write the transcripts to {output_dir} ({e.strerror or e}); they are saved in "
                        f"{rescue} instead: move them from there, or free space and pass --output-dir") from None
    return written
