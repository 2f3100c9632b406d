"""Sentence-sized segments inside pre-cut training clips, so timestamp targets teach the segment lengths Whisper
writes rather than the clips' own.

A corpus clip is often a paragraph (LibriSpeech's run to 35 s): trained as one timed segment, a model learns
to write segments that long. Each clip's text is force-aligned to its audio (inference/forced_alignment.py,
with the small model `prepare` uses) and cut where `prepare` cuts a recording: at sentence ends, at pauses of
half a second, and at any pause past 12 s (preparing/text_alignment.py). A clip whose words cannot all be timed
keeps its single segment.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Callable, List, Optional

from ..data.manifests import Utterance
from ..data.packing import packable
from .text_alignment import Alignment, TimedWord, segments_from
from ..data.windows import snap


def timed_parts(clips: List[Utterance], aligner: str, log: Callable, progress: bool = True) -> List[Utterance]:
    """`clips` with `sentences` (start, end, text) inside each packable clip that holds more than one."""
    from ..inference.forced_alignment import window_words
    from ..load import default_inference_backend, load_for_inference
    from ..text.tokenizer import get_tokenizer

    todo = [i for i, u in enumerate(clips) if packable(u) and u.text.strip() and len(u.text.split()) > 1]
    if not todo:
        return clips
    model = load_for_inference(aligner, None, backend=default_inference_backend())
    tokenizers = {}
    out = list(clips)
    split = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="sentence times", unit="clip", dynamic_ncols=True, file=sys.stderr)
    for i in todo:
        u = clips[i]
        language = u.language or "en"
        if language not in tokenizers:
            tokenizers[language] = get_tokenizer(model.is_multilingual, model.num_languages, language=language,
                                                 task="transcribe", model_dir=model.folder)
        try:
            audio = u.load()
            words = window_words(model, tokenizers[language], audio, u.text.split())
        except Exception:  # noqa: BLE001 - unreadable audio is reported when the batch reads it; one segment here
            words = []
        parts = _parts(words, len(audio) / 16000 if words else 0.0)
        if parts and len(parts) > 1:
            out[i] = replace(u, sentences=parts)
            split += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    log(f"sentence times: {split} of {len(todo)} training clips hold more than one segment (their text aligned "
        f"to their audio with {aligner}); their timestamp targets time each")
    return out


def _parts(words, duration: float) -> Optional[List[tuple]]:
    if not words or any(s is None for _, s, _ in words):
        return None
    segments = segments_from(Alignment([TimedWord(w, s, e) for w, s, e in words]), duration)
    if not segments or not all(s.usable for s in segments):
        return None
    return [(snap(s.start), snap(s.end), s.text) for s in segments]
