"""Training on real tiny.en weights: the objective teaches a transcript; resume, Ctrl-C, full disk."""

from __future__ import annotations

import errno
import json
import os
import signal

import mlx.core as mx
from mlx.utils import tree_flatten
import pytest

from mlx_whisper_lora.backend_mlx.adapters import AdapterConfig, apply_adapters, load_adapters, trainable_weights
from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.data.manifests import Utterance, check_utterances
from mlx_whisper_lora.inference.decoding import DecodingOptions, decode
from mlx_whisper_lora.data.examples import ExampleSet
from mlx_whisper_lora.text.tokenizer import get_tokenizer
from mlx_whisper_lora.backend_mlx.engine import MLXBackend
from mlx_whisper_lora.tuner.loop import TrainingArgs, evaluate_loss, train

TARGET = ("WHISPER CAN BE ADAPTED TO YOUR OWN VOICE WITH LOW RANK ADAPTERS "
          "THIS SHORT CLIP WAS SPOKEN BY A SPEECH SYNTHESIZER")


def _examples(model, utterances, timestamp_fraction=0.0):
    kept, _ = check_utterances(utterances, "train", multilingual=model.is_multilingual, default_language="en")
    tok = get_tokenizer(model.is_multilingual, model.num_languages)
    examples, _ = ExampleSet.build(kept, tok, "transcribe", model.dims.n_mels, model.dims.n_text_ctx, timestamp_fraction)
    return examples


def _greedy(model, examples):
    feats = model.embed_audio(mx.array(examples.mels([0])))
    opts = DecodingOptions(language="en", without_timestamps=True)
    return decode(model, None, opts, get_tokenizer(False), audio_features=feats)[0].text


def test_single_utterance_converges_to_its_transcript(fresh_tiny_en, tmp_path):
    model = fresh_tiny_en
    examples = _examples(model, [Utterance(str(ASSETS / "demo.flac"), TARGET)])
    assert _greedy(model, examples) != TARGET  # the base model writes case and punctuation
    mx.random.seed(0)
    apply_adapters(model, AdapterConfig(freeze_encoder=True, rank=8, alpha=16))
    args = TrainingArgs(iters=60, batch_size=1, learning_rate=1e-3, lr_schedule="cosine", steps_per_report=10,
                        steps_per_eval=1000, save_every=0)
    summary = train(MLXBackend(model), examples, None, args, tmp_path, log=lambda m: None, progress=False)
    assert summary["status"] == "done" and summary["steps"] == 60
    model.eval()
    assert _greedy(model, examples) == TARGET
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [e["train_loss"] for e in lines if "train_loss" in e]
    assert losses[-1] < 0.25 * losses[0]
    assert {"learning_rate", "iterations_per_second", "audio_seconds_per_second", "peak_memory_gb"} <= set(lines[0])


def _demo_utterances(n=4):
    return [Utterance(str(ASSETS / "demo.flac"), TARGET if i % 2 else TARGET.lower()) for i in range(n)]


def _run(model, folder, iters, resume=None, cache=True, **kw):
    args = TrainingArgs(iters=iters, batch_size=2, learning_rate=1e-3, save_every=2, steps_per_report=1,
                        steps_per_eval=1000, lr_schedule="cosine", warmup=1, encoder_cache=cache, **kw)
    return train(MLXBackend(model), _examples(model, _demo_utterances()), None, args, folder, resume_file=resume,
                 log=lambda m: None, progress=False)


def _adapted(checkpoint):
    from mlx_whisper_lora.backend_mlx.load import build_model

    mx.random.seed(0)
    model = build_model(checkpoint)
    apply_adapters(model, AdapterConfig(freeze_encoder=True, rank=4, alpha=8))
    return model


def straight_and_resumed(checkpoint, tmp_path):
    """Four steps straight (in tmp_path/a), and two steps then resumed to four (in tmp_path/b): (straight model,
    resumed model, the resumed run's summary)."""
    from mlx_whisper_lora.backend_mlx.adapters import load_weights_into
    from mlx_whisper_lora.formats.adapter_files import read_adapter_tensors

    straight = _adapted(checkpoint)
    _run(straight, tmp_path / "a", iters=4)
    interrupted = _adapted(checkpoint)
    _run(interrupted, tmp_path / "b", iters=2)
    resumed = _adapted(checkpoint)
    resume_file = tmp_path / "b" / "adapters.safetensors"
    load_weights_into(resumed, read_adapter_tensors(resume_file), resume_file)
    return straight, resumed, _run(resumed, tmp_path / "b", iters=4, resume=resume_file)


def test_resume_continues_step_optimizer_and_batch_order(tiny_en_checkpoint, tmp_path):
    straight, resumed, summary = straight_and_resumed(tiny_en_checkpoint, tmp_path)
    assert summary["start_step"] == 2 and summary["steps"] == 4
    a, b = trainable_weights(straight), trainable_weights(resumed)
    # the same MLX kernels on the same values in the same order, the state read back bit for bit: identical
    # (0.0 measured); 1e-6 is ~130 float32 units of the largest weight (0.057), far below a step's change
    assert max(float(mx.abs(a[k] - b[k]).max()) for k in a) < 1e-6
    assert (tmp_path / "a" / "0000002_adapters.safetensors").exists()


def test_encoder_cache_gives_the_same_losses(tiny_en_checkpoint, tmp_path):
    cached, uncached = _adapted(tiny_en_checkpoint), _adapted(tiny_en_checkpoint)
    _run(cached, tmp_path / "c", iters=3, cache=True)
    _run(uncached, tmp_path / "u", iters=3, cache=False)
    read = lambda p: [e["train_loss"] for e in map(json.loads, (p / "metrics.jsonl").read_text().splitlines()) if "train_loss" in e]  # noqa: E731
    # the cached states are the encoder's output on the same mel by the same kernels, so the steps are the same
    # computation (identical losses measured); metrics.jsonl rounds each loss to 5 decimals, so two losses a
    # float32 unit apart can straddle a rounding boundary and read 1e-5 apart: abs=1.1e-5 allows that one unit
    # (and the binary spelling of two decimals), which rel=1e-5 alone did not for a loss under 1 (0.548 here);
    # a wrong or stale state moves a loss by more than 1e-2
    assert read(tmp_path / "c") == pytest.approx(read(tmp_path / "u"), rel=1e-5, abs=1.1e-5)


def test_ctrl_c_saves_and_stops_cleanly(tiny_en_checkpoint, tmp_path):
    model = _adapted(tiny_en_checkpoint)
    messages = []

    def log(message):
        messages.append(message)

    args = TrainingArgs(iters=50, batch_size=2, save_every=0, steps_per_report=1, steps_per_eval=1000)
    examples = _examples(model, _demo_utterances())
    backend = MLXBackend(model)
    original = backend.accumulate_gradients
    calls = {"n": 0}

    def step_then_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # during the third step, as a user pressing Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return original(*a, **k)

    backend.accumulate_gradients = step_then_interrupt
    summary = train(backend, examples, None, args, tmp_path, log=log, progress=False)
    assert summary["status"] == "interrupted" and summary["steps"] == 3 and summary["saved"]
    meta = mx.load(str(tmp_path / "adapters.safetensors"), return_metadata=True)[1]
    assert meta["step"] == "3"
    assert any("--resume-adapter-file" in m for m in messages)
    from mlx_whisper_lora.backend_mlx.load import build_model

    reloaded = build_model(tiny_en_checkpoint)
    from mlx_whisper_lora.formats.adapter_files import save_adapter_config

    save_adapter_config(AdapterConfig(freeze_encoder=True, rank=4, alpha=8), tmp_path)
    load_adapters(reloaded, tmp_path)
    assert all(mx.array_equal(v, trainable_weights(model)[k]) for k, v in trainable_weights(reloaded).items())


def test_full_disk_at_a_checkpoint_keeps_training(tiny_en_checkpoint, tmp_path, monkeypatch):
    model = _adapted(tiny_en_checkpoint)
    import safetensors.numpy

    real_save = safetensors.numpy.save_file
    calls = {"n": 0}

    def flaky_save(arrays, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 1:  # the step-2 checkpoint hits a full disk; space is freed before the end
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(arrays, path, metadata=metadata)

    monkeypatch.setattr(safetensors.numpy, "save_file", flaky_save)
    messages = []
    args = TrainingArgs(iters=4, batch_size=2, save_every=2, steps_per_report=1, steps_per_eval=1000)
    summary = train(MLXBackend(model), _examples(model, _demo_utterances()), None, args, tmp_path,
                    log=messages.append, progress=False)
    assert summary["status"] == "done" and summary["steps"] == 4 and summary["saved"]
    assert any("No space left" in m and "training goes on" in m for m in messages)
    assert not list(tmp_path.glob("*.tmp.safetensors"))
    assert mx.load(str(tmp_path / "adapters.safetensors"), return_metadata=True)[1]["step"] == "4"


def test_validation_loss_matches_training_objective(fresh_tiny_en):
    examples = _examples(fresh_tiny_en, _demo_utterances(2))
    loss = evaluate_loss(MLXBackend(fresh_tiny_en), examples, batch_size=2)
    assert 0.0 < loss < 5.0


def test_bfloat16_full_fine_tune_checkpoints_and_resumes(tiny_en_checkpoint, tmp_path):
    """numpy has no bfloat16: weights and optimizer moments are written widened and cast back on resume."""
    from mlx_whisper_lora.backend_mlx.load import build_model
    from mlx_whisper_lora.formats.adapter_files import read_adapter_tensors

    def run(iters, resume=None):
        model = build_model(tiny_en_checkpoint, dtype="bfloat16")
        apply_adapters(model, AdapterConfig(fine_tune_type="full", num_layers=1, freeze_encoder=True))
        if resume is not None:
            from mlx_whisper_lora.backend_mlx.adapters import load_weights_into

            load_weights_into(model, read_adapter_tensors(resume), resume)
        args = TrainingArgs(iters=iters, batch_size=2, learning_rate=1e-4, save_every=1, steps_per_eval=1000)
        backend = MLXBackend(model)
        summary = train(backend, _examples(model, _demo_utterances(2)), None, args, tmp_path, resume_file=resume,
                        log=lambda m: None, progress=False)
        return backend, summary

    _, summary = run(1)
    assert summary["saved"] and (tmp_path / "optimizer_state.safetensors").exists()
    backend, summary = run(2, tmp_path / "adapters.safetensors")
    assert summary["start_step"] == 1 and summary["steps"] == 2
    moments = [v for k, v in tree_flatten(backend.optimizer.state) if k.endswith((".m", ".v"))]
    assert moments and all(v.dtype == mx.bfloat16 for v in moments)


def test_nan_audio_is_skipped_and_a_nan_loss_stops_before_anything_is_saved(fresh_tiny_en, tmp_path):
    import numpy as np

    model = fresh_tiny_en
    apply_adapters(model, AdapterConfig(freeze_encoder=True, rank=4, alpha=8))
    clean = np.zeros(16000, dtype=np.float32)
    bad = clean.copy()
    bad[100] = np.nan
    utterances = [Utterance(clean, TARGET, id="clean"), Utterance(bad, TARGET, id="nan-samples")]
    examples = _examples(model, utterances)
    assert examples.usable([0, 1]) == [0] and "not numbers" in examples.failed[1]  # skipped and named

    backend = MLXBackend(model)
    original = backend.accumulate_gradients
    backend.accumulate_gradients = lambda *a, **k: (float("nan"), original(*a, **k)[1])  # a diverging step
    before = {k: np.array(v) for k, v in trainable_weights(model).items()}
    from mlx_whisper_lora.errors import UserError

    with pytest.raises(UserError, match="loss of step 1 is not a number.*clean"):
        train(backend, examples, None, TrainingArgs(iters=3, batch_size=2, save_every=1), tmp_path,
              log=lambda m: None, progress=False)
    assert not (tmp_path / "adapters.safetensors").exists()
    assert all(np.array_equal(np.array(v), before[k]) for k, v in trainable_weights(model).items())


def test_a_kill_between_checkpoint_files_resumes_from_a_matching_pair(tiny_en_checkpoint, tmp_path):
    """Killed after the new optimizer state was written but before the adapters: the adapters (step 2)
    resume with the optimizer state of step 2, kept as .previous, and end where a straight run ends."""
    from safetensors.numpy import load_file, save_file

    from mlx_whisper_lora.backend_mlx.adapters import load_weights_into
    from mlx_whisper_lora.formats.adapter_files import read_adapter_tensors

    straight = _adapted(tiny_en_checkpoint)
    _run(straight, tmp_path / "a", iters=4)
    folder = tmp_path / "b"
    _run(_adapted(tiny_en_checkpoint), folder, iters=2)
    state = folder / "optimizer_state.safetensors"
    os.replace(state, folder / "optimizer_state.previous.safetensors")  # the torn step-4 save
    save_file(load_file(str(folder / "optimizer_state.previous.safetensors")), str(state),
              metadata={"format": "mlx", "step": "4", "back_end": "mlx"})
    resumed = _adapted(tiny_en_checkpoint)
    load_weights_into(resumed, read_adapter_tensors(folder / "adapters.safetensors"), folder)
    messages = []
    args = TrainingArgs(iters=4, batch_size=2, learning_rate=1e-3, save_every=2, steps_per_report=1,
                        steps_per_eval=1000, lr_schedule="cosine", warmup=1)
    summary = train(MLXBackend(resumed), _examples(resumed, _demo_utterances()), None, args, folder,
                    resume_file=folder / "adapters.safetensors", log=messages.append, progress=False)
    assert summary["start_step"] == 2
    assert any("continuing from step 2" in m and "previous" in m for m in messages)
    a, b = trainable_weights(straight), trainable_weights(resumed)
    # the same kernels on the same values in the same order (the state of the step-2 save): identical, as above
    assert max(float(mx.abs(a[k] - b[k]).max()) for k in a) < 1e-6


def test_the_run_ends_with_the_best_validation_and_the_base_model_is_a_candidate(fresh_tiny_en, tmp_path):
    """Adapters taught a wrong transcript of the validation audio: the base model (step 0) transcribes it
    best, so the run stops early, keeps step 0's adapters (zero: the base model) and says so, and the last
    step's adapters stay beside them."""
    from mlx_whisper_lora.formats.adapter_files import saved_step
    from mlx_whisper_lora.formats.safetensors_io import read_safetensors
    from mlx_whisper_lora.scoring.evaluation import validation_wer

    model = fresh_tiny_en
    wrong = "PURPLE ELEPHANTS DANCE QUIETLY UNDER THE BRIDGE EVERY TUESDAY MORNING"
    train_set = _examples(model, [Utterance(str(ASSETS / "demo.flac"), wrong)])
    valid_set = _examples(model, [Utterance(str(ASSETS / "demo.flac"), TARGET)])
    base_text = _greedy(model, valid_set)
    mx.random.seed(0)
    apply_adapters(model, AdapterConfig(freeze_encoder=True, rank=8, alpha=16))
    backend = MLXBackend(model)
    said = []
    args = TrainingArgs(iters=60, batch_size=1, learning_rate=1e-3, steps_per_report=5, steps_per_eval=10,
                        save_every=0, early_stop=3)
    summary = train(backend, train_set, valid_set, args, tmp_path, log=said.append, progress=False,
                    valid_wer=validation_wer(backend, valid_set, "transcribe", 1, -1, "keep", "keep"))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    wers = {e["step"]: e["val_wer"] for e in metrics if "val_wer" in e}
    assert wers[0] < 30 and max(wers.values()) > 50  # the base model reads it; the adapters learned other words
    assert summary["best"]["step"] == 0 and summary["best"]["kept"]
    assert summary["early_stopped"] == summary["steps"] < 60
    assert saved_step(tmp_path / "adapters.safetensors") == 0
    kept = read_safetensors(tmp_path / "adapters.safetensors")
    assert all(not v.any() for k, v in kept.items() if "lora_b" in k)  # zero updates: the base model
    assert (tmp_path / f"{summary['steps']:07d}_adapters.safetensors").exists()
    assert any("no training step transcribed the validation data better than the base model" in line for line in said)
    assert any("far below validation loss" in line for line in said)
    model.eval()
    assert _greedy(model, valid_set) == base_text  # the model in memory too
