"""Word and character error rates, raw and after Whisper's normalizers.

Rates are corpus-level (total edits over total reference words or characters), as jiwer and the
Whisper paper report them, not means of per-utterance rates.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def _chars(text: str) -> List[str]:
    return list(" ".join(text.split()))


def error_counts(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> tuple:
    """(edits, reference length) summed over utterance pairs; unit is 'word' or 'char'."""
    split: Callable[[str], List[str]] = str.split if unit == "word" else _chars
    edits = length = 0
    for ref, hyp in zip(refs, hyps):
        r, h = split(ref), split(hyp)
        edits += edit_distance(r, h)
        length += len(r)
    return edits, length


def error_rate(refs: Sequence[str], hyps: Sequence[str], unit: str = "word") -> float:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    edits, length = error_counts(refs, hyps, unit)
    if length == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / length


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "word")


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    return error_rate(refs, hyps, "char")


def score(refs: Sequence[str], hyps: Sequence[str], languages: Optional[Sequence[Optional[str]]] = None) -> Dict[str, float]:
    """Raw and normalized WER and CER, as fractions. Each utterance is normalized with the English
    normalizer when its language is English (or unknown on an English model), the basic one otherwise."""
    from .normalizers import normalizer_for

    languages = list(languages) if languages is not None else [None] * len(refs)
    cache = {}

    def norm(text, lang):
        if lang not in cache:
            cache[lang] = normalizer_for(lang)
        return cache[lang](text)

    n_refs = [norm(r, lang) for r, lang in zip(refs, languages)]
    n_hyps = [norm(h, lang) for h, lang in zip(hyps, languages)]
    return {
        "wer": wer(refs, hyps),
        "cer": cer(refs, hyps),
        "normalized_wer": wer(n_refs, n_hyps),
        "normalized_cer": cer(n_refs, n_hyps),
    }
