"""Fine-tune Whisper with LoRA (or DoRA, or fully), and score it.

    python -m mlx_whisper_lora.lora --train --data DATA_DIR --adapter-path adapters --iters 200
    python -m mlx_whisper_lora.lora --test  --data DATA_DIR --adapter-path adapters

Options come from the command line, then a YAML file given with -c (keys as the long flags with
underscores), then the defaults below. With no --data the bundled demo set is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .backends import choose_backend
from .errors import QuantizedBase, UserError, cli_entry

DEFAULTS: Dict[str, object] = {
    "model": None,  # default: the adapters' base model, else tiny.en
    "train": False,
    "test": False,
    "data": None,  # default: the bundled demo set
    "hf_dataset": None,
    "hf_dataset_config": None,
    "audio_column": "audio",
    "text_column": None,  # default: sentence, text, transcription or transcript, whichever exists
    "train_split": "train",
    "valid_split": "validation",
    "test_split": "test",
    "streaming": False,
    "adapter_path": "adapters",
    "resume_adapter_file": None,
    "fine_tune_type": "lora",
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.0,
    "lora_modules": None,  # default: query and value of every attention
    "num_layers": -1,
    "freeze_encoder": False,
    "iters": 200,
    "batch_size": 8,
    "learning_rate": 1e-4,
    "lr_schedule": "constant",
    "warmup": 0,
    "grad_accumulation_steps": 1,
    "grad_checkpoint": False,
    "max_grad_norm": 1.0,
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "steps_per_report": 10,
    "steps_per_eval": 100,
    "val_batches": 25,
    "test_batches": -1,
    "save_every": 100,
    "seed": 0,
    "language": None,
    "task": "transcribe",
    "max_duration": 30.0,
    "timestamp_fraction": 0.5,
    "encoder_cache": True,
    "cache_memory_gb": 4.0,
    "dtype": "float32",
    "progress": True,
    "case_style": "auto",
    "backend": "auto",
    "device": None,
    "bits": None,
    "base_style_targets": False,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.lora", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    S = argparse.SUPPRESS  # unset flags stay unset, so YAML values and defaults can fill them
    p.add_argument("-c", "--config", default=None, help="YAML file of options (flags given here win)")
    g = p.add_argument_group("what to do")
    g.add_argument("--train", action="store_true", default=S, help="train adapters")
    g.add_argument("--test", action="store_true", default=S, help="report test loss, WER and CER")
    g.add_argument("--model", default=S, help="base model: folder, hub id, .pt file or short name (default: tiny.en)")
    g.add_argument("--adapter-path", default=S, help="folder for adapters.safetensors, adapter_config.json, metrics (default: adapters)")
    g.add_argument("--resume-adapter-file", default=S, help="continue from this adapters file (step, optimizer state, batch order)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, help="folder with train/valid/test .jsonl or .csv (default: bundled demo set)")
    g.add_argument("--hf-dataset", default=S, help="Hugging Face dataset id or a folder written by save_to_disk")
    g.add_argument("--hf-dataset-config", "--hf-dataset-lang", dest="hf_dataset_config", default=S,
                   help="dataset configuration (for Common Voice: the language)")
    g.add_argument("--audio-column", default=S)
    g.add_argument("--text-column", default=S)
    g.add_argument("--train-split", default=S)
    g.add_argument("--valid-split", default=S)
    g.add_argument("--test-split", default=S)
    g.add_argument("--streaming", action="store_true", default=S, help="read the dataset as a stream")
    g.add_argument("--language", default=S, help="language of utterances without one (multilingual models need it)")
    g.add_argument("--task", choices=["transcribe", "translate"], default=S)
    g.add_argument("--max-duration", type=float, default=S, help="skip utterances longer than this (seconds, at most 30)")
    g.add_argument("--timestamp-fraction", type=float, default=S,
                   help="share of utterances trained with timestamp targets, to keep segment timestamps (default 0.5)")
    g.add_argument("--case-style", choices=["auto", "keep", "upper", "lower"], default=S,
                   help="auto: all-caps (or all-lowercase) training transcripts are learned in the case the model's "
                        "vocabulary knows and the adapters' transcripts rendered back in theirs; keep: train on the text as written")
    g.add_argument("--base-style-targets", action="store_true", default=S,
                   help="transcribe the training audio once with the base model and train on the reference words written "
                        "with its case and punctuation where they agree: for one-case or unpunctuated data, the adapters "
                        "learn the words rather than a new style (which is rendered instead)")
    g = p.add_argument_group("adapters")
    g.add_argument("--fine-tune-type", choices=["lora", "dora", "full"], default=S)
    g.add_argument("--rank", type=int, default=S)
    g.add_argument("--alpha", type=float, default=S, help="LoRA alpha; scale = alpha / rank as in PEFT")
    g.add_argument("--dropout", type=float, default=S)
    g.add_argument("--lora-modules", nargs="+", default=S,
                   help="modules to adapt: attn.query attn.key attn.value attn.out cross_attn.query ... mlp1 mlp2, "
                        "or query/key/value/out for both attentions, or all (default: query value)")
    g.add_argument("--num-layers", "--lora-layers", dest="num_layers", type=int, default=S,
                   help="adapt the last N blocks of the encoder and of the decoder (-1: all)")
    g.add_argument("--freeze-encoder", action="store_true", default=S, help="no adapters in the encoder (its states are cached)")
    g.add_argument("--bits", type=int, choices=[4, 8], default=S,
                   help="quantize the frozen base's block layers to 8 or 4 bits at load (QLoRA): bitsandbytes "
                        "(LLM.int8 / NF4) in the torch back end, MLX affine quantization in the MLX back end")
    g = p.add_argument_group("training")
    g.add_argument("--iters", type=int, default=S)
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--learning-rate", type=float, default=S)
    g.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"], default=S)
    g.add_argument("--warmup", type=int, default=S)
    g.add_argument("--grad-accumulation-steps", type=int, default=S)
    g.add_argument("--grad-checkpoint", action="store_true", default=S, help="recompute activations: less memory, slower")
    g.add_argument("--max-grad-norm", type=float, default=S)
    g.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=S)
    g.add_argument("--weight-decay", type=float, default=S)
    g.add_argument("--steps-per-report", type=int, default=S)
    g.add_argument("--steps-per-eval", type=int, default=S)
    g.add_argument("--val-batches", type=int, default=S)
    g.add_argument("--test-batches", type=int, default=S)
    g.add_argument("--save-every", type=int, default=S)
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--no-encoder-cache", dest="encoder_cache", action="store_false", default=S,
                   help="recompute frozen encoder states every step instead of caching them")
    g.add_argument("--cache-memory-gb", type=float, default=S, help="memory for cached encoder states before spilling to disk")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=S)
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    g.add_argument("--backend", choices=["auto", "mlx", "torch"], default=S,
                   help="training back end (default auto: MLX where it has a GPU, else PyTorch when installed)")
    g.add_argument("--device", choices=["cpu", "cuda"], default=S, help="torch back end device")
    return p


def merge_options(cli: dict, config_path: Optional[str]) -> dict:
    """CLI values over YAML values over DEFAULTS; unknown YAML keys are an error naming them."""
    options = dict(DEFAULTS)
    if config_path:
        import yaml

        path = Path(config_path)
        if not path.exists():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path} must hold a mapping of option: value")
        aliases = {"lora_layers": "num_layers", "hf_dataset_lang": "hf_dataset_config"}
        for key, value in loaded.items():
            key = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
            if key == "lora_parameters" and isinstance(value, dict):  # mlx-lm's layout
                options.update({k: value[k] for k in ("rank", "alpha", "dropout") if k in value})
                if "keys" in value:
                    options["lora_modules"] = value["keys"]
                continue
            if key not in DEFAULTS:
                raise UserError(f"{path}: unknown option {key!r}")
            options[key] = value
    options.update(cli)
    return options


# ---------------------------------------------------------------- steps the CLI is made of
def load_base(options: dict, log: Callable):
    import mlx.core as mx

    from .adapters import CONFIG_FILE, read_adapter_config
    from .load import load_model

    model_name = options["model"]
    adapter_dir = Path(options["adapter_path"])
    resume = options.get("resume_adapter_file")
    existing = None
    for candidate in ([Path(resume).parent] if resume else []) + [adapter_dir]:
        if (candidate / CONFIG_FILE).exists():
            existing = read_adapter_config(candidate)
            break
    if model_name is None and existing is not None and existing.base_model:
        model_name = existing.base_model
        log(f"model: {model_name} (from {CONFIG_FILE})")
    mx.random.seed(int(options["seed"]))
    model = load_model(model_name, dtype=options["dtype"])
    if options.get("bits"):
        from .load import quantize_model

        import mlx.nn as nn

        if any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
            raise UserError(f"--bits {options['bits']}: {model_name} is already quantized; drop --bits")
        quantize_model(model, bits=int(options["bits"]))
        log(f"base quantized to {options['bits']} bits (MLX affine, group size 64); adapters train in floating point")
    return model


def read_splits(options: dict, names: List[str]) -> Dict[str, list]:
    """Raw utterances of the requested splits ('train', 'valid', 'test') from --data or --hf-dataset."""
    from .assets_dir import ASSETS
    from .data import load_folder_split, load_hf_split

    out = {}
    if options["hf_dataset"]:
        split_names = {"train": options["train_split"], "valid": options["valid_split"], "test": options["test_split"]}
        for name in names:
            try:
                out[name] = load_hf_split(options["hf_dataset"], split_names[name], options["hf_dataset_config"],
                                          options["audio_column"], options["text_column"], streaming=options["streaming"])
            except UserError:
                if name == "valid":
                    out[name] = None  # a dataset without a validation split trains without validation
                else:
                    raise
        return out
    folder = Path(options["data"] or ASSETS / "demo_data")
    for name in names:
        out[name] = load_folder_split(folder, name, required=(name != "valid"))
    return out


def prepare_split(model, utterances, name: str, options: dict, log: Callable, timestamps: bool,
                  case_style: Optional[str] = None):
    """Checked, labelled examples of a split; labels in `case_style` (default: the model's)."""
    from .data import DataError, check_utterances
    from .examples import ExampleSet
    from .tokenizer import get_tokenizer

    language = options["language"] or (None if model.is_multilingual else "en")
    style = case_style or getattr(model, "case_style", None) or "keep"
    kept, report = check_utterances(utterances, name, min(float(options["max_duration"]), 30.0),
                                    default_language=language, multilingual=model.is_multilingual)
    for line in report.lines():
        log(line)
    if not kept:
        raise DataError(f"no usable utterance in the {name} split ({report.skipped} skipped); see the lines above")
    missing_language = [u.id for u in kept if model.is_multilingual and not u.language]
    if missing_language:
        raise DataError(f"{missing_language[0]} has no language and the model is multilingual; "
                        "add a language field or pass --language")
    tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, task=options["task"],
                              model_dir=getattr(model, "folder", None))
    fraction = float(options["timestamp_fraction"]) if timestamps else 0.0
    examples, cut = ExampleSet.build(kept, tokenizer, options["task"], model.dims.n_mels, model.dims.n_text_ctx,
                                     fraction, int(options["seed"]), name, style)
    if cut:
        log(f"{name}: {cut} labels longer than the decoder context ({model.dims.n_text_ctx} tokens) were cut")
    return examples, report


def choose_case_style(model, config, options: dict, train_utterances: list, log: Callable) -> str:
    """Resolve --case-style from the training transcripts; the model and config carry the result."""
    from . import case_style

    style = case_style.resolve(options.get("case_style"), [u.text for u in train_utterances])
    if style in ("upper", "lower"):
        why = f"every training transcript is {style} case" if options.get("case_style", "auto") == "auto" else f"--case-style {style}"
        log(f"case style: {style} ({why}): the adapters learn the text in the case whose spellings "
            f"the model knows, and transcripts made with them are rendered in {style} case (--case-style keep to train as written)")
    model.case_style = config.case_style = style
    if options.get("case_style", "auto") != "keep" and not case_style.has_punctuation(u.text for u in train_utterances):
        model.punctuation = config.punctuation = "none"
        log("punctuation: none in the training transcripts, so transcripts made with the adapters are rendered "
            "without it (--case-style keep to leave output as decoded)")
    return style


BASE_STYLE_FILE = "base_style_targets.jsonl"


def base_style_utterances(model, utterances: list, options: dict, log: Callable, transcribe_set: Callable) -> list:
    """--base-style-targets: the training utterances with their references written in the base
    model's case and punctuation (case_style.base_styled_text), from one greedy pass of the base
    model over the training audio. Kept in the adapter folder, so a resumed run trains on the same
    targets without decoding again. `transcribe_set(examples) -> (indices, transcripts)`."""
    from dataclasses import replace

    from .case_style import base_styled_text
    from .tokenizer import get_tokenizer

    def key(u) -> str:
        return json.dumps([u.id, u.audio if isinstance(u.audio, str) else "", u.text], ensure_ascii=False)

    path = Path(options["adapter_path"]) / BASE_STYLE_FILE
    saved = {}
    if path.exists():
        saved = {r["key"]: r["text"] for r in map(json.loads, path.read_text().splitlines()) if r}
    if saved and all(key(u) in saved for u in utterances):
        log(f"base-style targets: read from {path}")
        return [replace(u, text=saved[key(u)]) for u in utterances]
    examples, _ = prepare_split(model, utterances, "train", options, lambda m: None, timestamps=False)
    log(f"base-style targets: transcribing the {len(examples)} training utterances once with the base model")
    indices, hyps = transcribe_set(examples)
    tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, task=options["task"],
                              model_dir=getattr(model, "folder", None))
    style = getattr(model, "case_style", None) or "keep"
    rows, out = [], []
    for i, hyp in zip(indices, hyps):
        u = examples.utterances[i]
        styled = replace(u, text=base_styled_text(u.text, hyp, style, tokenizer, u.language))
        rows.append({"key": key(u), "base": hyp, "text": styled.text})
        out.append(styled)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)
    return out


def prepare_train_split(model, utterances: list, options: dict, log: Callable, transcribe_set: Callable):
    """The training examples, in base style when --base-style-targets asks for it."""
    one_style = getattr(model, "case_style", None) in ("upper", "lower") or getattr(model, "punctuation", "keep") == "none"
    if not options.get("base_style_targets") or not one_style:
        if options.get("base_style_targets"):
            log("base-style targets: not used; the training transcripts are cased and punctuated already")
        return prepare_split(model, utterances, "train", options, log, timestamps=True)
    styled = base_style_utterances(model, utterances, options, log, transcribe_set)
    return prepare_split(model, styled, "train", options, log, timestamps=True, case_style="keep")


def adapter_config_from(options: dict, model):
    from .adapters import AdapterConfig

    return AdapterConfig(
        fine_tune_type=options["fine_tune_type"], rank=int(options["rank"]), alpha=float(options["alpha"]),
        dropout=float(options["dropout"]), modules=options["lora_modules"], num_layers=int(options["num_layers"]),
        freeze_encoder=bool(options["freeze_encoder"]), base_model=getattr(model, "source", options["model"]),
        dims=model.dims.to_dict(), language=options["language"], task=options["task"],
        run={k: v for k, v in options.items() if k != "progress"},
    )


def training_args_from(options: dict):
    from .trainer import TrainingArgs

    for key in ("iters", "batch_size", "grad_accumulation_steps", "steps_per_report", "steps_per_eval"):
        if int(options[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {options[key]}")
    if float(options["learning_rate"]) <= 0:
        raise UserError(f"--learning-rate must be positive, got {options['learning_rate']}")
    return TrainingArgs(**{k: options[k] for k in TrainingArgs.__dataclass_fields__ if k in options})


def resume_file(model, options: dict) -> Optional[Path]:
    """--resume-adapter-file, checked to exist and to fit the model; None when not given."""
    from .adapters import CONFIG_FILE, check_compatible, read_adapter_config

    resume = options.get("resume_adapter_file")
    if not resume:
        return None
    resume = Path(resume)
    if not resume.exists():
        raise UserError(f"--resume-adapter-file {resume} not found")
    if (resume.parent / CONFIG_FILE).exists():
        check_compatible(model, read_adapter_config(resume), resume)
    return resume


def run_training(model, options: dict, log: Callable) -> dict:
    from tqdm import tqdm

    from .adapters import apply_adapters, count_parameters, load_weights_into, read_adapter_weights
    from .trainer import encoder_is_trained, train

    args = training_args_from(options)
    config = adapter_config_from(options, model)
    apply_adapters(model, config)
    resume = resume_file(model, options)
    if resume:
        load_weights_into(model, read_adapter_weights(resume), resume)
    trainable, total = count_parameters(model)
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    splits = read_splits(options, ["train", "valid"])
    choose_case_style(model, config, options, splits["train"], log)
    from .evaluate import transcribe_examples

    train_set, train_report = prepare_train_split(
        model, splits["train"], options, log,
        lambda ex: transcribe_examples(model, ex, options["task"], int(options["batch_size"]), options["progress"]))
    valid_set = None
    if splits.get("valid"):
        valid_set, _ = prepare_split(model, splits["valid"], "valid", options, log, timestamps=True)
    adapter_dir = Path(options["adapter_path"])
    if not encoder_is_trained(model) and options["encoder_cache"]:
        bar = (lambda it: tqdm(it, desc="encoder states", unit="batch", file=sys.stderr)) if options["progress"] else None
        limit = int(float(options["cache_memory_gb"]) * (1 << 30))
        for examples in [train_set] + ([valid_set] if valid_set else []):
            examples.use_encoder_cache(model, limit, adapter_dir, int(options["batch_size"]), bar)
            examples.fill_encoder_cache()
    log(f"training on {len(train_set)} utterances ({train_set.seconds(range(len(train_set))) / 60:.1f} min of audio)")
    summary = train(model, config, args, train_set, valid_set, adapter_dir, resume, log, options["progress"])
    summary["data"] = train_report.to_json()
    for examples in [train_set] + ([valid_set] if valid_set else []):
        for index, why in examples.failed.items():
            log(f"skipped during training: {examples.utterances[index].id}: {why}")
        examples.close()
    return summary


def run_test(model, options: dict, log: Callable) -> dict:
    from .adapters import CONFIG_FILE, load_adapters
    from .evaluate import log_report, test_report

    adapter_dir = Path(options["adapter_path"])
    if not options["train"]:
        if (adapter_dir / CONFIG_FILE).exists():
            load_adapters(model, adapter_dir)
            log(f"testing with the adapters in {adapter_dir}")
        else:
            log(f"no adapters in {adapter_dir}: testing the base model")
    splits = read_splits(options, ["test"])
    test_set, _ = prepare_split(model, splits["test"], "test", options, log, timestamps=False)
    try:
        report = test_report(model, test_set, options["task"], int(options["batch_size"]),
                             int(options["test_batches"]), options["progress"])
    finally:
        test_set.close()
    log_report(report, log)
    if adapter_dir.exists() or options["train"]:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        out = adapter_dir / "test_results.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {out}")
    return report


@cli_entry
def main(argv=None):
    parser = build_parser()
    cli = vars(parser.parse_args(argv))
    config_path = cli.pop("config", None)
    options = merge_options(cli, config_path)
    if not options["train"] and not options["test"]:
        raise UserError("nothing to do: pass --train, --test or both")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    requested = options["backend"]
    options["backend"], why = choose_backend(requested, options.get("device"))
    log(f"back end: {options['backend']} ({why})")
    if options["backend"] == "torch":
        from .torch_backend import cli as backend  # raises a UserError when torch is missing
    else:
        backend = sys.modules[__name__]
    try:
        model = backend.load_base(options, log)
    except QuantizedBase:
        if requested != "auto":
            raise
        log("back end: mlx (the base model is MLX-quantized; the torch back end loads floating-point weights)")
        options["backend"], backend = "mlx", sys.modules[__name__]
        model = backend.load_base(options, log)
    result = {}
    if options["train"]:
        summary = backend.run_training(model, options, log)
        result["train"] = summary
        if summary["status"] == "interrupted":
            raise SystemExit(130)
        if not summary.get("saved"):
            raise UserError(f"training finished but the adapters could not be written to {options['adapter_path']}")
    if options["test"]:
        result["test"] = backend.run_test(model, options, log)
    return 0


if __name__ == "__main__":
    main()
