"""Decoding matches openai-whisper's decoder run on the same weights, token for token."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.data.audio import load_audio, log_mel_spectrogram, pad_or_trim
from mlx_whisper_lora.inference.decoding import DecodingOptions, TimestampRules, decode, detect_language
from mlx_whisper_lora.text.tokenizer import get_tokenizer

CLIPS = [
    "whisper_mlx_classics/audio/jfk.flac",
    "whisper_mlx_classics/audio/ls_test.flac",
    "librispeech_test_clean_4/audio/1089-134686-0001.flac",
]


def _mel(path):
    return pad_or_trim(log_mel_spectrogram(load_audio(path)), 3000, axis=0)


@pytest.fixture(scope="module")
def mels(shared_data):
    return np.stack([_mel(shared_data / c) for c in CLIPS])


@pytest.fixture(scope="module")
def openai_tiny_en(tiny_en_checkpoint):
    """openai-whisper's PyTorch model holding exactly our weights."""
    whisper = pytest.importorskip("whisper", reason="openai-whisper is not installed")
    import torch

    model = whisper.model.Whisper(whisper.model.ModelDimensions(**tiny_en_checkpoint.dims.to_dict()))
    state = {}
    for k, v in tiny_en_checkpoint.weights.items():
        if k.endswith(("conv1.weight", "conv2.weight")):
            v = v.transpose(0, 2, 1)
        state[k.replace(".mlp1.", ".mlp.0.").replace(".mlp2.", ".mlp.2.")] = torch.tensor(np.array(v, dtype=np.float32))
    model.load_state_dict(state, strict=False)
    return model.eval()


def _openai_decode(model, mel, **options):
    import torch
    import whisper

    opts = whisper.DecodingOptions(fp16=False, language="en", **options)
    return whisper.decode(model, torch.from_numpy(np.array(mel)).T.contiguous(), opts)


@pytest.mark.parametrize("without_timestamps", [True, False])
def test_greedy_tokens_equal_openai_whisper(tiny_en, openai_tiny_en, mels, without_timestamps):
    ours = decode(tiny_en, mels, DecodingOptions(without_timestamps=without_timestamps))
    for mel, r in zip(mels, ours):
        ref = _openai_decode(openai_tiny_en, mel, without_timestamps=without_timestamps)
        assert r.tokens == ref.tokens
        assert r.text == ref.text
        # the same tokens from two float32 models (MLX, openai-whisper's torch): a token's log-probability moves by
        # at most twice its logits' rounding (log-softmax), and tiny.en's float32 logits stay within ~1e-4 of
        # float64 (test_torch_backend's test_logits_match_mlx measures it); no_speech_prob, a probability, less
        assert abs(r.avg_logprob - ref.avg_logprob) < 1e-3
        assert abs(r.no_speech_prob - ref.no_speech_prob) < 1e-3


def test_beam_search_tokens_equal_openai_whisper(tiny_en, openai_tiny_en, mels):
    ours = decode(tiny_en, mels[:2], DecodingOptions(beam_size=5, without_timestamps=True))
    for mel, r in zip(mels[:2], ours):
        ref = _openai_decode(openai_tiny_en, mel, beam_size=5, without_timestamps=True)
        assert r.tokens == ref.tokens


def test_batched_decoding_equals_one_by_one(tiny_en, mels):
    batched = decode(tiny_en, mels, DecodingOptions())
    for mel, r in zip(mels, batched):
        single = decode(tiny_en, mel, DecodingOptions())[0]
        assert single.tokens == r.tokens
        # the same MLX kernels, a batch of rows instead of one: only the products' blocking differs
        assert abs(single.avg_logprob - r.avg_logprob) < 1e-4


def test_jfk_transcript(tiny_en, mels):
    text = decode(tiny_en, mels[0], DecodingOptions(without_timestamps=True))[0].text
    assert text == "And so my fellow Americans ask not what your country can do for you ask what you can do for your country."


def test_prompt_and_prefix_shape_the_output(tiny_en, mels):
    tok = get_tokenizer(False)
    prefixed = decode(tiny_en, mels[0], DecodingOptions(without_timestamps=True, prefix="And so, my fellow"))[0]
    assert prefixed.text.startswith("And so, my fellow")
    prompted = decode(tiny_en, mels[0], DecodingOptions(without_timestamps=True, prompt="So, my fellow citizens."))[0]
    assert tok.eot not in prompted.tokens and "country" in prompted.text


def test_sampling_is_seeded(tiny_en, mels):
    a = decode(tiny_en, mels[1], DecodingOptions(temperature=1.0, seed=3))[0]
    b = decode(tiny_en, mels[1], DecodingOptions(temperature=1.0, seed=3))[0]
    c = decode(tiny_en, mels[1], DecodingOptions(temperature=1.0, seed=4))[0]
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens  # at temperature 1 another seed draws another transcript
    with pytest.raises(ValueError):
        decode(tiny_en, mels[1], DecodingOptions(temperature=0.5, beam_size=2))


def test_best_of_and_beam_candidates_are_ranked_by_length_normalised_logprob():
    from mlx_whisper_lora.inference.decoding import _rank

    seqs = [[1, 2], [1, 2, 3, 4, 5, 6], [1]]
    logprobs = [-3.0, -6.0, -1.9]  # per token (length + 1 for end-of-text): -1.0, -0.857, -0.95
    assert _rank(seqs, logprobs, None) == 1
    # a length penalty of 0 ranks by the raw sum, which favours the short sequence
    assert _rank(seqs, logprobs, 0.0) == 2


def test_language_detection(base_model, shared_data):
    mels = np.stack([_mel(shared_data / "fleurs_en_de/audio/fleurs-de-001.flac"),
                     _mel(shared_data / "fleurs_en_de/audio/fleurs-en-001.flac")])
    tok = get_tokenizer(True)
    langs, probs = detect_language(base_model, base_model.encode_audio(mels), tok)
    assert langs == ["de", "en"]
    assert probs[0]["de"] > 0.9 and abs(sum(probs[0].values()) - 1) < 1e-3
    results = decode(base_model, mels, DecodingOptions(without_timestamps=True))
    assert [r.language for r in results] == ["de", "en"]
    assert "Dinosaurier" in results[0].text


def test_timestamp_rules_enforce_pairs_and_order():
    tok = get_tokenizer(False)
    tb, eot = tok.timestamp_begin, tok.eot
    rules = TimestampRules(tok, sample_begin=1, max_initial_timestamp_index=50)
    vocab = tb + 1501
    # first sampled token must be a timestamp no later than 1.00 s
    logits = np.zeros((1, vocab), dtype=np.float32)
    rules.apply(logits, np.array([[tok.sot]]))
    assert np.isinf(logits[0, :tb]).all() and np.isfinite(logits[0, tb : tb + 51]).all()
    assert np.isinf(logits[0, tb + 51 :]).all()
    # after an opening timestamp, text or a closing timestamp, never an earlier one
    logits = np.zeros((1, vocab), dtype=np.float32)
    rules.apply(logits, np.array([[tok.sot, tb + 10, 100, 200, tb + 30]]))
    assert np.isinf(logits[0, :eot]).all()  # a lone timestamp after text must be closed or end
    assert np.isinf(logits[0, tb : tb + 30]).all() and np.isfinite(logits[0, tb + 30])
    # after a closed pair, text must follow
    logits = np.zeros((1, vocab), dtype=np.float32)
    rules.apply(logits, np.array([[tok.sot, tb + 10, 100, tb + 30, tb + 30]]))
    assert np.isinf(logits[0, tb:]).all()


def test_fast_cpu_kernels_match_exact_ops(tiny_en, mels):
    """The inference kernels (numpy attention, softmax and GELU) agree with MLX's exact ops."""
    mel = mx.array(mels[:1]).astype(tiny_en.dtype)
    exact = tiny_en.encoder(mel)
    fast = tiny_en.encoder(mel, fast_kernels=True)
    assert np.abs(np.array(exact) - np.array(fast)).max() < 2e-4
    tokens = mx.array([[50257, 50362, 843, 523, 616]])
    a = tiny_en.decoder(tokens, exact)[0]
    b = tiny_en.decoder(tokens, exact, fast_kernels=True)[0]
    assert np.abs(np.array(a) - np.array(b)).max() < 1e-4
    # the exact path stays differentiable: training uses it
    grad = mx.grad(lambda x: tiny_en.encoder(x).sum())(mel)
    assert np.isfinite(np.array(grad)).all() and np.abs(np.array(grad)).max() > 0
