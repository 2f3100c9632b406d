"""Transcribe audio files with Whisper (optionally with LoRA adapters), and write the results.

    python -m mlx_whisper_lora.transcribe AUDIO... [--model M] [--adapter-path DIR] [--output-format all]

The long-form transcription itself is `inference/transcriber.py` (`transcribe` and
`transcribe_many` are importable from here too, as before).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import UserError, cli_entry
from .files import check_writable
from .formats.adapter_files import read_adapter_config
from .inference import transcriber
from .inference.timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS
from .load import default_inference_backend, load_for_inference

__all__ = ["transcribe", "transcribe_many", "load_for_inference", "main"]


def transcribe(audio, model=None, *, path_or_hf_repo=None, **options) -> dict:
    """Transcribe (or translate) audio of any length; returns {"text", "segments", "language"}.
    `model` (or mlx-whisper's `path_or_hf_repo`): a loaded model, or anything `load_model` accepts
    (default: the offline tiny.en); options: `inference.transcriber.transcribe`'s (openai-whisper's)."""
    return transcriber.transcribe(audio, loaded(path_or_hf_repo if model is None else model), **options)


def transcribe_many(audios, model=None, **options) -> list:
    """Several files, their first windows decoded `batch_size` at a time (`inference.transcriber.transcribe_many`)."""
    return transcriber.transcribe_many(audios, loaded(model), **options)


def loaded(model):
    """`model` itself, or the model it names in the default engine (MLX where installed, else PyTorch)."""
    if model is None or isinstance(model, (str, Path)):
        return load_for_inference(None if model is None else str(model), None, backend=default_inference_backend())
    return model


def build_parser() -> argparse.ArgumentParser:
    from .formats.transcript_writers import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m mlx_whisper_lora.transcribe",
        description="Transcribe audio files with Whisper in MLX (optionally with LoRA adapters).",
    )
    p.add_argument("audio", nargs="*", help="audio files (default: the bundled demo clip)")
    p.add_argument("--model", default=None, help="MLX/transformers/CTranslate2 folder, .pt file, hub id or short name (default: tiny.en)")
    p.add_argument("--adapter-path", default=None, help="folder with adapters.safetensors + adapter_config.json")
    p.add_argument("--adapter-scale", type=float, default=1.0, help="LoRA updates times this (0: base model, 1: as trained)")
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
    p.add_argument("--hotwords", default=None, help="words to expect (names, jargon): every window's prompt, as faster-whisper's")
    p.add_argument("--suppress-tokens", default="-1")
    p.add_argument("--clip-timestamps", default="0", help="comma-separated start,end,... seconds to transcribe")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--backend", default=None, choices=["mlx", "torch"],
                   help="inference back end (default: mlx where installed; torch with --quantize int8 or without MLX)")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 matrix products on an x86 CPU (PyTorch's kernels): faster, WER within noise")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="torch back end device (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="files whose first windows are decoded together; with --vad, chunks of a file")
    p.add_argument("--vad", action="store_true",
                   help="find speech with silero-vad and decode it in chunks of up to 30 s, --batch-size at a time "
                        "(faster on long files; a chunk is one segment and sees no text before it)")
    p.add_argument("--output-dir", "-o", default=".")
    p.add_argument("--output-format", "-f", default="txt", choices=sorted(FORMATS) + ["all"])
    p.add_argument("--word-timestamps", type=_str2bool, nargs="?", const=True, default=False,
                   help="time every word (cross-attention alignment, as openai-whisper); adds 'words' to the segments")
    p.add_argument("--prepend-punctuations", default=PREPEND_PUNCTUATIONS,
                   help="with --word-timestamps: these symbols are merged into the next word")
    p.add_argument("--append-punctuations", default=APPEND_PUNCTUATIONS,
                   help="with --word-timestamps: these symbols are merged into the previous word")
    p.add_argument("--highlight-words", type=_str2bool, default=False,
                   help="with --word-timestamps: underline each word as it is spoken in srt/vtt")
    p.add_argument("--max-line-width", type=int, default=None, help="with --word-timestamps: most characters on a line")
    p.add_argument("--max-line-count", type=int, default=None, help="with --max-line-width: most lines in a subtitle")
    p.add_argument("--max-words-per-line", type=int, default=None,
                   help="with --word-timestamps (and no --max-line-width): most words on a subtitle line")
    p.add_argument("--hallucination-silence-threshold", type=float, default=None,
                   help="with --word-timestamps: skip silences longer than this many seconds around a likely hallucination")
    p.add_argument("--carry-initial-prompt", type=_str2bool, default=False,
                   help="keep --initial-prompt at the head of every window's prompt, not only the first")
    p.add_argument("--compare-base", action="store_true",
                   help="with --adapter-path: also transcribe with the base model and print both transcripts side "
                        "by side (the files hold the adapted one); the default when no audio, --model or "
                        "--adapter-path is given: the demo clip with the bundled demo adapter")
    p.add_argument("--verbose", type=_str2bool, default=True)
    return p


def _subtitle_options(args):
    from .formats.transcript_writers import SubtitleOptions

    return SubtitleOptions.checked(args.word_timestamps, max_line_width=args.max_line_width,
                                   max_line_count=args.max_line_count, highlight_words=args.highlight_words,
                                   max_words_per_line=args.max_words_per_line)


def _str2bool(value: str) -> bool:
    v = str(value).lower()
    if v in ("1", "true", "yes", "y", "on", "0", "false", "no", "n", "off"):
        return v in ("1", "true", "yes", "y", "on")
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


@cli_entry
def main(argv=None):
    from .assets_dir import DEMO_ADAPTER, DEMO_CLIP
    from .formats.transcript_writers import FORMATS, write_results

    args = build_parser().parse_args(argv)
    args.backend = args.backend or default_inference_backend(args.quantize)
    if not args.audio and args.model is None and args.adapter_path is None:
        args.adapter_path, args.compare_base = str(DEMO_ADAPTER), not (args.vad or args.quantize)  # the demo
    if args.compare_base and not args.adapter_path:
        raise UserError("--compare-base compares an adapted model with its base: pass --adapter-path too")
    if args.compare_base and args.adapter_scale != 1:
        raise UserError("--adapter-scale with --compare-base is not supported yet: run transcribe twice instead")
    if args.vad and (args.compare_base or args.clip_timestamps.strip() not in ("", "0")):
        raise UserError("--vad chooses what to decode itself: leave out --clip-timestamps and --compare-base")
    if args.compare_base and args.quantize:
        raise UserError("--quantize with --compare-base is not supported yet: run transcribe twice instead")
    subtitles = _subtitle_options(args)
    audio_paths = args.audio or [str(DEMO_CLIP)]
    for path in audio_paths:  # fail before loading the model when a path is wrong
        if not Path(path).exists():
            raise UserError(f"audio file not found: {path}")
    check_writable(args.output_dir, "pass another --output-dir")  # before the transcription, not after
    if args.compare_base:
        from .adapter_bank.side_by_side import bank_with

        base_name = args.model or read_adapter_config(args.adapter_path).base_model
        bank = bank_with(load_for_inference(base_name, None, args.dtype, args.backend, args.device), args.adapter_path,
                         args.backend)
        model = bank.model
    else:
        model = load_for_inference(args.model, args.adapter_path, args.dtype, args.backend, args.device,
                                   args.adapter_scale, args.quantize)
    if args.temperature_increment_on_fallback > 0:
        temperatures = tuple(np.arange(args.temperature, 1.0 + 1e-6, args.temperature_increment_on_fallback))
    else:
        temperatures = (args.temperature,)
    formats = sorted(FORMATS) if args.output_format == "all" else [args.output_format]
    out_dir = Path(args.output_dir)
    common = dict(
        verbose=args.verbose, temperature=temperatures,
        compression_ratio_threshold=args.compression_ratio_threshold,
        logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
        condition_on_previous_text=args.condition_on_previous_text, initial_prompt=args.initial_prompt,
        language=args.language, task=args.task, beam_size=args.beam_size, best_of=args.best_of,
        patience=args.patience, length_penalty=args.length_penalty, suppress_tokens=args.suppress_tokens,
        word_timestamps=args.word_timestamps, prepend_punctuations=args.prepend_punctuations,
        append_punctuations=args.append_punctuations, carry_initial_prompt=args.carry_initial_prompt,
        hallucination_silence_threshold=args.hallucination_silence_threshold,
        **({"hotwords": args.hotwords} if (args.hotwords or "").strip() else {}),
    )
    if args.compare_base:
        from .adapter_bank.side_by_side import compare_with_base

        results = compare_with_base(bank, audio_paths, clip_timestamps=args.clip_timestamps, **common)
    elif args.vad:
        from .inference.vad_chunks import transcribe_vad

        results = [transcribe_vad(path, model, batch_size=args.batch_size, **common) for path in audio_paths]
    elif len(audio_paths) > 1 and args.clip_timestamps.strip() in ("", "0"):
        results = transcribe_many(audio_paths, model, batch_size=max(1, args.batch_size), **common)
    else:
        results = [transcribe(path, model, clip_timestamps=args.clip_timestamps, **common) for path in audio_paths]
    for path, result in zip(audio_paths, results):
        if not result["text"].strip():
            print(f"warning: no speech found in {path}; its outputs are empty", file=sys.stderr)
    write_results(results, [Path(p).stem for p in audio_paths], out_dir, formats, subtitles,
                  (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None))
    return 0


if __name__ == "__main__":
    main()
