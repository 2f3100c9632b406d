"""Transcribe audio of any length: slide a 30-second window, decode it with temperature fallback,
cut segments at predicted timestamps, and condition each window on the text before it.

CLI: python -m mlx_whisper_lora.transcribe AUDIO... [--model M] [--adapter-path DIR] ...
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import mlx.core as mx
import numpy as np

from .audio import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
)
from .decoding import DecodingOptions, DecodingResult, decode, detect_language
from .errors import UserError, cli_entry
from .languages import language_code
from .model import Whisper
from .tokenizer import get_tokenizer

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def decode_with_fallback(
    model: Whisper,
    mel_window: mx.array,
    options: DecodingOptions,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    compression_ratio_threshold: Optional[float] = 2.4,
    logprob_threshold: Optional[float] = -1.0,
    no_speech_threshold: Optional[float] = 0.6,
    audio_features: Optional[mx.array] = None,
) -> DecodingResult:
    """Decode at the first temperature, and retry hotter while the output looks like a loop
    (high compression ratio) or is unlikely (low average log-prob) — unless it is silence."""
    if audio_features is None:
        audio_features = model.embed_audio(mel_window[None])
    attempts = []
    for t in temperatures:
        opts = replace(options, temperature=t)
        if t > 0:
            opts = replace(opts, beam_size=None, patience=None)
        else:
            opts = replace(opts, best_of=None)
        result = decode(model, None, opts, audio_features=audio_features)[0]
        too_repetitive = compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold
        too_unlikely = logprob_threshold is not None and result.avg_logprob < logprob_threshold
        silence = no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold and too_unlikely
        if silence or not (too_repetitive or too_unlikely):
            return result
        attempts.append((too_repetitive, result))
    # Every temperature failed: keep the likeliest attempt that is not a loop (as faster-whisper
    # does) rather than the hottest one.
    pool = [r for rep, r in attempts if not rep] or [r for _, r in attempts]
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


def transcribe(
    audio: Union[str, Path, np.ndarray, mx.array],
    model: Union[Whisper, str, None] = None,
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

    `model` is a loaded Whisper or anything `load_model` accepts. Extra keyword arguments are
    DecodingOptions fields (language, task, beam_size, best_of, patience, ...).
    """
    if word_timestamps:
        raise UserError("word timestamps are not implemented yet; run without --word-timestamps")
    if model is None or isinstance(model, (str, Path)):
        from .load import load_model

        model = load_model(model)
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    mel = log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)
    content_frames = mel.shape[0] - N_FRAMES
    temperatures = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)

    language = decode_options.pop("language", None)
    task = decode_options.pop("task", "transcribe")
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
    folder = getattr(model, "folder", None)
    if language is None:
        feats = model.embed_audio(pad_or_trim(mel, N_FRAMES, axis=0)[None])
        tok = get_tokenizer(True, model.num_languages, model_dir=folder)
        language = detect_language(model, feats, tok)[0][0]
        if verbose:
            print(f"Detected language: {language}")
    tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, language=language, task=task, model_dir=folder)
    decode_options.setdefault("best_of", 5)
    options = DecodingOptions(language=language, task=task, **decode_options)

    clips = _parse_clip_timestamps(clip_timestamps, content_frames)
    precision = 30.0 / model.dims.n_audio_ctx  # seconds per timestamp token (0.02)
    all_tokens: List[int] = []
    all_segments: List[dict] = []
    prompt_reset_since = 0
    if initial_prompt:
        all_tokens.extend(tokenizer.encode(" " + initial_prompt.strip()))

    show = progress if progress is not None else (verbose is not False and content_frames > N_FRAMES)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=content_frames, unit="frames", disable=False, file=sys.stderr)
    try:
        for clip_start, clip_end in clips:
            seek = clip_start
            while seek < clip_end:
                window_frames = min(N_FRAMES, clip_end - seek)
                window = pad_or_trim(mel[seek : seek + window_frames], N_FRAMES, axis=0)
                time_offset = seek / FRAMES_PER_SECOND
                prompt = all_tokens[prompt_reset_since:]
                result = decode_with_fallback(
                    model, window, replace(options, prompt=prompt or None), temperatures,
                    compression_ratio_threshold, logprob_threshold, no_speech_threshold,
                )
                previous = seek
                if no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold:
                    if logprob_threshold is None or result.avg_logprob < logprob_threshold:
                        seek += window_frames  # silence: skip the window
                        if bar:
                            bar.update(min(content_frames, seek) - previous)
                        continue
                segments, consumed = _segments_from_tokens(result.tokens, tokenizer, time_offset, window_frames, precision)
                seek += consumed if consumed > 0 else window_frames
                for s in segments:
                    s.update(
                        id=len(all_segments), seek=previous, temperature=result.temperature,
                        avg_logprob=result.avg_logprob, compression_ratio=result.compression_ratio,
                        no_speech_prob=result.no_speech_prob,
                    )
                    all_segments.append(s)
                    all_tokens.extend(s["tokens"])
                    if verbose:
                        print(f"[{_clock(s['start'])} --> {_clock(s['end'])}] {s['text'].strip()}")
                if not condition_on_previous_text or result.temperature > 0.5:
                    prompt_reset_since = len(all_tokens)  # a hot fallback: do not feed it forward
                if bar:
                    bar.update(min(content_frames, seek) - previous)
    finally:
        if bar:
            bar.close()

    ordered = [{k: s[k] for k in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                                  "compression_ratio", "no_speech_prob")} for s in all_segments]
    text = tokenizer.decode([t for s in all_segments for t in s["tokens"]])
    return {"text": text, "segments": ordered, "language": language}


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:06.3f}"


# ---------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from .writers import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m mlx_whisper_lora.transcribe",
        description="Transcribe audio files with Whisper in MLX (optionally with LoRA adapters).",
    )
    p.add_argument("audio", nargs="*", help="audio files (default: the bundled demo clip)")
    p.add_argument("--model", default=None, help="MLX/transformers/CTranslate2 folder, .pt file, hub id or short name (default: tiny.en)")
    p.add_argument("--adapter-path", default=None, help="folder with adapters.safetensors + adapter_config.json")
    p.add_argument("--language", default=None, help="language code or name; default: detect")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.add_argument("--beam-size", type=int, default=None, help="beam search width (default: greedy)")
    p.add_argument("--best-of", type=int, default=5, help="samples per temperature > 0")
    p.add_argument("--patience", type=float, default=None)
    p.add_argument("--length-penalty", type=float, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--temperature-increment-on-fallback", type=float, default=0.2,
                   help="step of the fallback temperatures; 0 or less disables fallback")
    p.add_argument("--compression-ratio-threshold", type=float, default=2.4)
    p.add_argument("--logprob-threshold", type=float, default=-1.0)
    p.add_argument("--no-speech-threshold", type=float, default=0.6)
    p.add_argument("--condition-on-previous-text", type=_str2bool, default=True)
    p.add_argument("--initial-prompt", default=None)
    p.add_argument("--suppress-tokens", default="-1")
    p.add_argument("--clip-timestamps", default="0", help="comma-separated start,end,... seconds to transcribe")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--output-dir", "-o", default=".")
    p.add_argument("--output-format", "-f", default="txt", choices=sorted(FORMATS) + ["all"])
    p.add_argument("--word-timestamps", type=_str2bool, nargs="?", const=True, default=False)
    p.add_argument("--verbose", type=_str2bool, default=True)
    return p


def _str2bool(value: str) -> bool:
    v = str(value).lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


@cli_entry
def main(argv=None):
    from .assets_dir import ASSETS
    from .load import load_model
    from .writers import FORMATS, write_result

    args = build_parser().parse_args(argv)
    if args.word_timestamps:
        raise UserError("--word-timestamps is not implemented yet (word alignment comes in a later release)")
    if args.adapter_path:
        raise UserError("--adapter-path: LoRA adapters are not supported by this version yet")
    audio_paths = args.audio or [str(ASSETS / "demo.flac")]
    for path in audio_paths:  # fail before loading the model when a path is wrong
        if not Path(path).exists():
            raise UserError(f"audio file not found: {path}")
    model = load_model(args.model, dtype=args.dtype)
    if args.temperature_increment_on_fallback > 0:
        temperatures = tuple(np.arange(args.temperature, 1.0 + 1e-6, args.temperature_increment_on_fallback))
    else:
        temperatures = (args.temperature,)
    formats = sorted(FORMATS) if args.output_format == "all" else [args.output_format]
    out_dir = Path(args.output_dir)
    for path in audio_paths:
        result = transcribe(
            path, model, verbose=args.verbose, temperature=temperatures,
            compression_ratio_threshold=args.compression_ratio_threshold,
            logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
            condition_on_previous_text=args.condition_on_previous_text, initial_prompt=args.initial_prompt,
            clip_timestamps=args.clip_timestamps, language=args.language, task=args.task,
            beam_size=args.beam_size, best_of=args.best_of, patience=args.patience,
            length_penalty=args.length_penalty, suppress_tokens=args.suppress_tokens,
        )
        for fmt in formats:
            written = write_result(result, out_dir, Path(path).stem, fmt)
            if args.verbose:
                print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
