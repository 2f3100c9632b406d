"""Our normalizers give openai-whisper's output (the reference, installed with the `reference` extra) on
every input of openai-whisper's own normalizer tests, on its whole spelling table, and on every
reference text of ../shared/data."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.text.metrics import score
from mlx_whisper_lora.text.normalizers import BasicTextNormalizer, EnglishTextNormalizer, normalizer_for, normalizer_name

whisper_normalizers = pytest.importorskip("whisper.normalizers", reason="openai-whisper (the reference) is not installed: "
                                          "pip install -e '.[reference]'")

# The inputs of openai-whisper's tests/test_normalizer.py (MIT); the expected outputs come from
# openai-whisper itself at run time.
OPENAI_TEST_INPUTS = [
    "two", "thirty one", "five twenty four", "nineteen ninety nine", "twenty nineteen", "two point five million",
    "four point two billions", "200 thousand", "200 thousand dollars", "$20 million", "€52.4 million",
    "£77 thousands", "two double o eight", "three thousand twenty nine", "forty three thousand two hundred sixty",
    "forty three thousand two hundred and sixty", "nineteen fifties", "thirty first",
    "thirty three thousand and three hundred and thirty third", "three billion", "millions",
    "july third twenty twenty", "august twenty sixth twenty twenty one", "3 14", "3.14", "3 point 2", "3 point 14",
    "fourteen point 4", "two point two five dollars", "two hundred million dollars", "$20.1 million",
    "ninety percent", "seventy six per cent", "double oh seven", "double zero seven", "nine one one",
    "nine double one", "one triple oh one", "two thousandth", "thirty two thousandth", "minus 500",
    "positive twenty thousand", "two dollars and seventy cents", "3 cents", "$0.36", "three euros and sixty five cents",
    "three and a half million", "forty eight and a half dollars", "b747", "10 th", "10th",
    "mobilisation", "cancelation", "Let's", "he's like", "she's been like", "10km", "10mm", "RC232",
    "Mr. Park visited Assoc. Prof. Kim Jr.",
]


@pytest.mark.parametrize("text", OPENAI_TEST_INPUTS)
def test_english_matches_openai_whisper_on_its_own_test_inputs(text):
    assert EnglishTextNormalizer()(text) == whisper_normalizers.EnglishTextNormalizer()(text)


def test_known_number_cases():
    """The cases a hand-written normalizer got wrong, spelled out (openai-whisper's expected values)."""
    std = normalizer_for("en")
    assert std("two point five million") == "2500000"
    assert std("$20 million") == "$20000000"
    assert std("double oh seven") == "007"
    assert std("minus 500") == "-500"
    assert std("two dollars and seventy cents") == "$2.70"


def test_whole_spelling_table_matches():
    """Every British spelling of Whisper's table (1,739 entries), in a sentence."""
    from importlib.resources import files

    table = json.loads(files("whisper.normalizers").joinpath("english.json").read_text())
    assert len(table) > 1700
    ours, theirs = EnglishTextNormalizer(), whisper_normalizers.EnglishTextNormalizer()
    sentence = " ".join(table)
    expected = theirs(sentence)
    assert ours(sentence) == expected
    assert sum(a != b for a, b in zip(sentence.split(), expected.split())) > 1700  # the table did apply


def test_every_shared_reference_text_matches(shared_data):
    rows = []
    for manifest in sorted(shared_data.glob("*/manifest.jsonl")):
        rows += [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) > 900
    english, basic = EnglishTextNormalizer(), BasicTextNormalizer()
    their_english, their_basic = whisper_normalizers.EnglishTextNormalizer(), whisper_normalizers.BasicTextNormalizer()
    for row in rows:
        for field in ("text", "text_norm"):
            text = row.get(field)
            if text is None:
                continue
            assert english(text) == their_english(text), (row["id"], field)
            assert basic(text) == their_basic(text), (row["id"], field)


def test_choice_and_name_follow_the_language():
    assert isinstance(normalizer_for("de"), BasicTextNormalizer)
    assert isinstance(normalizer_for("en"), EnglishTextNormalizer)
    assert isinstance(normalizer_for(None), EnglishTextNormalizer)  # an English-only model's utterances
    assert "basic" in normalizer_name("yo") and "English" in normalizer_name("en")


def test_normalized_scores_use_the_language_normalizer():
    """'Twenty dollars' and '$20' are one word apart raw and equal normalized, in English only."""
    english = score(["He paid twenty dollars."], ["he paid $20"], ["en"])
    assert english["normalized_wer"] == 0 and english["wer"] > 0
    other = score(["He paid twenty dollars."], ["he paid $20"], ["de"])
    assert other["normalized_wer"] > 0
