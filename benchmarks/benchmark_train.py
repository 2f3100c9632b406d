"""LoRA training speed of this package against transformers+PEFT, in one run, on the same inputs.

    python benchmarks/benchmark_train.py [--model tiny.en] [--batch-size 8] [--rank 32] [--alpha 64]
        [--steps 10] [--rounds 2] [--configs encdec,decoder] [--systems ours,peft]
        [--backend auto|mlx|torch|mlx,torch] [--modules query,value|all] [--mlx-compiled auto|1|0] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
        [--bits 8|4] [--dims small|medium|large-v2] [--json out.json]
    python benchmarks/benchmark_train.py --systems ours,mlx-tune --backend mlx --mlx-tune-python VENV/bin/python

Both sides get the same model weights, rank, alpha, modules (query and value of every attention:
`encdec`; of the decoder's only, the encoder frozen: `decoder`), the same batch of 30 s log-mel
inputs (bundled demo clips joined in pairs, so labels are ~25 tokens) and AdamW. Every system runs
in its own subprocess, and the systems take turns for `--rounds` rounds, so a slow patch of the
machine hits all of them. Ours is timed through the real training loop (`lora --train`, its
metrics.jsonl), so data handling and the encoder cache count; PEFT through the loop its users write;
PyPI mlx-tune (the other MLX Whisper fine-tuner) through its own trainer, in its own environment
(benchmarks/mlx_tune_worker.py), against ours with `--backend mlx`.

Printed per system and configuration: median s/step over the timed steps (the first `--skip` are
warm-up; for ours with a frozen encoder, the first epoch fills the encoder cache, and later epochs
are what is timed), audio-seconds per second, peak RSS (peak GPU memory on CUDA; for the MLX engine also
MLX's own peak counter, mx.get_peak_memory), the loss of the
first step (identical starting weights, so these must agree), the nominal arithmetic of the step
divided by its time, against this machine's measured sgemm peak, and the ratio to PEFT.

`--dims small|medium|large-v2` uses those dimensions with random weights (for memory and speed, no
download needed). `--bits 8|4` quantizes the frozen base through bitsandbytes on both sides (ours:
`lora --bits`, PEFT: transformers' BitsAndBytesConfig), which needs the torch back end for ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "mlx_whisper_lora" / "assets" / "demo_data"

LARGE_V2 = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                n_vocab=51865, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32)
RANDOM_DIMS = {  # openai/whisper's published dimensions, for speed and memory figures without the weights
    "small": dict(LARGE_V2, n_audio_state=768, n_audio_head=12, n_audio_layer=12, n_text_state=768, n_text_head=12,
                  n_text_layer=12),
    "medium": dict(LARGE_V2, n_audio_state=1024, n_audio_head=16, n_audio_layer=24, n_text_state=1024, n_text_head=16,
                   n_text_layer=24),
    "large-v2": LARGE_V2,
}


# ----------------------------------------------------------------------------------------- inputs
def make_inputs(folder: Path, batch_size: int) -> Path:
    """A train.jsonl of `batch_size` utterances, each two demo clips joined (audio and text)."""
    import numpy as np
    import soundfile as sf

    rows = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines() if line.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(batch_size):
        a, b = rows[(2 * i) % len(rows)], rows[(2 * i + 1) % len(rows)]
        wa, sr = sf.read(DEMO / a["audio"], dtype="float32")
        wb, _ = sf.read(DEMO / b["audio"], dtype="float32")
        audio = np.concatenate([wa, np.zeros(sr // 4, np.float32), wb])
        sf.write(folder / f"b{i}.wav", audio, sr)
        out.append({"audio": f"b{i}.wav", "text": f"{a['text']} {b['text']}", "language": "en",
                    "duration": round(len(audio) / sr, 3)})
    manifest = folder / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in out))
    return manifest


def sgemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate through numpy's BLAS (best of a few)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def nominal_tflop(dims: dict, batch: int, tokens: int, config: str) -> float:
    """Matrix-product arithmetic of one LoRA step as PEFT runs it (forward, plus the backward's
    input gradients wherever a gradient has to flow; frozen weights get no weight gradient)."""
    d, a, v, ctx = dims["n_audio_state"], dims["n_text_state"], dims["n_vocab"], dims["n_audio_ctx"]
    frames = 2 * ctx
    conv = 2 * frames * dims["n_mels"] * 3 * d + 2 * ctx * d * 3 * d
    enc_layer = 2 * ctx * d * d * 4 + 2 * 2 * ctx * ctx * d + 2 * 2 * ctx * d * 4 * d
    enc = conv + dims["n_audio_layer"] * enc_layer
    t = tokens
    cross_kv = 2 * 2 * ctx * d * a
    dec_layer = 2 * t * a * a * 4 + 2 * 2 * t * t * a + 2 * t * a * a * 2 + 2 * 2 * t * ctx * a + 2 * 2 * t * a * 4 * a
    logits = 2 * t * a * v
    dec = dims["n_text_layer"] * dec_layer + logits
    kv = dims["n_text_layer"] * cross_kv
    if config == "encdec":
        flops = (enc + dec + kv) + ((enc - conv) + dec + kv)
    else:
        flops = (enc + dec + kv) + dec
    return batch * flops / 1e12


# ---------------------------------------------------------------------------------------- workers
def run_ours(spec: dict) -> dict:
    """Time our real training loop: `lora --train` on the benchmark batch, read its metrics.jsonl."""
    sys.path.insert(0, str(ROOT))
    import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
    from mlx_whisper_lora import lora

    work = Path(spec["work"]) / f"ours_{spec['config']}_{os.getpid()}"
    argv = ["--train", "--model", spec["model_path"], "--data", spec["data"], "--adapter-path", str(work),
            "--iters", str(spec["steps"]), "--batch-size", str(spec["batch_size"]), "--rank", str(spec["rank"]),
            "--alpha", str(spec["alpha"]), "--lora-modules", *spec.get("modules", "query,value").split(","),
            "--learning-rate", "1e-4",
            "--lr-schedule", "constant", "--warmup", "0",
            "--steps-per-report", "1", "--steps-per-eval", "1000000", "--save-every", "0", "--no-progress",
            "--timestamp-fraction", "0", "--pack-fraction", "0", "--valid-fraction", "0", "--no-best-checkpoint",
            "--optimizer", "adamw", "--weight-decay", "0", "--max-grad-norm", "0",
            "--dtype", spec["dtype"], "--backend", spec["backend"]]
    if spec["bits"]:
        argv += ["--bits", str(spec["bits"])]
    if spec["device"]:
        argv += ["--device", spec["device"]]
    argv += ["--freeze-encoder"] if spec["config"] == "decoder" else ["--train-encoder"]
    if spec.get("grad_checkpoint"):
        argv += ["--grad-checkpoint"]
    lora.main(argv)
    mlx_peak = None
    if "mlx.core" in sys.modules:
        import mlx.core as mx

        mlx_peak = mx.get_peak_memory() / 1e9  # MLX's own counter: what its arrays held at most
    entries = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in entries if "iterations_per_second" in e]
    from mlx_whisper_lora.tuner.backend_choice import choose_backend, mlx_accelerated

    backend = choose_backend(spec["backend"], spec["device"])[0]
    on_gpu = spec["device"] == "cuda" or (backend == "mlx" and mlx_accelerated() == "cuda")
    return {"step_seconds": [1.0 / e["iterations_per_second"] for e in steps],
            "first_loss": steps[0]["train_loss"], "tokens": steps[0]["tokens"], "backend": backend,
            "gpu_peak_gb": steps[-1].get("peak_memory_gb") if on_gpu else None,
            "mlx_peak_gb": mlx_peak if backend == "mlx" else None}


def mlx_tune_spec(spec: dict, data: Path) -> dict:
    """What benchmarks/mlx_tune_worker.py needs besides the shared spec: the tokenizer's file and this
    package's token ids of the training texts (the worker checks its tokenizer against them)."""
    sys.path.insert(0, str(ROOT))
    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.formats.dims import ModelDimensions
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    multilingual = spec["multilingual"]
    tokenizer = get_tokenizer(multilingual, ModelDimensions(**spec["dims"]).num_languages)
    texts = [json.loads(line)["text"] for line in (data / "train.jsonl").read_text().splitlines()]
    return dict(spec, tiktoken=str(ASSETS / ("multilingual.tiktoken" if multilingual else "gpt2.tiktoken")),
                added_tokens=sorted(tokenizer.special_tokens.items(), key=lambda item: item[1]),
                reference_ids=[(t, tokenizer.encode(t)) for t in texts])


def run_peft(spec: dict) -> dict:
    """transformers WhisperForConditionalGeneration + PEFT LoRA, the loop of the usual recipe."""
    sys.path.insert(0, str(ROOT))
    import mlx_whisper_lora  # noqa: F401
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    from mlx_whisper_lora.data.manifests import read_manifest
    from mlx_whisper_lora.data.examples import ExampleSet
    from mlx_whisper_lora.data.labels import collate
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    device = spec["device"] or "cpu"
    kwargs = {"torch_dtype": torch.float32}
    if spec["bits"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=spec["bits"] == 8, load_in_4bit=spec["bits"] == 4)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = WhisperForConditionalGeneration.from_pretrained(spec["hf_path"], **kwargs)
    if not spec["bits"]:
        model = model.to(device)
    targets = ["q_proj", "v_proj"] if spec["config"] == "encdec" else r".*decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)"
    if spec.get("grad_checkpoint"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], target_modules=targets,
                                             lora_dropout=0.0, bias="none"))
    model.train()
    utterances = read_manifest(Path(spec["data"]) / "train.jsonl")
    tokenizer = get_tokenizer(multilingual=spec["multilingual"], language="en", task="transcribe")
    examples, _ = ExampleSet.build(utterances, tokenizer, "transcribe", spec["n_mels"], 448)
    indices = list(range(len(examples)))
    mel = torch.from_numpy(np.array(examples.mels(indices))).transpose(1, 2).contiguous().to(device)
    inputs, targets_, mask = (torch.from_numpy(np.array(x)).to(device) for x in collate([examples.labels[i] for i in indices], 0))
    labels = torch.where(mask > 0, targets_.long(), torch.full_like(targets_.long(), -100))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    autocast = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(spec["dtype"])
    scaler = torch.amp.GradScaler(device, enabled=autocast == torch.float16 and device == "cuda")
    audio_seconds = examples.seconds(indices)
    times, losses = [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(spec["steps"]):
        tic = time.perf_counter()
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(input_features=mel.to(model.dtype if not autocast else mel.dtype), decoder_input_ids=inputs.long(),
                         labels=labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    return {"step_seconds": times, "first_loss": losses[0], "tokens": int(mask.sum().item()),
            "audio_seconds": audio_seconds, "backend": "transformers+peft",
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}


def worker(spec: dict) -> None:
    import resource

    result = run_ours(spec) if spec["system"] == "ours" else run_peft(spec)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------- parent
def prepare_models(args, work: Path) -> dict:
    """Our model folder and a transformers folder of the same weights (random large-v2 if asked)."""
    sys.path.insert(0, str(ROOT))
    import mlx_whisper_lora  # noqa: F401
    from mlx_whisper_lora.backend_mlx.load import save_hf as save_hf_folder
    from mlx_whisper_lora.backend_mlx.load import load_model, save_model

    if args.dims in RANDOM_DIMS:
        import mlx.core as mx

        from mlx_whisper_lora.backend_mlx.model import ModelDimensions, Whisper

        mx.random.seed(0)
        model = Whisper(ModelDimensions(**RANDOM_DIMS[args.dims]))
        mx.eval(model.parameters())
        model_path = work / "model"
        save_model(model, model_path)
    else:
        model = load_model(args.model)
        model_path = work / "model"
        save_model(model, model_path)
    hf_path = save_hf_folder(model, work / "hf")
    return {"model_path": str(model_path), "hf_path": str(hf_path), "dims": model.dims.to_dict(),
            "multilingual": model.is_multilingual}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--dims", choices=["model", *RANDOM_DIMS], default="model",
                   help="model: --model's weights; otherwise those dimensions with random weights")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--alpha", type=float, default=64.0)
    p.add_argument("--steps", type=int, default=8, help="steps per run and round")
    p.add_argument("--skip", type=int, default=2, help="warm-up steps left out of each run's timing")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", default="encdec,decoder")
    p.add_argument("--systems", default="ours,peft")
    p.add_argument("--backend", default="auto", help="our back end: auto, mlx or torch, or several "
                   "(mlx,torch): each runs in its turn, round after round")
    p.add_argument("--modules", default="query,value", help="ours: --lora-modules, comma-separated (all: every "
                   "linear layer); PEFT keeps query and value")
    p.add_argument("--mlx-compiled", choices=["auto", "1", "0"], default="auto",
                   help="the MLX engine's compiled step (MLX_WHISPER_LORA_COMPILED_STEP): auto is compiled on a GPU")
    p.add_argument("--device", default=None, choices=[None, "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--bits", type=int, default=0, choices=[0, 4, 8])
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute activations on both sides (less memory)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the models and inputs, reused by later runs with the same --model/--dims")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--mlx-tune-python", default=os.environ.get("MLX_TUNE_PYTHON"),
                   help="for --systems ...,mlx-tune: a Python with PyPI mlx-tune (and on Linux mlx[cpu] and mkl) "
                        "installed, e.g. python -m venv /tmp/mt && /tmp/mt/bin/pip install mlx-tune==0.6.0 "
                        "'mlx[cpu]' mkl; compare with --backend mlx")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return

    if "mlx-tune" in args.systems.split(",") and not args.mlx_tune_python:
        sys.exit("--systems mlx-tune needs --mlx-tune-python: an interpreter with mlx-tune installed (see --help)")
    if args.bits and "ours" in args.systems.split(",") and "mlx" in args.backend.split(","):
        sys.exit("--bits compares bitsandbytes bases: use --backend torch (or auto) for ours")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_train_"))
    prepared = work / f"prepared_{args.model}_{args.dims}.json"
    if prepared.exists():
        models = json.loads(prepared.read_text())
    else:
        (work / f"{args.model}_{args.dims}").mkdir(parents=True, exist_ok=True)
        models = prepare_models(args, work / f"{args.model}_{args.dims}")
        prepared.write_text(json.dumps(models))
    data = work / "data"
    make_inputs(data, args.batch_size)
    peak = sgemm_peak_gflops()
    configs = args.configs.split(",")
    backends = args.backend.split(",")
    # ours once per back end named: "ours" alone, or "ours/mlx", "ours/torch"
    systems = [f"ours/{b}" if s == "ours" and len(backends) > 1 else s
               for s in args.systems.split(",") for b in (backends if s == "ours" else [None])]
    print(f"machine: {os.cpu_count()} CPUs, numpy sgemm peak {peak:.0f} GFLOP/s; model {args.model}"
          f"{f' ({args.dims} dims, random weights)' if args.dims in RANDOM_DIMS else ''}; batch {args.batch_size}, "
          f"r={args.rank}, alpha={args.alpha:g}, {args.dtype}{f', {args.bits}-bit base' if args.bits else ''}"
          f"{', gradient checkpointing' if args.grad_checkpoint else ''}; ours: --lora-modules {args.modules}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict = {}
    for round_ in range(args.rounds):
        for config in configs:
            for system in systems:
                spec = dict(system=system.split("/")[0], config=config, steps=args.steps, batch_size=args.batch_size,
                            rank=args.rank, alpha=args.alpha,
                            backend=system.split("/")[1] if "/" in system else args.backend, device=args.device,
                            dtype=args.dtype, bits=args.bits, grad_checkpoint=args.grad_checkpoint, modules=args.modules,
                            data=str(data), work=str(work), n_mels=models["dims"]["n_mels"], **models)
                tic = time.perf_counter()
                if system == "mlx-tune":
                    command = [args.mlx_tune_python, str(ROOT / "benchmarks" / "mlx_tune_worker.py"),
                               json.dumps(mlx_tune_spec(spec, data))]
                else:
                    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
                proc = subprocess.run(command, capture_output=True, text=True,
                                      env=os.environ | {"MLX_WHISPER_LORA_COMPILED_STEP": args.mlx_compiled})
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"{system}/{config} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                r = json.loads(line[len("RESULT "):])
                slot = results.setdefault((system, config), {"times": [], "rss": [], "gpu": [], "mlx": [],
                                                              "loss": r["first_loss"], "tokens": r["tokens"],
                                                              "backend": r["backend"]})
                slot["times"] += r["step_seconds"][args.skip:]
                slot["rss"].append(r["peak_rss_gb"])
                if r.get("gpu_peak_gb") is not None:
                    slot["gpu"].append(r["gpu_peak_gb"])
                if r.get("mlx_peak_gb") is not None:
                    slot["mlx"].append(r["mlx_peak_gb"])
                print(f"round {round_ + 1} {system:5s} {config:7s}: {statistics.median(r['step_seconds'][args.skip:]):7.3f} s/step "
                      f"({time.perf_counter() - tic:.0f} s with start-up)", flush=True)

    audio = sum(json.loads(x)["duration"] for x in (data / "train.jsonl").read_text().splitlines())
    table = []
    print()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| config | system | s/step | audio s/s | peak RSS GB | peak GPU GB | MLX peak GB | first-step loss | "
          "nominal GFLOP/s (% of sgemm peak) | vs PEFT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        tokens = next((results[(s, config)]["tokens"] for s in systems if (s, config) in results), 0)
        label_len = tokens / args.batch_size + 1
        work_tflop = nominal_tflop(models["dims"], args.batch_size, int(round(label_len + 3)), config)
        base = results.get(("peft", config))
        base_time = statistics.median(base["times"]) if base and base["times"] else None
        peer = results.get(("mlx-tune", config))
        peer_time = statistics.median(peer["times"]) if peer and peer["times"] else None
        for system in systems:
            r = results.get((system, config))
            if not r or not r["times"]:
                continue
            t = statistics.median(r["times"])
            gflops = work_tflop * 1e3 / t
            ratio = f"{t / base_time:.2f}x time" if base_time else "-"
            if peer_time:
                ratio += f"; {t / peer_time:.2f}x mlx-tune's time"
            name = f"ours ({r['backend']})" if system == "ours" else r["backend"]
            gpu = f"{max(r['gpu']):.2f}" if r["gpu"] else "-"
            mlx_peak = f"{max(r['mlx']):.2f}" if r["mlx"] else "-"
            print(f"| {config} | {name} | {t:.3f} | {audio / t:.1f} | {max(r['rss']):.2f} | {gpu} | {mlx_peak} | "
                  f"{r['loss']:.4f} | "
                  f"{gflops:.0f} ({100 * gflops / peak:.0f}%) | {ratio} |")
            table.append({"config": config, "system": name, "s_per_step": t, "audio_s_per_s": audio / t,
                          "peak_rss_gb": max(r["rss"]), "peak_gpu_gb": max(r["gpu"]) if r["gpu"] else None,
                          "mlx_peak_gb": max(r["mlx"]) if r["mlx"] else None,
                          "first_loss": r["loss"], "nominal_gflops": gflops, "vs_peft": t / base_time if base_time else None,
                          "vs_mlx_tune": t / peer_time if peer_time else None,
                          "steps_timed": len(r["times"])})
    print("\nnominal work per step (TFLOP): " + ", ".join(
        f"{c} {nominal_tflop(models['dims'], args.batch_size, 28, c):.3f}" for c in configs) + "; labels ~"
        f"{label_len:.0f} tokens; {audio:.1f} s of speech per batch, padded to 30 s windows")
    if args.json:
        args.json.write_text(json.dumps({"sgemm_peak_gflops": peak, "args": vars(args) | {"json": str(args.json)},
                                         "results": table}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
