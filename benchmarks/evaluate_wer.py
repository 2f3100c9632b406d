"""WER of this package on a set in ../shared/data with given decoding options.

Usage: python benchmarks/evaluate_wer.py librispeech_2spk [--model tiny.en] [--beam-size 5] [--limit N] [--quantize int8]
Prints raw WER (references as written, case and punctuation kept) and normalized WER (Whisper's
English normalizer for English, the basic one otherwise; taken from openai-whisper).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
from mlx_whisper_lora.load import load_for_inference
from mlx_whisper_lora.transcribe import transcribe_many

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--language", default=None, help="default: each utterance's manifest language")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--quantize", default=None, choices=["int8"], help="as transcribe --quantize")
    args = p.parse_args(argv)
    import jiwer
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    items = [json.loads(l) for l in open(DATA / args.set / "manifest.jsonl", encoding="utf-8") if l.strip()]
    items = items[: args.limit or None]
    backend = "torch" if args.quantize else "mlx"
    model = load_for_inference(args.model, None, backend=backend, device="cpu" if args.quantize else None,
                               quantize=args.quantize)
    start = time.time()
    results = []
    for lang in sorted({args.language or i.get("language", "en") for i in items}):
        group = [i for i in items if (args.language or i.get("language", "en")) == lang]
        out = transcribe_many([DATA / args.set / i["audio"] for i in group], model, language=lang,
                              beam_size=args.beam_size, progress=False)
        results += list(zip(group, out))
    refs = [i["text"] for i, _ in results]
    hyps = [r["text"].strip() for _, r in results]
    norm = lambda i, t: (EnglishTextNormalizer() if i.get("language", "en") == "en" else BasicTextNormalizer())(t)
    raw = jiwer.wer(refs, hyps) * 100
    normalized = jiwer.wer([norm(i, t) for (i, _), t in zip(results, refs)], [norm(i, t) for (i, _), t in zip(results, hyps)]) * 100
    decoding = f"beam {args.beam_size}" if args.beam_size else "greedy"
    decoding += f", {args.quantize}" if args.quantize else ""
    print(f"{args.set} ({len(items)} utts), {args.model}, {decoding}: raw WER {raw:.2f}%, normalized WER "
          f"{normalized:.2f}%, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
