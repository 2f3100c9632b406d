"""The training target: prefix, shift, end of text, masks, timestamps, context cap."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_whisper_lora.backend_mlx.engine import masked_cross_entropy
from mlx_whisper_lora.data.labels import collate, make_label
from mlx_whisper_lora.text.tokenizer import get_tokenizer

from numerics import MLX_FACTOR, assert_float32_close, reduction_bound


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
    # the kept positions' losses are the same numbers summed in the same order (the masked ones enter times 0):
    # identical (0.0 measured; 1e-3 is ~130 float32 units of the total, 93); a leak of the x100 noise moves it by ~1e2
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
        # two float32 implementations (MLX's logsumexp, torch's): MLX's total held to the float64 one within a
        # multiple of torch's own float32 rounding (numerics.py; MLX's exp is the less accurate)
        assert float(count) == 8
        exact = _smoothed_cross_entropy64(logits[mask > 0], targets[mask > 0], eps)
        # (the float64 reference is torch's definition: torch's float32 total is within the worst-case float32
        # rounding of 8 log-softmax rows of 50 terms of it; a wrong smoothing is off by a share of the loss)
        assert abs(float(expected) - exact) <= reduction_bound(8 * 50, float(np.abs(logits).max()) + np.log(50))
        assert_float32_close(float(total), exact, float(expected), f"smoothed loss {eps}", MLX_FACTOR)


def _smoothed_cross_entropy64(logits, targets, eps):
    """The summed label-smoothed cross-entropy in float64 (torch's definition: eps spread over the classes)."""
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return float(-((1 - eps) * log_p[np.arange(len(targets)), targets] + eps * log_p.mean(-1)).sum())
