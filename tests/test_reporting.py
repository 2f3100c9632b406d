"""Training you can watch: TensorBoard event files read back by TensorBoard's own reader, PNG plots,
and the plots carried into an export's model card."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.tuner.reporting import parse_report_to

pytest.importorskip("tensorboardX")
pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_to_is_checked_before_any_work():
    assert parse_report_to(["tensorboard,wandb"]) == ["tensorboard", "wandb"]
    assert parse_report_to(["none"]) == [] and parse_report_to([]) == []
    assert parse_report_to("tensorboard") == ["tensorboard"]  # a YAML config's single string
    with pytest.raises(UserError, match="--report-to 'tensorbord'"):
        parse_report_to(["tensorbord"])


@pytest.mark.slow  # 27 s: keeps the default suite under 15 minutes
def test_training_writes_event_files_tensorboard_reads_back_and_plots(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mlx_whisper_lora.fuse import main as fuse_main
    from mlx_whisper_lora.lora import main as lora_main

    adapters = tmp_path / "adapters"
    lora_main(["--train", "--test", "--no-hallucination-check", "--iters", "4", "--batch-size", "4", "--freeze-encoder", "--steps-per-report", "2",
               "--steps-per-eval", "2", "--no-progress", "--adapter-path", str(adapters), "--report-to", "tensorboard"])
    metrics = [json.loads(line) for line in (adapters / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(adapters / "runs"))
    events.Reload()
    logged = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    train = {m["step"]: m["train_loss"] for m in metrics if "train_loss" in m}
    val = {m["step"]: m["val_loss"] for m in metrics if "val_loss" in m}
    assert set(train) == {2, 4} and logged["train/loss"].keys() == train.keys()
    assert all(logged["train/loss"][s] == pytest.approx(v, rel=1e-6) for s, v in train.items())
    assert all(logged["val/loss"][s] == pytest.approx(v, rel=1e-6) for s, v in val.items())
    assert logged["train/learning_rate"][4] == pytest.approx(metrics[-2 if "val_loss" in metrics[-1] else -1]["learning_rate"])
    results = json.loads((adapters / "test_results.json").read_text())
    assert logged["test/wer"] == {4: pytest.approx(results["wer"], rel=1e-6)}
    for plot in ("training_curves.png", "test_scores.png"):
        data = (adapters / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, plot

    fuse_main(["--adapter-path", str(adapters), "--save-path", str(tmp_path / "fused")])
    card = (tmp_path / "fused" / "README.md").read_text()
    assert "![training and validation loss](training_curves.png)" in card
    assert (tmp_path / "fused" / "training_curves.png").read_bytes() == (adapters / "training_curves.png").read_bytes()


def test_a_bad_report_to_is_one_line_before_training(tmp_path, capsys):
    from mlx_whisper_lora.lora import main as lora_main

    with pytest.raises(SystemExit) as exit_info:
        lora_main(["--train", "--iters", "1", "--adapter-path", str(tmp_path / "a"), "--report-to", "tensorbord"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --report-to 'tensorbord': use tensorboard, wandb or none"
    assert not (tmp_path / "a").exists()
