"""Audio without speech: the hallucination report and the training clips against it.

The report is the share of silent and noise-only clips for which a model writes any words (after
normalization), counted two ways (hallucination_report). Its clips are generated with a fixed seed
(digital silence, faint dither, white and brown noise at several levels), so the rate is comparable
between the base and the adapted model and between runs.

`--no-speech-fraction`: adapters trained only on speech learn that every window holds words (Yoruba
adapters write a word on 8 of 8 report clips decoded without the no-speech rule; `transcribe` with its
defaults, on 1 of 8). Training clips of noise with an empty transcript ask them to end the transcript
at once there (measured: 0 of 8 through `transcribe`, still 8 of 8 without the rule, English
forgetting worse; off by default, docs/benchmarks.md). They
are drawn from a wider family than the report's (any spectral slope between white and brown, levels
from -75 to -20 dBFS, 2-30 s, some digital silence) with another seed, so the report does not
measure its own training clips. The forgetting guard (self_replay.py) uses the same family differently:
the base model's own reading of the clips, distilled, which keeps its doubt there rather than teaching
an empty transcript.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..data.audio import SAMPLE_RATE
from ..data.examples import ExampleSet
from ..data.manifests import Utterance
from ..text.normalizers import BasicTextNormalizer
from ..tuner.data_prep import tokenizer_for
from .evaluation import transcribe_examples

LEVELS_DB = (-60, -40, -25)  # noise RMS, dB relative to full scale
DISTINCT_TRAINING_CLIPS = 128  # more are repeats: memory stays bounded (float16, ~16 s each: ~65 MB)


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
    """Words written on no_speech_clips(), two ways: by `transcribe` with its defaults, whose no-speech
    rule drops a window when <|nospeech|> is likely and the text unlikely (what a user sees), and by
    greedy decoding of each window with no such rule (`forced`: what runtimes without the rule, or a
    pipeline that has already decided there is speech, would write). Each as {"clips", "non_empty",
    "rate" (percent), "transcripts"}; the first at the top level, the second under "forced"."""
    from ..inference.transcriber import transcribe

    model = backend.model
    utterances = no_speech_clips()
    for u in utterances:
        u.language = language
    normalize = BasicTextNormalizer()
    decoding = backend.decoding_model()
    texts = [transcribe(u.load(), decoding, language=language if model.is_multilingual else None, task=task,
                        verbose=None)["text"] for u in utterances]
    examples, _ = ExampleSet.build(utterances, tokenizer_for(model, task), task, model.dims.n_mels,
                                   model.dims.n_text_ctx, 0.0, 0, "no-speech", "keep")
    _, forced = transcribe_examples(backend, examples, task, batch_size, progress=False)

    def counted(found: List[str]) -> dict:
        non_empty = [t for t in found if normalize(t).strip()]
        return {"clips": len(utterances), "non_empty": len(non_empty),
                "rate": round(100 * len(non_empty) / len(utterances), 1),
                "transcripts": {u.id: t for u, t in zip(utterances, found)}}

    return dict(counted(texts), forced=counted(forced))


def hallucination_line(base: dict, adapted: dict) -> str:
    line = (f"no speech: words written on {base['non_empty']}/{base['clips']} silent or noise-only clips by the base "
            f"model, {adapted['non_empty']}/{adapted['clips']} with the adapters (transcribe's defaults)")
    if "forced" in base and "forced" in adapted:
        line += (f"; decoding each clip without the no-speech rule: {base['forced']['non_empty']}/{base['clips']} and "
                 f"{adapted['forced']['non_empty']}/{adapted['clips']}")
    return line


def colored_noise(n: int, slope: float, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f**slope (0: white, 1: pink, 2: brown), at the given RMS."""
    size = 1 << max(int(n - 1).bit_length(), 1)  # a power of two: fast transforms whatever n is
    spectrum = np.fft.rfft(rng.normal(0, 1, size))
    spectrum *= np.maximum(np.fft.rfftfreq(size, 1 / SAMPLE_RATE), 20.0) ** (-slope / 2)  # flat below 20 Hz: no drift
    noise = np.fft.irfft(spectrum, size)[:n]
    return noise / (noise.std() + 1e-12) * rms


def training_languages(utterances: list, language: Optional[str]) -> List[str]:
    """The languages the training rows name (`language` where none does), for the no-speech clips."""
    return sorted({u.language for u in utterances if u.language} or ({language} - {None}))


def no_speech_training_clips(count: int, languages: List[str], seed: int,
                             distinct_clips: int = DISTINCT_TRAINING_CLIPS,
                             longest: float = 30.0) -> List[Utterance]:
    """`count` noise or silence clips with empty transcripts (`no_speech` set, so the data check keeps
    them), in the training rows' languages; at most `distinct_clips` distinct ones, none longer than
    `longest` seconds (--max-duration would drop them)."""
    rng = np.random.default_rng([int(seed), 9001])
    longest = min(30.0, float(longest))
    distinct = []
    for i in range(min(count, distinct_clips)):
        n = int(rng.uniform(min(2.0, longest / 2), longest) * SAMPLE_RATE)
        if rng.random() < 0.1:
            audio = np.zeros(n, np.float16)
        else:
            audio = colored_noise(n, rng.uniform(0.0, 2.0), 10 ** (rng.uniform(-75, -20) / 20), rng).astype(np.float16)
        distinct.append(audio)
    picks = rng.choice(len(languages), count) if languages else [None] * count
    return [Utterance(audio=distinct[i % len(distinct)], text="", id=f"no-speech:{i}",
                      duration=len(distinct[i % len(distinct)]) / SAMPLE_RATE, no_speech=True,
                      language=languages[int(j)] if languages else None)
            for i, j in zip(range(count), picks)]

