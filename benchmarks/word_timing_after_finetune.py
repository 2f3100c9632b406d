"""Do word times survive fine-tuning? Base model against the model fused from an adapter, on held-out audio.

    python benchmarks/word_timing_after_finetune.py --adapter-path DIR [--model tiny.en] [--data FOLDER]
                                                 [--split test] [--limit N] [--out DIR]

Fuses the adapter (`python -m mlx_whisper_lora.fuse`), then transcribes every utterance of the split with
word timestamps by the base model and by the fused model with four sets of alignment heads: the base
model's; the ones the fused model carries (re-selected after training when other heads fit better);
openai-whisper's default when a model lists none (every head of the decoder's second half: what a
transformers repo without `alignment_heads` gives); and heads re-selected from that default against
the base model's word boundaries on a few training utterances.
Words are paired where the two transcripts agree (lowercase, punctuation removed, matched in order);
printed: the share of paired words whose start and end are both within 0.2 s of the base model's, and
the mean distance of their boundaries. Reading the base model's times as the reference is the issue's
measure: nothing here knows the true word times.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
from mlx_whisper_lora.backend_mlx.load import load_model
from mlx_whisper_lora.inference import alignment_heads
from mlx_whisper_lora.inference.alignment_heads import model_heads
from mlx_whisper_lora.inference.transcriber import transcribe

TOLERANCE = 0.2


def _key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def paired_words(base: dict, tuned: dict):
    """(base word, tuned word) pairs of the words both transcripts agree on, in order."""
    a = [w for s in base["segments"] for w in s["words"] if _key(w["word"])]
    b = [w for s in tuned["segments"] for w in s["words"] if _key(w["word"])]
    matcher = difflib.SequenceMatcher(a=[_key(w["word"]) for w in a], b=[_key(w["word"]) for w in b], autojunk=False)
    return [(a[block.a + k], b[block.b + k]) for block in matcher.get_matching_blocks() for k in range(block.size)]


def summarize(pairs) -> dict:
    if not pairs:
        return {"words": 0, "within": float("nan"), "mean_error": float("nan")}
    close = [abs(x["start"] - y["start"]) <= TOLERANCE + 1e-9 and abs(x["end"] - y["end"]) <= TOLERANCE + 1e-9
             for x, y in pairs]
    error = [(abs(x["start"] - y["start"]) + abs(x["end"] - y["end"])) / 2 for x, y in pairs]
    return {"words": len(pairs), "within": float(np.mean(close)), "mean_error": float(np.mean(error))}


def selection_items(base, data: Path, count: int):
    """Training utterances with the base model's own transcript as the text to align."""
    from mlx_whisper_lora.data.audio import FRAMES_PER_SECOND, N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[:: max(1, len(rows) // count)][:count]
    items = []
    for row in rows:
        audio = load_audio(row["audio"] if Path(row["audio"]).is_absolute() else data / row["audio"])
        tok = get_tokenizer(base.is_multilingual, base.num_languages, language=row.get("language", "en"))
        text = transcribe(audio, base, temperature=0.0, language=row.get("language", "en"))["text"]
        mel = np.array(log_mel_spectrogram(pad_or_trim(audio, 480000), base.dims.n_mels)[:N_FRAMES])
        frames = min(N_FRAMES, int(round(len(audio) / 16000 * FRAMES_PER_SECOND)))
        items.append(alignment_heads.AlignmentItem(mel, tok.encode(" " + text.strip()), frames, tok))
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter-path", type=Path, required=True)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--data", type=Path, default=None, help="folder with <split>.jsonl (default: the adapter's run data)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="where the fused model goes (default: a temporary folder)")
    p.add_argument("--selection-utterances", type=int, default=8, help="training utterances to re-select heads on")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    config = json.loads((args.adapter_path / "adapter_config.json").read_text())
    data = args.data or Path(config["run"]["data"])
    rows = [json.loads(line) for line in (data / f"{args.split}.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[: args.limit or None]
    out = args.out or Path(tempfile.mkdtemp(prefix="fused_"))
    subprocess.run([sys.executable, "-m", "mlx_whisper_lora.fuse", "--model", args.model, "--adapter-path",
                    str(args.adapter_path), "--save-path", str(out / "fused"), "--dtype", "float32"], check=True)
    base = load_model(args.model)
    fused = load_model(str(out / "fused"))
    base_heads, fused_heads = model_heads(base), model_heads(fused)
    print(f"base heads {base_heads}\nfused model's heads {fused_heads}", flush=True)

    # A transformers repo without alignment_heads gives openai-whisper's default: every head of the
    # decoder's second half. Re-selecting from there against the base model's boundaries on a few
    # training utterances is what the package does after training.
    dims = fused.dims
    default_heads = [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer)
                     for head in range(dims.n_text_head)]
    fused.set_alignment_heads(default_heads)
    items = selection_items(base, data, args.selection_utterances)
    reference_boundaries = alignment_heads.reference_boundaries(base, items)
    choice = alignment_heads.select_heads(fused, items, reference_boundaries, keep=len(base_heads))
    print(f"re-selected from the default heads on {len(items)} training utterances: {choice.heads} "
          f"({choice.previous_error:.3f} s -> {choice.error:.3f} s)", flush=True)
    variants = {"base heads": base_heads, "fused model's heads": fused_heads,
                "openai's default (a transformers repo without alignment_heads)": default_heads,
                "re-selected from the default": choice.heads}
    pairs = {name: [] for name in variants}
    for row in rows:
        audio = row["audio"] if Path(row["audio"]).is_absolute() else str(data / row["audio"])
        options = dict(temperature=0.0, word_timestamps=True, language=row.get("language", "en"))
        reference = transcribe(audio, base, **options)
        for name, heads in variants.items():
            fused.set_alignment_heads(heads)
            pairs[name] += paired_words(reference, transcribe(audio, fused, **options))
    report = {name: summarize(p) for name, p in pairs.items()}
    print(f"\n{len(rows)} utterances of {data / args.split}.jsonl; words paired where base and fused transcripts agree")
    print(f"| alignment heads of the fused model | words paired | within {TOLERANCE} s of the base model's | mean boundary distance s |")
    print("|---|---|---|---|")
    for name, r in report.items():
        print(f"| {name} | {r['words']} | {r['within']:.1%} | {r['mean_error']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"heads": {"base": base_heads, "fused": fused_heads}, "report": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
