"""WER/CER: known edit distances, and agreement with jiwer on random text pairs."""

from __future__ import annotations

import random

import pytest

from mlx_whisper_lora.text.metrics import cer, edit_distance, score, wer


def test_edit_distance_known_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(["a", "b", "c"], ["a", "c"]) == 1


def test_corpus_level_rates():
    # 1 edit in 2 words + 0 in 4 words: corpus rate 1/6, not the mean of 0.5 and 0
    assert wer(["a b", "c d e f"], ["a x", "c d e f"]) == pytest.approx(1 / 6)
    assert cer(["ab"], ["ab"]) == 0.0


def test_matches_jiwer_on_random_pairs():
    jiwer = pytest.importorskip("jiwer", reason="jiwer not installed")
    rng = random.Random(0)
    words = "the a cat dog sat on mat red blue".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(50)]
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) or "x" for _ in range(50)]
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))


def test_score_normalizes_per_language():
    s = score(["HELLO, WORLD!", "Guten Tag."], ["hello world", "guten tag"], ["en", "de"])
    assert s["normalized_wer"] == 0.0 and s["wer"] > 0.5
