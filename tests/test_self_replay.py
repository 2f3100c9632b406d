"""`--replay-data self`: a share of the training audio, transcribed by the base model in the general
language, joins training in that language (recipes/self_replay.py)."""

import json
import math

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
               "--replay-fraction", "0.34", "--no-progress", "--alignment-heads", "keep", "--steps-per-eval", "100",
               "--valid-fraction", "0", "--pack-fraction", "0"])
    captured = capsys.readouterr()
    log = captured.out + captured.err
    targets = [json.loads(line) for line in (adapters / "self_replay_targets.jsonl").read_text().splitlines()]
    replayed = [r for r in targets if "no-speech" not in r["id"]]
    noise = [r for r in targets if "no-speech" in r["id"]]
    # 2 of the 4 utterances replayed in English, and one generated noise clip read in the training language
    assert len(replayed) == 2 and "training on 7 utterances" in log, log
    # the base model's passes encoded the 2 replayed utterances and the noise clip: training takes those
    assert "encoder states: those of 3 utterances come from the passes before training, 2 to compute" in log, log
    assert len(noise) == 1 and noise[0]["language"] == "de" and noise[0]["id"].startswith("replay:"), noise
    assert compression_ratio(noise[0]["text"]) <= 2.4  # a loop on noise is replaced by an empty path
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


def test_replay_transcription_stops_each_batch_at_its_tokens_per_second(tiny_en_checkpoint):
    """A reading that runs past `tokens_per_second` of the batch's longest utterance is a loop: decoding
    stops there (here at 1 token a second of the demo clips), and without the limit it runs on."""
    import torch  # noqa: F401  (the torch back end)

    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.backend_torch import model as tmodel
    from mlx_whisper_lora.backend_torch.engine import TorchBackend
    from mlx_whisper_lora.data.examples import ExampleSet
    from mlx_whisper_lora.data.manifests import read_manifest
    from mlx_whisper_lora.text.tokenizer import get_tokenizer
    from mlx_whisper_lora.scoring.evaluation import sample_len, transcribe_examples

    model = tmodel.Whisper(tiny_en_checkpoint.dims)
    tmodel.load_mlx_weights(model, tiny_en_checkpoint.weights)
    rows = read_manifest(ASSETS / "demo_data" / "test.jsonl")[:3]
    examples, _ = ExampleSet.build(rows, get_tokenizer(False), "transcribe", 80, 448)
    longest = max(u.duration for u in rows)
    assert sample_len(examples, [0, 1, 2], 1.0) == math.ceil(longest) + 1
    assert sample_len(examples, [0, 1, 2], None) is None
    tok = get_tokenizer(False)
    _, free = transcribe_examples(TorchBackend(model), examples, batch_size=3, progress=False)
    _, capped = transcribe_examples(TorchBackend(model), examples, batch_size=3, progress=False, tokens_per_second=1.0)
    assert all(len(tok.encode(" " + c)) <= math.ceil(longest) + 1 for c in capped), capped
    assert all(f.startswith(c.rstrip(".")[:8]) for f, c in zip(free, capped)), (free, capped)
    assert sum(len(tok.encode(" " + f)) for f in free) > sum(len(tok.encode(" " + c)) for c in capped) + 6, free


def test_the_base_models_pass_reads_at_most_half_the_training_utterances():
    """The guard's half of each batch is read from at most half the training utterances (and 512), the
    replayed rows repeating beyond, so its default costs the base model's pass what a third of the rows did."""
    from mlx_whisper_lora.recipes.self_replay import replay_counts

    assert replay_counts(520, 0.5) == (520, 260)      # Yoruba: half the rows, 260 readings repeated twice
    assert replay_counts(520, 0.33) == (256, 256)     # a third: every replayed row read once
    assert replay_counts(4, 0.34) == (2, 2)
    assert replay_counts(10_000, 0.5) == (10_000, 512)
    assert replay_counts(10, 0.0) == (0, 0)
