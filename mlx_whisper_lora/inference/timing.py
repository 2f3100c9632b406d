"""Word timestamps: when each word of a decoded window is spoken.

openai-whisper's method, so that times agree with it and with the tools built on it: run the decoder
once over the window's text, take the cross-attention of the alignment heads (the heads that follow
the audio in time), normalize it per head over the tokens, median-filter it along time, and find the
monotonic path through it with dynamic time warping. Words start where the path enters their first
token. Then Whisper's rules: punctuation merged into the neighbouring word, over-long words cut at
sentence and segment boundaries, and segment ends taken from the words.

Framework-free apart from the one model call `alignment_scores` (both back ends provide it).
DTW and the median filter are written here in numpy: the exact tie-breaking of Whisper's path is what
makes the times match it to the frame, and the anti-diagonal form needs no compiler (numba).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ..data.audio import FRAMES_PER_SECOND
from ..text.tokenizer import Tokenizer

TOKENS_PER_SECOND = FRAMES_PER_SECOND // 2  # audio positions per second after the encoder's stride 2
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class WordTiming:
    word: str
    tokens: List[int] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    probability: float = 0.0


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd `width` along the last axis, edges reflected."""
    if width % 2 != 1:
        raise ValueError(f"median filter width must be odd, got {width}")
    pad = width // 2
    if width <= 1 or x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1).astype(x.dtype, copy=False)


def dtw(x: np.ndarray):
    """Cheapest monotonic path through the cost matrix x (tokens, frames): (token indices, frame indices).

    Steps: diagonal, down (next token, same frame) or right (same token, next frame); ties go as in
    openai-whisper (diagonal only when strictly cheapest, then down, else right), costs kept in
    float32 as it keeps them. Computed one anti-diagonal at a time: every cell of a diagonal depends
    only on the two before it."""
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[i, j] = x[i - 1, j - 1] + np.choose(t, [c0, c1, c2])
        trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    path_array = np.array(path[::-1])
    return path_array[:, 0], path_array[:, 1]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def picked_probabilities(logits: np.ndarray, picked: Sequence[int]) -> np.ndarray:
    """softmax(logits)[i, picked[i]] for each row, without the softmax of the whole vocabulary: the
    row's log-sum-exp in float32 and the picked entries' probabilities from it. Terms below e^-87 of the
    row's largest are counted as e^-87: each is under float32's resolution of a sum that is at least 1,
    and their exponentials would be subnormal numbers, which this CPU computes ~10x slower."""
    x = np.array(logits, dtype=np.float32)
    peak = x.max(axis=-1, keepdims=True)
    x -= peak
    np.maximum(x, -87.0, out=x)
    np.exp(x, out=x)
    log_norm = peak[:, 0].astype(np.float64) + np.log(x.sum(axis=-1, dtype=np.float64))
    rows = np.arange(len(picked))
    return np.exp(logits[rows, np.asarray(picked)].astype(np.float64) - log_norm)


def attention_matrix(qk: np.ndarray, num_frames: int, medfilt_width: int = 7, qk_scale: float = 1.0) -> np.ndarray:
    """Heads' cross-attention scores (heads, tokens, frames) -> the (tokens, frames) matrix DTW walks:
    softmax over the audio (only its first num_frames // 2 positions hold speech), standardized per
    head over the tokens, median-filtered along time, averaged over heads."""
    weights = _softmax(qk[:, :, : num_frames // 2].astype(np.float32) * qk_scale)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - mean) / std
    return median_filter(weights, medfilt_width).mean(axis=0)


def alignment_inputs(tokenizer: Tokenizer, text_tokens: List[int]) -> List[int]:
    """The token sequence the decoder reads for alignment: start of transcript, no timestamps, text, end."""
    return [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]


def word_times(matrix: np.ndarray, tokenizer: Tokenizer, text_tokens: List[int]):
    """Words of text_tokens and their (start, end) seconds along the DTW path through `matrix`, whose
    rows are the positions from <|notimestamps|> to the last text token. None when there is no word."""
    text_indices, time_indices = dtw(-matrix)
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return None  # only the end-of-text token: nothing to time
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    return words, word_tokens, boundaries, jump_times[boundaries[:-1]], jump_times[boundaries[1:]]


def find_alignment(model, tokenizer: Tokenizer, text_tokens: List[int], audio_features, num_frames: int, *,
                   heads: Optional[Sequence] = None, medfilt_width: int = 7, qk_scale: float = 1.0) -> List[WordTiming]:
    """Words of text_tokens with start/end (seconds from the window's start) and mean token probability.

    audio_features: the window's encoder states (1, positions, width); num_frames: mel frames of speech in it."""
    if not text_tokens:
        return []
    logits, qk = model.alignment_scores(np.array([alignment_inputs(tokenizer, text_tokens)]), audio_features, heads)
    begin = len(tokenizer.sot_sequence)
    text_token_probs = picked_probabilities(logits[begin : begin + len(text_tokens), : tokenizer.eot], text_tokens)
    found = word_times(attention_matrix(qk, num_frames, medfilt_width, qk_scale)[begin:-1], tokenizer, text_tokens)
    if found is None:
        return []
    words, word_tokens, boundaries, starts, ends = found
    probs = [float(np.mean(text_token_probs[i:j])) for i, j in zip(boundaries[:-1], boundaries[1:])]
    return [WordTiming(w, t, float(s), float(e), p) for w, t, s, e, p in zip(words, word_tokens, starts, ends, probs)]


def merge_punctuations(alignment: List[WordTiming], prepended: str, appended: str) -> None:
    """Attach opening punctuation to the word after it and closing punctuation to the word before it;
    the emptied entries stay (with no word and no tokens) so token counts still line up."""
    following = len(alignment) - 1
    for i in range(len(alignment) - 2, -1, -1):
        prev, nxt = alignment[i], alignment[following]
        if prev.word.startswith(" ") and prev.word.strip() in prepended:
            nxt.word, nxt.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            prev.word, prev.tokens = "", []
        else:
            following = i
    previous = 0
    for j in range(1, len(alignment)):
        prev, nxt = alignment[previous], alignment[j]
        if not prev.word.endswith(" ") and nxt.word in appended:
            prev.word, prev.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            nxt.word, nxt.tokens = "", []
        else:
            previous = j


def _cut_long_words_at_sentence_ends(alignment: List[WordTiming], max_duration: float) -> None:
    """A sentence-final mark (or the word after one) that the path stretched over a pause is cut back."""
    for i in range(1, len(alignment)):
        if alignment[i].end - alignment[i].start > max_duration:
            if alignment[i].word in SENTENCE_END_MARKS:
                alignment[i].end = alignment[i].start + max_duration
            elif alignment[i - 1].word in SENTENCE_END_MARKS:
                alignment[i].start = alignment[i].end - max_duration


def _fit_segment_and_words(segment: dict, words: List[dict], median_duration: float, max_duration: float,
                           last_speech_timestamp: float) -> None:
    """Reconcile a segment's own timestamps with its words' (Whisper's rules): a first word after a
    pause is not stretched over the pause; a first or last word far past the segment's timestamp
    takes the timestamp; otherwise the segment takes its words' start and end."""
    first = words[0]
    if first["end"] - last_speech_timestamp > median_duration * 4 and (
        first["end"] - first["start"] > max_duration
        or (len(words) > 1 and words[1]["end"] - first["start"] > max_duration * 2)
    ):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0, first["end"] - max_duration)
    if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
        first["start"] = max(0, min(first["end"] - median_duration, segment["start"]))
    else:
        segment["start"] = first["start"]
    last = words[-1]
    if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
        last["end"] = max(last["start"] + median_duration, segment["end"])
    else:
        segment["end"] = last["end"]


def add_word_timestamps(*, segments: List[dict], model, tokenizer: Tokenizer, audio_features, num_frames: int,
                        time_offset: float, prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS, last_speech_timestamp: float = 0.0,
                        heads: Optional[Sequence] = None, render=None) -> None:
    """Set segment["words"] = [{"word", "start", "end", "probability"}] for the segments of one window,
    aligned together in one decoder pass; segment start/end follow the words as in openai-whisper.

    render: how the transcript's text is styled (case, punctuation), applied to each word too."""
    if not segments:
        return
    per_segment = [[t for t in s["tokens"] if t < tokenizer.eot] for s in segments]
    text_tokens = [t for tokens in per_segment for t in tokens]
    alignment = find_alignment(model, tokenizer, text_tokens, audio_features, num_frames, heads=heads)
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median_duration = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    max_duration = median_duration * 2
    if len(durations):
        _cut_long_words_at_sentence_ends(alignment, max_duration)
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    index = 0
    for segment, tokens in zip(segments, per_segment):
        consumed = 0
        words = []
        while index < len(alignment) and consumed < len(tokens):
            timing = alignment[index]
            text = _rendered(timing.word, render) if render else timing.word
            if text:
                words.append(dict(word=text, start=round(time_offset + timing.start, 2),
                                  end=round(time_offset + timing.end, 2), probability=timing.probability))
            consumed += len(timing.tokens)
            index += 1
        if words:
            _fit_segment_and_words(segment, words, median_duration, max_duration, last_speech_timestamp)
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def _rendered(word: str, render) -> str:
    """A word in the transcript's style, keeping its leading space (which the style may strip)."""
    body = render(word.lstrip())
    return word[: len(word) - len(word.lstrip())] + body if body.strip() else ""


def last_word_end(segments: List[dict]) -> Optional[float]:
    return next((w["end"] for s in reversed(segments) for w in reversed(s.get("words") or [])), None)
