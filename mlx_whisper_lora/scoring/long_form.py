"""How a model transcribes whole recordings, beside the clip-by-clip scores.

A fine-tuned model can score well clip by clip and still break long files: it may end every segment
at the end of its 30 s window, skip stretches of speech after a wrong seek, or loop. These scores
make that visible: WER with its deletion and insertion rates (jiwer's alignment), the segments'
lengths, the words caught in repetition loops, and the longest stretch of reference speech during
which the model wrote nothing.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from ..text.normalizers import normalizer_for

LOOP_REPEATS = 3  # an n-gram said this many times in a row is a loop (people repeat a word twice, rarely thrice)
LOOP_MAX_N = 5


def looped_words(words: Sequence[str], repeats: int = LOOP_REPEATS, max_n: int = LOOP_MAX_N) -> int:
    """Words beyond the first occurrence in runs of an n-gram (n <= max_n) repeated `repeats` or more
    times in a row ("bye bye bye bye": 3)."""
    looped = [False] * len(words)
    for n in range(1, max_n + 1):
        i = 0
        while i + n <= len(words):
            count = 1
            while words[i + count * n: i + (count + 1) * n] == words[i: i + n] and i + (count + 1) * n <= len(words):
                count += 1
            if count >= repeats:
                for j in range(i + n, i + count * n):
                    looped[j] = True
                i += count * n
            else:
                i += 1
    return sum(looped)


def merged(spans: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    out: List[List[float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def longest_silent_speech(speech: Sequence[Tuple[float, float]], output: Sequence[Tuple[float, float]],
                          slack: float = 1.0) -> float:
    """The longest stretch, in seconds, from the first to the last reference speech inside one gap of the
    output (the times no output segment covers, each segment widened by `slack` for imprecise timestamps)."""
    covered = merged([(a - slack, b + slack) for a, b in output])
    edges = [float("-inf")] + [t for span in covered for t in span] + [float("inf")]
    gaps = list(zip(edges[0::2], edges[1::2]))
    longest = 0.0
    for gap_start, gap_end in gaps:
        inside = [(max(a, gap_start), min(b, gap_end)) for a, b in speech if b > gap_start and a < gap_end]
        if inside:
            longest = max(longest, max(b for _, b in inside) - min(a for a, _ in inside))
    return longest


def score_recording(reference: str, result: dict, speech: Sequence[Tuple[float, float]],
                    language: Optional[str]) -> Dict[str, float]:
    """Scores of one long-form transcript (`transcribe`'s result) against its reference text;
    `speech`: (start, end) seconds of the reference speech (words or segments)."""
    import jiwer

    normalize = normalizer_for(language)
    ref = normalize(reference).split()
    hyp = normalize(result.get("text", "")).split()
    counts = jiwer.process_words(" ".join(ref) or "<empty>", " ".join(hyp) or "<empty>") if ref else None
    segments = [(float(s["start"]), float(s["end"])) for s in result.get("segments", []) if s.get("text", "").strip()]
    lengths = [b - a for a, b in segments]
    n = max(len(ref), 1)
    return {
        "words": len(ref),
        "errors": (counts.substitutions + counts.deletions + counts.insertions) if counts else len(hyp),
        "deletions": counts.deletions if counts else 0,
        "insertions": counts.insertions if counts else len(hyp),
        "wer": round(100 * ((counts.substitutions + counts.deletions + counts.insertions) / n if counts else 0.0), 3),
        "deletion_rate": round(100 * (counts.deletions / n if counts else 0.0), 3),
        "insertion_rate": round(100 * (counts.insertions / n if counts else 0.0), 3),
        "segments": len(segments),
        "median_segment_seconds": round(statistics.median(lengths), 2) if lengths else 0.0,
        "longest_segment_seconds": round(max(lengths), 2) if lengths else 0.0,
        "looped_words": looped_words(hyp),
        "reference_looped_words": looped_words(ref),
        "longest_silent_speech_seconds": round(longest_silent_speech(speech, segments), 2),
    }


def pooled(scores: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Scores over several recordings: rates over all their words, the worst stretch, segment lengths of all."""
    words = max(sum(s["words"] for s in scores), 1)
    return {
        "recordings": len(scores),
        "words": sum(s["words"] for s in scores),
        "wer": round(100 * sum(s["errors"] for s in scores) / words, 3),
        "deletion_rate": round(100 * sum(s["deletions"] for s in scores) / words, 3),
        "insertion_rate": round(100 * sum(s["insertions"] for s in scores) / words, 3),
        "segments": sum(s["segments"] for s in scores),
        "median_segment_seconds": round(statistics.median([s["median_segment_seconds"] for s in scores]), 2)
        if scores else 0.0,
        "longest_segment_seconds": max((s["longest_segment_seconds"] for s in scores), default=0.0),
        "looped_words": sum(s["looped_words"] for s in scores),
        "longest_silent_speech_seconds": max((s["longest_silent_speech_seconds"] for s in scores), default=0.0),
    }


WORSE_WHEN_HIGHER = (("wer", 0.0), ("deletion_rate", 0.0), ("insertion_rate", 0.0), ("looped_words", 0),
                     ("longest_silent_speech_seconds", 5.0))


def regressions(base: Dict[str, float], adapted: Dict[str, float]) -> List[str]:
    """What got worse from the base to the adapted model, one phrase each (empty: nothing did). Segment
    lengths count as worse beyond 1.5x the base model's median either way (30 s blocks, or splinters)."""
    out = [f"{name} {base[name]:g} -> {adapted[name]:g}" for name, margin in WORSE_WHEN_HIGHER
           if adapted[name] > base[name] + margin]
    b, a = base["median_segment_seconds"], adapted["median_segment_seconds"]
    if b > 0 and not b / 1.5 <= a <= b * 1.5:
        out.append(f"median segment {b:g} s -> {a:g} s")
    return out
