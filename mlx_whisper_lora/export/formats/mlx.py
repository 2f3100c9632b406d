"""MLX folders: this package and PyPI mlx-whisper (float16 by default, as mlx-whisper loads them), with MLX's
own affine int8/int4 quantization; the folder carries the adapters' text style (mlx_whisper_lora.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..mlx_folder import save_mlx_folder
from ..registry import ExportFormat, ExportJob


def write(job: ExportJob) -> Path:
    return save_mlx_folder(job.model, job.save_path, job.dtype)


def runner(path: Path, language: Optional[str]):
    import mlx_whisper

    return lambda audio: mlx_whisper.transcribe(audio, path_or_hf_repo=str(path), language=language, temperature=0.0,
                                                fp16=False, verbose=None)["text"]


FORMAT = ExportFormat(
    name="mlx", description="an MLX folder (mlx-whisper, mlx-whisper-lora)", rank=0,
    dtypes=("float16", "float32", "bfloat16"), write=write,
    quantizations=("int8", "int4"), bits={8: "int8", 4: "int4"}, text_style=True,
    library="mlx", runtime="mlx-whisper", runtime_module="mlx_whisper", runner=runner,
    loading="""```python
import mlx_whisper                      # PyPI mlx-whisper
print(mlx_whisper.transcribe("speech.wav", path_or_hf_repo="{path}")["text"])
# or: from mlx_whisper_lora.transcribe import transcribe; transcribe("speech.wav", "{path}")
```""")
