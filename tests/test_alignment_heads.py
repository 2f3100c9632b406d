"""Alignment heads: re-selected when other heads follow the audio better, kept through adapters, fuse
and exports; and word and segment times of a fine-tuned model stay close to the base model's."""

import pytest
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from mlx_whisper_lora.inference import alignment_heads
from mlx_whisper_lora.text.tokenizer import get_tokenizer


class _PlantedModel:
    """A stand-in decoder whose cross-attention puts the text on the audio's diagonal in chosen heads
    (`aligned`) and scatters it in the others, so the right choice of heads is known."""

    def __init__(self, aligned, heads):
        self.dims = SimpleNamespace(n_text_layer=2, n_text_head=4)
        self.aligned = set(aligned)
        self.alignment_heads = list(heads)

    def encode_audio(self, mel):
        return mel

    def alignment_scores(self, tokens, audio_features, heads):
        n_tokens, n_frames = tokens.shape[1], 1500
        rng = np.random.default_rng(n_tokens)
        diagonal = np.full((n_tokens, n_frames), -8.0, dtype=np.float32)
        for i in range(n_tokens):
            centre = int(i * 300 / n_tokens)
            diagonal[i, max(0, centre - 3) : centre + 4] = 8.0
        qk = [diagonal if tuple(h) in self.aligned else rng.normal(0, 3, (n_tokens, n_frames)).astype(np.float32)
              for h in heads]
        return np.zeros((n_tokens, 51864), np.float32), np.stack(qk)


def _items(count=3):
    tok = get_tokenizer(False)
    texts = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine and more",
             "all that glitters is not gold my friend"]
    return [alignment_heads.AlignmentItem(np.zeros((3000, 80), np.float32), tok.encode(" " + t), 600, tok)
            for t in texts[:count]]


def test_heads_that_follow_the_audio_are_chosen():
    good = [(1, 0), (1, 3)]
    reference_model = _PlantedModel(good, good)
    items = _items()
    reference = alignment_heads.reference_boundaries(reference_model, items)
    drifted = _PlantedModel(good, [(0, 1), (0, 2)])  # listed heads no longer follow the audio
    choice = alignment_heads.select_heads(drifted, items, reference)
    assert choice.changed and choice.heads == good
    assert choice.error < 0.05 < choice.previous_error
    kept = alignment_heads.select_heads(reference_model, items, reference)  # already right: nothing changes
    assert not kept.changed and kept.heads == good


def test_adapter_heads_reach_the_model_and_every_export(tiny_en_checkpoint, tmp_path):
    """Heads in adapter_config.json are used by both back ends and written by fuse (MLX weights and the
    extras file, transformers' generation_config)."""
    from mlx_whisper_lora.backend_mlx.adapters import apply_adapters, save_adapters
    from mlx_whisper_lora.backend_mlx.load import load_model, resolve
    from mlx_whisper_lora.formats.adapter_config import AdapterConfig

    heads = [[0, 1], [2, 3], [3, 5]]
    model = load_model("tiny.en")
    config = AdapterConfig(rank=4, alpha=8, freeze_encoder=True, base_model="tiny.en", dims=model.dims.to_dict(),
                           alignment_heads=heads)
    apply_adapters(model, config)
    adapters = tmp_path / "adapters"
    save_adapters(model, config, adapters)

    from mlx_whisper_lora.transcribe import load_for_inference

    for backend in ("mlx", "torch"):
        loaded = load_for_inference("tiny.en", str(adapters), backend=backend, device="cpu" if backend == "torch" else None)
        assert alignment_heads.model_heads(loaded) == [tuple(h) for h in heads], backend
    for fmt in ("mlx", "hf"):
        out = tmp_path / f"fused_{fmt}"
        proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.fuse", "--adapter-path", str(adapters),
                               "--save-path", str(out), "--export-format", fmt], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        if fmt == "mlx":
            assert [list(h) for h in resolve(str(out)).alignment_heads] == heads
            assert json.loads((out / "mlx_whisper_lora.json").read_text())["alignment_heads"] == heads
        else:
            assert json.loads((out / "generation_config.json").read_text())["alignment_heads"] == heads


def _held_out(shared_data, count):
    rows = [json.loads(line) for line in (shared_data / "librispeech_2spk/manifest.jsonl").read_text().splitlines()]
    return [shared_data / "librispeech_2spk" / r["audio"] for r in rows if r["id"].startswith("4088-158079")][:count]


@pytest.mark.slow  # 145 s: keeps the default suite under 15 minutes
def test_times_survive_fine_tuning(shared_data, tmp_path):
    """A decoder LoRA adapter trained on two LibriSpeech speakers (with timestamp targets on part of the
    data): on held-out utterances of the same speakers, words the base and adapted models agree on start
    and end within 0.2 s of each other (>= 85%), and segment boundaries stay close."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"))
    from finetune_demo import write_manifests
    from word_timing_after_finetune import paired_words, summarize

    from mlx_whisper_lora import lora
    from mlx_whisper_lora.backend_mlx.adapters import load_adapters
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.inference.transcriber import transcribe

    write_manifests(shared_data / "librispeech_2spk", tmp_path / "data")
    adapters = tmp_path / "adapters"
    lora.main(["--train", "--model", "tiny.en", "--data", str(tmp_path / "data"), "--adapter-path", str(adapters),
               "--iters", "40", "--freeze-encoder", "--learning-rate", "1e-3", "--timestamp-fraction", "0.5",
               "--steps-per-eval", "1000", "--save-every", "0", "--no-progress"])
    base = load_model("tiny.en")
    tuned = load_model("tiny.en")
    load_adapters(tuned, adapters)
    pairs, segment_shift = [], []
    for path in _held_out(shared_data, 6):
        reference = transcribe(path, base, temperature=0.0, word_timestamps=True)
        adapted = transcribe(path, tuned, temperature=0.0, word_timestamps=True)
        pairs += paired_words(reference, adapted)
        plain_base = transcribe(path, base, temperature=0.0)["segments"]
        plain_tuned = transcribe(path, tuned, temperature=0.0)["segments"]
        segment_shift += [abs(plain_base[0]["start"] - plain_tuned[0]["start"]),
                          abs(plain_base[-1]["end"] - plain_tuned[-1]["end"])]
    report = summarize(pairs)
    assert report["words"] >= 60
    assert report["within"] >= 0.85, report
    assert np.median(segment_shift) <= 0.5 and max(segment_shift) <= 2.0, segment_shift
