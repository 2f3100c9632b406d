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
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import UserError

RUNTIMES = {"mlx": ("mlx-whisper", "mlx_whisper"), "hf": ("transformers", "transformers"),
            "peft": ("peft", "peft"), "ct2": ("faster-whisper", "faster_whisper"), "ggml": ("whisper.cpp", "pywhispercpp")}


def plain(text: str) -> str:
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


def _runner(fmt: str, path: Path, language: Optional[str]) -> Callable[[np.ndarray], str]:
    """Transcribe one 16 kHz clip with the runtime of `fmt` reading the export at `path`."""
    if fmt == "mlx":
        import mlx_whisper

        return lambda a: mlx_whisper.transcribe(a, path_or_hf_repo=str(path), language=language, temperature=0.0,
                                                fp16=False, verbose=None)["text"]
    if fmt in ("hf", "peft"):
        import transformers

        if fmt == "peft":
            import peft

            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            model = peft.PeftModel.from_pretrained(transformers.WhisperForConditionalGeneration.from_pretrained(base),
                                                   str(path)).eval()
            processor = transformers.WhisperProcessor.from_pretrained(base)
        else:
            model = transformers.WhisperForConditionalGeneration.from_pretrained(str(path)).eval()
            processor = transformers.WhisperProcessor.from_pretrained(str(path))
        options = {"language": language, "task": "transcribe"} if model.config.vocab_size >= 51865 and language else {}

        def run(audio):
            import torch

            features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
            with torch.no_grad():
                tokens = model.generate(input_features=features, return_timestamps=True, **options)
            return processor.batch_decode(tokens, skip_special_tokens=True)[0]

        return run
    if fmt == "ct2":
        from faster_whisper import WhisperModel

        model = WhisperModel(str(path), device="cpu", compute_type="float32")
        return lambda a: "".join(s.text for s in model.transcribe(a, beam_size=1, language=language, temperature=0.0)[0])
    from pywhispercpp.model import Model

    model = Model(str(path / "ggml-model.bin"), print_progress=False, print_realtime=False)
    # pywhispercpp strips each segment's text: joined without a space, words at segment ends run together
    return lambda a: " ".join(s.text.strip() for s in model.transcribe(a, language=language or "auto"))


def verify_export(fmt: str, path: Path, adapter_path: Path, ours_model, count: int, log: Callable = print) -> Dict:
    """Print and return {runtime: {"agree", "clips", "wer"}} for this package and the export's runtime."""
    from ..data.audio import load_audio
    from ..inference.transcriber import transcribe
    from ..text.metrics import score

    name, module = RUNTIMES[fmt]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--verify runs the export in {name}, which is not installed (pip install {name})")
    rows = held_out_clips(adapter_path, count)
    audios = [np.array(load_audio(r["audio"])) for r in rows]
    language = rows[0].get("language") if rows else None
    ours = [transcribe(a, ours_model, temperature=0.0, language=language, verbose=False)["text"] for a in audios]
    run = _runner(fmt, Path(path), language)
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
