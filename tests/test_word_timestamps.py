"""Word timestamps match openai-whisper's (`whisper.timing`, `whisper.transcribe`, `whisper.utils` writers)
on the same weights, in both back ends, and the subtitles built on them are well formed."""

import re
import subprocess
import sys

import numpy as np
import pytest

from mlx_whisper_lora.data.audio import load_audio
from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.formats.transcript_writers import SubtitleOptions, write_srt, write_vtt
from mlx_whisper_lora.inference import timing
from mlx_whisper_lora.inference.transcriber import transcribe, transcribe_many
from mlx_whisper_lora.text.tokenizer import get_tokenizer

whisper = pytest.importorskip("whisper", reason="openai-whisper (the reference) is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed")

CLIPS = ["whisper_mlx_classics/audio/jfk.flac", "whisper_mlx_classics/audio/ls_test.flac",
         "librispeech_2spk/audio/4088-158077-0000.flac"]


def _openai_model(checkpoint):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"))
    from compare_word_timestamps import openai_model

    return openai_model(checkpoint.source)


@pytest.fixture(scope="module")
def reference(tiny_en_checkpoint):
    return _openai_model(tiny_en_checkpoint)


@pytest.fixture(scope="module")
def torch_tiny_en():
    from mlx_whisper_lora.transcribe import load_for_inference

    return load_for_inference("tiny.en", None, backend="torch", device="cpu")


def _words(result):
    return [w for s in result["segments"] for w in s.get("words", [])]


def test_dtw_path_equals_openai():
    rng = np.random.default_rng(0)
    for shape in [(5, 40), (30, 200), (60, 50), (1, 10), (12, 12)]:
        x = rng.normal(size=shape)
        ours = timing.dtw(x)
        ref = whisper.timing.dtw_cpu(x)
        assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1]), shape
    ties = rng.integers(0, 3, size=(20, 60)).astype(np.float64)  # many equal costs: the tie rule decides
    ours, ref = timing.dtw(ties), whisper.timing.dtw_cpu(ties)
    assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])


def test_median_filter_equals_openai():
    x = np.random.default_rng(1).normal(size=(3, 7, 50)).astype(np.float32)
    for width in (1, 3, 7):
        ref = whisper.timing.median_filter(torch.from_numpy(x), width).numpy()
        assert np.array_equal(timing.median_filter(x, width), ref)
    with pytest.raises(ValueError):
        timing.median_filter(x, 4)


def test_merge_punctuations_equals_openai():
    words = [" (", "Hello", ",", " world", ".", " \"", "Yes", "!\"", " -", "no", "?"]
    ours = [timing.WordTiming(w, [i]) for i, w in enumerate(words)]
    ref = [whisper.timing.WordTiming(w, [i], 0.0, 0.0, 0.0) for i, w in enumerate(words)]
    timing.merge_punctuations(ours, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    whisper.timing.merge_punctuations(ref, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    assert [(w.word, w.tokens) for w in ours] == [(w.word, w.tokens) for w in ref]


def test_tokenizer_word_splitting_equals_openai():
    ours = get_tokenizer(True, 99, language="de")
    ref = whisper.tokenizer.get_tokenizer(True, num_languages=99, language="de")
    tokens = ours.encode(" Grüße, ihr Lieben! Wie geht's? 10,5 % mehr…") + [ours.eot]
    assert ours.split_tokens_on_spaces(tokens) == ref.split_tokens_on_spaces(tokens)
    assert ours.split_tokens_on_unicode(tokens) == ref.split_tokens_on_unicode(tokens)
    assert ours.to_language_token("de") == ref.to_language_token("de")


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_word_times_match_openai(backend, shared_data, tiny_en, reference, request):
    """The acceptance measure on three clips (benchmarks/compare_word_timestamps.py runs every English set)."""
    from compare_word_timestamps import compare

    model = tiny_en if backend == "mlx" else request.getfixturevalue("torch_tiny_en")
    words = close = 0
    for clip in CLIPS:
        audio = np.array(load_audio(shared_data / clip))
        ours = transcribe(audio, model, temperature=0.0, word_timestamps=True, verbose=False)
        theirs = whisper.transcribe(reference, audio, language="en", temperature=0.0, word_timestamps=True, fp16=False)
        c = compare(ours, theirs)
        assert c["same_words"] and c["segments_agree"], clip
        words, close = words + c["words"], close + c["close"]
        for w in _words(ours):
            assert set(w) == {"word", "start", "end", "probability"} and 0 <= w["probability"] <= 1
    assert words > 40 and close / words >= 0.95


def test_hallucination_silence_threshold_equals_openai(shared_data, tiny_en, reference):
    """Speech, 16 s of silence, speech: the long-form loop with the silence threshold, as openai runs it."""
    jfk = np.array(load_audio(shared_data / CLIPS[0]))
    audio = np.concatenate([jfk, np.zeros(16 * 16000, dtype=np.float32), np.array(load_audio(shared_data / CLIPS[1]))])
    ours = transcribe(audio, tiny_en, temperature=0.0, word_timestamps=True, hallucination_silence_threshold=2.0)
    theirs = whisper.transcribe(reference, audio, language="en", temperature=0.0, word_timestamps=True, fp16=False,
                                hallucination_silence_threshold=2.0)
    assert [w["word"] for w in _words(ours)] == [w["word"] for w in _words(theirs)]
    # word times are whole 20 ms audio-token steps (both round to 0.01 s): one step apart is allowed (float32
    # attention weights of two implementations can tip a DTW tie), plus 1 ms for the decimal rounding
    for a, b in zip(_words(ours), _words(theirs)):
        assert abs(a["start"] - b["start"]) <= 0.021 and abs(a["end"] - b["end"]) <= 0.021


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_words_in_every_decoding_mode(shared_data, tiny_en):
    """Beam search, forced fallback and batched decoding all return words that spell their segments."""
    paths = [shared_data / c for c in CLIPS]
    runs = {
        "beam": transcribe(paths[0], tiny_en, beam_size=5, temperature=0.0, word_timestamps=True),
        "fallback": transcribe(paths[1], tiny_en, compression_ratio_threshold=0.1, word_timestamps=True),
    }
    batched = transcribe_many(paths, tiny_en, batch_size=3, word_timestamps=True, progress=False)
    for path, result in zip(paths, batched):
        single = _words(transcribe(path, tiny_en, word_timestamps=True))
        assert [w["word"] for w in _words(result)] == [w["word"] for w in single], path
        # one 20 ms token step (+1 ms decimal rounding): a batch's float32 products can tip a DTW tie
        assert all(abs(a["start"] - b["start"]) <= 0.021 and abs(a["end"] - b["end"]) <= 0.021
                   for a, b in zip(_words(result), single)), path
        runs[f"batched {path.name}"] = result
    for mode, result in runs.items():
        assert result["segments"], mode
        for s in result["segments"]:
            assert "".join(w["word"] for w in s["words"]).strip() == s["text"].strip(), mode
            starts = [w["start"] for w in s["words"]]
            assert starts == sorted(starts) and all(w["end"] >= w["start"] for w in s["words"]), mode


def test_words_follow_the_case_style(shared_data, tiny_en):
    tiny_en.case_style, tiny_en.punctuation = "upper", "none"
    try:
        result = transcribe(shared_data / CLIPS[0], tiny_en, temperature=0.0, word_timestamps=True)
    finally:
        tiny_en.case_style, tiny_en.punctuation = None, "keep"
    words = [w["word"] for w in _words(result)]
    assert words and all(w == w.upper() and not re.search(r"[.,!?]", w) for w in words)
    assert "".join(words).strip() == result["text"].strip()


def test_api_refuses_unknown_and_inconsistent_options(jfk, tiny_en):
    with pytest.raises(UserError, match="'word_timestamp'"):
        transcribe(jfk, tiny_en, word_timestamp=True)
    with pytest.raises(UserError, match="needs word timestamps"):
        transcribe(jfk, tiny_en, hallucination_silence_threshold=1.0)
    with pytest.raises(UserError, match="initial_prompt"):
        transcribe(jfk, tiny_en, carry_initial_prompt=True)
    result = transcribe(jfk, tiny_en, fp16=True, initial_prompt="Kennedy.", carry_initial_prompt=True)
    assert "country" in result["text"]


def test_carry_initial_prompt_keeps_the_prompt_first(tiny_en):
    from mlx_whisper_lora.inference.transcriber import _prepare, _Settings, FallbackRules, WordOptions

    settings = _Settings(FallbackRules(), "en", "transcribe", {}, WordOptions(), "Kennedy speaks.", True, True, False)
    state, _ = _prepare(tiny_en, np.zeros((6000, 80), dtype=np.float32), settings)
    state.tokens.extend(range(300, 600))  # a long history
    prompt = state.window_options().prompt
    initial = state.initial_prompt_tokens
    assert prompt[: len(initial)] == initial and len(prompt) <= tiny_en.dims.n_text_ctx // 2 - 1
    assert prompt[-1] == 599


def _openai_subtitles(result, fmt, **options):
    import io

    writer = whisper.utils.get_writer(fmt, ".")
    buffer = io.StringIO()
    writer.write_result(result, buffer, options)
    return buffer.getvalue()


def test_subtitle_layout_equals_openai_writers(shared_data, tiny_en):
    jfk = np.array(load_audio(shared_data / CLIPS[0]))
    audio = np.concatenate([jfk, np.zeros(4 * 16000, dtype=np.float32), jfk])
    result = transcribe(audio, tiny_en, temperature=0.0, word_timestamps=True)
    cases = [dict(), dict(max_line_width=20), dict(max_line_width=24, max_line_count=2), dict(highlight_words=True),
             dict(max_words_per_line=3), dict(max_line_width=42, highlight_words=True)]
    for options in cases:
        full = {"max_line_width": None, "max_line_count": None, "highlight_words": False, "max_words_per_line": None}
        full.update(options)
        for fmt, write in (("srt", write_srt), ("vtt", write_vtt)):
            import io

            buffer = io.StringIO()
            write(result, buffer, SubtitleOptions(**options))
            assert buffer.getvalue() == _openai_subtitles(result, fmt, **full), (fmt, options)


def _srt_cues(text):
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        start, end = lines[1].split(" --> ")
        seconds = [sum(float(x) * 60 ** i for i, x in enumerate(reversed(t.replace(",", ".").split(":"))))
                   for t in (start, end)]
        cues.append((seconds[0], seconds[1], lines[2:]))
    return cues


def test_cli_srt_with_highlighted_words_is_well_formed(shared_data, base_model, tmp_path):
    """The 43 s German FLEURS clip (two windows) as subtitles of at most 42 characters a line."""
    clip = shared_data / "fleurs_en_de/audio/fleurs-de-009.flac"
    if not clip.exists():
        pytest.skip("fleurs-de-009 is not in ../shared/data")
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_whisper_lora.transcribe", str(clip), "--model", "base", "--language", "de",
         "--word-timestamps", "True", "-f", "srt", "--max-line-width", "42", "--highlight-words", "True",
         "-o", str(tmp_path), "--verbose", "False"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    cues = _srt_cues((tmp_path / "fleurs-de-009.srt").read_text())
    assert len(cues) > 20 and cues[-1][1] > 30.0  # the second window's words are there
    for (start, end, lines), nxt in zip(cues, cues[1:] + [None]):
        assert 0 <= start < end, (start, end)
        if nxt:
            assert end <= nxt[0], "cues overlap"
        assert 1 <= len(lines) and all(len(re.sub(r"</?u>", "", line)) <= 42 for line in lines), lines
    underlined = ["".join(lines).count("<u>") for _, _, lines in cues]
    assert max(underlined) == 1 and sum(underlined) >= len(cues) // 2  # one highlighted word per cue


def test_subtitle_flags_need_word_timestamps(jfk, tmp_path):
    for args, message in [(["--max-line-width", "42"], "add --word-timestamps True"),
                          (["--word-timestamps", "True", "--max-line-count", "2"], "needs --max-line-width")]:
        proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.transcribe", str(jfk), *args, "-o",
                               str(tmp_path)], capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


def test_picked_probabilities_equal_the_full_softmax():
    """Word probabilities come from each row's log-sum-exp, not a softmax over the whole vocabulary. The
    float32 exponent of a term is off by its magnitude times float32's epsilon, so the relative error is
    bounded by a few units of that; terms below e^-87 of the peak (held there, not computed as subnormals)
    move a sum of at least 1 by less than the vocabulary times 1e-38."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, (40, 51864)).astype(np.float32)
    logits[np.arange(40), rng.integers(0, 51864, 40)] += 45  # a confident row: most terms far below e^-87
    picked = rng.integers(0, 51864, 40)
    picked[:20] = logits[:20].argmax(axis=1)
    x = logits.astype(np.float64)
    exact = np.exp(x - x.max(axis=1, keepdims=True))
    exact = (exact / exact.sum(axis=1, keepdims=True))[np.arange(40), picked]
    got = timing.picked_probabilities(logits, picked)
    bound = 16 * np.finfo(np.float32).eps * np.abs(logits).max()
    assert np.all(np.abs(got - exact) <= bound * exact + 1e-300)
    assert np.all(got[:20] > 0.5)
