"""Transcribe audio of any length: slide a 30-second window, decode it with temperature fallback,
cut segments at predicted timestamps, and condition each window on the text before it.

The model is the MLX Whisper, or the torch one behind the same interface
(backend_torch/decoding.py: TorchDecodingModel). CLI: `python -m mlx_whisper_lora.transcribe`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import mlx.core as mx
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
from .decoding import DecodingOptions, DecodingResult, decode, detect_language
from ..errors import UserError
from ..text.languages import language_code
from ..text.tokenizer import get_tokenizer

if TYPE_CHECKING:  # annotations only: decoding drives any model with this interface (the torch one too)
    from ..backend_mlx.model import Whisper

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
    audio_features: mx.array,
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
    """Split one window's tokens at timestamp pairs; return (segments, frames consumed)."""
    tb = tokenizer.timestamp_begin
    is_ts = [t >= tb for t in tokens]
    single_ending = len(is_ts) >= 2 and is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    segments = []
    input_stride = round(precision * FRAMES_PER_SECOND)  # mel frames per timestamp step (2)

    window_end = time_offset + window_frames / FRAMES_PER_SECOND

    def add(start, end, toks):
        text = tokenizer.decode(toks)
        end = min(end, window_end)  # timestamps past the audio's end are hallucinated
        if end > start and text.strip():
            segments.append({"start": round(start, 3), "end": round(end, 3), "text": text, "tokens": toks})

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
    return segments, consumed


class _FileTranscription:
    """The sliding-window state of one audio file: where the next window starts, the segments so
    far, and the tokens that condition the next window."""

    def __init__(self, model: Whisper, mel: mx.array, options: DecodingOptions, tokenizer, clips,
                 initial_prompt: Optional[str], rules: FallbackRules, condition_on_previous_text: bool,
                 verbose: Optional[bool]):
        self.model, self.mel, self.options, self.tokenizer = model, mel, options, tokenizer
        self.rules, self.condition, self.verbose = rules, condition_on_previous_text, verbose
        self.clips = list(clips)
        self.clip_index = 0
        self.seek = self.clips[0][0] if self.clips else 0
        self.precision = 30.0 / model.dims.n_audio_ctx  # seconds per timestamp token (0.02)
        self.tokens: List[int] = tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt else []
        self.prompt_reset_since = 0
        self.segments: List[dict] = []

    @property
    def done(self) -> bool:
        while self.clip_index < len(self.clips) and self.seek >= self.clips[self.clip_index][1]:
            self.clip_index += 1
            if self.clip_index < len(self.clips):
                self.seek = max(self.seek, self.clips[self.clip_index][0])
        return self.clip_index >= len(self.clips)

    def window(self) -> Tuple[mx.array, int]:
        frames = min(N_FRAMES, self.clips[self.clip_index][1] - self.seek)
        return pad_or_trim(self.mel[self.seek : self.seek + frames], N_FRAMES, axis=0), frames

    def window_options(self) -> DecodingOptions:
        prompt = self.tokens[self.prompt_reset_since :]
        return replace(self.options, prompt=prompt or None)

    def accept(self, result: DecodingResult, window_frames: int) -> int:
        """Add the window's segments and move on; returns the frames advanced."""
        previous = self.seek
        if self.rules.is_silence(result):
            self.seek += window_frames
            return window_frames
        time_offset = self.seek / FRAMES_PER_SECOND
        segments, consumed = _segments_from_tokens(result.tokens, self.tokenizer, time_offset, window_frames, self.precision)
        self.seek += consumed if consumed > 0 else window_frames
        for s in segments:
            s.update(id=len(self.segments), seek=previous, temperature=result.temperature,
                     avg_logprob=result.avg_logprob, compression_ratio=result.compression_ratio,
                     no_speech_prob=result.no_speech_prob, text=self.render(s["text"]))
            self.segments.append(s)
            self.tokens.extend(s["tokens"])
            if self.verbose:
                print(f"[{_clock(s['start'])} --> {_clock(s['end'])}] {s['text'].strip()}")
        if not self.condition or result.temperature > 0.5:
            self.prompt_reset_since = len(self.tokens)  # a hot fallback: do not feed it forward
        return self.seek - previous

    def result(self) -> dict:
        keys = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob")
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


def _padded_mel(model: Whisper, audio) -> mx.array:
    """Log-mel of the whole audio followed by a 30 s window of silence (so every window is full)."""
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    return log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)


def _prepare(model, mel, language, task, verbose, clip_timestamps, initial_prompt, rules,
             condition_on_previous_text, decode_options, first_features=None):
    """Build the file's state; detect the language on its first window when none is given.

    Returns (state, features of the first window or None)."""
    clips = _parse_clip_timestamps(clip_timestamps, mel.shape[0] - N_FRAMES)
    folder = model.folder
    if language is None and clips:
        if first_features is None:
            start, end = clips[0]
            first_features = model.embed_audio(pad_or_trim(mel[start : start + min(N_FRAMES, end - start)], N_FRAMES, axis=0)[None])
        language = detect_language(model, first_features, get_tokenizer(True, model.num_languages, model_dir=folder))[0][0]
        if verbose:
            print(f"Detected language: {language}")
    language = language or "en"
    tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, language=language, task=task, model_dir=folder)
    options = DecodingOptions(language=language, task=task, **decode_options)
    state = _FileTranscription(model, mel, options, tokenizer, clips, initial_prompt, rules,
                               condition_on_previous_text, verbose)
    return state, first_features


def _setup(model, temperature, compression_ratio_threshold, logprob_threshold, no_speech_threshold,
           word_timestamps, decode_options: dict):
    """Build the fallback rules, and take language and task out of decode_options (validated
    against the model). Returns (model, rules, language, task)."""
    if word_timestamps:
        raise UserError("word timestamps are not implemented yet; run without --word-timestamps")
    if model is None or isinstance(model, (str, Path)):
        raise TypeError("inference.transcriber takes a loaded model; mlx_whisper_lora.transcribe.transcribe "
                        "also takes a name or path")
    temperatures = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
    rules = FallbackRules(temperatures, compression_ratio_threshold, logprob_threshold, no_speech_threshold)
    task = decode_options.pop("task", "transcribe")
    language = _check_language_and_task(model, decode_options.pop("language", None), task)
    decode_options.setdefault("best_of", 5)
    return model, rules, language, task


def transcribe(
    audio: Union[str, Path, np.ndarray, mx.array],
    model: Whisper,
    *,
    verbose: Optional[bool] = None,
    temperature: Union[float, Sequence[float]] = DEFAULT_TEMPERATURES,
    compression_ratio_threshold: Optional[float] = 2.4,
    logprob_threshold: Optional[float] = -1.0,
    no_speech_threshold: Optional[float] = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: Optional[str] = None,
    clip_timestamps: Union[str, Sequence[float]] = "0",
    word_timestamps: bool = False,
    progress: Optional[bool] = None,
    **decode_options,
) -> dict:
    """Transcribe (or translate) audio of any length; returns {"text", "segments", "language"}.

    `model` is a loaded Whisper (`mlx_whisper_lora.transcribe.transcribe` also takes a name). Extra keyword arguments are
    DecodingOptions fields (language, task, beam_size, best_of, patience, ...).
    """
    model, rules, language, task = _setup(model, temperature, compression_ratio_threshold, logprob_threshold,
                                          no_speech_threshold, word_timestamps, decode_options)
    state, feats = _prepare(model, _padded_mel(model, audio), language, task, verbose, clip_timestamps, initial_prompt,
                            rules, condition_on_previous_text, decode_options)
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
                feats = model.embed_audio(window[None])
            result = decode_with_fallback(model, feats, state.window_options(), rules)
            feats = None
            advanced = state.accept(result, frames)
            if bar:
                bar.update(min(advanced, total - bar.n))
    finally:
        if bar:
            bar.close()
    return state.result()


def transcribe_many(
    audios: Sequence[Union[str, Path, np.ndarray]],
    model: Whisper,
    *,
    batch_size: int = 8,
    verbose: Optional[bool] = None,
    temperature: Union[float, Sequence[float]] = DEFAULT_TEMPERATURES,
    compression_ratio_threshold: Optional[float] = 2.4,
    logprob_threshold: Optional[float] = -1.0,
    no_speech_threshold: Optional[float] = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: Optional[str] = None,
    progress: Optional[bool] = None,
    **decode_options,
) -> List[dict]:
    """Transcribe several files, decoding their first windows `batch_size` at a time.

    Gives the same results as `transcribe` on each file: the first window of every file is
    decoded in a batch at the first temperature (one encoder and decoder pass for the batch); windows
    that need a fallback, and the later windows of long files, are decoded one at a time.
    """
    model, rules, language, task = _setup(model, temperature, compression_ratio_threshold, logprob_threshold,
                                          no_speech_threshold, False, decode_options)
    results: List[Optional[dict]] = [None] * len(audios)
    bar = None
    if progress or (progress is None and verbose is not False and len(audios) > 1):
        from tqdm import tqdm

        bar = tqdm(total=len(audios), unit="file", file=sys.stderr)
    try:
        for start in range(0, len(audios), batch_size):
            chunk = list(range(start, min(start + batch_size, len(audios))))
            mels = [_padded_mel(model, audios[i]) for i in chunk]
            # One encoder pass for the first window of every file in the batch.
            firsts = [pad_or_trim(m[: min(N_FRAMES, m.shape[0] - N_FRAMES)], N_FRAMES, axis=0) for m in mels]
            feats = model.embed_audio(mx.stack(firsts))
            states = [
                _prepare(model, m, language, task, verbose, "0", initial_prompt, rules,
                         condition_on_previous_text, dict(decode_options), feats[j : j + 1])[0]
                for j, m in enumerate(mels)
            ]
            batchable = [j for j, s in enumerate(states) if not s.done]
            first_results = {}
            for lang in sorted({states[j].options.language for j in batchable}):
                rows = [j for j in batchable if states[j].options.language == lang]
                opts = _options_at(states[rows[0]].window_options(), rules.temperatures[0])
                decoded = decode(model, None, opts, audio_features=feats[mx.array(rows)])
                first_results.update(zip(rows, decoded))
            for j, state in enumerate(states):
                first = first_results.get(j)
                while not state.done:
                    window, frames = state.window()
                    if first is not None:
                        window_feats = feats[j : j + 1]
                    else:
                        window_feats = model.embed_audio(window[None])
                    result = decode_with_fallback(model, window_feats, state.window_options(), rules, first=first)
                    first = None
                    state.accept(result, frames)
                results[chunk[j]] = state.result()
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    return results  # type: ignore[return-value]


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:06.3f}"
