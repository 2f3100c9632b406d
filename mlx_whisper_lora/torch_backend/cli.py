"""`lora --backend torch`: the CLI's training and test steps on the PyTorch model.

Data checks, labels, batch order, metrics and adapter files are the MLX path's own code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError


def pick_device(requested) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def load_base(options: dict, log: Callable):
    from ..adapters import CONFIG_FILE, read_adapter_config
    from .model import load_model

    name = options["model"]
    adapter_dir = Path(options["adapter_path"])
    if name is None and (adapter_dir / CONFIG_FILE).exists():
        name = read_adapter_config(adapter_dir).base_model
    device = pick_device(options.get("device"))
    log(f"torch back end on {device}")
    torch.manual_seed(int(options["seed"]))
    model = load_model(name, device=device)
    model.device_name = device
    if options.get("bits"):
        from .quantize import quantize_base

        compute = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(options.get("dtype"), torch.float32)
        count = quantize_base(model, int(options["bits"]), compute)
        log(f"base quantized to {options['bits']} bits through bitsandbytes ({count} linear layers); "
            "adapters train in floating point")
    return model


def run_training(model, options: dict, log: Callable) -> dict:
    from ..lora import (adapter_config_from, choose_case_style, prepare_split, prepare_train_split, read_splits,
                        resume_file, training_args_from)
    from . import lora as tlora
    from .trainer import train

    args = training_args_from(options)
    config = adapter_config_from(options, model)
    tlora.apply_adapters(model, config)
    resume = resume_file(model, options)
    if resume:
        tlora.load_weights_into(model, resume)
    trainable = sum(p.numel() for p in tlora.trainable_weights(model).values())
    total = sum(p.numel() for p in model.parameters())
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    splits = read_splits(options, ["train", "valid"])
    choose_case_style(model, config, options, splits["train"], log)
    train_set, report = prepare_train_split(
        model, splits["train"], options, log,
        lambda ex: transcribe_set(model, ex, ex.usable(list(range(len(ex)))), int(options["batch_size"]), options["task"]))
    valid_set = prepare_split(model, splits["valid"], "valid", options, log, timestamps=True)[0] if splits.get("valid") else None
    import mlx.core as mx

    mx.clear_cache()  # MLX computed the log-mels; give its buffer cache back before torch trains
    summary = train(model, config, args, train_set, valid_set, Path(options["adapter_path"]), resume, log,
                    options["progress"], model.device_name, options["dtype"], options["encoder_cache"],
                    float(options["cache_memory_gb"]))
    summary["data"] = report.to_json()
    return summary


def transcribe_set(model, examples, indices, batch: int, task: str):
    """(indices, greedy transcripts) of the examples, language and task forced."""
    from .decoding import greedy_decode

    hyps = []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        language = examples.utterances[chunk[0]].language or "en"
        mel = torch.from_numpy(np.array(examples.mels(chunk)))
        same = all((examples.utterances[i].language or "en") == language for i in chunk)
        hyps += greedy_decode(model, mel, language, task) if same else [
            greedy_decode(model, mel[j:j + 1], examples.utterances[i].language or "en", task)[0]
            for j, i in enumerate(chunk)]
    return indices, hyps


def run_test(model, options: dict, log: Callable) -> dict:
    import json

    from ..adapters import CONFIG_FILE
    from ..lora import prepare_split, read_splits
    from ..evaluate import build_report, log_report
    from . import lora as tlora
    from .trainer import _Inputs, evaluate_loss

    adapter_dir = Path(options["adapter_path"])
    if not options["train"] and (adapter_dir / CONFIG_FILE).exists():
        tlora.load_adapters(model, adapter_dir)
        log(f"testing with the adapters in {adapter_dir}")
    test_set, _ = prepare_split(model, read_splits(options, ["test"])["test"], "test", options, log, timestamps=False)
    tic = time.perf_counter()
    device = model.device_name
    batch = int(options["batch_size"])
    loss = evaluate_loss(model, test_set, _Inputs(model, test_set, device, cache=False), batch, int(options["test_batches"]),
                         device, None)
    indices, hyps = transcribe_set(model, test_set, test_set.usable(list(range(len(test_set)))), batch, options["task"])
    report = build_report(test_set, indices, hyps, loss, time.perf_counter() - tic, getattr(model, "case_style", None),
                          getattr(model, "punctuation", "keep"))
    log_report(report, log)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    (adapter_dir / "test_results.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
