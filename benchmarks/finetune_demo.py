"""Real fine-tune demo: tiny.en on two LibriSpeech speakers, scored before and after.

    python benchmarks/finetune_demo.py [--data ../shared/data/librispeech_2spk] [--out runs/librispeech_demo]
                                    [--iters 20] [extra lora flags...]

Trains on chapters 4088-158077 and 4406-16882 (10% of them held out for validation) and tests on
chapters 4088-158079 and 4406-16883. LibriSpeech references are upper case without punctuation;
the base model writes mixed case with punctuation, so its raw WER is high although its normalized
WER is low. The references being all upper case without punctuation, `--case-style auto` renders
the adapted model's transcripts that way, and `--base-style-targets` trains on the references'
words written in the base model's own case and punctuation, so the adapters learn words and
speakers rather than a style (see mlx_whisper_lora/text/case_style.py). The table also shows what the
rendering alone gives on the base model's transcripts, without any training.
Prints the base and adapted scores, the trainable share and the adapter size, and checks the
acceptance targets: raw WER -50% or better, normalized WER not higher, <2% trainable, <5 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CHAPTERS = ("4088-158077", "4406-16882")
TEST_CHAPTERS = ("4088-158079", "4406-16883")


def write_manifests(data: Path, out: Path) -> dict:
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["audio"] = str((data / row["audio"]).resolve())
    train = [r for r in rows if r["id"].rsplit("-", 1)[0] in TRAIN_CHAPTERS]
    test = [r for r in rows if r["id"].rsplit("-", 1)[0] in TEST_CHAPTERS]
    valid = train[::10]
    train = [r for r in train if r not in valid]
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("valid", valid), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))
    return {"train": len(train), "valid": len(valid), "test": len(test)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "librispeech_2spk")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "librispeech_demo")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--manifests-only", action="store_true",
                   help="only write OUT/data/{train,valid,test}.jsonl (the chapters' split), e.g. as replay and "
                        "forgetting-check data for another language's adapter")
    args, extra = p.parse_known_args(argv)
    if not (args.data / "manifest.jsonl").exists():
        sys.exit(f"{args.data}/manifest.jsonl not found (the LibriSpeech clips live in ../shared/data)")
    sys.path.insert(0, str(ROOT))
    import mlx_whisper_lora  # noqa: F401  (fast BLAS before mlx)
    from mlx_whisper_lora import lora

    counts = write_manifests(args.data, args.out / "data")
    print(f"utterances: {counts}", flush=True)
    if args.manifests_only:
        return
    base_dir, adapter_dir = args.out / "base", args.out / "adapters"
    base_dir.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--data", str(args.out / "data"), "--no-progress"]
    lora.main(common + ["--test", "--adapter-path", str(base_dir)])
    train_args = ["--train", "--test", "--adapter-path", str(adapter_dir), "--iters", str(args.iters),
                  "--freeze-encoder", "--learning-rate", "5e-4", "--lr-schedule", "cosine", "--warmup", "5",
                  "--steps-per-eval", "10", "--save-every", "10", "--base-style-targets",
                  "--rank", "8", "--alpha", "16", "--lora-modules", "query", "value"]
    try:
        lora.main(common + train_args + extra)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    base = json.loads((base_dir / "test_results.json").read_text())
    tuned = json.loads((adapter_dir / "test_results.json").read_text())
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    metrics = [json.loads(line) for line in (adapter_dir / "metrics.jsonl").read_text().splitlines()]
    size_mb = (adapter_dir / "adapters.safetensors").stat().st_size / 1e6

    from mlx_whisper_lora.backend_mlx.adapters import AdapterConfig, apply_adapters, count_parameters
    from mlx_whisper_lora.backend_mlx.load import load_model

    model = load_model(args.model)
    apply_adapters(model, AdapterConfig.from_json(config))
    trainable, total = count_parameters(model)
    print()
    print("| | raw WER % | raw CER % | normalized WER % | normalized CER % | test loss |")
    print("|---|---|---|---|---|---|")
    # What the rendering alone gives, without training: the base model's transcripts in the data's style.
    from mlx_whisper_lora.text.case_style import render
    from mlx_whisper_lora.text.metrics import score

    pairs = [(t["reference"], render(t["hypothesis"], "upper", "none")) for t in base["transcripts"]]
    upper_only = {k: 100 * v for k, v in score([r for r, _ in pairs], [h for _, h in pairs], ["en"] * len(pairs)).items()}
    upper_only["test_loss"] = float("nan")
    rows = [("tiny.en", base), ("tiny.en, transcripts upper-cased, punctuation removed (no training)", upper_only),
            (f"tiny.en + LoRA (case style {config.get('case_style', 'keep')}, punctuation "
             f"{config.get('punctuation', 'keep')}, base-style targets)", tuned)]
    for name, r in rows:
        print(f"| {name} | {r['wer']:.2f} | {r['cer']:.2f} | {r['normalized_wer']:.2f} | {r['normalized_cer']:.2f} | {r['test_loss']:.3f} |")
    drop = 1 - tuned["wer"] / base["wer"]
    last = [m for m in metrics if "train_loss" in m][-1]
    print(f"training speed (last report): {last['iterations_per_second']:.2f} it/s, "
          f"{last['audio_seconds_per_second']:.1f} audio s/s, peak memory {last['peak_memory_gb']:.2f} GB")
    print()
    print(f"raw WER change: {-100 * drop:+.1f}% relative (target: -50% or better)")
    print(f"normalized WER: {base['normalized_wer']:.2f}% -> {tuned['normalized_wer']:.2f}% (target: not higher)")
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%, target < 2%)")
    print(f"adapter file: {size_mb:.2f} MB (target < 5 MB)")
    ok = drop >= 0.5 and tuned["normalized_wer"] <= base["normalized_wer"] and trainable / total < 0.02 and size_mb < 5
    print("acceptance:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
