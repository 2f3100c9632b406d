"""Greedy long-form transcripts agree with faster-whisper run on the same CTranslate2 weights.

The full comparison over every English set is benchmarks/compare_faster_whisper.py; this test covers
the short sets so that it runs in the default suite.
"""

import pytest

from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
from mlx_whisper_lora.transcribe import transcribe_many

from conftest import THREADS, read_manifest

SETS = ["whisper_mlx_classics", "librispeech_test_clean_4", "pocketsphinx_librivox"]


def test_tiny_en_matches_faster_whisper_on_short_sets(tiny_en, shared_data):
    faster_whisper = pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    normalizers = pytest.importorskip("whisper.normalizers", reason="openai-whisper (English normalizer) is not installed")
    normalize = normalizers.EnglishTextNormalizer()
    reference = faster_whisper.WhisperModel(str(OFFLINE_MODELS["tiny.en"].locate().folder), device="cpu",
                                            compute_type="float32", cpu_threads=THREADS)
    paths = [shared_data / name / item["audio"] for name in SETS for item in read_manifest(shared_data / name)]
    ours = transcribe_many(paths, tiny_en, progress=False, language="en")
    same = 0
    for path, result in zip(paths, ours):
        segments, _ = reference.transcribe(str(path), beam_size=1, language="en")
        theirs = "".join(s.text for s in segments)
        same += normalize(result["text"]) == normalize(theirs)
    assert same / len(paths) >= 0.95, f"{same}/{len(paths)} identical after normalization"


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_hotwords_prompt_the_decoder_as_faster_whisper_does(tiny_en, shared_data):
    """--hotwords: faster-whisper's option with its meaning (the words at the head of every window's prompt);
    the same words given to both on the same weights give the same transcripts, and they change them."""
    faster_whisper = pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    normalizers = pytest.importorskip("whisper.normalizers", reason="openai-whisper (English normalizer) is not installed")
    normalize = normalizers.EnglishTextNormalizer()
    reference = faster_whisper.WhisperModel(str(OFFLINE_MODELS["tiny.en"].locate().folder), device="cpu",
                                            compute_type="float32", cpu_threads=THREADS)
    hotwords = "Kennedy, Nottingham, Quilter, gospel"
    paths = [shared_data / name / item["audio"] for name in SETS[:2] for item in read_manifest(shared_data / name)]
    ours = transcribe_many(paths, tiny_en, progress=False, language="en", hotwords=hotwords)
    plain = transcribe_many(paths, tiny_en, progress=False, language="en")
    same = 0
    for path, result in zip(paths, ours):
        segments, _ = reference.transcribe(str(path), beam_size=1, language="en", hotwords=hotwords)
        same += normalize(result["text"]) == normalize("".join(s.text for s in segments))
    assert same >= len(paths) - 1, f"{same}/{len(paths)} identical after normalization"
    assert any(a["text"] != b["text"] for a, b in zip(ours, plain))  # the prompt is there
