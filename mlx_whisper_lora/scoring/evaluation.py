"""Score a model on a test split: loss, and WER/CER of greedy transcripts, whichever back end runs.

Transcripts are decoded as users will decode them, with the language and task forced (as in
training) and no timestamps, so the scores match what `transcribe --language L` gives.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Dict, List, Optional

from ..data.examples import ExampleSet
from ..text.case_style import render as render_case
from ..text.metrics import score
from ..tuner.distributed import world_of
from ..tuner.encoder_cache import CachedStates
from ..tuner.loop import evaluate_loss


def sample_len(examples: ExampleSet, indices: List[int], tokens_per_second: Optional[float]) -> Optional[int]:
    """The most tokens a batch may write: `tokens_per_second` of its longest utterance, plus the end
    token; None (the decoder's default) when not asked or a duration is unknown."""
    durations = [examples.utterances[i].duration for i in indices]
    if tokens_per_second is None or not all(durations):
        return None
    return max(1, math.ceil(max(durations) * tokens_per_second)) + 1


def transcribe_examples(backend, examples: ExampleSet, task: str = "transcribe", batch_size: int = 8,
                        progress: bool = True, num_batches: int = -1, states: Optional[CachedStates] = None,
                        tokens_per_second: Optional[float] = None, base_model: bool = False,
                        stop_loops_at: Optional[float] = None) -> tuple:
    """(indices, transcripts) of greedy decoding, language and task forced, in dataset order. In a
    data-parallel run each process decodes its share and every process gets all transcripts.
    `tokens_per_second`: each batch stops after that many tokens per second of its longest
    utterance (a reading that runs longer is a repetition loop; without it a loop runs to 224 tokens).
    `stop_loops_at`: a row stops as soon as its text compresses past this ratio (a loop, judged so at
    its end too), so one looping row no longer keeps its batch decoding to the limit.
    `base_model`: decode with the adapters switched off (the base model's passes before training,
    where they are still zero: the same transcripts without the adapters' products at every token);
    encoder states from `states` are computed with them in place, as training will use them."""
    world = world_of(backend)
    backend.set_training(False)
    candidates = [i for i in range(len(examples)) if i not in examples.failed]
    if num_batches >= 0:
        candidates = candidates[: num_batches * batch_size]
    mine = examples.usable(world.shard(candidates))
    groups: Dict[Optional[str], List[int]] = {}
    for i in mine:
        groups.setdefault(examples.utterances[i].language, []).append(i)
    texts: Dict[int, str] = {}
    bar = None
    if progress and world.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="decode", unit="utt", dynamic_ncols=True, file=sys.stderr)
    for language, members in groups.items():
        if tokens_per_second is not None:  # utterances of like length together: each batch's limit fits them all
            members.sort(key=lambda i: examples.utterances[i].duration or 0.0)
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            cached = states(chunk) if states is not None else None
            with backend.adapters_off() if base_model else contextlib.nullcontext():
                decoded = backend.decode(examples, chunk, cached, language or "en", task,
                                         sample_len(examples, chunk, tokens_per_second), stop_loops_at)
            for i, text in zip(chunk, decoded):
                texts[i] = text
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    texts = world.gather(texts)
    indices = [i for i in candidates if i in texts]
    return indices, [texts[i] for i in indices]


def test_report(backend, examples: ExampleSet, task: str = "transcribe", batch_size: int = 8,
                num_batches: int = -1, progress: bool = True, case_style: Optional[str] = None,
                punctuation: Optional[str] = "keep", cache_memory_gb: float = 4.0, encoder_cache: bool = True) -> dict:
    """Test loss, and raw and normalized WER and CER (percent), with the transcripts. With the
    encoder cache on, each utterance is encoded once for both (in memory up to `cache_memory_gb`)."""
    tic = time.perf_counter()
    states = CachedStates(examples, backend, int(cache_memory_gb * (1 << 30)), None, batch_size,
                          for_training=False) if encoder_cache else None
    try:
        loss = evaluate_loss(backend, examples, batch_size, num_batches, states)
        indices, hyps = transcribe_examples(backend, examples, task, batch_size, progress, num_batches, states)
    finally:
        if states is not None:
            states.close()
    return build_report(examples, indices, hyps, loss, time.perf_counter() - tic, case_style, punctuation)


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


VALIDATION_LOOP_RATIO = 2.4  # transcribe's --compression-ratio-threshold: a row past it is a loop and stops there


def validation_wer(backend, examples: ExampleSet, task: str, batch_size: int, num_batches: int,
                   case_style: Optional[str], punctuation: Optional[str]):
    """A function of the validation set's encoder states (or None) giving its normalized WER in percent, of
    greedy transcripts rendered as `transcribe` writes them with the adapters: the loop's measure of whether a
    checkpoint transcribes better than the base model (the loss also rewards learning the data's style)."""
    def measure(states: Optional[CachedStates]) -> float:
        indices, hyps = transcribe_examples(backend, examples, task, batch_size, False, num_batches, states,
                                            stop_loops_at=VALIDATION_LOOP_RATIO)
        hyps = [render_case(h, case_style, punctuation) for h in hyps]
        refs = [examples.utterances[i].text for i in indices]
        return 100 * score(refs, hyps, [examples.utterances[i].language for i in indices])["normalized_wer"]

    return measure
