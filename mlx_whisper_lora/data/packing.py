"""Short pre-cut clips packed into Whisper-like windows, so a model fine-tuned on them keeps its long-form habits.

Whisper learned from 30 s windows of long recordings: several timed segments in each, the last one often cut by
the window's end (written as its start time alone, which tells long-form decoding where to seek next), and the
text said before the window as a prompt. A model trained only on single clips (`<|0.00|> text <|end|>`) learns
to close every window at its end: fine-tuned, it writes 30 s segments on long files. Packing rebuilds that
layout from the clips people have (Common Voice, FLEURS, a folder of sentences): consecutive clips of one
group (recording, session or speaker; in the split's order) are joined into windows of up to 30 s, each clip a
segment with its times (or its sentences, where preparing/clip_segments.py timed them), and the group's text before a
clip or window becomes its previous text.

Why by hand: it is Whisper's own data layout, which no library builds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .audio import SAMPLE_RATE
from .examples import REPLAY_ID_PREFIX
from .manifests import Utterance
from .windows import PROMPT_CHARACTERS, WINDOW_SECONDS, snap, tail_text

MIN_TAIL_SECONDS = 1.0  # room left in a window for the start of the next clip (an open last segment)


@dataclass
class PackedClips(Utterance):
    """Consecutive clips as one window. `parts`: the clips in order; the last may run past the window (then it
    is an open segment: only its start is timed, and its audio is cut at the window's end)."""

    parts: Tuple[Utterance, ...] = ()
    open_tail: bool = False

    def __post_init__(self):  # what identifies the window's audio (the encoder-state cache shares states by it)
        self.audio = "packed:" + "+".join(p.id for p in self.parts) + (":open" if self.open_tail else "")

    def load(self) -> np.ndarray:
        audio = np.concatenate([p.load() for p in self.parts])
        return audio[: int(round(float(self.duration) * SAMPLE_RATE))]

    def untimed(self) -> Utterance:
        """The window for a label without timestamps: without the open clip (its text is not written, so its
        audio must not be there either)."""
        if not self.open_tail:
            return self
        closed = self.parts[:-1]
        return replace(self, parts=closed, open_tail=False, duration=sum(float(p.duration) for p in closed),
                       segments=self.segments[:-1], id="+".join(p.id for p in closed))


def packable(u: Utterance) -> bool:
    """A clip of the user's speech: not a window already, a no-speech clip, nor a row replayed against forgetting."""
    return not u.segments and not u.no_speech and not u.id.startswith(REPLAY_ID_PREFIX)


def with_previous_text(utterances: Sequence[Utterance]) -> List[Utterance]:
    """Each clip of a known group (in the split's order) with the text its group said before it, unless it has one."""
    said: Dict[str, str] = {}
    out = []
    for u in utterances:
        if not packable(u):
            out.append(u)
            continue
        if u.group is not None and u.previous_text is None and said.get(u.group):
            u = replace(u, previous_text=tail_text(said[u.group]))
        if u.group is not None:
            said[u.group] = tail_text((said.get(u.group, "") + " " + u.text.strip()).strip(), 2 * PROMPT_CHARACTERS)
        out.append(u)
    return out


def pack(utterances: Sequence[Utterance], fraction: float, window: float = WINDOW_SECONDS) -> Tuple[List[Utterance], int]:
    """(rows, clips packed): about `fraction` of the clips joined with their group's next ones into windows of up
    to `window` seconds, the rest left alone, in order; every row knows the text said before it in its group.
    Clips without a group are packed with the next clips that have none, without a previous text. Rows that
    are windows already (they have segments) are left as they are. Durations must be known (checked clips)."""
    rows = with_previous_text(utterances)
    groups: Dict[Optional[str], List[Utterance]] = {}
    for u in rows:
        groups.setdefault(u.group, []).append(u)
    if fraction <= 0:
        return rows, 0
    out: List[Utterance] = []
    seen = packed = 0
    for group, clips in groups.items():
        i = 0
        while i < len(clips):
            if not packable(clips[i]):
                out.append(clips[i])
                i += 1
                continue
            seen += 1
            if packed >= fraction * seen:
                out.append(clips[i])
                i += 1
                continue
            window_row, taken = _window(clips, i, window)
            if taken < 2 and not window_row.open_tail:
                out.append(clips[i])
                i += 1
                continue
            out.append(window_row)
            packed += taken
            seen += taken - 1
            i += taken
    return out, packed


def _window(clips: List[Utterance], first: int, window: float) -> Tuple[PackedClips, int]:
    """The window that starts at clips[first]: whole clips while they fit, then the start of the next one when
    at least MIN_TAIL_SECONDS are left. Returns it and the number of whole clips it holds."""
    parts, segments, t = [], [], 0.0
    j = first
    while j < len(clips) and packable(clips[j]) and t + float(clips[j].duration) <= window:
        parts.append(clips[j])
        inside = clips[j].sentences or [(0.0, float(clips[j].duration), clips[j].text.strip())]
        segments += [(snap(t + a), snap(t + b), text) for a, b, text in inside]
        t += float(clips[j].duration)
        j += 1
    taken = j - first
    open_tail = j < len(clips) and packable(clips[j]) and window - t >= MIN_TAIL_SECONDS and taken > 0
    if open_tail:  # one segment running past the window: only its start is written
        parts.append(clips[j])
        onset = (clips[j].sentences or [(0.0, 0.0, "")])[0][0]
        segments.append((snap(t + onset), snap(t + float(clips[j].duration)), clips[j].text.strip()))
    head = clips[first]
    row = PackedClips(audio="", text=" ".join(p.text.strip() for p in parts[:taken]), language=head.language,
                      duration=window if open_tail else t, id="+".join(p.id for p in parts), segments=segments,
                      previous_text=head.previous_text, group=head.group, parts=tuple(parts), open_tail=open_tail)
    return row, taken
