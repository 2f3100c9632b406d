"""Transcription speed of this package against its peers, in one run, on the same clips and weights.

Each system runs in its own subprocess (so one's BLAS or threads do not affect another), on the
same English clips from ../shared/data, greedy, with tiny.en weights. Prints the real-time factor
(processing seconds / audio seconds, lower is faster), WER after Whisper's English normalizer, and
the ratio to the first system of the table (this package by default). Systems that are not installed are
skipped.

Usage: python benchmarks/benchmark_transcribe.py [--model tiny.en] [--systems ours,faster-whisper-int8,...]

`ours-int8` runs `transcribe --quantize int8` (int8 matrix products through the torch back end);
`ours-torch` and `ours-torch-bfloat16` run this package's PyTorch back end (float32, or bfloat16 autocast).
The second table transcribes one long file (`--long-seconds`, default 600) with batched long-form
decoding: `ours-int8-vad` (`transcribe --vad --batch-size 8 --quantize int8`) against faster-whisper's
`BatchedInferencePipeline` (`faster-whisper-int8-batched`, batch 8), and the sequential decoding of each.
A system name ending in `-words` runs the same system with word timestamps (`ours-words`,
`faster-whisper-int8-words`, `mlx-whisper-words`): the cost of word timing, against the same run without.
`transformers[-float16|-bfloat16]` is transformers' `generate` on the same weights (a transformers folder
converted from `--model`, or `--hf-model`); `transformers-batched` its chunked pipeline (batch 8), the
long-file peer on a GPU, where faster-whisper needs CUDA 12 libraries.

On a CUDA machine: `--device cuda` runs the torch back end, faster-whisper and transformers there (the
defaults become the float16 and float32 systems of each); `--data` points at a folder holding the clip
sets (benchmarks/pack_transcribe_benchmark.py writes one small enough to carry, with a transformers folder
of the weights for `--model` and `--hf-model`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, where it is not installed (a GPU machine)
DATA = ROOT.parent / "shared" / "data"
DEFAULT_CLIPS = [("fleurs_en_de", "en"), ("pocketsphinx_librivox", "en"), ("librispeech_test_clean_4", "en")]
LONG_SYSTEMS = ["ours-int8-vad", "faster-whisper-int8-batched", "ours-int8", "faster-whisper-int8"]
SYSTEMS = ["ours", "ours-int8", "faster-whisper-int8", "faster-whisper-float32", "mlx-whisper", "mlx-whisper-mkl"]
CUDA_SYSTEMS = ["ours-torch-float16", "transformers-float16", "faster-whisper-float16", "ours-torch", "transformers"]
CUDA_LONG_SYSTEMS = ["ours-torch-float16-vad", "transformers-float16-batched", "faster-whisper-float16-batched",
                     "ours-torch-float16", "transformers-float16"]


def clips(data: Path = DATA):
    out = []
    for name, lang in DEFAULT_CLIPS:
        for line in open(data / name / "manifest.jsonl", encoding="utf-8"):
            item = json.loads(line)
            if item.get("language", "en") == lang:
                out.append({"path": str(data / name / item["audio"]), "text": item["text"], "duration": item["duration"]})
    return out


# Each worker reads {"warm": path, "items": [...], "device": "cpu"|"cuda", "hf": folder} on stdin and prints
# {"texts": [...], "seconds": float}; the warm-up clip is transcribed once untimed first (model load and
# first-call costs are excluded). On a GPU the timing waits for its queued work (synchronize).
WORKER = r'''
import json, sys, time
system, model_name = sys.argv[1], sys.argv[2]
words = system.endswith("-words")
system = system[: -len("-words")] if words else system
job = json.load(sys.stdin)
items, device = job["items"], job.get("device", "cpu")
vad = system.endswith("-vad") or system.endswith("-batched")  # batched long-form of one file
system = system.rsplit("-", 1)[0] if vad else system
if system.startswith("ours"):
    import mlx_whisper_lora
    from mlx_whisper_lora.load import load_for_inference
    from mlx_whisper_lora.transcribe import transcribe
    parts = system.split("-")  # ours[-torch[-bfloat16]] or ours-int8
    quantize = "int8" if parts[1:] == ["int8"] else None
    backend = "torch" if quantize or parts[1:2] == ["torch"] else "mlx"
    dtype = parts[2] if len(parts) > 2 else "float32"
    if quantize and device != "cpu":
        sys.exit("int8 inference runs on the CPU")
    model = load_for_inference(model_name, None, dtype, backend, device if backend == "torch" else None, quantize=quantize)
    run = lambda p: transcribe(p, model, progress=False, language="en", word_timestamps=words)["text"]
    if vad:
        from mlx_whisper_lora.inference.vad_chunks import transcribe_vad
        run = lambda p: transcribe_vad(p, model, batch_size=8, progress=False, verbose=False, language="en",
                                       word_timestamps=words)["text"]
elif system.startswith("faster-whisper"):
    from faster_whisper import WhisperModel
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
    from pathlib import Path
    folder = model_name if Path(model_name).is_dir() else OFFLINE_MODELS[model_name].locate().folder
    threads = {"cpu_threads": 2} if device == "cpu" else {}
    fw = WhisperModel(str(folder), device=device, compute_type=system.rsplit("-", 1)[1], **threads)
    run = lambda p: "".join(s.text for s in fw.transcribe(p, beam_size=1, language="en", word_timestamps=words)[0])
    if vad:
        from faster_whisper import BatchedInferencePipeline
        batched = BatchedInferencePipeline(fw)
        run = lambda p: "".join(s.text for s in batched.transcribe(p, batch_size=8, beam_size=1, language="en",
                                                                   word_timestamps=words)[0])
elif system.startswith("transformers"):
    import numpy as np
    import torch
    import transformers
    from mlx_whisper_lora.data.audio import load_audio
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(system.partition("-")[2], torch.float32)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(job["hf"], dtype=dtype).to(device).eval()
    processor = transformers.WhisperProcessor.from_pretrained(job["hf"])
    language = {"language": "en"} if hf.config.vocab_size > 51864 else {}  # English-only models take none
    def run(p):
        audio = np.asarray(load_audio(p))
        long = len(audio) > 30 * 16000  # transformers' sequential long-form: the whole log-mel, with timestamps
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt", return_attention_mask=True,
                           **({"truncation": False, "padding": "longest"} if long else {}))
        with torch.no_grad():
            ids = hf.generate(inputs.input_features.to(device, dtype), attention_mask=inputs.attention_mask.to(device),
                              num_beams=1, do_sample=False, return_timestamps=long or words, **language)
        return processor.batch_decode(ids, skip_special_tokens=True)[0]
    if vad:
        asr = transformers.pipeline("automatic-speech-recognition", model=hf, tokenizer=processor.tokenizer,
                                    feature_extractor=processor.feature_extractor, chunk_length_s=30, batch_size=8,
                                    device=device, dtype=dtype)
        run = lambda p: asr(np.asarray(load_audio(p)), generate_kwargs=dict(language),
                            return_timestamps="word" if words else True)["text"]
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
def synchronize():
    if device == "cuda":
        import torch
        torch.cuda.synchronize()
run(job["warm"])
synchronize()
start = time.perf_counter()
texts = [run(i["path"]) for i in items]
synchronize()
print(json.dumps({"texts": texts, "seconds": time.perf_counter() - start}))
'''


def long_file_rows(folder: Path, seconds: float) -> list:
    """The manifest rows long_file joins for a file of `seconds` (also what pack_transcribe_benchmark carries)."""
    rows = sorted((json.loads(line) for line in open(folder / "manifest.jsonl", encoding="utf-8")), key=lambda r: r["audio"])
    chosen, total = [], 0.0
    for row in rows:
        if total >= seconds:
            break
        chosen.append(row)
        total += row["duration"] + 0.5
    return chosen


def long_file(seconds: float, data: Path = DATA) -> dict:
    """One long recording for the batched long-form systems: consecutive LibriSpeech utterances of
    ../shared/data/librispeech_2spk (one chapter after another, as read), 0.5 s of silence between them,
    written once to a WAV file beside the other temporary files."""
    import tempfile

    import numpy as np
    import soundfile as sf

    from mlx_whisper_lora.data.audio import load_audio

    folder = data / "librispeech_2spk"
    rows = long_file_rows(folder, seconds)
    path = Path(tempfile.gettempdir()) / f"benchmark_long_{int(seconds)}s.wav"
    if not path.exists():
        silence = np.zeros(8000, dtype=np.float32)
        sf.write(path, np.concatenate([part for row in rows for part in (np.array(load_audio(folder / row["audio"])),
                                                                         silence)]), 16000)
    texts = [row["text"] for row in rows]
    total = sum(row["duration"] + 0.5 for row in rows)
    return {"path": str(path), "text": " ".join(texts), "duration": total}


def run_system(system: str, model: str, items: list, warm: str, device: str = "cpu", hf: str = "") -> dict:
    job = {"warm": warm, "items": items, "device": device, "hf": hf}
    proc = subprocess.run([sys.executable, "-c", WORKER, system, model], input=json.dumps(job),
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(title: str, systems: list, model: str, items: list, warm: str, norm, device: str = "cpu",
          hf=lambda: "") -> None:
    from mlx_whisper_lora.text.metrics import wer as word_error_rate

    audio_seconds = sum(i["duration"] for i in items)
    refs = [norm(i["text"]) for i in items]
    print(title)
    print(f"{'system':30s} {'seconds':>8s} {'RTF':>7s} {'WER':>7s} {'x first':>7s}")
    first = None
    for system in systems:
        if not available(system):
            print(f"{system:30s} not installed")
            continue
        out = run_system(system, model, items, warm, device, hf() if system.startswith("transformers") else "")
        if "error" in out:
            print(f"{system:30s} failed: {out['error']}")
            continue
        rtf = out["seconds"] / audio_seconds
        first = first or rtf
        wer = word_error_rate(refs, [norm(t) for t in out["texts"]]) * 100
        print(f"{system:30s} {out['seconds']:8.2f} {rtf:7.3f} {wer:6.2f}% {rtf / first:6.2f}x", flush=True)


def available(system: str) -> bool:
    system = system[: -len("-words")] if system.endswith("-words") else system
    system = system.rsplit("-", 1)[0] if system.endswith("-vad") or system.endswith("-batched") else system
    module = {"ours": "mlx_whisper_lora", "mlx-whisper": "mlx_whisper", "mlx-whisper-mkl": "mlx_whisper"}.get(system)
    if module is None:
        module = "torch" if system.startswith("ours-") else system.split("-")[0].replace("faster", "faster_whisper")
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en", help="model name or folder (default tiny.en, offline)")
    p.add_argument("--systems", default=None, help=f"default: {','.join(SYSTEMS)} (--device cuda: "
                                                   f"{','.join(CUDA_SYSTEMS)})")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--long-systems", default=None,
                   help="systems for one long file (batched, VAD-chunked); empty to skip")
    p.add_argument("--long-seconds", type=float, default=600.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the torch back end, faster-whisper and transformers run")
    p.add_argument("--data", default=str(DATA), help="folder holding the clip sets (default ../shared/data)")
    p.add_argument("--hf-model", default=None,
                   help="transformers folder of --model's weights for the transformers systems (default: converted)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    systems = args.systems if args.systems is not None else ",".join(CUDA_SYSTEMS if cuda else SYSTEMS)
    long_systems = args.long_systems if args.long_systems is not None else \
        ",".join(CUDA_LONG_SYSTEMS if cuda else LONG_SYSTEMS)
    data = Path(args.data)
    items = clips(data)[: args.limit or None]
    from mlx_whisper_lora.text.normalizers import EnglishTextNormalizer  # Whisper's, tested equal to openai-whisper's

    norm = EnglishTextNormalizer()
    hf = transformers_folder(args.model, args.hf_model)
    audio_seconds = sum(i["duration"] for i in items)
    where = device_name() if cuda else "2 CPU threads"
    if systems:
        table(f"{len(items)} clips, {audio_seconds:.1f} s of audio, model {args.model}, greedy, {where}",
              systems.split(","), args.model, items, items[0]["path"], norm, args.device, hf)
    if long_systems:
        long = long_file(args.long_seconds, data)
        table(f"\none file of {long['duration']:.0f} s, batched long-form (batch 8, silero VAD chunks), model "
              f"{args.model}, {where}", long_systems.split(","), args.model, [long], items[0]["path"], norm,
              args.device, hf)


def transformers_folder(model: str, given: Optional[str] = None):
    """A callable giving the transformers folder of `model`'s weights: `given`, or one converted on first
    use (this package's converter, which the export tests check against transformers)."""
    folder = []

    def get() -> str:
        if given:
            return given
        if not folder:
            import tempfile

            from mlx_whisper_lora.convert import convert

            out = Path(tempfile.mkdtemp()) / "hf"
            convert(model, str(out), dtype="float32", export_format="hf")
            folder.append(str(out))
        return folder[0]

    return get


def device_name() -> str:
    import torch

    return f"on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "on cuda (not available)"


if __name__ == "__main__":
    main()
