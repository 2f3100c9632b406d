"""`--replay-data self`: a share of the training audio, transcribed by the base model in the general
language, joins training in that language (tuner/self_replay.py)."""

import json

from mlx_whisper_lora import lora
from mlx_whisper_lora.inference.decoding import compression_ratio


def test_self_replay_trains_on_the_base_models_english_reading_of_the_training_audio(shared_data, tmp_path, capsys):
    folder = shared_data / "fleurs_en_de"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    german = [dict(r, audio=str(folder / r["audio"])) for r in rows if r.get("language") == "de"][:4]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in german))
    adapters = tmp_path / "adapters"
    lora.main(["--train", "--model", "base", "--data", str(data), "--adapter-path", str(adapters), "--language", "de",
               "--iters", "1", "--batch-size", "4", "--freeze-encoder", "--replay-data", "self",
               "--replay-fraction", "0.34", "--no-progress", "--alignment-heads", "keep", "--steps-per-eval", "100"])
    captured = capsys.readouterr()
    log = captured.out + captured.err
    replayed = [json.loads(line) for line in (adapters / "self_replay_targets.jsonl").read_text().splitlines()]
    assert len(replayed) == 2 and "training on 6 utterances" in log, log
    by_audio = {r["audio"]: r for r in german}
    for row in replayed:
        source = by_audio[row["audio"]]  # training audio, not other data
        assert row["language"] == "en" and row["text"] != source["text"]
        # the base model under the English token writes English, whatever the speech (here: German)
        assert compression_ratio(row["text"]) <= 2.4  # no repetition loop is replayed
        letters = [c for c in row["text"] if c.isalpha()]
        assert letters and sum(c.isascii() for c in letters) / len(letters) > 0.95, row["text"]
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["run"]["replay_data"] == "self"
