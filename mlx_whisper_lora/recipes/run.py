"""The steps of a `lora` run, the same whichever back end trains: choose and load the back end,
read and check the data, settle the text style, train through the shared loop, and test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..errors import QuantizedBase, UserError
from ..files import atomic_write_text, check_writable
from ..formats.adapter_config import AdapterConfig
from ..formats.adapter_files import (BASE_STYLE_FILE, CONFIG_FILE, check_dims, read_adapter_config,
                                     read_adapter_tensors, save_adapter_config)
from ..text import case_style
from ..tuner.backend_choice import choose_backend
from ..tuner.data_prep import prepare_split, read_splits, stream_sample, streamed_train_batches, tokenizer_for
from ..tuner.distributed import backend_for_launcher, join_world, launcher, quiet, world_of
from ..tuner.encoder_cache import same_audio
from ..tuner.loop import METRICS_FILE, caches_training_states, save_checkpoint, train
from ..tuner.memory_plan import settle
from ..tuner.reporting import CURVES_PLOT, Reporter, parse_report_to, plot_training_curves
from ..tuner.run_config import RunConfig
from ..tuner.streamed_batches import MixedRows
from ..scoring.evaluation import transcribe_examples, validation_wer
from ..scoring.no_speech import DISTINCT_TRAINING_CLIPS, no_speech_training_clips, training_languages
from ..scoring.testing import replay_pool, run_test, score_base, with_replay
from .replay_choice import settle_replay
from .self_replay import SELF, self_replay_utterances
from .timing_heads import HeadReselection


# ---------------------------------------------------------------- back end
def existing_adapter_config(config: RunConfig) -> Optional[AdapterConfig]:
    """The adapter_config.json of the run being resumed or tested, if there is one."""
    resume = config.resume_adapter_file
    for folder in ([Path(resume).parent] if resume else []) + [Path(config.adapter_path)]:
        if (folder / CONFIG_FILE).exists():
            return read_adapter_config(folder)
    return None


def open_backend(config: RunConfig, log: Callable) -> Tuple[object, RunConfig]:
    """(the back end `--backend` asks for (auto: see backend_choice.py; under torchrun or mlx.launch the
    launcher's), with the base model loaded and, in a data-parallel run, the processes joined (given to it as
    `world`); `config` with the model (from the adapters' config when not given) and the back end that runs)."""
    implied = backend_for_launcher(config.backend)
    requested = implied or config.backend
    name, why = choose_backend(requested, config.device)
    if implied:
        why = f"started by {launcher()}"
    world, group = join_world(name, config.device)
    if not world.is_main:
        log = quiet
    log(f"back end: {name} ({why})")
    if world.parallel:
        log(f"data-parallel: {world.describe()}; --batch-size {config.batch_size} is the global batch")
    existing = existing_adapter_config(config)
    if config.model is None and existing is not None and existing.base_model:
        config = replace(config, model=existing.base_model)
        log(f"model: {config.model} (from {CONFIG_FILE})")
    config = replace(config, backend=name)  # adapter_config.json records the back end that ran
    if name == "torch":
        from ..backend_torch.engine import load_base  # a UserError when torch is missing

        try:
            return load_base(config, log, world), config
        except QuantizedBase:
            if requested != "auto" or world.parallel:
                raise
            log("back end: mlx (the base model is MLX-quantized; the torch back end loads floating-point weights)")
            config = replace(config, backend="mlx")
    from ..backend_mlx.engine import load_base

    return load_base(config, log, world, group), config


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
    if world_of(backend).all_agree(bool(saved) and all(key(u) in saved for u in utterances)):
        log(f"base-style targets: read from {path}")
        return [replace(u, text=saved[key(u)]) for u in utterances]
    model = backend.model
    examples, _ = prepare_split(model, utterances, "train", config, lambda m: None, timestamps=False, style=style)
    log(f"base-style targets: transcribing the {len(examples)} training utterances once with the base model")
    indices, hyps = transcribe_examples(backend, examples, config.task, config.decoding_batch(), config.progress,
                                        base_model=True)
    tokenizer = tokenizer_for(model, config.task)
    rows, out = [], []
    for i, hyp in zip(indices, hyps):
        u = examples.utterances[i]
        styled = replace(u, text=case_style.base_styled_text(u.text, hyp, style, tokenizer, u.language))
        rows.append({"key": key(u), "base": hyp, "text": styled.text})
        out.append(styled)
    if world_of(backend).is_main:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def prepare_train_split(backend, utterances: list, config: RunConfig, adapter_config: AdapterConfig, log: Callable):
    """The training examples, in base style when --base-style-targets asks for it."""
    style = adapter_config.case_style
    one_style = style in ("upper", "lower") or adapter_config.punctuation == "none"
    if config.base_style_targets and one_style:
        utterances, style = base_style_utterances(backend, utterances, config, style, log), "keep"
    elif config.base_style_targets:
        log("base-style targets: not used; the training transcripts are cased and punctuated already")
    return prepare_split(backend.model, utterances + with_no_speech(utterances, config, log), "train", config, log,
                         timestamps=True, style=style)


def streamed_mixes(config: RunConfig, sample: list, log: Callable) -> list:
    """--replay-data and --no-speech-fraction under --streaming: their rows are drawn into each batch
    at their share (a stream cannot be extended with rows the way a list is)."""
    mixes = []
    if float(config.replay_fraction or 0.0) > 0:
        pool = replay_pool(config)
        mixes.append(MixedRows(pool, float(config.replay_fraction), int(config.seed)))
        log(f"replay: {100 * float(config.replay_fraction):g}% of the rows of each batch, on average, drawn from the "
            f"{len(pool)} utterances of {config.replay_data}")
    if float(config.no_speech_fraction) > 0:
        languages = training_languages(sample, config.language)
        pool = no_speech_training_clips(DISTINCT_TRAINING_CLIPS, languages, int(config.seed),
                                        longest=float(config.max_duration))
        mixes.append(MixedRows(pool, float(config.no_speech_fraction), int(config.seed) + 1))
        log(f"no speech: {100 * float(config.no_speech_fraction):g}% of the rows of each batch, on average, are noise or "
            f"silence clips with empty transcripts (--no-speech-fraction)")
    return mixes


def with_no_speech(utterances: list, config: RunConfig, log: Callable) -> list:
    """--no-speech-fraction: generated noise and silence clips with empty transcripts, that share of
    the training examples."""
    fraction = float(config.no_speech_fraction)
    count = round(fraction / (1 - fraction) * len(utterances)) if fraction > 0 else 0
    if not count:
        return []
    log(f"no speech: {count} noise or silence clips with empty transcripts join the {len(utterances)} training "
        f"utterances ({100 * fraction:g}%, --no-speech-fraction)")
    return no_speech_training_clips(count, training_languages(utterances, config.language), int(config.seed),
                                    longest=float(config.max_duration))


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
    trainable, total = backend.count_parameters()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    splits = read_splits(config, ["train", "valid"], log)
    # encoder states of the base model's passes over the training audio, for training to take
    warm = [] if caches_training_states(backend, config.training_args(), bool(config.streaming)) \
        and not world_of(backend).parallel else None  # several processes each compute a share instead
    try:
        return train_from_splits(backend, config, adapter_config, splits, resume, warm, log)
    finally:
        for states in warm or []:
            states.close()


def train_from_splits(backend, config: RunConfig, adapter_config: AdapterConfig, splits: dict, resume,
                      warm: Optional[list], log: Callable) -> dict:
    world = world_of(backend)  # in a data-parallel run the main process alone writes files
    if config.streaming:
        sample = stream_sample(config)  # the text style is settled on the stream's first rows
        choose_text_style(adapter_config, config, [u.text for u in sample], log)
        first_rows, _ = prepare_split(backend.model, sample[:64], "train", config, lambda m: None, timestamps=True,
                                      style=adapter_config.case_style)
        config, plan = plan_memory(backend, config, first_rows, splits, log)
        train_set, train_report = streamed_train_batches(backend.model, config, adapter_config.case_style,
                                                         world.rank, world.size, streamed_mixes(config, sample, log)), None
    else:
        choose_text_style(adapter_config, config, [u.text for u in splits["train"]], log)
        if config.replay_data == SELF:
            train_utterances = splits["train"] + self_replay_utterances(backend, splits["train"], config, log, warm)
        else:
            train_utterances = with_replay(splits["train"], config, log)
        train_set, train_report = prepare_train_split(backend, train_utterances, config, adapter_config, log)
        first_rows = train_set
        config, plan = plan_memory(backend, config, train_set, splits, log)
    if resume:  # only now: the base model's passes over the data above run with the adapters still zero
        backend.load_adapter_weights(read_adapter_tensors(resume), resume)
    valid_set = None
    if splits.get("valid"):
        valid_set, _ = prepare_split(backend.model, splits["valid"], "valid", config, log, timestamps=True,
                                     style=adapter_config.case_style)
    if world.is_main:
        save_adapter_config(adapter_config, config.adapter_path)
    heads = None
    if config.alignment_heads == "auto" and not resume and world.is_main:  # a resumed run has no base model to compare against
        heads = HeadReselection(backend, first_rows, config.task, log)
    reporter = Reporter(parse_report_to(config.report_to or ()) if world.is_main else [], Path(config.adapter_path),
                        config.to_json(), log)
    try:
        scorer = validation_wer(backend, valid_set, config.task, int(config.batch_size), int(config.val_batches),
                                adapter_config.case_style, adapter_config.punctuation) if valid_set is not None else None
        summary = train(backend, train_set, valid_set, config.training_args(), Path(config.adapter_path), resume, log,
                        config.progress, on_metrics=reporter, warm_states=warm or (), valid_wer=scorer)
    finally:
        reporter.close()
    plot = world.is_main and plot_training_curves(Path(config.adapter_path) / METRICS_FILE,
                                                  Path(config.adapter_path) / CURVES_PLOT)
    if plot:
        log(f"wrote {plot}")
    if heads is not None and summary.get("saved") and summary.get("status") != "interrupted":
        if heads.choose(backend, adapter_config) and adapter_config.alignment_heads:
            save_adapter_config(adapter_config, config.adapter_path)
    summary["data"] = train_report.to_json() if train_report else {"split": "train", "streamed": True}
    summary["memory_plan"] = plan.to_json()
    summary["adapter_config"] = adapter_config
    return summary


def plan_memory(backend, config: RunConfig, train_set, splits: dict, log: Callable) -> Tuple[RunConfig, object]:
    """The memory plan before training (tuner/memory_plan.py): the run's estimated peak against the device's
    memory, from the longest training label and the utterances whose encoder states are cached; `config` with
    --batch-size auto settled. Refuses, naming what would fit, a run that cannot fit."""
    cached = len(set(same_audio(train_set.utterances))) if caches_training_states(
        backend, config.training_args(), bool(config.streaming)) else 0
    valid = len(splits.get("valid") or []) if cached or (not backend.encoder_trained and config.encoder_cache) else 0
    return settle(backend, config, max(train_set.lengths, default=1), cached, valid, log)


def refuse_unfit_adapters(backend, config: RunConfig) -> None:
    """Adapters of another model's shapes, or a resume file that is not there, are refused now, before
    the base model's scoring pass that --test runs first (minutes on a real test set)."""
    if config.train:
        resume_file(backend.model, config)
        return
    existing = existing_adapter_config(config) if config.test else None
    if existing is not None:
        check_dims(backend.model.dims, backend.model.source, existing, config.adapter_path)


def rescue_adapters(backend, adapter_config: AdapterConfig, step: int) -> str:
    """Where the trained adapters went when their folder could not take them (a full disk): a new
    temporary folder, so that the training is not lost."""
    import tempfile

    try:
        rescue = Path(tempfile.mkdtemp(prefix="mlx_whisper_lora_adapters_"))
        save_checkpoint(backend, rescue, step, keep_step_copy=False)
        save_adapter_config(adapter_config, rescue)
    except OSError as e:
        return f"nor to a temporary folder ({e.strerror or e}): free some disk space and train again"
    return f"they are saved in {rescue} instead (move that folder where you want the adapters)"


def run(config: RunConfig, log: Callable) -> dict:
    """Train and/or test as `config` says; returns {"train": summary, "test": report}."""
    config.check()
    if config.train:  # before hours of work whose results would have nowhere to go
        check_writable(config.adapter_path, "pass another --adapter-path")
    backend, config = open_backend(config, log)
    result = run_with(backend, config, log)
    world_of(backend).close()  # a torchrun process group is destroyed, not left to the interpreter's exit
    return result


def run_with(backend, config: RunConfig, log: Callable) -> dict:
    """`run` on an opened back end."""
    world = world_of(backend)
    world.adapter_dir = str(config.adapter_path)
    if not world.is_main:  # the main process speaks for the run
        log, config = quiet, replace(config, progress=False)
    refuse_unfit_adapters(backend, config)
    if config.train:
        config = settle_replay(config, backend.model.is_multilingual, log)
    if config.streaming and world.parallel and config.batch_size != "auto" and int(config.batch_size) % world.size:
        raise UserError(f"--batch-size {config.batch_size} is the global batch: with --streaming it must be a multiple "
                        f"of the {world.size} processes (each reads batch-size/{world.size} rows a step)")
    result = {}
    adapter_config = None
    base = None
    if config.test and config.compare_base and (config.train or (Path(config.adapter_path) / CONFIG_FILE).exists()):
        base = score_base(backend, config, log)  # before any adapter is applied
    if config.train:
        result["train"] = run_training(backend, config, log)
        adapter_config = result["train"]["adapter_config"]
        if result["train"]["status"] == "interrupted":
            return result
        if not result["train"].get("saved"):
            raise UserError(f"training finished but the adapters could not be written to {config.adapter_path}; "
                            f"{rescue_adapters(backend, adapter_config, result['train']['steps'])}")
    if config.test:
        best = result.get("train", {}).get("best")
        if best and best["kept"]:
            log(f"testing the adapters of {best['described']} (the best validation; --no-best-checkpoint tests the "
                "last step's)")
        elif best:
            log(f"testing the adapters of the last step, {result['train']['steps']}")
        result["test"] = run_test(backend, config, log, adapter_config, base)
    return result
