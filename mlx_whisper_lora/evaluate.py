"""Score a model on a test split: loss, and WER/CER of greedy transcripts.

Transcripts are decoded as users will decode them, with the language and task forced (as in
training) and no timestamps, so the scores match what `transcribe --language L` gives.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Dict, List, Optional

import mlx.core as mx

from .decoding import DecodingOptions, decode
from .examples import ExampleSet
from .metrics import score
from .tokenizer import get_tokenizer
from .case_style import render as render_case
from .trainer import evaluate_loss


def transcribe_examples(model, examples: ExampleSet, task: str = "transcribe", batch_size: int = 8,
                        progress: bool = True, num_batches: int = -1) -> tuple:
    """(indices, transcripts) of greedy decoding, language and task forced, in dataset order."""
    model.eval()
    indices = examples.usable(list(range(len(examples))))
    if num_batches >= 0:
        indices = indices[: num_batches * batch_size]
    groups: Dict[Optional[str], List[int]] = {}
    for i in indices:
        groups.setdefault(examples.utterances[i].language, []).append(i)
    texts: Dict[int, str] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="decode", unit="utt", dynamic_ncols=True, file=sys.stderr)
    folder = getattr(model, "folder", None)
    for language, members in groups.items():
        lang = language or "en"
        tokenizer = get_tokenizer(model.is_multilingual, model.num_languages, language=lang, task=task, model_dir=folder)
        options = DecodingOptions(task=task, language=lang, without_timestamps=True, temperature=0.0)
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            features = examples.encoder_states(chunk) if examples.caches_encoder else model.embed_audio(examples.mels(chunk))
            for i, result in zip(chunk, decode(model, None, options, tokenizer, audio_features=features)):
                texts[i] = result.text
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return indices, [texts[i] for i in indices]


def test_report(model, examples: ExampleSet, task: str = "transcribe", batch_size: int = 8,
                num_batches: int = -1, progress: bool = True) -> dict:
    """Test loss, and raw and normalized WER and CER (percent), with the transcripts."""
    tic = time.perf_counter()
    if not examples.caches_encoder:  # nothing trains here: encode each utterance once for loss and decoding
        examples.use_encoder_cache(model, batch_size=batch_size)
    loss = evaluate_loss(model, examples, batch_size, num_batches)
    indices, hyps = transcribe_examples(model, examples, task, batch_size, progress, num_batches)
    mx.clear_cache()
    return build_report(examples, indices, hyps, loss, time.perf_counter() - tic, getattr(model, "case_style", None),
                        getattr(model, "punctuation", "keep"))


def build_report(examples: ExampleSet, indices: List[int], hyps: List[str], loss: float, seconds: float,
                 case_style: Optional[str] = None, punctuation: Optional[str] = "keep") -> dict:
    """test_results.json: loss, raw and normalized WER/CER (percent), and every transcript
    (rendered in the adapters' case and punctuation style, as `transcribe` would write it)."""
    hyps = [render_case(h, case_style, punctuation) for h in hyps]
    refs = [examples.utterances[i].text for i in indices]
    scores = score(refs, hyps, [examples.utterances[i].language for i in indices])
    return {
        "test_loss": round(loss, 5),
        "test_ppl": round(math.exp(loss), 4),
        **{k: round(100 * v, 3) for k, v in scores.items()},
        "utterances": len(indices),
        "audio_seconds": round(examples.seconds(indices), 2),
        "seconds": round(seconds, 2),
        "transcripts": [{"id": examples.utterances[i].id, "reference": r, "hypothesis": h}
                        for i, r, h in zip(indices, refs, hyps)],
    }


def log_report(report: dict, log) -> None:
    log(f"test loss {report['test_loss']:.3f}, ppl {report['test_ppl']:.3f}")
    log(f"WER {report['wer']:.2f}%  CER {report['cer']:.2f}%  (raw)")
    log(f"WER {report['normalized_wer']:.2f}%  CER {report['normalized_cer']:.2f}%  (normalized)")
