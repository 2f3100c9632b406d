"""Write one export: the format's own writer (export/formats/), then the model card and the training plots
beside it, and a note when the adapters' text style is something the runtime will not apply itself."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from .. import __version__
from ..files import atomic_write_text
from ..formats.adapter_config import AdapterConfig
from .model_card import PLOTS, model_card, style_note
from .registry import ExportJob, get_format


def write_export(name: str, job: ExportJob, config: Optional[AdapterConfig] = None,
                 adapter_path: Optional[Path] = None, base_name: Optional[str] = None, log: Callable = print) -> Path:
    """Write `job` in format `name`; with `config` (a fine-tune), the model card and plots too."""
    record = get_format(name)
    note = style_note(config) if config is not None else None
    if note and not record.text_style:
        log(f"note: {note} ({name} export; the model card in {job.save_path} says so too)")
    out = record.write(job)
    if config is None:
        return out
    card = model_card(record, out, base_name or job.model.source, config, adapter_path, __version__, job.base_ref)
    for plot in PLOTS:  # the card shows the training curves and test scores
        if adapter_path and (Path(adapter_path) / plot).exists():
            shutil.copyfile(Path(adapter_path) / plot, out / plot)
    atomic_write_text(out / "README.md", card + "\n")
    return out
