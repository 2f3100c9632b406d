"""A known text aligned to its audio by Whisper itself, window after window, where recognising the speech and
matching words cannot: a language the model writes badly (its words rarely equal the reference's) still has
cross-attention that follows the audio.

Each 30 s window from the current point is given the next words of the text (a few more than the speech rate
so far says it holds) as forced decoder input; openai-whisper's word-timing computation (the alignment heads'
cross-attention, median-filtered, through dynamic time warping: timing.py) times them. The words that end well
before the window's end are kept, the point moves to the end of the last one, and the rest go to the next
window. Why by hand: it is stable-ts's `align` idea on this package's own timing code; forced aligners on PyPI
need a model per language downloaded from the Hub.
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
        if kept == 0:  # nothing fits before the window's end: the text and the audio part ways here
            break
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


def window_words(model, tokenizer, audio: np.ndarray, words: Sequence[str], features=None):
    """(word, start, end) seconds inside one window of at most 30 s of `audio` for each of `words`, forced;
    `features`: the window's encoder states when already computed."""
    import mlx.core as mx

    if features is None:
        mel = log_mel_spectrogram(pad_or_trim(audio, N_SAMPLES), model.dims.n_mels)[:N_FRAMES]
        features = model.embed_audio(mx.array(np.asarray(mel))[None])
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
