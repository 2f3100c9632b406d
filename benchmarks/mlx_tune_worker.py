"""PyPI mlx-tune's Whisper LoRA training, timed, for `benchmarks/benchmark_train.py --systems ours,mlx-tune`,
which runs it with the interpreter given as `--mlx-tune-python` (mlx-tune's own environment):
`VENV/bin/python benchmarks/mlx_tune_worker.py SPEC_JSON`.

Runs in an interpreter that has mlx-tune (0.6.0 measured) and, on Linux, `mlx[cpu]` and `mkl` installed,
never in this package's environment (its transformers and mlx versions differ). It is offline: the model
folder mlx-tune loads is made here from the benchmark's MLX weights (mlx-audio's Whisper takes the
mlx-examples layout) and a transformers WhisperProcessor built from this package's tiktoken file, whose
encodings are checked against this package's token ids before anything is timed.

mlx-tune's own trainer runs unchanged (`STTSFTTrainer.train()`, batch `batch_size`, one batch a step,
its Adam at 1e-4). It reports steps only through a tqdm bar, so tqdm is replaced before the trainer
imports it by one that stamps the time at each update (called once a step, after `mx.eval`).
On Linux, MKL is loaded before MLX as this package does (`mlx_whisper_lora/blas.py`): mlx[cpu]'s
bundled reference BLAS would make both sides ~6x slower (measured: 82 s against 13.5 s a step).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

def load_mkl() -> None:
    import ctypes

    if sys.platform != "linux":
        return
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    if not found:
        sys.exit(f"no MKL in {sys.prefix}: pip install mkl (mlx[cpu]'s reference BLAS would be compared instead)")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)


def whisper_tokenizer(tiktoken_file: Path, added: list):
    """transformers' WhisperTokenizer for this tiktoken file: BPE ranks, then `added` (this package's
    special and timestamp tokens, in id order)."""
    from transformers import AddedToken, WhisperTokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    def ranks(path):
        lines = (line.split() for line in Path(path).read_text().splitlines() if line.strip())
        return {base64.b64decode(token): int(rank) for token, rank in lines}

    class LocalTikToken(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(url):  # the local file, not a download
            return ranks(url)

    vocab, merges = LocalTikToken(vocab_file=str(tiktoken_file)).extract_vocab_merges_from_model(str(tiktoken_file))
    if [i for _, i in added] != list(range(len(vocab), len(vocab) + len(added))):
        sys.exit("the added tokens do not follow the BPE ranks in order")
    timestamps = [name for name, _ in added if re.fullmatch(r"<\|\d+\.\d\d\|>", name)]
    specials = [name for name, _ in added if name not in set(timestamps)]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>", add_prefix_space=False,
                                 model_max_length=448)
    if hasattr(tokenizer.backend_tokenizer.model, "ignore_merges"):
        tokenizer.backend_tokenizer.model.ignore_merges = True  # as TikTokenConverter's tokenizer
    tokenizer.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    tokenizer.add_tokens([AddedToken(s, special=False, normalized=False) for s in timestamps])
    wrong = [name for name, i in added if tokenizer.convert_tokens_to_ids(name) != i]
    if wrong:
        sys.exit(f"the tokenizer built for mlx-tune gives {wrong[:3]} other ids than this package's")
    return tokenizer


def model_folder(spec: dict) -> Path:
    """The folder mlx-tune loads (its name must contain "whisper": mlx-tune picks its profile by name)."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    folder = Path(spec["work"]) / "mlx_tune_whisper"
    if (folder / "preprocessor_config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "weights.safetensors"):
        shutil.copy(Path(spec["model_path"]) / name, folder / name)
    dims = spec["dims"]
    tokenizer = whisper_tokenizer(Path(spec["tiktoken"]), spec["added_tokens"])
    if len(tokenizer) != dims["n_vocab"]:
        sys.exit(f"the tokenizer built for mlx-tune has {len(tokenizer)} tokens, the model {dims['n_vocab']}")
    for text, ids in spec["reference_ids"]:
        if tokenizer.encode(text, add_special_tokens=False) != ids:
            sys.exit(f"the tokenizer built for mlx-tune encodes {text!r} differently from this package's")
    features = WhisperFeatureExtractor(feature_size=dims["n_mels"], sampling_rate=16000, hop_length=160,
                                       chunk_length=30, n_fft=400)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(str(folder))
    features.save_pretrained(str(folder))
    return folder


def install_step_clock(times: list, losses: list) -> None:
    import tqdm as tqdm_module

    base = tqdm_module.tqdm

    class Clocked(base):
        def __init__(self, *a, **k):
            k["mininterval"] = 0
            super().__init__(*a, **k)
            times.append(time.perf_counter())

        def update(self, n=1):
            times.append(time.perf_counter())
            return super().update(n)

        def set_postfix(self, ordered_dict=None, refresh=True, **kw):
            values = dict(ordered_dict or {}, **kw)
            if "loss" in values:
                losses.append(float(values["loss"]))
            return super().set_postfix(ordered_dict, refresh, **kw)

    tqdm_module.tqdm = Clocked


def run(spec: dict) -> dict:
    load_mkl()
    times: list = []
    losses: list = []
    install_step_clock(times, losses)
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_audio.stt.utils import load_audio  # what mlx-tune's own examples read audio with

    import mlx_tune
    from mlx_tune import FastSTTModel, STTDataCollator, STTSFTConfig, STTSFTTrainer

    if spec["dtype"] == "float32":  # mlx-audio builds Whisper in float16 unless told; the comparison is float32
        import mlx_audio.stt.models.whisper.whisper as mlx_audio_whisper

        init = mlx_audio_whisper.Model.__init__
        mlx_audio_whisper.Model.__init__ = lambda self, dims, dtype=mx.float32: init(self, dims, dtype)
    model, processor = FastSTTModel.from_pretrained(str(model_folder(spec)))
    model = FastSTTModel.get_peft_model(model, r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
                                        target_modules=["query", "value"], finetune_encoder=spec["config"] == "encdec",
                                        finetune_decoder=True)
    data = Path(spec["data"])
    rows = []
    for line in (data / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        audio = np.array(load_audio(str(data / row["audio"]), sr=16000), dtype=np.float32)
        rows.append({"audio": {"array": audio, "sampling_rate": 16000}, "text": row["text"]})
    config = STTSFTConfig(per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
                          max_steps=spec["steps"], learning_rate=1e-4, logging_steps=1,
                          output_dir=str(Path(spec["work"]) / f"mlx_tune_out_{os.getpid()}"), language="en",
                          task="transcribe")
    collator = STTDataCollator(model=model, processor=processor, language="en", task="transcribe")
    STTSFTTrainer(model=model, processor=processor, data_collator=collator, train_dataset=rows, args=config).train()
    trainable = sum(v.size for _, v in tree_flatten(model.model.trainable_parameters()))
    batch = collator(rows[: spec["batch_size"]])
    return {"step_seconds": [b - a for a, b in zip(times, times[1:])], "first_loss": losses[0] if losses else float("nan"),
            "tokens": int(np.array(batch["labels"] >= 0).sum()) if "labels" in batch else 0,
            "backend": f"mlx-tune {getattr(mlx_tune, '__version__', '?')}", "trainable": int(trainable),
            "gpu_peak_gb": None, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(json.loads(sys.argv[1]))), flush=True)
