"""A known text aligned to its audio by Whisper itself, window after window, where recognising the speech and
matching words cannot: a language the model writes badly (its words rarely equal the reference's) still has
cross-attention that follows the audio.

Each 30 s window from the current point is given the next words of the text (a few more than the speech rate
so far says it holds) as forced decoder input; openai-whisper's word-timing computation (the alignment heads'
cross-attention, median-filtered, through dynamic time warping: timing.py) times them. The words that end well
before the window's end are kept, the point moves to the end of the last one, and the rest go to the next
window. Where the window's first words pile up (the model cannot follow that stretch), they are left untimed
and the alignment goes on from the first words it follows again. The path gives every frame to some word, so
pauses are opened afterwards where a voice-activity detector hears silence (`open_pauses`). Why by hand: it is
stable-ts's `align` idea on this package's own timing code; forced aligners on PyPI need a model per language
downloaded from the Hub.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..data.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from ..text.tokenizer import get_tokenizer
from .timing import find_alignment

WINDOW_SECONDS = 30.0
KEEP_BEFORE_END = 3.0  # words ending later than this before a window's end are timed again in the next window
OVERSHOOT = 1.4  # words given to a window: this many times what the speech rate so far says it holds
FIRST_RATE = 2.5  # words a second before any is timed (read speech: 2-3)
PAUSE_REACH = 0.3  # seconds: a pause this far from a word boundary (or as far as it is long) still opens there
RESUMED_WORDS = 3  # words in a row with a duration after a pile-up: the timing follows the speech again


def forced_words(read: Callable[[int, int], np.ndarray], n_samples: int, words: Sequence[str], model,
                 language: Optional[str]) -> List[Tuple[str, Optional[float], Optional[float]]]:
    """(word, start, end) in seconds of the recording for each of `words`, in order; (word, None, None) for the
    words after the audio ran out or where alignment stalled. `read(a, b)`: samples a..b of the recording."""
    tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, language=language or "en",
                              task="transcribe", model_dir=model.folder)
    duration = n_samples / SAMPLE_RATE
    out: List[Tuple[str, Optional[float], Optional[float]]] = []
    seek, i, rate = 0.0, 0, FIRST_RATE
    while i < len(words) and seek < duration - 0.1:
        end = min(seek + WINDOW_SECONDS, duration)
        audio = read(int(seek * SAMPLE_RATE), int(end * SAMPLE_RATE))
        last = end >= duration - 1e-6
        count = len(words) - i if last else max(2, int(np.ceil(rate * (end - seek) * OVERSHOOT)))
        chunk = list(words[i:i + count])
        timed = window_words(model, tokenizer, audio, chunk)
        limit = end - seek if last and i + len(chunk) == len(words) else end - seek - KEEP_BEFORE_END
        good = _before_pile_up(timed)
        kept = 0
        for (word, s, e) in timed[:good]:
            if s is None or e > limit:
                break
            out.append((word, seek + s, seek + e))
            kept += 1
        if kept == 0:  # the window's first words piled up: go on from where the timing resumes, if it does
            resumed = _resumed_after_pile_up(timed) if good == 0 else None
            if resumed is None or seek + timed[resumed][1] >= (duration if last else end - KEEP_BEFORE_END):
                break  # the text and the audio part ways here
            out += [(word, None, None) for word in chunk[:resumed]]
            i += resumed
            seek += timed[resumed][1]
            continue
        i += kept
        spoken = out[-1][2] - seek
        rate = max(0.5, kept / max(spoken, 1.0))
        seek = out[-1][2]
    out += [(w, None, None) for w in words[len(out):]]
    return out


def _before_pile_up(timed) -> int:
    """How many of the window's words come before the first pile-up (two words of no duration in a row: words
    the audio of the window does not hold, pressed together by the warping path), less the word before it (which
    may have swallowed the speech the piled words stand for). All of them when there is none."""
    for k in range(len(timed) - 1):
        (_, s1, e1), (_, s2, e2) = timed[k], timed[k + 1]
        if s1 is not None and s2 is not None and e1 - s1 < 1e-3 and e2 - s2 < 1e-3:
            return max(k - 1, 0)
    return len(timed)


def open_pauses(timed: List[Tuple[str, Optional[float], Optional[float]]],
                pauses: Sequence[Tuple[float, float]]) -> List[Tuple[str, Optional[float], Optional[float]]]:
    """Forced words with the pauses a voice-activity detector found opened between them. The warping path
    gives every frame to some word, so a pause is swallowed by the word before or after it and the words
    touch: nothing could cut there. Each pause goes to the word boundary nearest it (within the pause's
    length, or PAUSE_REACH): the word before ends where the pause starts and the word after starts where it
    ends. A pause holding two boundaries (a word placed in silence) is left alone, as is any change that
    would make a word vanish; silence before the first word and after the last is cut off them."""
    out = list(timed)
    known = [k for k, (_, s, _) in enumerate(out) if s is not None]
    if not known:
        return out
    bounds = [k for k in range(1, len(out)) if out[k][1] is not None and out[k - 1][1] is not None]
    at = np.array([out[k][1] for k in bounds])
    for g0, g1 in pauses:
        first, last = out[known[0]], out[known[-1]]
        if g0 <= first[1] < g1 < first[2]:
            out[known[0]] = (first[0], g1, first[2])
        if first[1] < g0 < last[2] <= g1:
            out[known[-1]] = (last[0], last[1], g0)
        if not bounds or ((at > g0) & (at < g1)).sum() > 1:
            continue
        nearest = int(np.argmin(np.abs(at - np.clip(at, g0, g1))))
        if abs(at[nearest] - min(max(at[nearest], g0), g1)) > max(g1 - g0, PAUSE_REACH):
            continue
        k = bounds[nearest]
        (w0, s0, _), (w1, _, e1) = out[k - 1], out[k]
        if s0 < g0 and g1 < e1:
            out[k - 1], out[k] = (w0, s0, g0), (w1, g1, e1)
    return out


def _resumed_after_pile_up(timed) -> Optional[int]:
    """The first word after the window's first pile-up from which RESUMED_WORDS words in a row have a duration
    (the path follows the speech again), or None. The words before it are left untimed: their speech is kept out
    of the windows, and the rest of the recording is not lost to one stretch the model cannot follow."""
    piled = next((k for k in range(len(timed) - 1) if all(
        s is not None and e - s < 1e-3 for _, s, e in timed[k:k + 2])), None)
    if piled is None:
        return None
    for r in range(piled + 2, len(timed) - RESUMED_WORDS + 1):
        if all(s is not None and e - s >= 1e-3 for _, s, e in timed[r:r + RESUMED_WORDS]):
            return r
    return None


def window_words(model, tokenizer, audio: np.ndarray, words: Sequence[str], features=None):
    """(word, start, end) seconds inside one window of at most 30 s of `audio` for each of `words`, forced;
    `features`: the window's encoder states when already computed."""
    if features is None:
        mel = log_mel_spectrogram(pad_or_trim(audio, N_SAMPLES), model.dims.n_mels)[:N_FRAMES]
        features = model.encode_audio(mel[None])
    return _chunk_times(words, find_alignment(model, tokenizer, tokenizer.encode(" " + " ".join(words)), features,
                                              min(len(audio), N_SAMPLES) // 160))


def _chunk_times(chunk: Sequence[str], timings) -> List[Tuple[str, Optional[float], Optional[float]]]:
    """The timing code's words (split by the tokenizer) mapped back onto `chunk`'s words by their characters:
    each reference word takes the span of the timed words that overlap it."""
    spans, position = [], 0
    for word in chunk:
        spans.append((position, position + len(word)))
        position += len(word)
    out = []
    timed, position = [], 0
    for t in timings:
        text = "".join(t.word.split())
        timed.append((position, position + len(text), t.start, t.end))
        position += len(text)
    for word, (a, b) in zip(chunk, spans):
        inside = [(s, e) for x, y, s, e in timed if x < b and y > a]
        out.append((word, min(s for s, _ in inside), max(e for _, e in inside)) if inside else (word, None, None))
    return out
