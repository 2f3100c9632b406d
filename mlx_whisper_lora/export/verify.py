"""`fuse --verify N`: the evidence to ship an export. Held-out clips are decoded greedily by this package
(base + adapters, unfused) and by the runtime the export is for, and per runtime the count of identical
transcripts (lowercase, punctuation removed: the text style is this package's rendering) and the WER of each
against the references are printed.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

from ..errors import UserError
from .registry import get_format


def plain(text: str) -> str:
    """Text compared across runtimes: lowercase, punctuation removed (the text style is this package's rendering)."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def held_out_clips(adapter_path: Path, count: int) -> List[dict]:
    """The first `count` rows of the adapter's test split (else its validation split), audio paths resolved."""
    config = json.loads((Path(adapter_path) / "adapter_config.json").read_text())
    data = (config.get("run") or {}).get("data")
    for split in ("test", "valid"):
        manifest = Path(data) / f"{split}.jsonl" if data else None
        if manifest is not None and manifest.exists():
            rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:count]
            for row in rows:
                if not Path(row["audio"]).is_absolute():
                    row["audio"] = str(Path(data) / row["audio"])
            return rows
    raise UserError(f"--verify needs held-out clips: the run of {adapter_path} names no data folder with a "
                    "test.jsonl or valid.jsonl (train with --data FOLDER, or verify by hand)")


def verify_export(fmt: str, path: Path, adapter_path: Path, ours_model, count: int, log: Callable = print) -> Dict:
    """`ours_model`: base + adapters unfused behind the decoding seam, in either engine. Print and return {runtime: {"agree", "clips", "wer"}} for this package and the export's runtime."""
    from ..data.audio import load_audio
    from ..inference.transcriber import transcribe
    from ..text.metrics import score

    record = get_format(fmt)
    name, module = record.runtime, record.runtime_module
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--verify runs the export in {name}, which is not installed (pip install {name})")
    rows = held_out_clips(adapter_path, count)
    audios = [np.array(load_audio(r["audio"])) for r in rows]
    language = rows[0].get("language") if rows else None
    ours = [transcribe(a, ours_model, temperature=0.0, language=language, verbose=False)["text"] for a in audios]
    run = record.runner(Path(path), language)
    theirs = [run(a) for a in audios]
    references = [r["text"] for r in rows]
    languages = [r.get("language") or "en" for r in rows]
    report = {}
    for runtime, texts in (("mlx-whisper-lora", ours), (name, theirs)):
        agree = sum(plain(a) == plain(b) for a, b in zip(ours, texts))
        wer = score(references, texts, languages)["normalized_wer"] * 100
        report[runtime] = {"agree": agree, "clips": len(rows), "wer": wer}
        log(f"verify: {runtime:18s} {agree}/{len(rows)} transcripts identical to mlx-whisper-lora's "
            f"(lowercase, no punctuation); normalized WER {wer:.2f}%")
    return report
