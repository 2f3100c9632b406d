"""`--test`: the adapted model scored beside the base model on the same test set, and, with
`--general-data`, on general speech the adapters were not trained for (the forgetting check).

The base model is scored before any adapter touches it (its scores cached per test set, see
score_keeping.py); the adapted model after. Every run's results are kept.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..assets_dir import ASSETS
from ..data.examples import REPLAY_ID_PREFIX
from ..data.manifests import DataError, load_folder_split, read_manifest, shared_manifest
from ..errors import UserError
from ..files import atomic_write_text
from ..formats.adapter_config import AdapterConfig
from ..formats.adapter_files import ADAPTER_FILE, CONFIG_FILE, saved_step
from ..text.normalizers import normalizer_name
from ..tuner.data_prep import prepare_split, read_splits
from ..tuner.distributed import world_of
from .evaluation import log_report, test_report
from .no_speech import hallucination_line, hallucination_report
from ..tuner.reporting import TAGS, TEST_PLOT, Reporter, parse_report_to, plot_test_scores
from ..tuner.run_config import RunConfig
from .score_keeping import (cache_base_report, cached_base_report, comparison_lines, disagreement, forgetting_warning,
                            keep_run, summary, test_set_key)

TEST_RESULTS_FILE = "test_results.json"
BUILTIN_GENERAL = "builtin"


def general_utterances(config: RunConfig, value: Optional[str] = None) -> list:
    """--general-data (or `value`): a folder (its test split, else every row of its manifest), a
    manifest file, or `builtin` (the package's own small English test set)."""
    value = str(value or config.general_data)
    if value == BUILTIN_GENERAL:
        return load_folder_split(ASSETS / "demo_data", "test")
    path = Path(value)
    if path.is_file():
        return read_manifest(path)
    if path.is_dir():
        rows = load_folder_split(path, "test", required=False)
        if rows is None and shared_manifest(path) is not None:
            rows = read_manifest(shared_manifest(path))
        if rows:
            return rows
        raise DataError(f"{path} has no test.jsonl, test.csv or manifest.jsonl")
    raise UserError(f"{value}: no such file or folder; pass a folder or manifest of general-domain "
                    f"speech with transcripts, or {BUILTIN_GENERAL}")


def with_replay(utterances: list, config: RunConfig, log: Callable) -> list:
    """The training utterances with --replay-data mixed in at --replay-fraction (drawn with a seed,
    repeated when the replay set is smaller than its share), each in its own language."""
    import random

    fraction = float(config.replay_fraction or 0.0)
    if fraction <= 0:
        return utterances
    pool = replay_pool(config)
    count = round(fraction / (1 - fraction) * len(utterances))
    rng = random.Random(int(config.seed))
    drawn = [pool[i % len(pool)] for i in rng.sample(range(max(count, len(pool))), count)] if count else []
    log(f"replay: {len(drawn)} utterances of {config.replay_data} mixed into the {len(utterances)} training utterances "
        f"({100 * fraction:g}%)")
    return utterances + drawn


def replay_pool(config: RunConfig) -> list:
    """The --replay-data utterances, named replay:ID, each in its own language (--general-language if none)."""
    return [replace(u, id=f"{REPLAY_ID_PREFIX}{u.id}", language=u.language or config.general_language)
            for u in general_utterances(config, config.replay_data)]


def decoding_settings(config: RunConfig) -> dict:
    """What, besides the model and the data, changes a base model's scores (part of their cache key)."""
    from importlib.metadata import version

    return {"backend": config.backend, "device": config.device, "dtype": config.dtype, "bits": config.bits,
            "package": version("mlx-whisper-lora")}


def general_config(config: RunConfig) -> RunConfig:
    """The run's settings for the general data: its own language (English unless its rows say otherwise)."""
    return replace(config, language=config.general_language)


def split_key(backend, config: RunConfig, examples) -> str:
    from importlib.metadata import version

    rows = [(u.id, u.audio if isinstance(u.audio, str) else f"{len(u.audio)} bytes", u.text, u.language)
            for u in examples.utterances]
    model = backend.model
    return test_set_key(model.source, model.dims.to_dict(), config.task, rows,
                        dict(decoding_settings(config), test_batches=int(config.test_batches),
                             normalizer=version("whisper-normalizer")))


def score(backend, config: RunConfig, utterances: list, name: str, log: Callable, style: Optional[str],
          punctuation: Optional[str]) -> dict:
    examples, _ = prepare_split(backend.model, utterances, name, config, log, timestamps=False, style=style or "keep")
    return score_examples(backend, config, examples, style, punctuation)


def score_examples(backend, config: RunConfig, examples, style: Optional[str], punctuation: Optional[str]) -> dict:
    return test_report(backend, examples, config.task, config.decoding_batch(), int(config.test_batches),
                       config.progress, style, punctuation, float(config.cache_memory_gb), bool(config.encoder_cache))


def score_base(backend, config: RunConfig, log: Callable) -> Dict[str, Optional[dict]]:
    """The base model's reports on the test split (and the general data), cached; call before adapters."""
    model, world = backend.model, world_of(backend)
    out: Dict[str, Optional[dict]] = {"test": None, "general": None, "no_speech": None, "long_form": None}
    jobs = [("test", config, lambda: read_splits(config, ["test"], log)["test"])]
    if config.general_data:
        jobs.append(("general", general_config(config), lambda: general_utterances(config)))
    for name, job_config, read in jobs:
        utterances = read()
        if name == "test":
            out["long_form"] = base_long_form(backend, config, utterances, log)
        examples, _ = prepare_split(model, utterances, name, job_config, lambda m: None, timestamps=False,
                                    style=model.case_style or "keep")
        key = split_key(backend, job_config, examples)
        report = cached_base_report(key)
        if not world.all_agree(report is not None):  # every process decodes its share, or none does
            report = None
        if report is not None:
            log(f"base model on the {name} data: cached scores ({len(examples)} utterances)")
        else:
            log(f"base model on the {name} data: scoring {len(examples)} utterances (cached for later runs)")
            report = score_examples(backend, job_config, examples, model.case_style, model.punctuation)
            report["base_cache_key"] = key
            if world.is_main:
                cache_base_report(key, report)
        out[name] = report
    if config.no_speech_check:
        out["no_speech"] = base_hallucination_report(backend, config, log)
    return out


def long_recordings(config: RunConfig, test_utterances: list, log: Callable) -> list:
    """The recordings of the long-form test: --test-long's, else those a prepared test split was cut from."""
    from .long_form_test import from_inputs, from_prepared

    if config.test_long:
        return from_inputs([config.test_long], log)
    return from_prepared(test_utterances) if config.long_form_check else []


def base_long_form(backend, config: RunConfig, test_utterances: list, log: Callable) -> Optional[dict]:
    """The base model's long-form transcripts of the test recordings (cached), or None when there are none."""
    from .long_form_test import recordings_key, transcribe_recordings

    recordings = long_recordings(config, test_utterances, log)
    if not recordings:
        return None
    model = backend.model
    key = test_set_key(model.source, model.dims.to_dict(), config.task, [("long form", recordings_key(recordings))],
                       dict(decoding_settings(config), language=config.language, report=1))
    cached = cached_base_report(key)
    if world_of(backend).all_agree(cached is not None):
        log(f"base model on the {len(recordings)} long recordings: cached transcripts")
        return {"recordings": recordings, "results": cached["results"]}
    results = transcribe_recordings(backend.decoding_model(), recordings, test_language_or_none(config, model),
                                    config.task, config.progress, log)
    if world_of(backend).is_main:
        cache_base_report(key, {"results": results})
    return {"recordings": recordings, "results": results}


def long_form_report(backend, config: RunConfig, base_long: dict, log: Callable) -> dict:
    """The adapted model's long-form scores beside the base model's, with a warning when any is worse."""
    from .long_form_test import log_comparison, score_results, transcribe_recordings, warning_for

    recordings, base_results = base_long["recordings"], base_long["results"]
    language = test_language_or_none(config, backend.model)
    results = transcribe_recordings(backend.decoding_model(), recordings, language, config.task, config.progress, log)
    base_scores = score_results(recordings, base_results, language, base_results)
    scores = score_results(recordings, results, language, base_results)
    log_comparison(base_scores, scores, log)
    return {"base": base_scores, "adapted": scores, "warning": warning_for(base_scores, scores),
            "transcripts": {r.name: {"base": b["text"], "adapted": a["text"]}
                            for r, b, a in zip(recordings, base_results, results)}}


def test_language_or_none(config: RunConfig, model) -> Optional[str]:
    return config.language or (None if model.is_multilingual else "en")


def base_hallucination_report(backend, config: RunConfig, log: Callable) -> dict:
    """The base model's hallucination report, cached per base model, language and task (its clips are fixed)."""
    model = backend.model
    key = test_set_key(model.source, model.dims.to_dict(), config.task, [("no-speech clips", test_language(config))],
                       dict(decoding_settings(config), report=2))
    report = cached_base_report(key)
    if not world_of(backend).all_agree(report is not None):
        report = hallucination_report(backend, test_language(config), config.task, config.decoding_batch())
        if world_of(backend).is_main:
            cache_base_report(key, report)
    else:
        log("base model on the no-speech clips: cached")
    return report


def test_language(config: RunConfig) -> str:
    return config.language or "en"


def run_test(backend, config: RunConfig, log: Callable, adapter_config: Optional[AdapterConfig] = None,
             base: Optional[Dict[str, Optional[dict]]] = None) -> dict:
    """Test loss, WER and CER of the adapted model beside the base model's; written to
    test_results.json (the latest run) and test_runs/ (every run) in the adapter folder."""
    adapter_dir = Path(config.adapter_path)
    if adapter_config is None:
        if (adapter_dir / CONFIG_FILE).exists():
            adapter_config = backend.load_adapters(adapter_dir, float(config.adapter_scale))
            scaled = f" (LoRA updates times {float(config.adapter_scale):g})" if float(config.adapter_scale) != 1 else ""
            log(f"testing with the adapters in {adapter_dir}{scaled}")
        else:
            log(f"no adapters in {adapter_dir}: testing the base model")
    style = adapter_config.case_style if adapter_config else backend.model.case_style
    punctuation = adapter_config.punctuation if adapter_config else backend.model.punctuation
    report = score(backend, config, read_splits(config, ["test"], log)["test"], "test", log, style, punctuation)
    language = config.language or (None if backend.model.is_multilingual else "en")
    report["normalizer"] = normalizer_name(language)
    general = None
    if config.general_data:
        general = score(backend, general_config(config), general_utterances(config), "general", log, style, punctuation)
        general["normalizer"] = normalizer_name(config.general_language)
    base = base or {}
    log_report(report, log)
    warnings: List[str] = []
    if adapter_config is not None and base.get("test"):
        for line in comparison_lines(base["test"], report, report["normalizer"], "test"):
            log(line)
        warnings.append(disagreement(base["test"], report))
        report["base"] = summary(base["test"])
    if general is not None:
        if adapter_config is not None and base.get("general"):
            for line in comparison_lines(base["general"], general, general["normalizer"], "general data (forgetting check)"):
                log(line)
            warnings.append(forgetting_warning(base["general"], general, float(config.forgetting_threshold)))
            general["base"] = summary(base["general"])
        else:
            log(f"general data: WER {general['normalized_wer']:.2f}% normalized, {general['wer']:.2f}% raw")
        report["general"] = summary(general)
    if base.get("long_form") and adapter_config is not None:
        report["long_form"] = long_form_report(backend, config, base["long_form"], log)
        warnings.append(report["long_form"]["warning"])
    if base.get("no_speech") and adapter_config is not None:
        report["no_speech"] = hallucination_report(backend, test_language(config), config.task,
                                                   config.decoding_batch())
        report["no_speech"]["base"] = base["no_speech"]
        log(hallucination_line(base["no_speech"], report["no_speech"]))
    report["warnings"] = [w for w in warnings if w]
    for warning in report["warnings"]:
        log(warning)
    if (adapter_dir.exists() or config.train) and world_of(backend).is_main:
        write_results(adapter_dir, config, report, base, general, adapter_config is not None, log)
    return report


def write_results(adapter_dir: Path, config: RunConfig, report: dict, base: dict, general: Optional[dict],
                  adapted: bool, log: Callable) -> None:
    out = atomic_write_text(adapter_dir / TEST_RESULTS_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log(f"wrote {out}")
    step = trained_steps(adapter_dir)
    keep_run(adapter_dir, {"test": report, "base": base.get("test"), "general": general,
                           "general_base": base.get("general")}, step, log)
    bars = {"base model": base["test"], "adapted": report} if adapted and base.get("test") else \
        {"adapted" if adapted else "base model": report}
    plot = plot_test_scores(bars, adapter_dir / TEST_PLOT)
    if plot:
        log(f"wrote {plot}")
    targets = parse_report_to(config.report_to or ())
    if targets:
        reporter = Reporter(targets, adapter_dir, config.to_json(), log)
        reporter({"step": step, **{k: report[k] for k in TAGS if k.startswith(("wer", "cer", "normalized", "test_"))
                                   and k in report}})
        reporter.close()


def trained_steps(adapter_dir: Path) -> int:
    """The step the adapters in `adapter_dir` were saved at (where test scores go on the charts)."""
    weights = adapter_dir / ADAPTER_FILE
    return saved_step(weights) if weights.exists() else 0
