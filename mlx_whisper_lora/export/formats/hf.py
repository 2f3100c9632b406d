"""transformers folders (WhisperForConditionalGeneration with its generation and preprocessor configs and
tokenizer), for `pipeline(...)` and `generate(...)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..hf import save_hf_folder
from ..registry import ExportFormat, ExportJob


def write(job: ExportJob) -> Path:
    model = job.model
    return save_hf_folder(model.float_weights(), model.dims, model.alignment_heads, job.save_path, model.folder,
                          job.dtype)


def transformers_runner(model_path: Path, language: Optional[str], base: Optional[str] = None):
    """Greedy `generate` with timestamps (as this package decodes); `base`: a PEFT adapter's base folder or id.
    The log-mel is transformers' own feature extractor's (padded to 30 s)."""
    import torch
    import transformers

    if base is not None:
        import peft

        model = peft.PeftModel.from_pretrained(transformers.WhisperForConditionalGeneration.from_pretrained(base),
                                               str(model_path)).eval()
        processor = transformers.WhisperProcessor.from_pretrained(base)
    else:
        model = transformers.WhisperForConditionalGeneration.from_pretrained(str(model_path)).eval()
        processor = transformers.WhisperProcessor.from_pretrained(str(model_path))
    options = {"language": language, "task": "transcribe"} if model.config.vocab_size >= 51865 and language else {}

    def run(audio):
        features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            tokens = model.generate(input_features=features, return_timestamps=True, **options)
        return processor.batch_decode(tokens, skip_special_tokens=True)[0]

    return run


def runner(path: Path, language: Optional[str]):
    return transformers_runner(path, language)


def peft_base(path: Path) -> str:
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


FORMAT = ExportFormat(
    name="hf", description="a transformers folder", rank=1, dtypes=("float32", "float16"), write=write,
    library="transformers", runtime="transformers", runtime_module="transformers", runner=runner,
    loading="""```python
from transformers import pipeline
asr = pipeline("automatic-speech-recognition", model="{path}")
print(asr("speech.wav", generate_kwargs={{"language": "{language}", "task": "transcribe"}})["text"])
```""")
