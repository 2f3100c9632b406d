"""README.md with Hugging Face model-card metadata for every exported folder: what the model is, what it
was trained on, how it scored, how its text is styled, and how to load it in each runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..formats.adapter_config import AdapterConfig

# The PNG plots training and --test leave beside the adapters (tuner/reporting.py), copied into exports.
PLOTS = {"training_curves.png": "training and validation loss", "test_scores.png": "test WER and CER"}

def style_note(config: AdapterConfig) -> Optional[str]:
    """How to apply the training data's text style to transcripts, or None when there is none to apply."""
    steps = []
    if config.punctuation == "none":
        steps.append("remove punctuation (`mlx_whisper_lora.text.case_style.strip_punctuation`)")
    if config.case_style in ("upper", "lower"):
        steps.append(f"write it in {config.case_style} case (`text.{config.case_style}()`)")
    if not steps:
        return None
    return ("The training transcripts were " + ("all " + config.case_style + " case" if config.case_style in ("upper", "lower") else "cased")
            + (" without punctuation" if config.punctuation == "none" else "")
            + ". mlx-whisper-lora renders transcripts that way on its own; in other runtimes, "
            + " and ".join(steps) + " after decoding to get the same text.")


def model_card(record, path: Path, base_model: str, config: AdapterConfig, adapter_path: Optional[Path],
               version: str, base_path: Optional[str] = None) -> str:
    """The card of an export in `record`'s format (export/registry.py: its library, description and snippet)."""
    language = config.language or "en"
    run = config.run or {}
    lines = ["---", f"library_name: {record.library}", f"base_model: {base_model}",
             "pipeline_tag: automatic-speech-recognition",
             "tags:", "- whisper", "- automatic-speech-recognition", f"- {config.fine_tune_type}", "- mlx-whisper-lora"]
    if config.language:
        lines += ["language:", f"- {config.language}"]
    lines += ["---", "", f"# {path.name}", "",
              f"Whisper `{base_model}` fine-tuned with mlx-whisper-lora {version} ({config.fine_tune_type}"
              + (f", rank {config.rank}, alpha {config.alpha:g}, modules {', '.join(config.modules)}"
                 if config.fine_tune_type != "full" else "")
              + (", encoder frozen" if config.freeze_encoder else "") + f"), exported as {record.description}.", ""]
    lines += ["## Training", ""]
    for key, label in (("data", "data"), ("hf_dataset", "dataset"), ("train_split", "split"), ("iters", "steps"),
                       ("batch_size", "batch size"), ("learning_rate", "learning rate"), ("lr_schedule", "schedule")):
        if run.get(key) not in (None, ""):
            lines.append(f"- {label}: `{run[key]}`")
    results = Path(adapter_path) / "test_results.json" if adapter_path else None
    if results is not None and results.exists():
        try:
            r = json.loads(results.read_text())
            lines += ["", "## Test results (this adapter, mlx-whisper-lora)", "",
                      "| WER % | CER % | normalized WER % | normalized CER % |", "|---|---|---|---|",
                      f"| {r['wer']:.2f} | {r['cer']:.2f} | {r['normalized_wer']:.2f} | {r['normalized_cer']:.2f} |"]
        except (ValueError, KeyError, TypeError):
            pass
    shown = [name for name in PLOTS if adapter_path and (Path(adapter_path) / name).exists()]
    if shown:
        lines += ["", "## Curves", ""] + [f"![{PLOTS[name]}]({name})" for name in shown]
    note = style_note(config)
    if note:
        lines += ["", "## Text style", "", note]
    if config.alignment_heads:
        lines += ["", "## Word timestamps", "",
                  f"Alignment heads re-selected after training: `{config.alignment_heads}` (stored in this export)."]
    lines += ["", "## Load it", "", record.loading.format(path=path, name=Path(path).name, language=language,
                                                     base=base_path or base_model), ""]
    return "\n".join(lines)
