"""Test scores a user can trust: the base model beside the adapted one, base scores cached, every
run kept, and a warning when raw and normalized WER disagree about whether training helped.

The base model's scores on a test set do not change between runs, so they are computed once per
base model, test set and decoding task and kept in the user's cache folder
(`$MLX_WHISPER_LORA_CACHE`, else `$XDG_CACHE_HOME/mlx_whisper_lora`, else `~/.cache/mlx_whisper_lora`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..files import atomic_write_text

SCORES = (("wer", "WER raw"), ("cer", "CER raw"), ("normalized_wer", "WER normalized"),
          ("normalized_cer", "CER normalized"))
RUNS_FOLDER = "test_runs"
HISTORY_FILE = "test_history.jsonl"


def cache_folder() -> Path:
    root = os.environ.get("MLX_WHISPER_LORA_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlx_whisper_lora"


def test_set_key(model_source: str, dims: dict, task: str, rows: List[tuple], extra: dict) -> str:
    """A name for (base model, test set, decoding settings): rows are (id, audio, text, language)."""
    blob = json.dumps([model_source, dims, task, rows, extra], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def cached_base_report(key: str) -> Optional[dict]:
    path = cache_folder() / "base_scores" / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or unreadable: scored again


def cache_base_report(key: str, report: dict) -> None:
    try:
        atomic_write_text(cache_folder() / "base_scores" / f"{key}.json", json.dumps(report, ensure_ascii=False) + "\n")
    except OSError:
        pass  # a read-only cache costs a re-run next time, nothing more


def relative_change(before: float, after: float) -> Optional[float]:
    return None if not before else 100.0 * (after - before) / before


def comparison_lines(base: dict, adapted: dict, normalizer: str, title: str = "test") -> List[str]:
    """A side-by-side table of base and adapted scores, as printed at the end of `--test`."""
    lines = [f"{title}: {adapted.get('utterances', '?')} utterances, {adapted.get('audio_seconds', 0) / 60:.1f} min; "
             f"normalized with {normalizer}",
             f"  {'':16}{'base':>9}{'adapted':>10}{'change':>10}{'relative':>10}"]
    for key, name in SCORES:
        b, a = float(base[key]), float(adapted[key])
        rel = relative_change(b, a)
        lines.append(f"  {name:16}{b:8.2f}%{a:9.2f}%{a - b:+9.2f}{'' if rel is None else f'{rel:+9.1f}%':>10}")
    return lines


def disagreement(base: dict, adapted: dict) -> Optional[str]:
    """A warning when raw and normalized WER move in opposite directions (base -> adapted)."""
    raw, norm = adapted["wer"] - base["wer"], adapted["normalized_wer"] - base["normalized_wer"]
    if raw * norm >= 0:
        return None
    if raw < 0:
        return (f"warning: raw WER fell ({base['wer']:.2f}% -> {adapted['wer']:.2f}%) but normalized WER rose "
                f"({base['normalized_wer']:.2f}% -> {adapted['normalized_wer']:.2f}%): the adapters learned the "
                "references' case and punctuation style while recognizing fewer words right")
    return (f"warning: normalized WER fell ({base['normalized_wer']:.2f}% -> {adapted['normalized_wer']:.2f}%) but raw "
            f"WER rose ({base['wer']:.2f}% -> {adapted['wer']:.2f}%): the words improved while the case and "
            "punctuation moved away from the references' style")


def forgetting_warning(base: dict, adapted: dict, threshold: float) -> Optional[str]:
    """A warning when the general-domain normalized WER rises by more than `threshold` points."""
    rise = adapted["normalized_wer"] - base["normalized_wer"]
    if rise <= threshold:
        return None
    return (f"warning: forgetting: normalized WER on the general data rose {rise:.2f} points "
            f"({base['normalized_wer']:.2f}% -> {adapted['normalized_wer']:.2f}%, threshold {threshold:g}); "
            "try --replay-fraction, fewer --iters, or a lower --adapter-scale at transcription time")


def summary(report: Optional[dict]) -> Optional[dict]:
    """A report without its transcripts."""
    return None if report is None else {k: v for k, v in report.items() if k != "transcripts"}


def keep_run(adapter_dir: Path, results: Dict[str, Optional[dict]], step: int, log: Callable) -> Path:
    """Write this run's results to test_runs/ (never overwritten) and a line to test_history.jsonl."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = adapter_dir / RUNS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}-step{step}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{stamp}-step{step}-{n}.json"
    atomic_write_text(path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    line = {"time": stamp, "step": step, "file": f"{RUNS_FOLDER}/{path.name}",
            **{name: summary(report) for name, report in results.items()}}
    for report in line.values():
        if isinstance(report, dict):
            report.pop("base_cache_key", None)
    with open(adapter_dir / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
    log(f"kept this run's results in {path} (every run is listed in {adapter_dir / HISTORY_FILE})")
    return path
