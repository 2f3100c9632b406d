"""Transcribe audio of any length: slide a 30-second window, decode it with temperature fallback,
cut segments at predicted timestamps, and condition each window on the text before it.

The model is either engine's Whisper behind inference/decoding_model.py (numpy in and out).
CLI: `python -m mlx_whisper_lora.transcribe`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..text.case_style import render as render_case
from ..data.audio import (
    FRAMES_PER_SECOND,
    N_FRAMES,
    N_SAMPLES,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
)
from ..data.long_audio import open_long_audio
from . import timing
from .decoding import DecodingOptions, DecodingResult, decode, detect_language
from .decoding_model import require_decoding_model
from ..errors import UserError
from ..text.languages import language_code
from ..text.tokenizer import get_tokenizer

if TYPE_CHECKING:
    from .decoding_model import DecodingModel as Whisper

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class FallbackRules:
    """When a window's decoding is rejected and retried at the next temperature."""

    temperatures: Tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: Optional[float] = 2.4
    logprob_threshold: Optional[float] = -1.0
    no_speech_threshold: Optional[float] = 0.6

    def is_silence(self, r: DecodingResult) -> bool:
        return (self.no_speech_threshold is not None and r.no_speech_prob > self.no_speech_threshold
                and (self.logprob_threshold is None or r.avg_logprob < self.logprob_threshold))

    def too_repetitive(self, r: DecodingResult) -> bool:
        return self.compression_ratio_threshold is not None and r.compression_ratio > self.compression_ratio_threshold

    def acceptable(self, r: DecodingResult) -> bool:
        too_unlikely = self.logprob_threshold is not None and r.avg_logprob < self.logprob_threshold
        return self.is_silence(r) or not (self.too_repetitive(r) or too_unlikely)


def _options_at(options: DecodingOptions, t: float) -> DecodingOptions:
    if t > 0:
        return replace(options, temperature=t, beam_size=None, patience=None)
    return replace(options, temperature=t, best_of=None)


def decode_with_fallback(
    model: Whisper,
    audio_features: np.ndarray,
    options: DecodingOptions,
    rules: FallbackRules = FallbackRules(),
    first: Optional[DecodingResult] = None,
) -> DecodingResult:
    """Decode at the first temperature, and retry hotter while the output looks like a loop
    (high compression ratio) or is unlikely (low average log-prob) — unless it is silence.

    audio_features: (1, n_audio_ctx, n_state). `first`: a result already decoded at the first
    temperature (from a batch), so only the retries run here.
    """
    attempts = []
    for i, t in enumerate(rules.temperatures):
        result = first if (i == 0 and first is not None) else decode(
            model, None, _options_at(options, t), audio_features=audio_features)[0]
        if rules.acceptable(result):
            return result
        attempts.append(result)
    # Every temperature failed: keep the likeliest attempt that is not a loop (as faster-whisper
    # does) rather than the hottest one.
    pool = [r for r in attempts if not rules.too_repetitive(r)] or attempts
    return max(pool, key=lambda r: r.avg_logprob)


def _parse_clip_timestamps(clip: Union[str, Sequence[float]], total_frames: int) -> List[Tuple[int, int]]:
    if isinstance(clip, str):
        try:
            values = [float(x) for x in clip.split(",") if x.strip()] if clip.strip() else [0.0]
        except ValueError:
            raise UserError(f"--clip-timestamps {clip!r}: expected comma-separated seconds like '0,30,60'") from None
    else:
        values = list(clip) or [0.0]
    if len(values) % 2 == 1:
        values.append(total_frames / FRAMES_PER_SECOND)
    frames = [round(v * FRAMES_PER_SECOND) for v in values]
    pairs = [(min(s, total_frames), min(e, total_frames)) for s, e in zip(frames[::2], frames[1::2])]
    return [(s, e) for s, e in pairs if e > s]


def _segments_from_tokens(tokens: List[int], tokenizer, time_offset: float, window_frames: int, precision: float):
    """Split one window's tokens at timestamp pairs; return (segments, frames consumed, whether the
    window ends on a single timestamp: no speech after it). Empty or instantaneous segments are kept
    here (their tokens take part in word alignment) and dropped once the window is done."""
    tb = tokenizer.timestamp_begin
    is_ts = [t >= tb for t in tokens]
    single_ending = len(is_ts) >= 2 and is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    segments = []
    input_stride = round(precision * FRAMES_PER_SECOND)  # mel frames per timestamp step (2)

    window_end = time_offset + window_frames / FRAMES_PER_SECOND

    def add(start, end, toks):
        end = min(end, window_end)  # timestamps past the audio's end are hallucinated (README: "Departures")
        segments.append({"start": round(start, 3), "end": round(end, 3), "text": tokenizer.decode(toks), "tokens": toks})

    if consecutive:
        slices = consecutive + ([len(tokens)] if single_ending else [])
        last = 0
        for cur in slices:
            part = tokens[last:cur]
            add(time_offset + (part[0] - tb) * precision, time_offset + (part[-1] - tb) * precision, part)
            last = cur
        if single_ending:
            consumed = window_frames
        else:
            consumed = (tokens[last - 1] - tb) * input_stride
    else:
        duration = window_frames / FRAMES_PER_SECOND
        stamps = [t for t in tokens if t >= tb]
        if stamps and stamps[-1] != tb:
            duration = (stamps[-1] - tb) * precision
        add(time_offset, time_offset + duration, tokens)
        consumed = window_frames
    return segments, consumed, single_ending


@dataclass(frozen=True)
class WordOptions:
    """Word timestamps and the options that build on them (openai-whisper's names and defaults)."""

    word_timestamps: bool = False
    prepend_punctuations: str = timing.PREPEND_PUNCTUATIONS
    append_punctuations: str = timing.APPEND_PUNCTUATIONS
    hallucination_silence_threshold: Optional[float] = None  # seconds; needs word timestamps


_PUNCTUATION = timing.PREPEND_PUNCTUATIONS + timing.APPEND_PUNCTUATIONS


def _word_anomaly(word: dict) -> float:
    """How unlike real speech a word looks: improbable, or far too short or long."""
    duration = word["end"] - word["start"]
    score = 1.0 if word.get("probability", 0.0) < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_anomaly(segment: Optional[dict]) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in _PUNCTUATION][:8]
    score = sum(_word_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_with_words(segments: List[dict]) -> Optional[dict]:
    return next((s for s in segments if s["words"]), None)


class _FileTranscription:
    """The sliding-window state of one audio file: where the next window starts, the segments so
    far, and the tokens that condition the next window."""

    def __init__(self, model: Whisper, mel: np.ndarray, options: DecodingOptions, tokenizer, clips,
                 initial_prompt: Optional[str], rules: FallbackRules, condition_on_previous_text: bool,
                 verbose: Optional[bool], words: WordOptions = WordOptions(), carry_initial_prompt: bool = False,
                 hotwords: Optional[str] = None):
        self.model, self.mel, self.options, self.tokenizer = model, mel, options, tokenizer
        self.rules, self.condition, self.verbose = rules, condition_on_previous_text, verbose
        self.words, self.carry_initial_prompt = words, carry_initial_prompt
        self.clips = list(clips)
        self.clip_index = 0
        self.seek = self.clips[0][0] if self.clips else 0
        self.content_frames = mel.shape[0] - N_FRAMES
        self.precision = 30.0 / model.dims.n_audio_ctx  # seconds per timestamp token (0.02)
        self.initial_prompt_tokens: List[int] = tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt else []
        self.tokens: List[int] = list(self.initial_prompt_tokens)
        room = model.dims.n_text_ctx // 2 - 1
        self.hotword_tokens: List[int] = tokenizer.encode(" " + hotwords.strip())[: room] if hotwords else []
        self.prompt_reset_since = 0
        self.last_speech_timestamp = 0.0
        self.segments: List[dict] = []

    @property
    def done(self) -> bool:
        while self.clip_index < len(self.clips) and self.seek >= self.clips[self.clip_index][1]:
            self.clip_index += 1
            if self.clip_index < len(self.clips):
                self.seek = max(self.seek, self.clips[self.clip_index][0])
        return self.clip_index >= len(self.clips)

    def window(self) -> Tuple[np.ndarray, int]:
        frames = min(N_FRAMES, self.clips[self.clip_index][1] - self.seek)
        return pad_or_trim(self.mel[self.seek : self.seek + frames], N_FRAMES, axis=0), frames

    def window_options(self) -> DecodingOptions:
        """The window's prompt: the hotwords (faster-whisper's meaning) and, with carry_initial_prompt, the
        initial prompt at its head, then the text decoded before, cut to fit half the decoder context."""
        head = list(self.hotword_tokens)
        if self.carry_initial_prompt:  # the initial prompt stays at the head of every window's prompt
            head += self.initial_prompt_tokens
            recent = self.tokens[max(len(self.initial_prompt_tokens), self.prompt_reset_since) :]
        else:
            recent = self.tokens[self.prompt_reset_since :]
        if head:
            room = self.model.dims.n_text_ctx // 2 - 1 - len(head)
            prompt = head + (recent[-room:] if room > 0 else [])
        else:
            prompt = recent
        return replace(self.options, prompt=prompt or None)

    def accept(self, result: DecodingResult, window_frames: int, audio_features) -> int:
        """Add the window's segments (and their words, aligned on the window's audio features) and
        move on; returns the frames advanced."""
        previous = self.seek
        if self.rules.is_silence(result):
            self.seek += window_frames
            return window_frames
        time_offset = self.seek / FRAMES_PER_SECOND
        segments, consumed, single_ending = _segments_from_tokens(
            result.tokens, self.tokenizer, time_offset, window_frames, self.precision)
        self.seek += consumed if consumed > 0 else window_frames
        for s in segments:
            s["text"] = self.render(s["text"])
        if self.words.word_timestamps:
            timing.add_word_timestamps(
                segments=segments, model=self.model, tokenizer=self.tokenizer, audio_features=audio_features,
                num_frames=window_frames, time_offset=time_offset,
                prepend_punctuations=self.words.prepend_punctuations,
                append_punctuations=self.words.append_punctuations,
                last_speech_timestamp=self.last_speech_timestamp, render=self.render)
            end = timing.last_word_end(segments)
            if not single_ending and end is not None and end > time_offset:
                self.seek = round(end * FRAMES_PER_SECOND)
            if self.words.hallucination_silence_threshold is not None:
                if self._skip_hallucinations(segments, previous, window_frames, time_offset, single_ending):
                    return self._advanced(previous, window_frames)
            end = timing.last_word_end(segments)
            if end is not None:
                self.last_speech_timestamp = end
        for s in segments:
            if s["start"] == s["end"] or not s["text"].strip():
                continue  # openai-whisper keeps these with empty text; they carry nothing
            s.update(id=len(self.segments), seek=previous, temperature=result.temperature,
                     avg_logprob=result.avg_logprob, compression_ratio=result.compression_ratio,
                     no_speech_prob=result.no_speech_prob)
            self.segments.append(s)
            self.tokens.extend(s["tokens"])
            if self.verbose:
                print(f"[{clock(s['start'])} --> {clock(s['end'])}] {s['text'].strip()}")
        if not self.condition or result.temperature > 0.5:
            self.prompt_reset_since = len(self.tokens)  # a hot fallback: do not feed it forward
        return self._advanced(previous, window_frames)

    def _advanced(self, previous: int, window_frames: int) -> int:
        if self.seek <= previous:  # never stall on a window (a word ending at its very start)
            self.seek = previous + window_frames
        return self.seek - previous

    def _skip_hallucinations(self, segments: List[dict], previous: int, window_frames: int, time_offset: float,
                             single_ending: bool) -> bool:
        """openai-whisper's --hallucination-silence-threshold: after a long silence, words that look
        like a hallucination (improbable, too short or long) are dropped and decoding resumes after
        the silence. Returns True when the whole window is dropped."""
        threshold = self.words.hallucination_silence_threshold
        window_end_time = (previous + N_FRAMES) / FRAMES_PER_SECOND
        window_duration = window_frames / FRAMES_PER_SECOND
        if not single_ending:
            end = timing.last_word_end(segments)
            if end is not None and end > time_offset:
                remaining = window_end_time - end
                self.seek = round(end * FRAMES_PER_SECOND) if remaining > threshold else previous + window_frames
        first = _next_with_words(segments)
        if first is not None and _is_anomaly(first):
            gap = first["start"] - time_offset
            if gap > threshold:  # a possible hallucination after leading silence: skip the silence
                self.seek = previous + round(gap * FRAMES_PER_SECOND)
                return True
        last_end = self.last_speech_timestamp
        for i, segment in enumerate(segments):
            if not segment["words"]:
                continue
            if _is_anomaly(segment):
                following = _next_with_words(segments[i + 1 :])
                next_start = following["words"][0]["start"] if following else time_offset + window_duration
                silence_before = (segment["start"] - last_end > threshold or segment["start"] < threshold
                                  or segment["start"] - time_offset < 2.0)
                silence_after = (next_start - segment["end"] > threshold or _is_anomaly(following)
                                 or window_end_time - segment["end"] < 2.0)
                if silence_before and silence_after:
                    self.seek = round(max(time_offset + 1, segment["start"]) * FRAMES_PER_SECOND)
                    if self.content_frames / FRAMES_PER_SECOND - segment["end"] < threshold:
                        self.seek = self.content_frames
                    del segments[i:]
                    break
            last_end = segment["end"]
        return False

    def result(self) -> dict:
        keys = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob") + (("words",) if self.words.word_timestamps else ())
        text = self.render(self.tokenizer.decode([t for s in self.segments for t in s["tokens"]]))
        segments = [{k: s[k] for k in keys} for s in self.segments]
        return {"text": text, "segments": segments, "language": self.options.language}

    def render(self, text: str) -> str:
        """Text in the model's style (adapters trained on all-caps or unpunctuated data, text/case_style.py),
        the same on screen, in the files and in the returned result."""
        return render_case(text, self.model.case_style, self.model.punctuation)


def _check_language_and_task(model: Whisper, language: Optional[str], task: str) -> Optional[str]:
    if language:
        try:
            language = language_code(language)
        except ValueError as e:
            raise UserError(str(e)) from None
    if not model.is_multilingual:
        if language not in (None, "en"):
            raise UserError(f"this model is English-only; it cannot transcribe language {language!r}")
        if task == "translate":
            raise UserError("this model is English-only; --task translate needs a multilingual model")
        language = "en"
    return language


def _padded_mel(model: Whisper, audio):
    """Log-mel of the whole audio followed by a 30 s window of silence (so every window is full).
    A long file is read into a temporary file and its log-mel computed window by window
    (data/long_audio.py), so memory does not grow with its length."""
    if isinstance(audio, (str, Path)):
        windowed = open_long_audio(audio, model.dims.n_mels, padding=N_SAMPLES)
        if windowed is not None:
            return windowed
        audio = load_audio(audio)
    return log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)


def _release(mel) -> None:
    """Close a windowed log-mel's temporary file (an array has nothing to close)."""
    close = getattr(mel, "close", None)
    if close is not None:
        close()


@dataclass
class _Settings:
    """Everything about a transcription call that is the same for every file of it."""

    rules: FallbackRules
    language: Optional[str]
    task: str
    decode_options: dict
    words: WordOptions
    initial_prompt: Optional[str]
    carry_initial_prompt: bool
    condition_on_previous_text: bool
    verbose: Optional[bool]
    hotwords: Optional[str] = None


def _prepare(model, mel, settings: _Settings, clip_timestamps="0", first_features=None):
    """Build the file's state; detect the language on its first window when none is given.

    Returns (state, features of the first window or None)."""
    clips = _parse_clip_timestamps(clip_timestamps, mel.shape[0] - N_FRAMES)
    folder = model.folder
    language = settings.language
    if language is None and clips:
        if first_features is None:
            start, end = clips[0]
            first_features = model.encode_audio(pad_or_trim(mel[start : start + min(N_FRAMES, end - start)], N_FRAMES, axis=0)[None])
        language = detect_language(model, first_features, get_tokenizer(True, model.num_languages, model_dir=folder))[0][0]
        if settings.verbose:
            print(f"Detected language: {language}")
    language = language or "en"
    tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, language=language, task=settings.task,
                              model_dir=folder)
    options = DecodingOptions(language=language, task=settings.task, **settings.decode_options)
    state = _FileTranscription(model, mel, options, tokenizer, clips, settings.initial_prompt, settings.rules,
                               settings.condition_on_previous_text, settings.verbose, settings.words,
                               settings.carry_initial_prompt, settings.hotwords)
    return state, first_features


_DECODING_FIELDS = {f.name for f in fields(DecodingOptions)}


def transcription_settings(
    model: Whisper,
    *,
    verbose: Optional[bool] = None,
    temperature: Union[float, Sequence[float]] = DEFAULT_TEMPERATURES,
    compression_ratio_threshold: Optional[float] = 2.4,
    logprob_threshold: Optional[float] = -1.0,
    no_speech_threshold: Optional[float] = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: Optional[str] = None,
    carry_initial_prompt: bool = False,
    word_timestamps: bool = False,
    prepend_punctuations: str = timing.PREPEND_PUNCTUATIONS,
    append_punctuations: str = timing.APPEND_PUNCTUATIONS,
    hallucination_silence_threshold: Optional[float] = None,
    **decode_options,
) -> _Settings:
    """Check a transcription call's options and bundle them: the keyword arguments of `transcribe` and
    `transcribe_many`, with openai-whisper's (and mlx-whisper's) names and defaults; the rest are
    DecodingOptions fields (language, task, beam_size, best_of, patience, ...) and faster-whisper's hotwords."""
    words = WordOptions(word_timestamps, prepend_punctuations, append_punctuations, hallucination_silence_threshold)
    if model is None or isinstance(model, (str, Path)):
        raise TypeError("inference.transcriber takes a loaded model; mlx_whisper_lora.transcribe.transcribe "
                        "also takes a name or path")
    decode_options = dict(decode_options)
    fp16 = decode_options.pop("fp16", None)
    # faster-whisper's hotwords: words put in every window's prompt (none when a prefix is given, as there)
    hotwords = decode_options.pop("hotwords", None)
    if hotwords is not None and not isinstance(hotwords, str):
        raise UserError(f"hotwords must be text (words or phrases the decoder should expect), got {hotwords!r}")
    if decode_options.get("prefix"):
        hotwords = None
    if fp16 and getattr(model, "dtype", None) is not None and "float32" in str(model.dtype) and verbose:
        # openai-whisper on a CPU does the same: it warns and computes in float32.
        print("note: fp16=True: this model was loaded in float32 and runs so; load it with "
              "dtype float16 (--dtype float16) for half precision", file=sys.stderr)
    unknown = sorted(set(decode_options) - _DECODING_FIELDS - {"task", "language"})
    if unknown:
        raise UserError(f"transcribe() got an unknown option {unknown[0]!r}; options are openai-whisper's: "
                        f"{', '.join(sorted(_DECODING_FIELDS | {'fp16', 'word_timestamps'}))}, ...")
    if words.hallucination_silence_threshold is not None and not words.word_timestamps:
        raise UserError("hallucination_silence_threshold needs word timestamps: pass word_timestamps=True "
                        "(--word-timestamps True)")
    if carry_initial_prompt and not initial_prompt:
        raise UserError("carry_initial_prompt=True needs an initial_prompt to carry (--initial-prompt TEXT)")
    temperatures = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
    rules = FallbackRules(temperatures, compression_ratio_threshold, logprob_threshold, no_speech_threshold)
    task = decode_options.pop("task", "transcribe")
    if words.word_timestamps and task == "translate" and verbose is not False:
        print("warning: word-level timestamps on translations may not be reliable", file=sys.stderr)
    language = _check_language_and_task(model, decode_options.pop("language", None), task)
    decode_options.setdefault("best_of", 5)
    return _Settings(rules, language, task, decode_options, words, initial_prompt, carry_initial_prompt,
                     condition_on_previous_text, verbose, (hotwords or "").strip() or None)


def transcribe(
    audio: Union[str, Path, np.ndarray],
    model: Whisper,
    *,
    clip_timestamps: Union[str, Sequence[float]] = "0",
    progress: Optional[bool] = None,
    on_segments: Optional[Callable[[List[dict]], None]] = None,
    **options,
) -> dict:
    """Transcribe (or translate) audio of any length; returns {"text", "segments", "language"}, and
    per segment "words" [{"word", "start", "end", "probability"}] with word_timestamps=True.
    `on_segments(segments)`, when given, is called with each window's new segments as soon as they are
    decoded (they are final then): the server streams them to its client.

    The keyword arguments are openai-whisper's (and mlx-whisper's), with its defaults: `clip_timestamps`
    here, the rest (verbose, temperature, word_timestamps, initial_prompt, ..., and DecodingOptions fields
    such as language, task, beam_size) as `transcription_settings` lists them, shared with `transcribe_many`.
    `model` is a loaded Whisper (`mlx_whisper_lora.transcribe.transcribe` also takes a name).
    """
    model = require_decoding_model(model)
    settings = transcription_settings(model, **options)
    verbose = settings.verbose
    state, feats = _prepare(model, _padded_mel(model, audio), settings, clip_timestamps)
    total = state.mel.shape[0] - N_FRAMES
    show = progress if progress is not None else (verbose is not False and total > N_FRAMES)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frames", file=sys.stderr)
    try:
        while not state.done:
            window, frames = state.window()
            if feats is None:
                feats = model.encode_audio(window[None])
            result = decode_with_fallback(model, feats, state.window_options(), settings.rules)
            known = len(state.segments)
            advanced = state.accept(result, frames, feats)
            if on_segments is not None and len(state.segments) > known:
                on_segments(state.result()["segments"][known:])
            feats = None
            if bar:
                bar.update(max(0, min(advanced, total - bar.n)))
    finally:
        if bar:
            bar.close()
        _release(state.mel)
    return state.result()


def transcribe_many(
    audios: Sequence[Union[str, Path, np.ndarray]],
    model: Whisper,
    *,
    batch_size: int = 8,
    progress: Optional[bool] = None,
    select_rows: Optional[Callable[[List[int]], None]] = None,
    unit: str = "file",
    **options,
) -> List[dict]:
    """Transcribe several files, decoding their first windows `batch_size` at a time (`options`: as for
    `transcribe`, less clip_timestamps).

    Gives the same results as `transcribe` on each file: the first window of every file is
    decoded in a batch at the first temperature (one encoder and decoder pass for the batch); the later
    windows of long files are batched in lockstep where their decoding options agree (always without
    conditioning on previous text), else decoded one at a time, as are fallbacks.
    `select_rows(indices)`, when given, is called before each model computation with the indices
    (into `audios`) of the files it covers, in batch order: the server's adapter bank uses it to apply
    each file's own adapter (adapter_bank/bank.py).
    """
    model = require_decoding_model(model)
    select = select_rows or (lambda indices: None)
    settings = transcription_settings(model, **options)
    verbose = settings.verbose
    rules = settings.rules
    results: List[Optional[dict]] = [None] * len(audios)
    bar = None
    if progress or (progress is None and verbose is not False and len(audios) > 1):
        from tqdm import tqdm

        bar = tqdm(total=len(audios), unit=unit, file=sys.stderr)
    try:
        for start in range(0, len(audios), batch_size):
            chunk = list(range(start, min(start + batch_size, len(audios))))
            mels = [_padded_mel(model, audios[i]) for i in chunk]
            # One encoder pass for the first window of every file in the batch.
            firsts = [pad_or_trim(m[: min(N_FRAMES, m.shape[0] - N_FRAMES)], N_FRAMES, axis=0) for m in mels]
            select(chunk)
            feats = model.encode_audio(np.stack(firsts))
            states = []
            for j, m in enumerate(mels):
                select([chunk[j]])
                states.append(_prepare(model, m, settings, "0", feats[j : j + 1])[0])
            batchable = [j for j, s in enumerate(states) if not s.done]
            first_results = {}
            for lang in sorted({states[j].options.language for j in batchable}):
                rows = [j for j in batchable if states[j].options.language == lang]
                opts = _options_at(states[rows[0]].window_options(), rules.temperatures[0])
                select([chunk[j] for j in rows])
                decoded = decode(model, None, opts, audio_features=feats[np.array(rows)])
                first_results.update(zip(rows, decoded))
            _later_windows(model, states, chunk, feats, first_results, rules, select)
            for j, state in enumerate(states):
                results[chunk[j]] = state.result()
                _release(state.mel)
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    return results  # type: ignore[return-value]


def _later_windows(model, states, files, feats, first_results, rules, select) -> None:
    """Finish every file of a batch, window by window in lockstep: each round decodes the current
    window of every unfinished file, batching the files whose windows have the same decoding options
    (same language and prompt: always so without conditioning on previous text, as `--vad` runs),
    then checks each for fallback on its own. A file's windows stay in order; the results are those
    of `transcribe` file by file."""
    features = {j: feats[j : j + 1] for j in range(len(states))}
    decoded = dict(first_results)
    while True:
        live = [j for j, state in enumerate(states) if not state.done]
        if not live:
            return
        windows = {j: states[j].window() for j in live}
        missing = [j for j in live if j not in features]
        if missing:
            select([files[j] for j in missing])
            embedded = model.encode_audio(np.stack([windows[j][0] for j in missing]))
            features.update({j: embedded[k : k + 1] for k, j in enumerate(missing)})
        groups: List[Tuple[DecodingOptions, List[int]]] = []
        for j in (j for j in live if decoded.get(j) is None):
            options = states[j].window_options()
            group = next((g for g in groups if g[0] == options), None)
            group[1].append(j) if group else groups.append((options, [j]))
        for options, rows in groups:
            if len(rows) > 1:  # a lone row is decoded by decode_with_fallback itself
                select([files[j] for j in rows])
                batch = np.concatenate([features[j] for j in rows])
                decoded.update(zip(rows, decode(model, None, _options_at(options, rules.temperatures[0]),
                                                audio_features=batch)))
        for j in live:
            select([files[j]])
            result = decode_with_fallback(model, features[j], states[j].window_options(), rules, first=decoded.pop(j, None))
            states[j].accept(result, windows[j][1], features.pop(j))


def clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:06.3f}"
