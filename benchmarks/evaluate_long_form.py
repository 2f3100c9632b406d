"""Does fine-tuning keep long-form transcription? The setup of issue 35's acceptance, on
../shared/data/librispeech_2spk: adapters trained with `lora`'s defaults on one chapter of each speaker,
then the other chapter of each joined in order (0.4 s apart) into one recording and transcribed with
`transcribe`'s defaults by the base and the adapted model.

Prints, for both models: long-form WER (normalized) with deletion and insertion rates, segments and their
median length, words in repetition loops, the longest stretch of speech with no output; the per-clip WER on
the held-out chapters' utterances; and how often each model writes rare words of the recordings when they are
named in --initial-prompt. Writes everything to WORK/NAME/long_form.json.

    python benchmarks/evaluate_long_form.py --work /tmp/long_form --name defaults [-- LORA FLAGS...]
    python benchmarks/evaluate_long_form.py --work /tmp/long_form --name packed -- --pack-fraction 0.5
    python benchmarks/evaluate_long_form.py --work /tmp/long_form --name prepared --prepared  # train on prepare's cut

The adapters are trained once per NAME (delete WORK/NAME to train again).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx_whisper_lora  # noqa: E402,F401  (fast BLAS before mlx)

DATA = ROOT.parent / "shared" / "data" / "librispeech_2spk"
GAP = 0.4
TRAIN_CHAPTERS = ("4088-158079", "4406-16882")


def chapters(data: Path) -> dict:
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    by_chapter: dict = {}
    for r in sorted(rows, key=lambda r: (r["id"].rsplit("-", 1)[0], int(r["id"].rsplit("-", 1)[1]))):
        by_chapter.setdefault(r["id"].rsplit("-", 1)[0], []).append(r)
    return by_chapter


def build(data: Path, work: Path, train_chapters) -> dict:
    """WORK/train/train.jsonl (the training chapters' utterances, with their speaker), WORK/test/CHAPTER.wav
    per held-out chapter; returns {chapter: {"audio", "text", "speech": [(start, end) of each word]}}."""
    import soundfile as sf

    from mlx_whisper_lora.data.audio import load_audio

    by_chapter = chapters(data)
    aligned = {r["id"]: r["words"] for r in map(json.loads, (data / "word_alignments.jsonl").read_text().splitlines())}
    (work / "train").mkdir(parents=True, exist_ok=True)
    (work / "test").mkdir(parents=True, exist_ok=True)
    train_rows = [dict(r, audio=str((data / r["audio"]).resolve())) for c in train_chapters for r in by_chapter[c]]
    (work / "train" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    recordings = {}
    for name, rows in by_chapter.items():
        if name in train_chapters:
            continue
        path = work / "test" / f"{name}.wav"
        pieces, speech, t = [], [], 0.0
        for r in rows:
            audio = load_audio(data / r["audio"])
            speech += [(t + s, t + e) for _, s, e in aligned[r["id"]]]
            pieces += [audio, np.zeros(int(GAP * 16000), np.float32)]
            t += len(audio) / 16000 + GAP
        if not path.exists():
            sf.write(str(path), np.concatenate(pieces), 16000)
        recordings[name] = {"audio": str(path), "text": " ".join(r["text"] for r in rows), "speech": speech,
                            "clips": [(str(data / r["audio"]), r["text"]) for r in rows]}
    return recordings


def prepared_training_data(data: Path, work: Path, train_chapters) -> Path:
    """The training chapters joined into one recording each with the chapter's text as plain text beside it,
    cut by prepare (all windows to train) into WORK/train_prepared."""
    import soundfile as sf

    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.prepare import prepare

    out = work / "train_prepared"
    if (out / "train.jsonl").exists():
        return out
    recordings = work / "train_recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    by_chapter = chapters(data)
    for name in train_chapters:
        pieces = []
        for r in by_chapter[name]:
            pieces += [load_audio(data / r["audio"]), np.zeros(int(GAP * 16000), np.float32)]
        sf.write(str(recordings / f"{name}.wav"), np.concatenate(pieces), 16000)
        (recordings / f"{name}.txt").write_text(" ".join(r["text"] for r in by_chapter[name]) + "\n")
    tic = time.perf_counter()
    prepare([str(recordings)], out, None, "en", valid_fraction=0.0, test_fraction=0.0, progress=False,
            log=lambda m: print(m, file=sys.stderr))
    print(f"prepared in {time.perf_counter() - tic:.0f} s", file=sys.stderr)
    return out


def rare_words(reference: str, base_text: str, most: int = 10) -> list:
    """Words of the reference the base model writes less often than they are said (names, rare words):
    at least 5 letters, said at least twice."""
    from mlx_whisper_lora.text.normalizers import normalizer_for

    norm = normalizer_for("en")
    said = collections.Counter(norm(reference).split())
    written = collections.Counter(norm(base_text).split())
    missed = [(said[w] - written[w], w) for w in said if len(w) >= 5 and said[w] >= 2 and written[w] < said[w]]
    return [w for _, w in sorted(missed, reverse=True)[:most]]


def written(words: list, text: str, reference: str) -> int:
    from mlx_whisper_lora.text.normalizers import normalizer_for

    norm = normalizer_for("en")
    said, got = collections.Counter(norm(reference).split()), collections.Counter(norm(text).split())
    return sum(min(said[w], got[w]) for w in words)


def evaluate(model, recordings: dict, prompts=None) -> dict:
    """Long-form and per-clip scores; `prompts`: {recording: rare words}, or a function of the recording's
    reference and this model's transcript giving them (the base model's pass chooses them)."""
    from mlx_whisper_lora.inference.transcriber import transcribe, transcribe_many
    from mlx_whisper_lora.text.metrics import score
    from mlx_whisper_lora.scoring.long_form import pooled, score_recording

    out = {"recordings": {}, "prompts": {}}
    for name, rec in recordings.items():
        tic = time.perf_counter()
        result = transcribe(rec["audio"], model, language="en", verbose=False)
        out["recordings"][name] = dict(score_recording(rec["text"], result, rec["speech"], "en"),
                                       seconds=round(time.perf_counter() - tic, 1), text=result["text"])
        if callable(prompts):
            out["prompts"][name] = prompts(rec["text"], result["text"])
        elif prompts:
            out["prompts"][name] = prompts.get(name)
        if out["prompts"].get(name):
            words = out["prompts"][name]
            prompt = "Glossary: " + ", ".join(w.capitalize() for w in words) + "."
            prompted = transcribe(rec["audio"], model, language="en", verbose=False, initial_prompt=prompt)
            out["recordings"][name]["prompt"] = prompt
            out["recordings"][name]["rare_written_with_prompt"] = written(words, prompted["text"], rec["text"])
            out["recordings"][name]["rare_written"] = written(words, result["text"], rec["text"])
            out["recordings"][name]["rare_said"] = written(words, rec["text"], rec["text"])
    out["long_form"] = pooled(list(out["recordings"].values()))
    clips = [c for rec in recordings.values() for c in rec["clips"]]
    results = transcribe_many([a for a, _ in clips], model, language="en", verbose=False)
    out["per_clip"] = {k: round(100 * v, 3) for k, v in score([t for _, t in clips], [r["text"] for r in results],
                                                               ["en"] * len(clips)).items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/long_form"))
    p.add_argument("--name", default="defaults", help="the run's folder under --work")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--train-chapters", default=",".join(TRAIN_CHAPTERS))
    p.add_argument("--prepared", action="store_true", help="train on the training chapters joined into one recording "
                   "each (0.4 s apart) and cut by prepare from their plain text, instead of on their utterances")
    p.add_argument("--no-prompt-check", action="store_true", help="skip the passes with rare words as the prompt")
    p.add_argument("lora_flags", nargs=argparse.REMAINDER, help="after --: flags for lora --train")
    args = p.parse_args()
    from mlx_whisper_lora.load import load_for_inference

    recordings = build(args.data, args.work, args.train_chapters.split(","))
    adapters = args.work / args.name
    flags = [f for f in args.lora_flags if f != "--"]
    data = args.work / "train"
    if args.prepared:
        data = prepared_training_data(args.data, args.work, args.train_chapters.split(","))
    if not (adapters / "adapters.safetensors").exists():
        tic = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mlx_whisper_lora.lora", "--train", "--data", str(data),
                        "--adapter-path", str(adapters), "--no-progress", *flags], check=True)
        print(f"trained in {time.perf_counter() - tic:.0f} s", file=sys.stderr)
    base_file = args.work / "base.json"
    if base_file.exists():
        base = json.loads(base_file.read_text())
    else:
        base = evaluate(load_for_inference("tiny.en", None), recordings, rare_words)
        base_file.write_text(json.dumps(base, indent=1))
    adapted = evaluate(load_for_inference(None, str(adapters)), recordings,
                       None if args.no_prompt_check else base["prompts"])
    (adapters / "long_form.json").write_text(json.dumps({"base": base, "adapted": adapted, "flags": flags}, indent=1))
    print(f"{'':28}{'base':>10}{'adapted':>10}")
    for key in ("wer", "deletion_rate", "insertion_rate", "segments", "median_segment_seconds",
                "longest_segment_seconds", "looped_words", "longest_silent_speech_seconds"):
        print(f"long-form {key:<18}{base['long_form'][key]:>10}{adapted['long_form'][key]:>10}")
    print(f"{'per-clip normalized_wer':<28}{base['per_clip']['normalized_wer']:>10}{adapted['per_clip']['normalized_wer']:>10}")
    rare = [sum(r.get(k, 0) for r in m["recordings"].values()) for m in (base, adapted)
            for k in ("rare_said", "rare_written", "rare_written_with_prompt")]
    print(f"rare words said {rare[0]}: written base {rare[1]} -> {rare[2]} with the prompt; "
          f"adapted {rare[4]} -> {rare[5]} with the prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
