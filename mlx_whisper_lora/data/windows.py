"""Cut a long recording into training windows of at most 30 s, at pauses, the way Whisper's own data is laid
out: each window holds several timed segments (sentences, subtitle cues) and knows the text said before it.

Why by hand: the cutting rule is Whisper's (30 s windows, segment times at 20 ms inside the window, the
previous text as the prompt), which no audio or subtitle library knows; the inputs (timed segments) come from
a subtitle library or from the aligner (text_alignment.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

WINDOW_SECONDS = 30.0
TIME_STEP = 0.02  # Whisper's timestamp tokens are 20 ms apart
EDGE_SECONDS = 0.3  # silence kept around the speech at a window's edges, where the pause allows
PROMPT_CHARACTERS = 800  # previous text kept (Whisper's prompt holds at most 223 tokens, about 900 characters)


@dataclass
class Segment:
    """A stretch of speech with its text, in seconds of the recording. `usable` False: text and audio disagree
    there (or no text): no window holds it, and the text before it is not carried past it as a prompt."""

    start: float
    end: float
    text: str
    usable: bool = True
    words: Optional[List[Tuple[str, float, float]]] = None  # (word, start, end), for splitting a long segment


@dataclass
class Window:
    """One training row: [start, end) of the recording, its segments (times inside the window)."""

    start: float
    end: float
    segments: List[Tuple[float, float, str]] = field(default_factory=list)
    previous_text: str = ""

    @property
    def text(self) -> str:
        return " ".join(s[2].strip() for s in self.segments if s[2].strip())

    @property
    def duration(self) -> float:
        return self.end - self.start


def snap(seconds: float) -> float:
    """A time on Whisper's 20 ms grid."""
    return round(round(seconds / TIME_STEP) * TIME_STEP, 2)


def split_long(segment: Segment, limit: float) -> List[Segment]:
    """A segment longer than `limit` cut at pauses between words into pieces of at most `limit` seconds: each
    piece ends at the longest pause in the second half of what fits; unusable if it has no words to cut at."""
    if segment.end - segment.start <= limit:
        return [segment]
    words = segment.words or []
    if len(words) < 2:
        return [Segment(segment.start, segment.end, segment.text, usable=False)]
    out: List[Segment] = []
    first = 0
    while first < len(words):
        start = words[first][1]
        if words[-1][2] - start <= limit:
            stop = len(words)
        else:
            fits = [i for i in range(first + 1, len(words)) if words[i - 1][2] - start <= limit]
            if not fits:  # one word longer than a window
                return [Segment(segment.start, segment.end, segment.text, usable=False)]
            half = [i for i in fits if words[i - 1][2] - start >= limit / 2] or fits
            stop = max(half, key=lambda i: (words[i][1] - words[i - 1][2], i))
        piece = words[first:stop]
        out.append(Segment(piece[0][1], piece[-1][2], " ".join(w[0] for w in piece), words=piece))
        first = stop
    return out


def cut_windows(segments: Sequence[Segment], duration: float, limit: float = WINDOW_SECONDS,
                edge: float = EDGE_SECONDS) -> List[Window]:
    """Pack consecutive usable segments into windows of at most `limit` seconds. A window starts and ends in
    the pause around its segments (up to `edge` seconds of it, never past the middle of the pause, so two windows
    never share audio); segment times are relative to the window's start, on the 20 ms grid. An unusable segment
    ends the window before it and the prompt chain: the next window's previous text starts after it."""
    pieces: List[Segment] = []
    for s in sorted(segments, key=lambda s: s.start):
        pieces.extend(split_long(s, limit - 2 * TIME_STEP) if s.usable else [s])
    windows: List[Window] = []
    history: List[str] = []
    current: List[int] = []

    def bounds(first: int, last: int) -> Tuple[float, float]:
        before = pieces[first - 1].end if first > 0 else 0.0
        after = pieces[last + 1].start if last + 1 < len(pieces) else duration
        start = max(pieces[first].start - edge, (before + pieces[first].start) / 2, 0.0)
        end = min(pieces[last].end + edge, (pieces[last].end + after) / 2, duration)
        return snap(start) if snap(start) <= pieces[first].start else start, end

    def close(upto: Optional[int] = None) -> None:
        """The window of current[:upto] (all of it by default); the rest starts the next one."""
        if not current:
            return
        taken = current[:upto] if upto is not None else list(current)
        rest = current[len(taken):]
        current[:] = taken
        start, end = bounds(current[0], current[-1])
        end = min(end, start + limit)
        window = Window(start, end, previous_text=tail_text(" ".join(history)))
        for i in current:
            s = pieces[i]
            window.segments.append((snap(max(s.start - start, 0.0)), snap(min(s.end - start, end - start)), s.text.strip()))
            history.append(s.text.strip())
        windows.append(window)
        current[:] = rest

    for i, s in enumerate(pieces):
        if not s.usable:
            close()
            history.clear()
            continue
        while current:
            start, _ = bounds(current[0], i)
            if s.end - start <= limit:
                break
            close(_longest_pause(pieces, current, i))
        current.append(i)
    close()
    return windows


def _longest_pause(pieces: Sequence[Segment], current: List[int], following: int) -> int:
    """How many of the window's segments to keep when the next one does not fit: up to the longest pause in its
    second half (a window's edge in a real pause, not wherever 30 s ran out: cues and sentences can abut)."""
    following_start = pieces[following].start
    gaps = [(pieces[current[k + 1]].start if k + 1 < len(current) else following_start) - pieces[current[k]].end
            for k in range(len(current))]
    half = len(current) // 2
    best = max(range(half, len(current)), key=lambda k: (gaps[k], k))
    return best + 1


def tail_text(text: str, characters: int = PROMPT_CHARACTERS) -> str:
    """The last `characters` of `text`, from a word's start."""
    if len(text) <= characters:
        return text
    cut = text[-characters:]
    return cut[cut.find(" ") + 1:] if " " in cut else cut
