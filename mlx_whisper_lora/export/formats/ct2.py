"""CTranslate2 folders for faster-whisper, through CTranslate2's own converter from a transformers folder;
`--quantize int8` keeps `--dtype` as the compute type beside the int8 weights."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..ctranslate2 import convert_hf_folder
from ..registry import ExportFormat, ExportJob
from .hf import write as write_hf


def write(job: ExportJob) -> Path:
    quantization = job.dtype if not job.quantize else ("int8" if job.dtype == "float32" else f"int8_{job.dtype}")
    with tempfile.TemporaryDirectory(prefix="hf_for_ct2_") as tmp:
        hf = write_hf(ExportJob(job.model, Path(tmp) / "hf", "float32"))
        return convert_hf_folder(hf, job.save_path, quantization)


def runner(path: Path, language: Optional[str]):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(path), device="cpu", compute_type="float32")
    return lambda audio: "".join(s.text for s in model.transcribe(audio, beam_size=1, language=language,
                                                                  temperature=0.0)[0])


FORMAT = ExportFormat(
    name="ct2", description="a CTranslate2 folder (faster-whisper)", rank=3, dtypes=("float16", "float32", "bfloat16"),
    write=write, quantizations=("int8",), bits={8: "int8"},
    needs=("ctranslate2", "transformers", "torch"), install="pip install ctranslate2 transformers torch",
    library="ctranslate2", runtime="faster-whisper", runtime_module="faster_whisper", runner=runner,
    loading="""```python
from faster_whisper import WhisperModel
model = WhisperModel("{path}")
segments, info = model.transcribe("speech.wav", language="{language}", word_timestamps=True)
print("".join(s.text for s in segments))
```""")
