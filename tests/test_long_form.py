"""Long-form scores (scoring/long_form.py) and the long-form test of `lora --test` (scoring/long_form_test.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from mlx_whisper_lora.assets_dir import ASSETS, DEMO_ADAPTER
from mlx_whisper_lora.scoring.long_form import (longest_silent_speech, looped_words, pooled, regressions,
                                              score_recording)


def test_loops_are_runs_of_three_or_more_and_a_repeated_word_is_not_one():
    assert looped_words("bye bye bye bye".split()) == 3
    assert looped_words("i said no no to him".split()) == 0
    assert looped_words("and then we and then we and then we went".split()) == 6
    assert looped_words([]) == 0


def test_the_longest_speech_with_no_output_spans_a_gap_between_output_segments():
    speech = [(0, 5), (6, 10), (11, 20), (21, 40), (41, 50)]
    output = [(0, 10), (41, 50)]  # nothing written from 10 s to 41 s, where speech runs from 11 s to 40 s
    assert longest_silent_speech(speech, output, slack=0.0) == pytest.approx(29.0)
    assert longest_silent_speech(speech, [(0, 50)], slack=0.0) == 0.0
    assert longest_silent_speech(speech, [], slack=0.0) == 50.0


def test_scores_count_deletions_insertions_and_segments():
    result = {"text": "the cat sat on the the mat today",
              "segments": [{"start": 0.0, "end": 2.0, "text": "the cat sat"}, {"start": 2.0, "end": 30.0, "text": "x"}]}
    s = score_recording("The cat sat on a mat.", result, [(0.0, 3.0)], "en")
    assert s["words"] == 6 and s["deletions"] == 0 and s["insertions"] == 2  # "the", "today"; "a" -> "the"
    assert s["wer"] == pytest.approx(100 * 3 / 6, abs=1e-3)
    assert s["segments"] == 2 and s["median_segment_seconds"] == 15.0
    base = pooled([dict(s, median_segment_seconds=6.0, wer=1.0, errors=0)])
    adapted = pooled([s])
    assert any(r.startswith("wer") for r in regressions(base, adapted))
    assert any("median segment" in r for r in regressions(base, adapted))
    assert regressions(adapted, adapted) == []


def test_lora_test_long_transcribes_whole_recordings_with_both_models(tmp_path):
    """`--test-long` with the demo adapter on the demo clip as a recording with its .txt: both models' long-form
    scores in the console and test_results.json."""
    from mlx_whisper_lora.lora import main

    adapters = tmp_path / "adapters"
    shutil.copytree(DEMO_ADAPTER, adapters)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    shutil.copy(ASSETS / "demo.flac", recordings / "talk.flac")
    (recordings / "talk.txt").write_text("Whisper can be adapted to your own voice with low rank adapters.\n"
                                         "This short clip was spoken by a speech synthesizer.\n")
    main(["--test", "--adapter-path", str(adapters), "--test-long", str(recordings), "--no-hallucination-check",
          "--no-progress", "--test-batches", "1"])
    report = json.loads((adapters / "test_results.json").read_text())["long_form"]
    for model in ("base", "adapted"):
        assert report[model]["recordings"] == 1 and report[model]["words"] == 21
        assert report[model]["wer"] < 50 and report[model]["segments"] >= 1
    assert set(report["transcripts"]["talk"]) == {"base", "adapted"}
