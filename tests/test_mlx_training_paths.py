"""The MLX engine's fast training paths equal the plain computation: the cross-attention over cached base
keys and values, the loss formed only at target positions through the frozen output projection, and the
fused attention. Each is compared with the unfused, uncached float32 computation against the same one in
float64 (tests/numerics.py), on a small random Whisper."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_whisper_lora.backend_mlx.adapters import apply_adapters
from mlx_whisper_lora.backend_mlx.engine import loss_fn, set_grad_checkpoint, target_positions
from mlx_whisper_lora.backend_mlx.training.frozen_head_loss import BLOCK_ROWS, frozen_head_cross_entropy
from mlx_whisper_lora.backend_mlx.model import ModelDimensions, Whisper
from mlx_whisper_lora.formats.adapter_config import AdapterConfig

from numerics import MLX_FACTOR, assert_float32_close

DIMS = ModelDimensions(n_mels=80, n_audio_ctx=40, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                       n_vocab=51864, n_text_ctx=24, n_text_state=64, n_text_head=4, n_text_layer=2)


def _model(modules, dtype=mx.float32, fine_tune_type="lora", freeze_encoder=True) -> Whisper:
    mx.random.seed(3)
    model = Whisper(DIMS)
    apply_adapters(model, AdapterConfig(rank=4, alpha=8, modules=modules, freeze_encoder=freeze_encoder,
                                        fine_tune_type=fine_tune_type))
    rng = np.random.default_rng(1)
    for name, value in tree_flatten(model.trainable_parameters()):  # B = 0 at start: give the adapters a value
        model.update(_tree(name, mx.array(rng.normal(0, 0.05, value.shape).astype(np.float32))))
    model.set_dtype(dtype)
    return model


def _tree(name, value):
    from mlx.utils import tree_unflatten

    return tree_unflatten([(name, value)])


def _batch(dtype=mx.float32):
    rng = np.random.default_rng(7)
    states = mx.array(rng.normal(0, 1, (3, DIMS.n_audio_ctx, DIMS.n_audio_state)).astype(np.float32)).astype(dtype)
    tokens = rng.integers(0, 50000, (3, 12)).astype(np.int32)
    mask = np.zeros((3, 11), dtype=np.float32)
    mask[0, 2:11], mask[1, 3:7], mask[2, 2:9] = 1, 1, 1  # ragged rows, a prompt part not counted
    return states, mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:]), mask


def exact_loss_and_grads(modules, states, inputs, targets, mask, smoothing=0.0):
    """The reference: the plain computation in float64 on the CPU stream (same adapters: same seed)."""
    exact_model = _model(modules, mx.float64)
    with mx.stream(mx.cpu):
        return _loss_and_grads(exact_model, states.astype(mx.float64), inputs, targets, mask, False, smoothing)


def _loss_and_grads(model, states, inputs, targets, mask, fast: bool, smoothing=0.0):
    def f(m):
        if fast:
            kv = [tuple(mx.stop_gradient(a) for a in p) for p in m.decoder.base_cross_kv(states)] \
                if m.decoder.cross_kv_cacheable() else None
            return loss_fn(m, states, inputs, targets, mx.array(mask), True, smoothing, cross_kv=kv,
                           positions=target_positions(mask))[0]
        return loss_fn(m, states, inputs, targets, mx.array(mask), True, smoothing)[0]

    loss, grads = nn.value_and_grad(model, f)(model)
    return loss, dict(tree_flatten(grads))


@pytest.mark.parametrize("modules", [["query", "value"], ["query", "key", "value", "out"]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cached_keys_and_target_position_loss_equal_the_plain_computation(modules, smoothing):
    model = _model(modules)
    assert model.decoder.cross_kv_cacheable()
    states, inputs, targets, mask = _batch()
    fast_loss, fast_grads = _loss_and_grads(model, states, inputs, targets, mask, True, smoothing)
    plain_loss, plain_grads = _loss_and_grads(model, states, inputs, targets, mask, False, smoothing)
    exact_loss, exact_grads = exact_loss_and_grads(modules, states, inputs, targets, mask, smoothing)
    assert_float32_close(fast_loss, exact_loss, plain_loss, "loss", MLX_FACTOR)
    assert set(fast_grads) == set(plain_grads) and any("cross_attn.value" in k for k in fast_grads)
    for name in plain_grads:
        assert_float32_close(fast_grads[name], exact_grads[name], plain_grads[name], name, MLX_FACTOR)


def test_dora_and_trained_keys_are_not_cached():
    assert not _model(["query", "value"], fine_tune_type="dora").decoder.cross_kv_cacheable()
    full = Whisper(DIMS)
    apply_adapters(full, AdapterConfig(fine_tune_type="full", num_layers=1))
    assert not full.decoder.cross_kv_cacheable()


@pytest.mark.parametrize("device", ["numpy", "mlx"])
def test_frozen_head_loss_equals_cross_entropy_over_blocks_of_rows(device):
    """After a small graph the loss runs in numpy on the CPU; the MLX-ops version (GPUs, a training encoder)
    is checked here on the CPU too."""
    rng = np.random.default_rng(0)
    rows, vocab, width = BLOCK_ROWS + 37, 3000, 32  # two blocks, the second ragged
    hidden = mx.array(rng.normal(0, 1, (rows, width)).astype(np.float32))
    weight = mx.array(rng.normal(0, 0.3, (vocab, width)).astype(np.float32))
    targets = mx.array(rng.integers(0, vocab, rows).astype(np.int32))
    for smoothing in (0.0, 0.2):
        def plain(h, w=weight):
            return nn.losses.cross_entropy(h @ w.T, targets, reduction="sum", label_smoothing=smoothing)

        got, got_grad = mx.value_and_grad(lambda h: frozen_head_cross_entropy(h, weight, targets, smoothing,
                                                                              small_graph=device == "numpy"))(hidden)
        ref, ref_grad = mx.value_and_grad(plain)(hidden)
        with mx.stream(mx.cpu):
            exact, exact_grad = mx.value_and_grad(lambda h: plain(h, weight.astype(mx.float64)))(
                hidden.astype(mx.float64))
        assert_float32_close(got, exact, ref, f"loss, smoothing {smoothing}", MLX_FACTOR)
        assert_float32_close(got_grad, exact_grad, ref_grad, f"gradient, smoothing {smoothing}", MLX_FACTOR)


def test_fused_attention_equals_the_explicit_scores():
    """Inference without scores runs mx.fast.scaled_dot_product_attention; with them, the explicit products."""
    model = _model(["query", "value"])
    states, inputs, _, _ = _batch()
    fused = model.decoder(inputs, states)[0]
    explicit, _, qk = model.decoder(inputs, states, scores=True)
    assert qk[0] is not None
    exact_model = _model(["query", "value"], mx.float64)
    with mx.stream(mx.cpu):
        exact = exact_model.decoder(inputs, states.astype(mx.float64), scores=True)[0]
    assert_float32_close(fused, exact, explicit, "logits", MLX_FACTOR)


def test_blockwise_attention_equals_softmax_attention_and_its_gradients(monkeypatch):
    from mlx_whisper_lora.backend_mlx.training import chunked_attention

    monkeypatch.setattr(chunked_attention, "BLOCK", 48)  # 130 queries: three blocks, the last ragged
    rng = np.random.default_rng(5)
    q, k, v = (mx.array(rng.normal(0, 1, (2, 3, 130, 16)).astype(np.float32)) for _ in range(3))
    cotangent = mx.array(rng.normal(0, 1, (2, 3, 130, 16)).astype(np.float32))

    def plain(q, k, v):
        return mx.softmax(q @ k.swapaxes(-1, -2), axis=-1) @ v

    def grads(f, *args):
        return mx.vjp(f, list(args), [cotangent.astype(args[0].dtype)])

    (got,), got_grads = grads(chunked_attention.attention, q, k, v)
    (ref,), ref_grads = grads(plain, q, k, v)
    with mx.stream(mx.cpu):
        (exact,), exact_grads = grads(plain, *(a.astype(mx.float64) for a in (q, k, v)))
    assert_float32_close(got, exact, ref, "output", MLX_FACTOR)
    for name, g, e, r in zip("qkv", got_grads, exact_grads, ref_grads):
        assert_float32_close(g, e, r, f"d{name}", MLX_FACTOR)


def test_encoder_training_through_blockwise_attention_equals_the_plain_loss(monkeypatch):
    from mlx_whisper_lora.backend_mlx.training import chunked_attention

    monkeypatch.setattr(chunked_attention, "BLOCK", 16)  # 40 frames: three blocks
    mels = mx.array(np.random.default_rng(2).normal(0, 1, (2, 2 * DIMS.n_audio_ctx, 80)).astype(np.float32))
    _, inputs, targets, mask = _batch()
    inputs, targets, mask = inputs[:2], targets[:2], mask[:2]

    def run(model, mels, blockwise):
        for block in model.encoder.blocks:
            block.attn.blockwise = blockwise
        loss, grads = nn.value_and_grad(model, lambda m: loss_fn(m, mels, inputs, targets, mx.array(mask), False,
                                                                 positions=target_positions(mask))[0])(model)
        return loss, dict(tree_flatten(grads))

    model = _model(["query", "value"], freeze_encoder=False)
    blockwise, block_grads = run(model, mels, True)
    plain, plain_grads = run(model, mels, False)
    with mx.stream(mx.cpu):
        exact, exact_grads = run(_model(["query", "value"], mx.float64, freeze_encoder=False), mels.astype(mx.float64),
                                 False)
    assert_float32_close(blockwise, exact, plain, "loss", MLX_FACTOR)
    assert any(k.startswith("encoder.") for k in block_grads)
    for name in plain_grads:
        assert_float32_close(block_grads[name], exact_grads[name], plain_grads[name], name, MLX_FACTOR)


def test_cached_path_with_gradient_checkpointing_equals_without():
    model = _model(["query", "value"])
    states, inputs, targets, mask = _batch()
    loss, grads = _loss_and_grads(model, states, inputs, targets, mask, True)
    set_grad_checkpoint(model, True)
    checkpointed, checkpointed_grads = _loss_and_grads(model, states, inputs, targets, mask, True)
    assert checkpointed.item() == loss.item()  # the same operations, recomputed
    for name, g in grads.items():
        assert mx.array_equal(checkpointed_grads[name], g), name


def test_alignment_scores_with_gradient_checkpointing_set():
    """Training with --grad-checkpoint leaves the flag on the blocks; choosing alignment heads afterwards
    still needs the cross-attention scores (they were None: a crash after training)."""
    model = _model(["query", "value"])
    set_grad_checkpoint(model, True)
    states, inputs, _, _ = _batch()
    _, qk = model.alignment_scores(np.array(inputs[:1]), states[:1])
    assert qk.shape == (len(model.alignment_heads.tolist()), inputs.shape[1], DIMS.n_audio_ctx)


class _Examples:
    """What MLXBackend.accumulate_gradients reads of a training set: log-mels and which rows are replayed."""

    def __init__(self, mels):
        self._mels = mels

    def mels(self, indices, augment=None):
        return self._mels[list(indices)]

    def replayed(self, indices):
        return [False] * len(indices)


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_a_training_encoder_step_in_passes_of_rows_equals_one_pass(compiled, monkeypatch):
    """ENCODER_ROWS_PER_PASS: the batch in passes (here 2, 2 and 1 rows), each pass's gradients weighted by its
    share of the tokens, is the step over the whole batch; eager and compiled (a GPU's default)."""
    from types import SimpleNamespace

    monkeypatch.setenv("MLX_WHISPER_LORA_COMPILED_STEP", compiled)

    from mlx_whisper_lora.backend_mlx.engine import ENCODER_ROWS_PER_PASS, MLXBackend

    rng = np.random.default_rng(4)
    mels = rng.normal(0, 1, (5, 2 * DIMS.n_audio_ctx, 80)).astype(np.float32)
    tokens = rng.integers(0, 50000, (5, 12)).astype(np.int32)
    mask = np.zeros((5, 11), dtype=np.float32)
    for row, (a, b) in enumerate([(2, 11), (3, 7), (2, 9), (4, 10), (2, 5)]):
        mask[row, a:b] = 1
    labels = (tokens[:, :-1], tokens[:, 1:], mask)
    args = SimpleNamespace(seed=0, grad_checkpoint=False, optimizer="adamw", weight_decay=0.0, label_smoothing=0.0,
                           replay_distill=False)
    results = []
    for rows in (None, 2):
        backend = MLXBackend(_model(["query", "value"], freeze_encoder=False))
        backend.start_training(args)
        assert backend.rows_per_pass == ENCODER_ROWS_PER_PASS and (backend.compiled is not None) == (compiled == "1")
        backend.rows_per_pass = rows
        loss, n = backend.accumulate_gradients(_Examples(mels), list(range(5)), None, labels, 0.5)
        results.append((loss, n, dict(tree_flatten(backend.grads))))
    (loss, n, grads), (split_loss, split_n, split_grads) = results
    assert split_n == n == mask.sum()
    assert split_loss == pytest.approx(loss, rel=1e-5)
    assert any(k.startswith("encoder.") for k in grads) and set(grads) == set(split_grads)
    for name, g in grads.items():  # float32 sums in another grouping: a few units of the largest gradient
        scale = float(mx.abs(g).max())
        assert float(mx.abs(split_grads[name] - g).max()) <= 1e-5 * scale + 1e-9, name


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_a_half_precision_step_keeps_float32_adapters_and_the_float32_loss(dtype):
    """--dtype bfloat16|float16 on MLX: the base cast once, the adapters (and their optimizer state) float32
    master weights, the step computed in the half type: its loss within that type's rounding of float32's."""
    from types import SimpleNamespace

    from mlx_whisper_lora.backend_mlx.engine import MLXBackend

    def model_in(dt):
        mx.random.seed(3)
        model = Whisper(DIMS)
        model.set_dtype(dt)  # as load_model(dtype=...) leaves the base, before the adapters are applied
        apply_adapters(model, AdapterConfig(rank=4, alpha=8, modules=["query", "value"], freeze_encoder=True))
        rng = np.random.default_rng(1)
        for name, value in tree_flatten(model.trainable_parameters()):
            model.update(_tree(name, mx.array(rng.normal(0, 0.05, value.shape).astype(np.float32))))
        return model

    states, inputs, targets, mask = _batch()
    labels = (np.array(inputs), np.array(targets), mask)
    args = SimpleNamespace(seed=0, grad_checkpoint=False, optimizer="adamw", weight_decay=0.0, label_smoothing=0.0,
                           replay_distill=False)
    losses = {}
    for dt in (mx.float32, dtype):
        backend = MLXBackend(model_in(dt))
        backend.start_training(args)
        loss, n = backend.accumulate_gradients(_Examples(None), [0, 1, 2], list(np.array(states)), labels, 1.0)
        losses[dt] = loss / n
        assert all(g.dtype == mx.float32 for _, g in tree_flatten(backend.grads))
        backend.update(1e-3, 1.0)
        trained = dict(tree_flatten(backend.model.trainable_parameters()))
        assert trained and all(v.dtype == mx.float32 for v in trained.values())
        assert all(v.dtype == mx.float32 for _, v in tree_flatten(backend.optimizer.state) if v.ndim)
        assert backend.model.decoder.blocks[0].mlp1.weight.dtype == dt
    # a float32 loss of ~11 through 2 layers of 64 and a 51,864-way softmax: each product rounds to the type's
    # unit (bf16 2^-8, fp16 2^-11) relatively; a few such steps stack, 8 units bound them (measured: 0.03-0.04
    # units, a random model's loss near log(vocab) moves little)
    unit = 2.0 ** -8 if dtype == mx.bfloat16 else 2.0 ** -11
    assert losses[dtype] != losses[mx.float32]  # computed in the half type, not in float32
    assert losses[dtype] == pytest.approx(losses[mx.float32], rel=8 * unit)


def test_cached_keys_per_utterance_equal_the_stacked_ones():
    """The training cache's keys and values are read per utterance (lists, MLXBackend.cross_kv), not stacked
    into a batch-sized copy: the same loss and gradients as over stacked arrays."""
    model = _model(["query", "key", "value", "out"])
    states, inputs, targets, mask = _batch()
    stacked = [tuple(mx.stop_gradient(a) for a in p) for p in model.decoder.base_cross_kv(states)]
    per_row = [([k[j] for j in range(k.shape[0])], [v[j] for j in range(v.shape[0])]) for k, v in stacked]

    def run(kv):
        loss, grads = nn.value_and_grad(model, lambda m: loss_fn(m, states, inputs, targets, mx.array(mask), True,
                                                                 cross_kv=kv, positions=target_positions(mask))[0])(model)
        return loss, dict(tree_flatten(grads))

    (loss, grads), (row_loss, row_grads) = run(stacked), run(per_row)
    assert row_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for name, g in grads.items():  # the same products, batched or row by row: float32 units of the largest value
        assert float(mx.abs(row_grads[name] - g).max()) <= 1e-5 * float(mx.abs(g).max()) + 1e-9, name
