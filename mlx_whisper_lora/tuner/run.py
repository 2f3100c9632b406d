"""The steps of a `lora` run, the same whichever back end trains: choose and load the back end,
read and check the data, settle the text style, train through the shared loop, and test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..assets_dir import ASSETS
from ..data.examples import ExampleSet
from ..data.manifests import DataError, check_utterances, load_folder_split, load_hf_split
from ..data.splits import hold_out, overlap
from ..errors import QuantizedBase, UserError
from ..files import atomic_write_text, check_writable
from ..formats.adapter_config import AdapterConfig
from ..formats.adapter_files import (ADAPTER_FILE, BASE_STYLE_FILE, CONFIG_FILE, check_dims, read_adapter_config,
                                     read_adapter_tensors, save_adapter_config, saved_step)
from ..text import case_style
from ..text.tokenizer import get_tokenizer
from .alignment import HeadReselection
from .backend_choice import choose_backend
from .evaluation import log_report, test_report, transcribe_examples
from .loop import METRICS_FILE, train
from .reporting import CURVES_PLOT, TAGS, TEST_PLOT, Reporter, parse_report_to, plot_test_scores, plot_training_curves
from .run_config import RunConfig

TEST_RESULTS_FILE = "test_results.json"


# ---------------------------------------------------------------- back end
def existing_adapter_config(config: RunConfig) -> Optional[AdapterConfig]:
    """The adapter_config.json of the run being resumed or tested, if there is one."""
    resume = config.resume_adapter_file
    for folder in ([Path(resume).parent] if resume else []) + [Path(config.adapter_path)]:
        if (folder / CONFIG_FILE).exists():
            return read_adapter_config(folder)
    return None


def open_backend(config: RunConfig, log: Callable):
    """The back end `--backend` asks for (auto: see backend_choice.py), with the base model loaded.
    `config.model` is filled in from the adapters' config when not given."""
    requested = config.backend
    name, why = choose_backend(requested, config.device)
    log(f"back end: {name} ({why})")
    existing = existing_adapter_config(config)
    if config.model is None and existing is not None and existing.base_model:
        config.model = existing.base_model
        log(f"model: {config.model} (from {CONFIG_FILE})")
    config.backend = name  # adapter_config.json records the back end that ran
    if name == "torch":
        from ..backend_torch.engine import load_base  # a UserError when torch is missing

        try:
            return load_base(config, log)
        except QuantizedBase:
            if requested != "auto":
                raise
            log("back end: mlx (the base model is MLX-quantized; the torch back end loads floating-point weights)")
            config.backend = "mlx"
    from ..backend_mlx.engine import load_base

    return load_base(config, log)


# ---------------------------------------------------------------- data
def read_splits(config: RunConfig, names: List[str], log: Callable = lambda m: None) -> Dict[str, Optional[list]]:
    """Raw utterances of the requested splits ('train', 'valid', 'test') from --data or --hf-dataset,
    each named by a split expression (--train-split train+validation). When training reads the
    validation split too, a slice of the training data is held out to validate on instead."""
    out: Dict[str, Optional[list]] = {}
    expressions = {"train": config.train_split, "valid": config.valid_split, "test": config.test_split}
    for name in names:
        required = name != "valid"  # a dataset without a validation split trains without validation
        if "train" in names and name == "valid" and overlap(config.train_split, config.valid_split):
            continue
        if config.hf_dataset:
            try:
                out[name] = load_hf_split(config.hf_dataset, expressions[name], config.hf_dataset_config,
                                          config.audio_column, config.text_column, streaming=config.streaming)
            except UserError:
                if required:
                    raise
                out[name] = None
        else:
            out[name] = load_folder_split(Path(config.data or ASSETS / "demo_data"), expressions[name], required)
    if "train" in names and "valid" in names and overlap(config.train_split, config.valid_split):
        out["train"], out["valid"] = hold_out(out["train"], seed=int(config.seed))
        log(f"warning: --train-split {config.train_split} includes the validation split "
            f"({'+'.join(overlap(config.train_split, config.valid_split))}); validating on {len(out['valid'])} "
            "utterances held out of the training data instead")
    if "test" in names and overlap(config.train_split, config.test_split):
        log(f"warning: --train-split {config.train_split} includes the test split {config.test_split}: "
            "test scores are on data the model trained on")
    return out


def tokenizer_for(model, task: str):
    return get_tokenizer(model.is_multilingual, model.num_languages, task=task, model_dir=model.folder)


def prepare_split(model, utterances, name: str, config: RunConfig, log: Callable, timestamps: bool,
                  style: str = "keep") -> tuple:
    """(checked, labelled examples of a split, skip report); labels written in the case `style` trains on."""
    language = config.language or (None if model.is_multilingual else "en")
    kept, report = check_utterances(utterances, name, min(float(config.max_duration), 30.0),
                                    default_language=language, multilingual=model.is_multilingual)
    for line in report.lines():
        log(line)
    if not kept:
        raise DataError(f"no usable utterance in the {name} split ({report.skipped} skipped); see the lines above")
    missing_language = [u.id for u in kept if model.is_multilingual and not u.language]
    if missing_language:
        raise DataError(f"{missing_language[0]} has no language and the model is multilingual; "
                        "add a language field or pass --language")
    fraction = float(config.timestamp_fraction) if timestamps else 0.0
    examples, cut = ExampleSet.build(kept, tokenizer_for(model, config.task), config.task, model.dims.n_mels,
                                     model.dims.n_text_ctx, fraction, int(config.seed), name, style)
    if cut:
        log(f"{name}: {cut} labels longer than the decoder context ({model.dims.n_text_ctx} tokens) were cut")
    return examples, report


def choose_text_style(adapter_config: AdapterConfig, config: RunConfig, texts: List[str], log: Callable) -> None:
    """Resolve --case-style and punctuation from the training transcripts into the adapter config."""
    style = case_style.resolve(config.case_style, texts)
    if style in ("upper", "lower"):
        why = f"every training transcript is {style} case" if config.case_style == "auto" else f"--case-style {style}"
        log(f"case style: {style} ({why}): the adapters learn the text in the case whose spellings "
            f"the model knows, and transcripts made with them are rendered in {style} case (--case-style keep to train as written)")
    adapter_config.case_style = style
    if config.case_style != "keep" and not case_style.has_punctuation(texts):
        adapter_config.punctuation = "none"
        log("punctuation: none in the training transcripts, so transcripts made with the adapters are rendered "
            "without it (--case-style keep to leave output as decoded)")


def base_style_utterances(backend, utterances: list, config: RunConfig, style: str, log: Callable) -> list:
    """--base-style-targets: the training utterances with their references written in the base
    model's case and punctuation (case_style.base_styled_text), from one greedy pass of the base
    model over the training audio. Kept in the adapter folder, so a resumed run trains on the same
    targets without decoding again."""
    def key(u) -> str:
        return json.dumps([u.id, u.audio if isinstance(u.audio, str) else "", u.text], ensure_ascii=False)

    path = Path(config.adapter_path) / BASE_STYLE_FILE
    saved = {}
    if path.exists():
        saved = {r["key"]: r["text"] for r in map(json.loads, path.read_text().splitlines()) if r}
    if saved and all(key(u) in saved for u in utterances):
        log(f"base-style targets: read from {path}")
        return [replace(u, text=saved[key(u)]) for u in utterances]
    model = backend.model
    examples, _ = prepare_split(model, utterances, "train", config, lambda m: None, timestamps=False, style=style)
    log(f"base-style targets: transcribing the {len(examples)} training utterances once with the base model")
    indices, hyps = transcribe_examples(backend, examples, config.task, int(config.batch_size), config.progress)
    tokenizer = tokenizer_for(model, config.task)
    rows, out = [], []
    for i, hyp in zip(indices, hyps):
        u = examples.utterances[i]
        styled = replace(u, text=case_style.base_styled_text(u.text, hyp, style, tokenizer, u.language))
        rows.append({"key": key(u), "base": hyp, "text": styled.text})
        out.append(styled)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def prepare_train_split(backend, utterances: list, config: RunConfig, adapter_config: AdapterConfig, log: Callable):
    """The training examples, in base style when --base-style-targets asks for it."""
    style = adapter_config.case_style
    one_style = style in ("upper", "lower") or adapter_config.punctuation == "none"
    if not config.base_style_targets or not one_style:
        if config.base_style_targets:
            log("base-style targets: not used; the training transcripts are cased and punctuated already")
        return prepare_split(backend.model, utterances, "train", config, log, timestamps=True, style=style)
    styled = base_style_utterances(backend, utterances, config, style, log)
    return prepare_split(backend.model, styled, "train", config, log, timestamps=True, style="keep")


# ---------------------------------------------------------------- train and test
def adapter_config_from(config: RunConfig, model) -> AdapterConfig:
    return AdapterConfig(
        fine_tune_type=config.fine_tune_type, rank=int(config.rank), alpha=float(config.alpha),
        dropout=float(config.dropout), modules=config.lora_modules, num_layers=int(config.num_layers),
        freeze_encoder=bool(config.freeze_encoder), base_model=model.source,
        dims=model.dims.to_dict(), language=config.language, task=config.task, run=config.to_json(),
    )


def resume_file(model, config: RunConfig) -> Optional[Path]:
    """--resume-adapter-file, checked to exist and to fit the model; None when not given."""
    if not config.resume_adapter_file:
        return None
    resume = Path(config.resume_adapter_file)
    if not resume.exists():
        raise UserError(f"--resume-adapter-file {resume} not found")
    if (resume.parent / CONFIG_FILE).exists():
        check_dims(model.dims, model.source, read_adapter_config(resume), resume)
    return resume


def run_training(backend, config: RunConfig, log: Callable) -> dict:
    adapter_config = adapter_config_from(config, backend.model)
    backend.apply_adapters(adapter_config)
    resume = resume_file(backend.model, config)
    if resume:
        backend.load_adapter_weights(read_adapter_tensors(resume), resume)
    trainable, total = backend.count_parameters()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    splits = read_splits(config, ["train", "valid"], log)
    choose_text_style(adapter_config, config, [u.text for u in splits["train"]], log)
    train_set, train_report = prepare_train_split(backend, splits["train"], config, adapter_config, log)
    valid_set = None
    if splits.get("valid"):
        valid_set, _ = prepare_split(backend.model, splits["valid"], "valid", config, log, timestamps=True,
                                     style=adapter_config.case_style)
    save_adapter_config(adapter_config, config.adapter_path)
    heads = None
    if config.alignment_heads == "auto" and not resume:  # a resumed run has no base model to compare against
        heads = HeadReselection(backend, train_set, config.task, log)
    reporter = Reporter(parse_report_to(config.report_to or ()), Path(config.adapter_path), config.to_json(), log)
    try:
        summary = train(backend, train_set, valid_set, config.training_args(), Path(config.adapter_path), resume, log,
                        config.progress, on_metrics=reporter)
    finally:
        reporter.close()
    plot = plot_training_curves(Path(config.adapter_path) / METRICS_FILE, Path(config.adapter_path) / CURVES_PLOT)
    if plot:
        log(f"wrote {plot}")
    if heads is not None and summary.get("saved") and summary.get("status") != "interrupted":
        if heads.choose(backend, adapter_config) and adapter_config.alignment_heads:
            save_adapter_config(adapter_config, config.adapter_path)
    summary["data"] = train_report.to_json()
    summary["adapter_config"] = adapter_config
    return summary


def run_test(backend, config: RunConfig, log: Callable, adapter_config: Optional[AdapterConfig] = None) -> dict:
    """Test loss, WER and CER on the test split; written to test_results.json in the adapter folder."""
    adapter_dir = Path(config.adapter_path)
    if adapter_config is None:
        if (adapter_dir / CONFIG_FILE).exists():
            adapter_config = backend.load_adapters(adapter_dir)
            log(f"testing with the adapters in {adapter_dir}")
        else:
            log(f"no adapters in {adapter_dir}: testing the base model")
    style = adapter_config.case_style if adapter_config else backend.model.case_style
    punctuation = adapter_config.punctuation if adapter_config else backend.model.punctuation
    test_set, _ = prepare_split(backend.model, read_splits(config, ["test"], log)["test"], "test", config, log,
                                timestamps=False, style=style or "keep")
    report = test_report(backend, test_set, config.task, int(config.batch_size), int(config.test_batches),
                         config.progress, style, punctuation, float(config.cache_memory_gb), bool(config.encoder_cache))
    log_report(report, log)
    if adapter_dir.exists() or config.train:
        out = atomic_write_text(adapter_dir / TEST_RESULTS_FILE, json.dumps(report, indent=2) + "\n")
        log(f"wrote {out}")
        label = "adapted" if adapter_config else "base model"
        plot = plot_test_scores({label: report}, adapter_dir / TEST_PLOT)
        if plot:
            log(f"wrote {plot}")
        targets = parse_report_to(config.report_to or ())
        if targets:
            reporter = Reporter(targets, adapter_dir, config.to_json(), log)
            reporter({"step": _trained_steps(adapter_dir), **{k: report[k] for k in TAGS if k.startswith(("wer", "cer", "normalized", "test_"))
                                                              and k in report}})
            reporter.close()
    return report


def _trained_steps(adapter_dir: Path) -> int:
    """The step the adapters in `adapter_dir` were saved at (where test scores go on the charts)."""
    weights = adapter_dir / ADAPTER_FILE
    return saved_step(weights) if weights.exists() else 0


def run(config: RunConfig, log: Callable) -> dict:
    """Train and/or test as `config` says; returns {"train": summary, "test": report}."""
    config.check()
    if config.train:  # before hours of work whose results would have nowhere to go
        check_writable(config.adapter_path, "pass another --adapter-path")
    backend = open_backend(config, log)
    result = {}
    adapter_config = None
    if config.train:
        result["train"] = run_training(backend, config, log)
        adapter_config = result["train"]["adapter_config"]
        if result["train"]["status"] == "interrupted":
            return result
        if not result["train"].get("saved"):
            raise UserError(f"training finished but the adapters could not be written to {config.adapter_path}")
    if config.test:
        result["test"] = run_test(backend, config, log, adapter_config)
    return result
