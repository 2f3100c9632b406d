"""--streaming reads the training split row by row (save_to_disk folders, parquet shards, manifest
folders), with --max-samples and a shuffle buffer; the whole split is never loaded."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.data.streaming import open_stream, stream_utterances
from mlx_whisper_lora.lora import main

datasets = pytest.importorskip("datasets")


def _demo_rows(n: int) -> dict:
    rows = [json.loads(line) for line in (ASSETS / "demo_data" / "train.jsonl").read_text().splitlines()]
    audio = [{"bytes": (ASSETS / "demo_data" / r["audio"]).read_bytes(), "path": None} for r in rows]
    return {"audio": [audio[i % len(rows)] for i in range(n)], "text": [rows[i % len(rows)]["text"] for i in range(n)],
            "id": [f"row{i}" for i in range(n)]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streamed")
    ds = datasets.Dataset.from_dict(_demo_rows(120)).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(folder / "saved"))
    (folder / "shards" / "train").mkdir(parents=True)
    for k in range(3):
        ds.shard(3, k).to_parquet(str(folder / "shards" / "train" / f"part-{k}.parquet"))
    return folder


def test_every_kind_streams_with_a_cap_and_a_seeded_shuffle(saved):
    for source, folder_data in ((saved / "saved", False), (saved / "shards", False), (ASSETS / "demo_data", True)):
        ds = open_stream(str(source), "train", folder_data=folder_data)
        first = [u.id for u in stream_utterances(ds, seed=1, epoch=0, buffer_size=50, max_samples=10)]
        again = [u.id for u in stream_utterances(ds, seed=1, epoch=0, buffer_size=50, max_samples=10)]
        other_epoch = [u.id for u in stream_utterances(ds, seed=1, epoch=1, buffer_size=50, max_samples=10)]
        assert len(first) == 10 and first == again and first != other_epoch, source
    whole = list(stream_utterances(open_stream(str(saved / "saved"), "train+test"), buffer_size=0))
    assert len(whole) == 124 and isinstance(whole[0].audio, bytes)


@pytest.mark.slow  # two trainings without an encoder cache (~40 s); RUN_SLOW=1 runs it
def test_training_on_a_stream(saved, tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "adapters"
    main(["--train", "--streaming", "--hf-dataset", str(saved / "saved"), "--max-samples", "20", "--shuffle-buffer", "16",
          "--iters", "6", "--batch-size", "4", "--freeze-encoder", "--backend", "torch", "--steps-per-report", "3",
          "--save-every", "3", "--adapter-path", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert "training on a stream" in err and "at most 20 rows an epoch" in err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m] == [3, 6]
    # resuming passes over the rows already read and continues
    main(["--train", "--streaming", "--hf-dataset", str(saved / "saved"), "--max-samples", "20", "--iters", "8",
          "--batch-size", "4", "--freeze-encoder", "--backend", "torch", "--adapter-path", str(out), "--no-progress",
          "--resume-adapter-file", str(out / "adapters.safetensors")])
    assert "continuing from step 6" in capsys.readouterr().err


def test_streaming_refuses_what_needs_the_whole_split(capsys):
    with pytest.raises(SystemExit):
        main(["--train", "--streaming", "--base-style-targets", "--no-progress"])
    assert "--base-style-targets" in capsys.readouterr().err
