"""Word-timing heads after training: reference boundaries taken on the base model before the first
step, heads re-selected on the trained model after the last (inference/alignment_heads.py), kept in
adapter_config.json so transcription, fuse and every export use them."""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

from ..data.audio import FRAMES_PER_SECOND, N_FRAMES
from ..formats.adapter_config import AdapterConfig
from ..inference import alignment_heads
from ..text.tokenizer import get_tokenizer

UTTERANCES = 8  # enough to rank heads: each gives tens of word boundaries


def alignment_items(model, examples, task: str, count: int = UTTERANCES) -> List[alignment_heads.AlignmentItem]:
    """Up to `count` training utterances, spread over the set, with several words each."""
    picked = []
    step = max(1, len(examples) // (count * 2))
    for i in examples.usable(list(range(0, len(examples), step))):
        u, label = examples.utterances[i], examples.labels[i]
        if label.truncated or not u.duration:
            continue
        tok = get_tokenizer(model.is_multilingual, model.num_languages, language=u.language or "en", task=task,
                            model_dir=model.folder)
        text = [t for t in label.tokens[label.prefix_len:] if t < tok.eot]
        if len(text) < 4:
            continue
        frames = min(N_FRAMES, int(round(u.duration * FRAMES_PER_SECOND)))
        picked.append(alignment_heads.AlignmentItem(np.asarray(examples.mel(i)), text, frames, tok))
        if len(picked) == count:
            break
    return picked


class HeadReselection:
    """Reference boundaries now (base model), a head choice later (trained model)."""

    def __init__(self, backend, examples, task: str, log: Callable):
        self.log = log
        model = backend.decoding_model()
        self.items = alignment_items(model, examples, task)
        self.reference = alignment_heads.reference_boundaries(model, self.items) if self.items else []

    def choose(self, backend, adapter_config: AdapterConfig) -> Optional[alignment_heads.HeadChoice]:
        if not self.items:
            self.log("alignment heads: no training utterance fits the check; the base model's heads are kept")
            return None
        choice = alignment_heads.select_heads(backend.decoding_model(), self.items, self.reference)
        if choice.changed:
            adapter_config.alignment_heads = [list(h) for h in choice.heads]
            self.log(f"alignment heads re-selected for word timing: {choice.heads} (word boundaries "
                     f"{choice.error:.3f} s from the base model's on {len(self.items)} training utterances; "
                     f"{choice.previous_error:.3f} s with the base heads)")
        else:
            self.log(f"alignment heads: the base model's still fit best (word boundaries {choice.previous_error:.3f} s "
                     f"from the base model's on {len(self.items)} training utterances)")
        return choice
