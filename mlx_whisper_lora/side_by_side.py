"""The base model's and an adapted model's transcripts of the same audio, printed side by side.

What the product is for, in one screen: `python -m mlx_whisper_lora.transcribe` with no arguments
transcribes the bundled demo clip with tiny.en and with the bundled demo adapter
(`assets/demo_adapter`, rebuilt by `scripts/make_demo_adapter.py`). Both transcripts come from one
loaded base model: the adapter is switched on through the serving adapter bank, not reloaded.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Optional, Tuple

from .assets_dir import ASSETS

DEMO_ADAPTER = ASSETS / "demo_adapter"
DEMO_CLIP = ASSETS / "demo.flac"


def transcribe_base_and_adapted(audio, adapter_path, model: Optional[str] = None, **options) -> Tuple[dict, dict]:
    """(base result, adapted result) for one file, from one loaded base model."""
    from .backend_mlx.load import load_model
    from .formats.adapter_files import read_adapter_config
    from .inference.transcriber import transcribe
    from .serving.adapter_bank import BASE, AdapterBank

    base_name = model or read_adapter_config(adapter_path).base_model
    bank = AdapterBank(load_model(base_name))
    bank.add("adapted", adapter_path)
    results = []
    for name in (BASE, "adapted"):
        bank.select([name])
        results.append(transcribe(audio, bank.model, **options))
    return results[0], results[1]


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


def compare_demo(audio=DEMO_CLIP, adapter_path=DEMO_ADAPTER, model: Optional[str] = None, width: Optional[int] = None):
    """Transcribe `audio` with the base model and with the adapter; print both; return both results."""
    base, adapted = transcribe_base_and_adapted(str(audio), str(adapter_path), model, verbose=False)
    print(f"{Path(audio).name}: the base model and the same model with the adapter in {adapter_path}\n")
    print(columns("base model", base["text"], "with the adapter", adapted["text"], width))
    return base, adapted
