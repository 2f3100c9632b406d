"""The training target: prefix, shift, end of text, masks, timestamps, context cap."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.backend_mlx.engine import masked_cross_entropy
from mlx_whisper_lora.data.labels import collate, make_label
from mlx_whisper_lora.text.tokenizer import get_tokenizer


def test_english_only_label_and_shifted_targets():
    tok = get_tokenizer(False)
    lab = make_label(tok, "Hello world.", "en")
    text = tok.encode(" Hello world.")
    assert lab.tokens == [tok.sot, tok.no_timestamps] + text + [tok.eot]
    assert lab.prefix_len == 2
    inputs, targets, mask = collate([lab], pad_token=0)
    assert inputs.tolist()[0] == lab.tokens[:-1]
    assert targets.tolist()[0] == lab.tokens[1:]
    # the first counted target is the first text token; the last is <|endoftext|>
    m = mask.tolist()[0]
    assert m[0] == 0 and m[1] == 1 and m[-1] == 1 and targets.tolist()[0][-1] == tok.eot


def test_multilingual_prefix_per_language_and_task():
    tok = get_tokenizer(True, 99)
    lab = make_label(tok, "Guten Tag", "de", task="translate")
    assert lab.tokens[:4] == [tok.sot, tok.language_token_for("de"), tok.translate, tok.no_timestamps]
    assert lab.prefix_len == 4


def test_timestamp_targets_and_context_cap():
    tok = get_tokenizer(False)
    lab = make_label(tok, "Hi there", "en", duration=2.5, timestamps=True)
    assert lab.tokens[:2] == [tok.sot, tok.timestamp_begin]
    assert lab.tokens[-2] == tok.timestamp_begin + 125 and lab.tokens[-1] == tok.eot
    long = make_label(tok, "word " * 600, "en", max_tokens=448)
    assert len(long.tokens) == 448 and long.truncated and long.tokens[-1] != tok.eot


def test_padding_does_not_change_the_loss():
    tok = get_tokenizer(False)
    short, long = make_label(tok, "a", "en"), make_label(tok, "a much longer sentence here", "en")
    inputs, targets, mask = collate([short, long], pad_token=0)
    assert mask.tolist()[0][len(short.tokens) - 1:] == [0.0] * (inputs.shape[1] - len(short.tokens) + 1)
    rng = np.random.default_rng(0)
    logits = mx.array(rng.normal(size=(2, inputs.shape[1], 51864)).astype(np.float32))
    total, count = masked_cross_entropy(logits, mx.array(targets), mx.array(mask))
    noisy = np.array(logits)
    noisy[0, len(short.tokens) - 1:] += 100 * rng.normal(size=noisy[0, len(short.tokens) - 1:].shape)
    total2, count2 = masked_cross_entropy(mx.array(noisy), mx.array(targets), mx.array(mask))
    assert count.item() == count2.item() == (len(short.tokens) - 2) + (len(long.tokens) - 2)
    assert abs(total.item() - total2.item()) < 1e-3


def test_label_smoothing_is_the_same_in_both_back_ends():
    """--label-smoothing: MLX's masked loss equals torch's cross_entropy(label_smoothing=...) on the
    same logits, and smoothing raises the loss of confident predictions."""
    import mlx.core as mx
    import numpy as np

    torch = pytest.importorskip("torch")
    from mlx_whisper_lora.backend_mlx.engine import masked_cross_entropy

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(2, 5, 50)) * 4).astype(np.float32)
    targets = rng.integers(0, 50, size=(2, 5)).astype(np.int32)
    mask = np.ones((2, 5), np.float32)
    mask[1, 3:] = 0
    for eps in (0.0, 0.1):
        total, count = masked_cross_entropy(mx.array(logits), mx.array(targets), mx.array(mask), eps)
        keep = torch.from_numpy(mask).bool()
        expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits)[keep], torch.from_numpy(targets)[keep].long(),
                                                     reduction="sum", label_smoothing=eps)
        assert float(count) == 8 and abs(float(total) - float(expected)) < 1e-3 * float(expected)
