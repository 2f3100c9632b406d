"""Alignment heads that fit the model in use.

Word timing reads the cross-attention of a few decoder heads that follow the audio in time (the
"alignment heads" openai-whisper lists per model). Fine-tuning can move that role to other heads,
and models converted from transformers repos may list none; word times then drift. Here every head
is scored by how closely the word boundaries along its own attention path match reference boundaries
(the base model's, with its heads, on the same utterances and text), and the best are kept, but only
when together they match better than the heads the model has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..text.tokenizer import Tokenizer
from . import timing

Head = Tuple[int, int]


@dataclass
class AlignmentItem:
    """One utterance to align: its log-mel window (frames, n_mels), the tokens of its text, and
    the tokenizer of its language (the start sequence names it)."""

    mel: np.ndarray
    text_tokens: List[int]
    num_frames: int
    tokenizer: Tokenizer


@dataclass
class HeadChoice:
    heads: List[Head]
    error: float  # seconds: mean word-boundary distance to the reference with these heads
    previous_error: float  # the same with the heads the model had
    changed: bool


def _scores(model, item: AlignmentItem, heads: Sequence[Head], features=None) -> np.ndarray:
    """Cross-attention scores of `heads` over the item's text; `features`: its encoder states when at hand."""
    if features is None:
        features = model.encode_audio(item.mel[None])
    tokens = np.array([timing.alignment_inputs(item.tokenizer, item.text_tokens)])
    return model.alignment_scores(tokens, features, list(heads))[1]


def _boundaries(qk: np.ndarray, item: AlignmentItem) -> Optional[np.ndarray]:
    """Word starts and ends (2, words) along the path through these heads' attention."""
    begin = len(item.tokenizer.sot_sequence)
    found = timing.word_times(timing.attention_matrix(qk, item.num_frames)[begin:-1], item.tokenizer, item.text_tokens)
    return None if found is None else np.stack([found[3], found[4]])


def model_heads(model) -> List[Head]:
    heads = model.alignment_heads
    heads = heads.tolist() if hasattr(heads, "tolist") else heads
    return [(int(a), int(b)) for a, b in heads]


def reference_boundaries(model, items: Sequence[AlignmentItem]) -> List[Optional[np.ndarray]]:
    """Word boundaries of each item with the model's own alignment heads (taken before fine-tuning)."""
    heads = model_heads(model)
    return [_boundaries(_scores(model, item, heads), item) for item in items]


def _error(found: Optional[np.ndarray], reference: Optional[np.ndarray]) -> Optional[float]:
    if found is None or reference is None or found.shape != reference.shape:
        return None
    return float(np.mean(np.abs(found - reference)))


def select_heads(model, items: Sequence[AlignmentItem], reference: Sequence[Optional[np.ndarray]],
                 keep: Optional[int] = None) -> HeadChoice:
    """Score every decoder head against the reference boundaries and keep the `keep` best (default:
    as many as the model has now); the model's current heads stay when they match at least as well."""
    dims = model.dims
    current = model_heads(model)
    keep = keep or len(current)
    every = [(layer, head) for layer in range(dims.n_text_layer) for head in range(dims.n_text_head)]
    features = [model.encode_audio(item.mel[None]) for item in items]  # once per item: the costly part
    per_head = np.zeros(len(every))
    counted = 0
    for item, ref, feats in zip(items, reference, features):
        if ref is None:
            continue
        qk = _scores(model, item, every, feats)
        errors = [_error(_boundaries(qk[h : h + 1], item), ref) for h in range(len(every))]
        if any(e is None for e in errors):
            continue
        per_head += np.array(errors)
        counted += 1
    if not counted:
        return HeadChoice(current, float("nan"), float("nan"), False)
    ranked = [every[i] for i in np.argsort(per_head, kind="stable")[:keep]]
    chosen = sorted(ranked)

    def combined_error(heads: List[Head]) -> float:
        errors = [_error(_boundaries(_scores(model, item, heads, feats), item), ref)
                  for item, ref, feats in zip(items, reference, features)]
        errors = [e for e in errors if e is not None]
        return float(np.mean(errors)) if errors else float("inf")

    before, after = combined_error(current), combined_error(chosen)
    if after < before:
        return HeadChoice(chosen, after, before, True)
    return HeadChoice(current, before, before, False)
