"""Hallucination on audio without speech, measured: the share of silent and noise-only clips for
which a model writes any words (after normalization), decoded as `--test` decodes.

The clips are generated with a fixed seed (digital silence, faint dither, white and brown noise
at several levels), so the rate is comparable between the base and the adapted model and between runs.
"""

from __future__ import annotations

from typing import List

import numpy as np

from ..data.audio import SAMPLE_RATE
from ..data.examples import ExampleSet
from ..data.manifests import Utterance
from ..text.normalizers import BasicTextNormalizer
from .data_prep import tokenizer_for
from .evaluation import transcribe_examples

LEVELS_DB = (-60, -40, -25)  # noise RMS, dB relative to full scale


def no_speech_clips(seconds: float = 10.0, seed: int = 0) -> List[Utterance]:
    """Eight clips: silence, dither, and white and brown noise at three levels each."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    clips = {"silence": np.zeros(n, np.float32), "dither": rng.normal(0, 1e-4, n).astype(np.float32)}
    for db in LEVELS_DB:
        rms = 10 ** (db / 20)
        clips[f"white {db} dB"] = rng.normal(0, rms, n).astype(np.float32)
        brown = np.cumsum(rng.normal(0, 1, n))
        brown -= np.convolve(brown, np.ones(1601) / 1601, mode="same")  # no drift, still low-pass
        clips[f"brown {db} dB"] = (brown / (brown.std() + 1e-9) * rms).astype(np.float32)
    return [Utterance(audio=a, text="", id=name, duration=seconds) for name, a in clips.items()]


def hallucination_report(backend, language: str, task: str = "transcribe", batch_size: int = 8) -> dict:
    """{"clips", "non_empty", "rate" (percent), "transcripts"} of greedy decoding on no_speech_clips()."""
    model = backend.model
    utterances = no_speech_clips()
    for u in utterances:
        u.language = language
    examples, _ = ExampleSet.build(utterances, tokenizer_for(model, task), task, model.dims.n_mels,
                                   model.dims.n_text_ctx, 0.0, 0, "no-speech", "keep")
    _, texts = transcribe_examples(backend, examples, task, batch_size, progress=False)
    normalize = BasicTextNormalizer()
    non_empty = [(u.id, t) for u, t in zip(utterances, texts) if normalize(t).strip()]
    return {"clips": len(utterances), "non_empty": len(non_empty), "rate": round(100 * len(non_empty) / len(utterances), 1),
            "transcripts": {u.id: t for u, t in zip(utterances, texts)}}


def hallucination_line(base: dict, adapted: dict) -> str:
    return (f"no speech: words written on {base['non_empty']}/{base['clips']} silent or noise-only clips by the base "
            f"model, {adapted['non_empty']}/{adapted['clips']} with the adapters")
