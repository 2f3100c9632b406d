"""Word timestamps against openai-whisper's (`whisper.timing`) on the same weights.

For each utterance of the chosen sets: long-form transcription with word timestamps (temperature 0,
openai's other defaults) by this package (MLX and/or torch back end) and by openai-whisper's own
PyTorch model holding exactly the same weights and alignment heads. Prints, per set and back end:
utterances whose words are the same, words compared, the share of words whose start and end are
both within 0.02 s of openai's, and the share of segment boundaries within 0.02 s.

Usage: python benchmarks/compare_word_timestamps.py [--model tiny.en] [--backend mlx|torch|both]
                                                  [--sets a,b] [--limit N] [--json out.json]
Needs openai-whisper (the reference) and torch installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
from mlx_whisper_lora.data.audio import load_audio
from mlx_whisper_lora.formats.checkpoint import resolve
from mlx_whisper_lora.transcribe import load_for_inference, transcribe

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ENGLISH_SETS = ["librispeech_2spk", "librispeech_test_clean_4", "whisper_mlx_classics", "pocketsphinx_librivox",
                "ljspeech_coqui_tests", "fleurs_en_de"]
TOLERANCE = 0.02


def openai_model(source: str):
    """openai-whisper's model holding the checkpoint's weights and alignment heads."""
    import torch
    import whisper

    ckpt = resolve(source)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt.dims.to_dict()))
    state = {}
    for name, value in ckpt.weights.items():
        if name == "alignment_heads":
            continue
        if name.endswith(("conv1.weight", "conv2.weight")):
            value = value.transpose(0, 2, 1)
        name = name.replace(".mlp1.", ".mlp.0.").replace(".mlp2.", ".mlp.2.")
        state[name] = torch.tensor(np.array(value, dtype=np.float32))
    model.load_state_dict(state, strict=False)
    if ckpt.alignment_heads:
        mask = torch.zeros(ckpt.dims.n_text_layer, ckpt.dims.n_text_head, dtype=torch.bool)
        for layer, head in ckpt.alignment_heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()


def compare(ours: dict, theirs: dict) -> dict:
    """Counts for one utterance: same words?, words within tolerance, segment boundaries within tolerance."""
    ow = [w for s in ours["segments"] for w in s.get("words", [])]
    tw = [w for s in theirs["segments"] for w in s["words"]]
    same_words = [w["word"] for w in ow] == [w["word"] for w in tw]
    close = sum(abs(a["start"] - b["start"]) <= TOLERANCE + 1e-9 and abs(a["end"] - b["end"]) <= TOLERANCE + 1e-9
                for a, b in zip(ow, tw)) if same_words else 0
    ob = [(s["start"], s["end"]) for s in ours["segments"]]
    tb = [(float(s["start"]), float(s["end"])) for s in theirs["segments"] if s["text"].strip()]
    boundaries = len(ob) == len(tb) and all(abs(a - c) <= TOLERANCE + 1e-9 and abs(b - d) <= TOLERANCE + 1e-9
                                            for (a, b), (c, d) in zip(ob, tb))
    return {"same_words": bool(same_words), "words": len(tw), "close": int(close), "segments_agree": bool(boundaries)}


def run(model_name: str, backends, sets, limit, log=print) -> dict:
    import whisper

    reference = openai_model(model_name)
    models = {b: load_for_inference(model_name, None, backend=b, device="cpu" if b == "torch" else None) for b in backends}
    report = {}
    for name in sets:
        manifest = DATA / name / "manifest.jsonl"
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("language", "en") == "en"][: limit or None]
        totals = {b: {"utterances": 0, "same_words": 0, "words": 0, "close": 0, "segments_agree": 0, "seconds": 0.0}
                  for b in backends}
        ref_seconds = 0.0
        for row in rows:
            audio = np.array(load_audio(DATA / name / row["audio"]))
            start = time.perf_counter()
            theirs = whisper.transcribe(reference, audio, language="en", temperature=0.0, word_timestamps=True,
                                        fp16=False, verbose=None)
            ref_seconds += time.perf_counter() - start
            for b, model in models.items():
                start = time.perf_counter()
                ours = transcribe(audio, model, language="en", temperature=0.0, word_timestamps=True, verbose=False)
                t = totals[b]
                t["seconds"] += time.perf_counter() - start
                c = compare(ours, theirs)
                t["utterances"] += 1
                t["same_words"] += c["same_words"]
                t["words"] += c["words"] if c["same_words"] else 0
                t["close"] += c["close"]
                t["segments_agree"] += c["segments_agree"]
                if not (c["same_words"] and c["close"] == c["words"] and c["segments_agree"]):
                    log(f"  {b} {row['id']}: same words {c['same_words']}, {c['close']}/{c['words']} words close, "
                        f"segments agree {c['segments_agree']}")
        for b, t in totals.items():
            share = t["close"] / t["words"] if t["words"] else float("nan")
            log(f"{name:26s} {b:5s} utts {t['utterances']:3d}  same words {t['same_words']:3d}  "
                f"words within {TOLERANCE}s {t['close']}/{t['words']} = {share:.1%}  "
                f"segments agree {t['segments_agree']}/{t['utterances']}  time ours {t['seconds']:.0f}s "
                f"openai {ref_seconds:.0f}s")
        report[name] = {b: dict(t, openai_seconds=ref_seconds) for b, t in totals.items()}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--backend", default="both", choices=["mlx", "torch", "both"])
    p.add_argument("--sets", default=",".join(ENGLISH_SETS))
    p.add_argument("--limit", type=int, default=0, help="utterances per set (0: all)")
    p.add_argument("--json", default=None, help="write the counts here")
    args = p.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: the comparison needs ../shared/data")
    backends = ["mlx", "torch"] if args.backend == "both" else [args.backend]
    report = run(args.model, backends, args.sets.split(","), args.limit)
    overall = {}
    for b in backends:
        words = sum(r[b]["words"] for r in report.values())
        close = sum(r[b]["close"] for r in report.values())
        utts = sum(r[b]["utterances"] for r in report.values())
        same = sum(r[b]["same_words"] for r in report.values())
        segs = sum(r[b]["segments_agree"] for r in report.values())
        overall[b] = {"words": words, "close": close, "utterances": utts, "same_words": same, "segments_agree": segs}
        print(f"ALL {b}: words within {TOLERANCE}s {close}/{words} = {close / max(words, 1):.2%}; same words "
              f"{same}/{utts}; segment boundaries agree {segs}/{utts}")
    if args.json:
        Path(args.json).write_text(json.dumps({"sets": report, "overall": overall}, indent=1))


if __name__ == "__main__":
    main()
