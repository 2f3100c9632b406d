"""PEFT adapters (`PeftModel.from_pretrained` on transformers' Whisper), with the base they name written as a
transformers folder unless it is a hub id transformers resolves itself."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ...formats.peft import export_peft
from ..registry import ExportFormat, ExportJob
from .hf import peft_base, transformers_runner


def write(job: ExportJob) -> Path:
    return export_peft(job.model.adapter_tensors, job.adapter_config, job.save_path, base_model_name=job.base_ref)


def runner(path: Path, language: Optional[str]):
    return transformers_runner(path, language, base=peft_base(path))


FORMAT = ExportFormat(
    name="peft", description="a PEFT adapter", rank=2, dtypes=("float32", "float16"), write=write,
    adapter_only=True, library="peft", runtime="peft", runtime_module="peft", runner=runner,
    loading="""```python
from peft import PeftModel
from transformers import WhisperForConditionalGeneration, WhisperProcessor
base = WhisperForConditionalGeneration.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{path}")
processor = WhisperProcessor.from_pretrained("{base}")
```""")
