"""Our text normalizers against openai-whisper's, and the rules that WER depends on."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.text.normalizers import BasicTextNormalizer, EnglishTextNormalizer, normalizer_for


@pytest.mark.parametrize("text, expected", [
    ("Twenty-one guns!", "21 guns"),
    ("I was born in nineteen ninety nine.", "i was born in 1999"),
    ("One hundred and five people", "105 people"),
    ("It's the twenty first century", "it is the 21st century"),
    ("three point five percent", "3.5%"),
    ("He paid twenty dollars", "he paid $20"),
    ("Mr. Smith won't come; they'd been there.", "mister smith will not come they had been there"),
    ("Um, hmm, I think [laughs] so (maybe).", "i think so"),
    ("The colour of the theatre", "the color of the theater"),
    ("one of them", "one of them"),
    ("Café naïve", "cafe naive"),
])
def test_english_rules(text, expected):
    assert EnglishTextNormalizer()(text) == expected


def test_basic_keeps_letters_of_any_script():
    assert BasicTextNormalizer()("Grüße, Straße! «Ja»") == "grüße straße ja"
    assert normalizer_for("de").__class__ is BasicTextNormalizer
    assert normalizer_for("en").__class__ is EnglishTextNormalizer


def test_agrees_with_openai_whisper_on_real_transcripts(shared_data):
    whisper_normalizers = pytest.importorskip("whisper.normalizers", reason="openai-whisper (reference) not installed")
    rows = []
    for manifest in sorted(shared_data.glob("*/manifest.jsonl")):
        rows += [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    english = [r["text"] for r in rows if r.get("language", "en") == "en"]  # the English normalizer is for English
    assert len(english) > 250
    ours, theirs = EnglishTextNormalizer(), whisper_normalizers.EnglishTextNormalizer()
    same = sum(ours(t).split() == theirs(t).split() for t in english)
    assert same / len(english) >= 0.99, f"{len(english) - same} of {len(english)} differ"
    basic_ours, basic_theirs = BasicTextNormalizer(), whisper_normalizers.BasicTextNormalizer()
    assert all(basic_ours(t).split() == basic_theirs(t).split() for t in texts)
