"""A plain transcript aligned to its recording: the base model's own word timestamps (as `transcribe
--word-timestamps` computes them) matched word by word to the reference text, and the reference cut into timed
segments where the two agree. Stretches where they disagree (speech the text leaves out, text with no audio,
music) become unusable segments: no training window holds them (windows.py).

Why by hand: forced aligners that run offline from PyPI need a model per language (and most a compiled
toolkit); the Whisper model the user is about to fine-tune is already here, knows the language, and its
word times are what transcription gives anyway. The matching is difflib's (a maintained library); what is
written here is the rule for what counts as agreement.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ..data.windows import Segment

SENTENCE_END = re.compile(r"[.!?。！？…]['\"”’)\]]*$")
PAUSE_SECONDS = 0.5  # a pause this long between two words ends a segment where the text has no sentence end
SEGMENT_SECONDS = 12.0  # past this a segment ends at its next pause of any length
MAX_GUESSED_WORDS = 3  # reference words with no recognised counterpart kept inside a stretch that agrees
MAX_WORD_SECONDS = 1.5  # longer recognised words are not timed by it (long-form skips stretch their neighbours)
EDGE_PAUSE_SECONDS = 0.15  # a usable segment beside an unaligned stretch must meet it at a pause at least this long


@dataclass
class TimedWord:
    text: str  # the reference word as written
    start: Optional[float] = None
    end: Optional[float] = None
    dropped: bool = False  # in a stretch where text and speech disagree (not guessed from its neighbours)

    @property
    def timed(self) -> bool:
        return self.start is not None


@dataclass
class Alignment:
    """The reference's words with times (None where unaligned) and what was left out, with why."""

    words: List[TimedWord]
    dropped: List[dict] = field(default_factory=list)  # {"start", "end", "reason", "text"}
    matched: int = 0  # words the recogniser wrote exactly as the text does (the rest of the timed ones are spread)

    @property
    def aligned_share(self) -> float:
        return sum(w.timed for w in self.words) / max(len(self.words), 1)

    @property
    def matched_share(self) -> float:
        """The share of the text's words the recogniser wrote as the text does: whether text and speech agree.
        (The aligned share also counts runs of misheard words between agreeing ones, which gibberish in a
        language the model writes badly fills with its short words matching here and there.)"""
        return self.matched / max(len(self.words), 1)


def key(word: str) -> str:
    """What two spellings of a word share: lower case letters and digits (any script)."""
    return "".join(ch for ch in word.lower() if ch.isalnum())


def align_words(reference: str, recognised: Sequence[Tuple[str, float, float]]) -> Alignment:
    """Times for the reference's words from the recognised (word, start, end) list: equal words (by `key`) take
    the recognised word's times; a run of reference words facing a run of recognised ones of about the same
    length between two agreeing words (the model misheard them) takes the run's time span, shared by
    length; anything else is unaligned, and its stretch listed as dropped."""
    words = [TimedWord(w) for w in reference.split()]
    ref_keys = [key(w.text) for w in words]
    hyp = [(key(w), s, e) for w, s, e in recognised]
    hyp_keys = [h[0] for h in hyp]
    alignment = Alignment(words)
    matcher = difflib.SequenceMatcher(None, ref_keys, hyp_keys, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            alignment.matched += i2 - i1
            for k in range(i2 - i1):
                words[i1 + k].start, words[i1 + k].end = hyp[j1 + k][1], hyp[j1 + k][2]
        elif op == "replace" and _similar_length(i2 - i1, j2 - j1):
            _spread(words[i1:i2], hyp[j1][1], hyp[j2 - 1][2])
        elif op == "delete" and i2 - i1 <= MAX_GUESSED_WORDS and 0 < i1 and i2 < len(words):
            pass  # a few words the model skipped (or ran into their neighbours): timed below from the neighbours
        elif op == "insert" and j2 - j1 <= MAX_GUESSED_WORDS and 0 < i1 < len(words):
            pass  # a few words heard that the text leaves out, inside speech that agrees: the text stays the label
        else:
            start = hyp[j1][1] if j2 > j1 else None
            end = hyp[j2 - 1][2] if j2 > j1 else None
            reason = {"insert": "speech not in the text", "delete": "text with no matching speech",
                      "replace": "text and speech disagree"}[op]
            alignment.dropped.append({"start": start, "end": end, "reason": reason,
                                      "text": " ".join(w.text for w in words[i1:i2]) or
                                      " ".join(w for w, _, _ in recognised[j1:j2])})
            for w in words[i1:i2]:
                w.start = w.end = None
                w.dropped = True
    for w in words:  # a word said over seconds is the recogniser stretching it over speech it skipped
        if w.timed and w.end - w.start > MAX_WORD_SECONDS:
            w.start = w.end = None
    _fill_short_gaps(words)
    return alignment


def _similar_length(a: int, b: int) -> bool:
    return a > 0 and b > 0 and max(a, b) <= 2 * min(a, b) + 1


def _spread(words: Sequence[TimedWord], start: float, end: float) -> None:
    """Share [start, end) between `words` by their length in characters."""
    total = sum(len(w.text) for w in words) or 1
    t = start
    for w in words:
        w.start, t = t, t + (end - start) * len(w.text) / total
        w.end = t


def _fill_short_gaps(words: List[TimedWord]) -> None:
    """A few untimed words between timed neighbours (and not dropped) share the time between them."""
    i = 0
    while i < len(words):
        if words[i].timed or words[i].dropped:
            i += 1
            continue
        j = i
        while j < len(words) and not words[j].timed and not words[j].dropped:
            j += 1
        if 0 < i and words[i - 1].timed and j < len(words) and words[j].timed and j - i <= MAX_GUESSED_WORDS:
            # between their neighbours (where those touch, at the point they meet: the words are said, the
            # recogniser ran them into a neighbour)
            start, end = words[i - 1].end, max(words[j].start, words[i - 1].end)
            _spread(words[i:j], start, end)
        i = j


def segments_from(alignment: Alignment, duration: float) -> List[Segment]:
    """The reference cut into timed segments: at sentence ends, at pauses of PAUSE_SECONDS, and at any pause
    once a segment is SEGMENT_SECONDS long; each untimed run becomes an unusable segment spanning the time
    between its timed neighbours (so no window takes its audio)."""
    out: List[Segment] = []
    run: List[TimedWord] = []

    def flush() -> None:
        if run:
            out.append(Segment(run[0].start, run[-1].end, " ".join(w.text for w in run),
                               words=[(w.text, w.start, w.end) for w in run]))
            run.clear()

    words = alignment.words
    i = 0
    while i < len(words):
        w = words[i]
        if not w.timed:
            flush()
            j = i
            while j < len(words) and not words[j].timed:
                j += 1
            start = words[i - 1].end if i > 0 and words[i - 1].timed else 0.0
            end = words[j].start if j < len(words) else duration
            # text before the first or after the last word heard (a title, a citation, a credit line) has no
            # speech beside the speech that agrees: its stretch starts a pause away, so the segment stays whole
            # (speech the text lacks there is kept out of windows as its own stretch, below)
            if j == len(words) and i > 0:
                start = min(start + 2 * EDGE_PAUSE_SECONDS, end)
            if i == 0 and j < len(words):
                end = max(end - 2 * EDGE_PAUSE_SECONDS, start)
            out.append(Segment(start, end, " ".join(x.text for x in words[i:j]), usable=False))
            i = j
            continue
        if run:
            pause = w.start - run[-1].end
            if SENTENCE_END.search(run[-1].text) or pause >= PAUSE_SECONDS or \
                    (w.end - run[0].start > SEGMENT_SECONDS and pause > 0):
                flush()
        run.append(w)
        i += 1
    flush()
    _pull_back_to_pauses(out)
    for d in alignment.dropped:  # recognised speech the text does not hold: its audio is kept out of windows too
        if d["reason"] == "speech not in the text" and d["start"] is not None:
            out.append(Segment(d["start"], d["end"], "", usable=False))
    return sorted(out, key=lambda s: (s.start, s.end))


def _pull_back_to_pauses(segments: List[Segment]) -> None:
    """A usable segment that runs into an unaligned stretch with no pause between them gives up its words back
    to its last pause (they join the stretch): a window's edge there would cut speech in two."""
    for i, seg in enumerate(segments):
        if not seg.usable or not seg.words:
            continue
        before = segments[i - 1] if i > 0 and not segments[i - 1].usable else None
        after = segments[i + 1] if i + 1 < len(segments) and not segments[i + 1].usable else None
        words = list(seg.words)
        if after is not None and after.start - words[-1][2] < EDGE_PAUSE_SECONDS:
            cut = max((k for k in range(1, len(words)) if words[k][1] - words[k - 1][2] >= EDGE_PAUSE_SECONDS), default=0)
            after.text = " ".join([w[0] for w in words[cut:]] + [after.text]).strip()
            after.start = words[cut][1] if cut else seg.start
            words = words[:cut]
        if words and before is not None and words[0][1] - before.end < EDGE_PAUSE_SECONDS:
            cut = min((k for k in range(1, len(words)) if words[k][1] - words[k - 1][2] >= EDGE_PAUSE_SECONDS),
                      default=len(words))
            before.text = " ".join([before.text] + [w[0] for w in words[:cut]]).strip()
            before.end = words[cut - 1][2]
            words = words[cut:]
        if words:
            seg.start, seg.end, seg.words = words[0][1], words[-1][2], words
            seg.text = " ".join(w[0] for w in words)
        else:  # every word went to the stretches beside it
            seg.usable, seg.words, seg.text = False, None, ""
    merged: List[Segment] = []
    for seg in segments:  # neighbouring unaligned stretches are one stretch
        if merged and not seg.usable and not merged[-1].usable:
            merged[-1].end = max(merged[-1].end, seg.end)
            merged[-1].text = " ".join(t for t in (merged[-1].text, seg.text) if t)
        else:
            merged.append(seg)
    segments[:] = merged


def untimed_stretches(alignment: Alignment, duration: float, longest: float = 30.0):
    """(first, stop, start_s, end_s) of each run of untimed reference words whose audio, between its timed
    neighbours, is at most `longest` seconds: worth recognising again on its own."""
    words = alignment.words
    i = 0
    while i < len(words):
        if words[i].timed:
            i += 1
            continue
        j = i
        while j < len(words) and not words[j].timed:
            j += 1
        start = words[i - 1].end if i > 0 else 0.0
        end = words[j].start if j < len(words) else duration
        if 0 < end - start <= longest:
            yield i, j, start, end
        i = j


def adopt(alignment: Alignment, first: int, stop: int, recognised: Sequence[Tuple[str, float, float]]) -> None:
    """Times for the untimed words [first, stop) from a second recognition of their stretch alone."""
    again = align_words(" ".join(w.text for w in alignment.words[first:stop]), recognised)
    for w, t in zip(alignment.words[first:stop], again.words):
        if t.timed:
            w.start, w.end, w.dropped = t.start, t.end, False
