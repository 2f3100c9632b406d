"""ONNX files in the layout transformers.js and optimum load (encoder, merged decoder with its key/value cache,
configs and tokenizer beside them), for onnxruntime on Windows, phones and the browser; `--quantize int8` adds
onnxruntime's dynamic int8 variants (`onnx/*_quantized.onnx`, what transformers.js's `q8` dtype loads)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from ..onnx import onnx_runner, write_onnx
from ..onnx_runtime import QUANTIZED_SUFFIX
from ..registry import ExportFormat, ExportJob
from .hf import write as write_hf


def write(job: ExportJob) -> Path:
    with tempfile.TemporaryDirectory(prefix="hf_for_onnx_") as tmp:
        hf = write_hf(ExportJob(job.model, Path(tmp) / "hf", "float32"))
        return write_onnx(hf, job.save_path, job.quantize)


def runner(path: Path, language: Optional[str]):
    """The int8 files when the export has them (what it is shipped for), else the float ones."""
    return onnx_runner(path, language, quantized=(Path(path) / "onnx" / f"encoder_model{QUANTIZED_SUFFIX}.onnx").exists())


FORMAT = ExportFormat(
    name="onnx", description="ONNX files (onnxruntime, transformers.js)", rank=5, dtypes=("float32",), write=write,
    quantizations=("int8",), bits={8: "int8"},
    needs=("onnx", "onnxruntime", "torch", "transformers"), install="pip install 'mlx-whisper-lora[onnx]'",
    library="transformers.js", runtime="onnxruntime", runtime_module="onnxruntime", runner=runner,
    loading="""```js
import {{ pipeline, env }} from "@huggingface/transformers";   // npm @huggingface/transformers
env.localModelPath = "/models/";  env.allowRemoteModels = false;  // the web server serves {path} as /models/{name}
const asr = await pipeline("automatic-speech-recognition", "{name}", {{ dtype: "fp32" }});  // "q8": the int8 files
console.log((await asr(audio16kHzFloat32Array)).text);
```
```python
from mlx_whisper_lora.export.onnx import onnx_runner      # onnxruntime in Python
print(onnx_runner("{path}", "{language}")(audio_16khz_float32))
```""")
