"""whisper.cpp's ggml-model.bin, float16 (whisper.cpp's convolution needs float16 kernels: a float32 file
aborts it) or its own q8_0/q5_0/q4_0 blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ...data.audio import mel_filters
from ...text.tokenizer import read_ranks
from ..ggml import write_ggml
from ..registry import ExportFormat, ExportJob


def write(job: ExportJob) -> Path:
    model = job.model
    job.save_path.mkdir(parents=True, exist_ok=True)
    ranks = read_ranks(model.folder, model.is_multilingual)
    write_ggml(job.save_path / "ggml-model.bin", model.float_weights(), model.dims, mel_filters(model.dims.n_mels),
               ranks, job.dtype, job.quantize)
    return job.save_path


def runner(path: Path, language: Optional[str]):
    from pywhispercpp.model import Model

    model = Model(str(path / "ggml-model.bin"), print_progress=False, print_realtime=False)
    # pywhispercpp strips each segment's text: joined without a space, words at segment ends run together
    return lambda audio: " ".join(s.text.strip() for s in model.transcribe(audio, language=language or "auto"))


FORMAT = ExportFormat(
    name="ggml", description="a whisper.cpp model (ggml-model.bin)", rank=4, dtypes=("float16",), write=write,
    quantizations=("q8_0", "q5_0", "q4_0"), bits={8: "q8_0", 5: "q5_0", 4: "q4_0"},
    library="whisper.cpp", runtime="whisper.cpp", runtime_module="pywhispercpp", runner=runner,
    loading="""```bash
whisper-cli -m {path}/ggml-model.bin -l {language} -f speech.wav     # whisper.cpp
```
```python
from pywhispercpp.model import Model
print(" ".join(s.text for s in Model("{path}/ggml-model.bin").transcribe("speech.wav", language="{language}")))
```""")
