"""The lora CLI: options from YAML, and user mistakes as one-line errors before any training."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.lora import main
from mlx_whisper_lora.tuner.run_config import merge_options


def _error(capsys, argv, everything=False) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    assert "Traceback" not in "\n".join(err)
    return "\n".join(err) if everything else err[-1]


def test_yaml_config_is_overridden_by_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rank: 32\nalpha: 64\nlora_layers: 2\nlora_parameters: {dropout: 0.05, keys: [q_proj, v_proj]}\n")
    options = merge_options({"rank": 16}, str(cfg))
    assert options.rank == 16 and options.alpha == 64 and options.num_layers == 2
    assert options.dropout == 0.05 and options.lora_modules == ["q_proj", "v_proj"]
    cfg.write_text("rnak: 3\n")
    with pytest.raises(Exception, match="unknown option 'rnak'"):
        merge_options({}, str(cfg))


def test_yaml_numbers_are_typed_and_bad_values_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1e-4\nrank: '16'\n")  # YAML reads 1e-4 as a string
    options = merge_options({}, str(cfg))
    assert options.learning_rate == 1e-4 and options.rank == 16
    cfg.write_text("rank: eight\n")
    assert "rank (--rank): expected a whole number, got 'eight'" in _error(capsys, ["-c", str(cfg), "--train"])


def test_help_shows_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text wraps with the terminal's width
    assert "--learning-rate LEARNING_RATE" in out and "(default: 0.0005)" in out
    assert "--no-encoder-cache" in out and "--lora-layers" in out and "--hf-dataset-lang" in out


def test_nothing_to_do(capsys):
    assert "pass --train, --test or both" in _error(capsys, [])


def test_missing_data_folder(capsys, tmp_path):
    assert "is not a folder" in _error(capsys, ["--train", "--data", str(tmp_path / "nope"), "--no-progress"])


def test_unknown_language_in_manifest_stops_before_training(capsys, tmp_path):
    from mlx_whisper_lora.assets_dir import ASSETS

    (tmp_path / "train.jsonl").write_text(json.dumps({"audio": str(ASSETS / "demo.flac"), "text": "hi", "language": "xx"}) + "\n")
    message = _error(capsys, ["--train", "--data", str(tmp_path), "--adapter-path", str(tmp_path / "a"), "--no-progress"])
    assert "unknown language 'xx'" in message and "train.jsonl:1" in message
    assert not (tmp_path / "a" / "adapters.safetensors").exists()


def test_all_audio_unusable(capsys, tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"audio": "missing.wav", "text": "hi"}) + "\n")
    output = _error(capsys, ["--train", "--data", str(tmp_path), "--adapter-path", str(tmp_path / "a"), "--no-progress"],
                    everything=True)
    assert "no usable utterance in the train split" in output.splitlines()[-1]
    assert "skipped 1 (missing or unreadable audio)" in output and "missing.wav" in output


def test_adapter_of_another_model_is_refused(capsys, tmp_path):
    from mlx_whisper_lora.formats.adapter_config import AdapterConfig
    from mlx_whisper_lora.formats.adapter_files import save_adapter_config

    dims = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 512, "n_audio_head": 8, "n_audio_layer": 6,
            "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 512, "n_text_head": 8, "n_text_layer": 6}
    save_adapter_config(AdapterConfig(base_model="base", dims=dims), tmp_path)
    (tmp_path / "adapters.safetensors").write_bytes(b"")
    everything = _error(capsys, ["--test", "--model", "tiny.en", "--adapter-path", str(tmp_path), "--no-progress"],
                        everything=True)
    message = everything.splitlines()[-1]
    assert "trained on base" in message and "--model base" in message
    assert "base model on the test data" not in everything  # refused before the base model's scoring pass
    resumed = _error(capsys, ["--train", "--model", "tiny.en", "--resume-adapter-file", str(tmp_path / "adapters.safetensors"),
                              "--adapter-path", str(tmp_path / "new"), "--test", "--no-progress"], everything=True)
    assert "trained on base" in resumed.splitlines()[-1] and "base model on the test data" not in resumed


def test_bad_numbers(capsys):
    assert "--iters must be at least 1" in _error(capsys, ["--train", "--iters", "0", "--no-progress"])


def test_seed_recipe_config_reads_as_the_peft_recipe():
    from pathlib import Path

    from mlx_whisper_lora.formats.adapter_config import AdapterConfig

    options = merge_options({}, str(Path(__file__).resolve().parent.parent / "configs" / "peft_t4_large_v2.yaml"))
    config = AdapterConfig(rank=options.rank, alpha=options.alpha, dropout=options.dropout,
                           modules=options.lora_modules)
    assert config.scale == 2.0 and config.dropout == 0.05
    assert config.modules == ["attn.query", "attn.value", "cross_attn.query", "cross_attn.value"]
    assert options.backend == "torch" and options.batch_size == 8 and options.warmup == 50


@pytest.mark.slow  # 35 s: keeps the default suite under 15 minutes
def test_both_back_ends_report_the_same_way(tmp_path, capsys):
    """One loop: the same console lines, metrics.jsonl fields, files and test report keys whichever back end trains."""
    pytest.importorskip("torch")
    import re

    runs = {}
    for backend in ("mlx", "torch"):
        out = tmp_path / backend
        main(["--train", "--test", "--backend", backend, "--iters", "2", "--batch-size", "4", "--freeze-encoder",
              "--steps-per-report", "1", "--save-every", "1", "--test-batches", "1", "--adapter-path", str(out),
              "--no-progress", "--alignment-heads", "keep"])  # (the heads' choice depends on the numbers)
        lines = capsys.readouterr().err.splitlines()
        shape = [" ".join(re.sub(r"[-+\d.]+(e[-+]?\d+)?", "N", line.replace(str(out), "OUT").replace(backend, "BACKEND")).split())
                 for line in lines if not line.startswith("back end:")]
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[backend] = (shape, [sorted(m) for m in metrics], sorted(p.name for p in out.iterdir()),
                         sorted(json.loads((out / "test_results.json").read_text())))
    assert runs["mlx"] == runs["torch"]
    assert "optimizer_state.safetensors" in runs["mlx"][2] and not [n for n in runs["mlx"][2] if n.endswith(".pt")]
