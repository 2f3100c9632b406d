"""Transcription speed of this package against its peers, in one run, on the same clips and weights.

Each system runs in its own subprocess (so one's BLAS or threads do not affect another), on the
same English clips from ../shared/data, greedy, with tiny.en weights. Prints the real-time factor
(processing seconds / audio seconds, lower is faster), WER after Whisper's English normalizer, and
the ratio to this package. Systems that are not installed are skipped.

Usage: python scripts/benchmark_transcribe.py [--model tiny.en] [--systems ours,faster-whisper-int8,...]

`ours-torch` and `ours-torch-bfloat16` run this package's PyTorch back end (float32, or bfloat16 autocast).
A system name ending in `-words` runs the same system with word timestamps (`ours-words`,
`faster-whisper-int8-words`, `mlx-whisper-words`): the cost of word timing, against the same run without.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DEFAULT_CLIPS = [("fleurs_en_de", "en"), ("pocketsphinx_librivox", "en"), ("librispeech_test_clean_4", "en")]
SYSTEMS = ["ours", "faster-whisper-int8", "faster-whisper-float32", "mlx-whisper", "mlx-whisper-mkl"]


def clips():
    out = []
    for name, lang in DEFAULT_CLIPS:
        for line in open(DATA / name / "manifest.jsonl", encoding="utf-8"):
            item = json.loads(line)
            if item.get("language", "en") == lang:
                out.append({"path": str(DATA / name / item["audio"]), "text": item["text"], "duration": item["duration"]})
    return out


# Each worker reads the clip list on stdin and prints {"texts": [...], "seconds": float}; the first
# clip is transcribed once untimed to warm up (model load and first-call costs are excluded).
WORKER = r'''
import json, sys, time
system, model_name = sys.argv[1], sys.argv[2]
words = system.endswith("-words")
system = system[: -len("-words")] if words else system
items = json.load(sys.stdin)
if system.startswith("ours"):
    import mlx_whisper_lora
    from mlx_whisper_lora.load import load_for_inference
    from mlx_whisper_lora.transcribe import transcribe
    parts = system.split("-")  # ours[-torch[-bfloat16]]
    backend = parts[1] if len(parts) > 1 else "mlx"
    model = load_for_inference(model_name, None, parts[2] if len(parts) > 2 else "float32", backend, "cpu")
    run = lambda p: transcribe(p, model, progress=False, language="en", word_timestamps=words)["text"]
elif system.startswith("faster-whisper"):
    from faster_whisper import WhisperModel
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
    folder = OFFLINE_MODELS[model_name].locate().folder
    fw = WhisperModel(str(folder), device="cpu", compute_type=system.rsplit("-", 1)[1], cpu_threads=2)
    run = lambda p: "".join(s.text for s in fw.transcribe(p, beam_size=1, language="en", word_timestamps=words)[0])
else:
    if system == "mlx-whisper-mkl":
        import mlx_whisper_lora  # loads MKL before mlx
    import mlx.core as mx
    import mlx_whisper
    from mlx_whisper_lora.backend_mlx.load import load_model, save_model
    import tempfile
    folder = tempfile.mkdtemp()
    save_model(load_model(model_name), folder)  # the same weights, as an MLX folder
    from mlx_whisper_lora.data.audio import load_audio  # mlx-whisper reads files only through ffmpeg
    run = lambda p: mlx_whisper.transcribe(load_audio(p), path_or_hf_repo=folder, language="en", fp16=False,
                                           verbose=None, word_timestamps=words)["text"]
run(items[0]["path"])
start = time.perf_counter()
texts = [run(i["path"]) for i in items]
print(json.dumps({"texts": texts, "seconds": time.perf_counter() - start}))
'''


def available(system: str) -> bool:
    system = system[: -len("-words")] if system.endswith("-words") else system
    module = {"ours": "mlx_whisper_lora", "ours-torch": "torch", "ours-torch-bfloat16": "torch", "mlx-whisper": "mlx_whisper", "mlx-whisper-mkl": "mlx_whisper"}.get(system, "faster_whisper")
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--limit", type=int, default=0)
    args = p.parse_args(argv)
    items = clips()[: args.limit or None]
    audio_seconds = sum(i["duration"] for i in items)
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    refs = [norm(i["text"]) for i in items]
    print(f"{len(items)} clips, {audio_seconds:.1f} s of audio, model {args.model}, greedy, 2 CPU threads")
    print(f"{'system':24s} {'seconds':>8s} {'RTF':>7s} {'WER':>7s} {'x ours':>7s}")
    ours_rtf = None
    for system in args.systems.split(","):
        if not available(system):
            print(f"{system:24s} not installed")
            continue
        proc = subprocess.run([sys.executable, "-c", WORKER, system, args.model], input=json.dumps(items),
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{system:24s} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rtf = out["seconds"] / audio_seconds
        ours_rtf = rtf if system == "ours" else ours_rtf
        wer = jiwer.wer(refs, [norm(t) for t in out["texts"]]) * 100
        ratio = f"{rtf / ours_rtf:6.2f}x" if ours_rtf else "      -"
        print(f"{system:24s} {out['seconds']:8.2f} {rtf:7.3f} {wer:6.2f}% {ratio}", flush=True)


if __name__ == "__main__":
    main()
