"""The base model's and an adapted model's transcripts of the same audio, printed side by side.

What the product is for, in one screen: `python -m mlx_whisper_lora.transcribe` with no arguments
transcribes the bundled demo clip with tiny.en and with the bundled demo adapter
(`assets/demo_adapter`, rebuilt by `scripts/make_demo_adapter.py`); `--compare-base` does it for any
files and adapter. Both transcripts come from one loaded base model: the adapter is switched on and
off through the adapter bank, not reloaded.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence

from ..assets_dir import DEMO_ADAPTER, DEMO_CLIP
from .bank import BASE, AdapterBank

ADAPTED = "adapted"


def columns(left_title: str, left: str, right_title: str, right: str, width: Optional[int] = None) -> str:
    """Two texts wrapped into columns under their titles."""
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    col = max(20, (width - 3) // 2)
    lw = textwrap.wrap(left.strip(), col) or [""]
    rw = textwrap.wrap(right.strip(), col) or [""]
    rows = [f"{left_title:<{col}} | {right_title}", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(lw), len(rw))):
        a = lw[i] if i < len(lw) else ""
        b = rw[i] if i < len(rw) else ""
        rows.append(f"{a:<{col}} | {b}".rstrip())
    return "\n".join(rows)


def bank_with(model, adapter_path, backend: str = "mlx") -> AdapterBank:
    """A bank over a loaded base `model` holding the adapter at `adapter_path` as "adapted"."""
    bank = AdapterBank(model, backend)
    bank.add(ADAPTED, adapter_path)
    return bank


def compare_with_base(bank: AdapterBank, audio_paths: Sequence, width: Optional[int] = None, **options) -> List[dict]:
    """Each file transcribed by the base model and by the bank's "adapted" adapter, printed side by side
    (unless verbose=False); returns the adapted results."""
    from ..inference.transcriber import transcribe

    verbose = options.pop("verbose", True)
    adapted_results = []
    for path in audio_paths:
        both = []
        for name in (BASE, ADAPTED):
            bank.select([name])
            both.append(transcribe(str(path), bank.model, verbose=False, **options))
        adapted_results.append(both[1])
        if verbose is not False:
            print(f"{path}\n" + columns("base model", both[0]["text"], "with the adapter", both[1]["text"], width) + "\n")
    bank.select([BASE])
    return adapted_results


def compare_demo(audio=DEMO_CLIP, adapter_path=DEMO_ADAPTER, model: Optional[str] = None, width: Optional[int] = None):
    """The demo clip (or `audio`) by the base model and with the demo adapter (or `adapter_path`), printed."""
    from ..formats.adapter_files import read_adapter_config
    from ..load import load_model

    bank = bank_with(load_model(model or read_adapter_config(adapter_path).base_model), adapter_path)
    return compare_with_base(bank, [Path(audio)], width)[0]
