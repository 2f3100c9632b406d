"""The MLX engine's compiled training step (backend_mlx/compiled_step.py) equals the eager one: the loss and
gradients of a bucketed batch against the unbucketed, uncompiled computation (and float64), the compiled
optimizer update against the eager update, and a batch of another length in the same bucket is not traced
again. Runs the GPU's path (MLX ops only) on the CPU."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_whisper_lora.backend_mlx.training import compiled_step
from mlx_whisper_lora.backend_mlx.training.compiled_step import CompiledStep, bucket, bucketed_labels, bucketed_positions
from mlx_whisper_lora.backend_mlx.engine import loss_fn
from mlx_whisper_lora.backend_mlx.training.host_kernels import mlx_ops_only, numpy_allowed

from numerics import MLX_FACTOR, assert_float32_close
from test_mlx_training_paths import DIMS, _batch, _loss_and_grads, _model, exact_loss_and_grads


def _compiled(model, smoothing=0.0):
    return CompiledStep(model, optim.AdamW(learning_rate=0.0), lambda m, a, i, t, kv, pos, w: loss_fn(
        m, a, i, t, None, True, smoothing, cross_kv=kv, positions=pos, weights=w), DIMS.n_text_ctx)


def _kv(model, states):
    if not model.decoder.cross_kv_cacheable():
        return None
    return [tuple(mx.stop_gradient(a) for a in p) for p in model.decoder.base_cross_kv(states)]


def test_buckets():
    assert [bucket(n, 16) for n in (1, 16, 17, 31)] == [16, 16, 32, 32]
    assert bucket(440, 16, 448) == 448 and bucket(447, 16, 448) == 448 and bucket(449, 16, 448) == 464
    mask = np.zeros((2, 5), np.float32)
    mask[0, 1:4], mask[1, 2] = 1, 1
    positions, weights = bucketed_positions(mask)
    assert positions.shape == weights.shape == (compiled_step.POSITION_MULTIPLE,)
    assert positions[:4].tolist() == [1, 2, 3, 7] and weights.sum().item() == 4
    inputs, targets, padded = bucketed_labels((mask.astype(np.int32), mask.astype(np.int32), mask), 24)
    assert inputs.shape == padded.shape == (2, 16) and padded[:, 5:].sum() == 0


def test_numpy_kernels_are_off_in_mlx_ops_only():
    assert numpy_allowed() == (mx.default_device() == mx.cpu)
    with mlx_ops_only():
        assert not numpy_allowed()
    assert numpy_allowed() == (mx.default_device() == mx.cpu)


@pytest.mark.parametrize("modules", [["query", "value"], ["query", "key", "value", "out", "mlp1", "mlp2"]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_compiled_loss_and_gradients_equal_the_eager_ones(modules, smoothing):
    model = _model(modules)
    states, inputs, targets, mask = _batch()
    step = _compiled(model, smoothing)
    (loss, count), grads = step.loss_and_grad(states, (np.array(inputs), np.array(targets), mask), _kv(model, states))
    grads = dict(tree_flatten(grads))
    assert count.item() == mask.sum()
    eager_loss, eager_grads = _loss_and_grads(model, states, inputs, targets, mask, False, smoothing)
    exact_loss, exact_grads = exact_loss_and_grads(modules, states, inputs, targets, mask, smoothing)
    assert_float32_close(loss, exact_loss, eager_loss, "loss", MLX_FACTOR)
    assert set(grads) == set(eager_grads)
    for name in eager_grads:
        assert_float32_close(grads[name], exact_grads[name], eager_grads[name], name, MLX_FACTOR)


def test_a_batch_in_the_same_bucket_is_not_traced_again():
    model = _model(["query", "value"])
    states, inputs, targets, mask = _batch()
    step = _compiled(model)
    labels = (np.array(inputs), np.array(targets), mask)
    kv = _kv(model, states)
    first = step.loss_and_grad(states, labels, kv)
    shorter = tuple(a[:, :9] for a in labels)  # 11 and 9 tokens: both in the 16-token bucket
    second = step.loss_and_grad(states, shorter, kv)
    mx.eval(first, second)
    assert step.traces == 1
    eager, _ = _loss_and_grads(model, states, inputs[:, :9], targets[:, :9], mask[:, :9], False)
    assert abs(second[0][0].item() - eager.item()) <= 1e-5 * abs(eager.item())


@pytest.mark.parametrize("max_grad_norm", [0.0, 0.01])
def test_compiled_update_equals_the_eager_update(max_grad_norm):
    model, eager_model = _model(["query", "value"]), _model(["query", "value"])
    states, inputs, targets, mask = _batch()
    _, grads = _loss_and_grads(model, states, inputs, targets, mask, True)
    step = _compiled(model)
    step.optimizer.init(model.trainable_parameters())
    eager = optim.AdamW(learning_rate=0.0)
    eager.init(eager_model.trainable_parameters())
    from mlx.utils import tree_unflatten

    grads = tree_unflatten(list(grads.items()))
    for lr in (1e-3, 5e-4):  # the rate set before each update is the one used
        step.update(grads, lr, max_grad_norm)
        g = optim.clip_grad_norm(grads, max_grad_norm)[0] if max_grad_norm else grads
        eager.learning_rate = mx.array(lr, dtype=mx.float32)
        eager.update(eager_model, g)
        mx.eval(model.parameters(), eager_model.parameters())
    got, want = dict(tree_flatten(model.trainable_parameters())), dict(tree_flatten(eager_model.trainable_parameters()))
    for name, value in want.items():
        assert mx.allclose(got[name], value, rtol=1e-5, atol=1e-7).item(), name
        assert not mx.array_equal(value, dict(tree_flatten(_model(["query", "value"]).trainable_parameters()))[name])


def test_the_loop_with_the_compiled_step_trains_and_resumes_as_the_eager_one(tiny_en_checkpoint, tmp_path,
                                                                               monkeypatch):
    """Through tuner.loop.train on tiny.en: the same losses and adapters as the eager (numpy-kernel) step, and a
    resumed run (a new optimizer state tree) continues as a straight one."""
    import json

    from mlx_whisper_lora.backend_mlx.adapters import trainable_weights
    from test_trainer import _adapted, _run, straight_and_resumed

    read = lambda p: [e["train_loss"] for e in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                      if "train_loss" in e]
    monkeypatch.setenv(compiled_step.ENV_VAR, "0")
    eager = _adapted(tiny_en_checkpoint)
    _run(eager, tmp_path / "e", iters=4)
    monkeypatch.setenv(compiled_step.ENV_VAR, "1")
    straight, resumed, summary = straight_and_resumed(tiny_en_checkpoint, tmp_path)
    assert summary["start_step"] == 2
    # the first step's loss is the same computation with MLX's exps instead of numpy's: equal to float32 rounding
    # (two eager runs of this test on the loaded 2-core machine read 1.64425 and 1.64433: the BLAS's threads);
    # later losses follow Adam's first updates, about lr * sign(gradient), which turns a rounding difference in a
    # gradient near 0 into a whole step of that weight: they agree to a share of a step's change (30-80% here)
    compiled, eager_losses = read(tmp_path / "a"), read(tmp_path / "e")
    assert compiled[0] == pytest.approx(eager_losses[0], rel=2e-4)
    assert compiled == pytest.approx(eager_losses, rel=1e-2)
    a, b = trainable_weights(straight), trainable_weights(resumed)
    for k in a:  # the same compiled kernels, the state read back: as the eager loop's resume test finds
        assert float(mx.abs(a[k] - b[k]).max()) < 1e-6, k
