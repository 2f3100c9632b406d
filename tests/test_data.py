"""Data: manifests, Hugging Face datasets, up-front checks, batch order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.data.sampler import epoch_batches
from mlx_whisper_lora.data.manifests import (
    DataError, check_utterances, load_folder_split, load_hf_split, read_manifest,
)


def _tone(path, seconds, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "clips").mkdir()
    _tone(tmp_path / "clips" / "a.wav", 1.0)
    _tone(tmp_path / "clips" / "b.wav", 2.0, sr=22050)  # resampled when loaded
    _tone(tmp_path / "clips" / "long.wav", 31.0)
    (tmp_path / "clips" / "bad.wav").write_bytes(b"not audio at all")
    rows = [
        {"audio": "clips/a.wav", "text": "one"},
        {"audio": "clips/b.wav", "text": "two", "language": "english"},
        {"audio": "clips/missing.wav", "text": "three"},
        {"audio": "clips/a.wav", "text": "   "},
        {"audio": "clips/long.wav", "text": "long"},
        {"audio": "clips/bad.wav", "text": "bad"},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "test.csv").write_text("audio,text\nclips/a.wav,\"hello, world\"\n")
    return tmp_path


def test_jsonl_and_csv_manifests_resolve_paths(folder):
    utts = load_folder_split(folder, "train")
    assert len(utts) == 6 and utts[0].audio == str(folder / "clips" / "a.wav")
    test = load_folder_split(folder, "test")
    assert test[0].text == "hello, world"
    assert load_folder_split(folder, "valid", required=False) is None
    assert len(utts[1].load()) == 32000  # 2 s at 22.05 kHz -> 16 kHz


def test_bad_lines_are_skipped_counted_and_named(folder):
    kept, report = check_utterances(read_manifest(folder / "train.jsonl"), "train", multilingual=False)
    assert [u.text for u in kept] == ["one", "two"]
    assert kept[1].language == "en" and kept[0].duration == pytest.approx(1.0)
    assert report.skipped == 4 and report.kept == 2
    text = "\n".join(report.lines())
    assert "missing.wav" in text and "bad.wav" in text and "empty transcript" in text and "longer than 30 s" in text


def test_unknown_language_and_english_only_mismatch_stop_before_training(folder):
    utts = read_manifest(folder / "train.jsonl")[:1]
    utts[0].language = "klingon"
    with pytest.raises(DataError, match="unknown language 'klingon'"):
        check_utterances(utts, "train")
    utts[0].language = "de"
    with pytest.raises(DataError, match="English-only"):
        check_utterances(utts, "train", multilingual=False)


def test_broken_manifest_line_is_named(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_manifest(tmp_path / "train.jsonl")


def test_batches_are_deterministic_bucketed_and_reshuffled():
    lengths = list(np.random.default_rng(0).integers(5, 100, size=200))
    a = epoch_batches(lengths, 8, seed=3, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=3, epoch=0)
    assert a != epoch_batches(lengths, 8, seed=3, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(200))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in a])
    unbucketed = np.mean([np.ptp([lengths[i] for i in b]) for b in epoch_batches(lengths, 8, 3, 0, bucket=False)])
    assert spread < unbucketed / 3


def test_hugging_face_dataset_saved_to_disk(tmp_path, folder):
    datasets = pytest.importorskip("datasets")
    audio = datasets.Audio(sampling_rate=None)
    ds = datasets.Dataset.from_dict(
        {"audio": [str(folder / "clips" / "a.wav"), str(folder / "clips" / "b.wav")], "sentence": ["one", "two"]}
    ).cast_column("audio", audio)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    utts = load_hf_split(str(tmp_path / "hf"), "train")
    assert [u.text for u in utts] == ["one", "two"]
    assert len(utts[1].load()) == 32000
    kept, _ = check_utterances(utts, "train", multilingual=False)
    assert len(kept) == 2
    with pytest.raises(DataError, match="no split 'validation'"):
        load_hf_split(str(tmp_path / "hf"), "validation")
    with pytest.raises(DataError, match="no text column 'words'"):
        load_hf_split(str(tmp_path / "hf"), "train", text_column="words")


def test_csv_manifests_as_spreadsheets_write_them(tmp_path):
    """Quoted fields keep their commas and line breaks; a byte-order mark is not part of the first name;
    rows that do not fit the header, text that is not UTF-8 and durations that are not numbers are one
    error naming the file and line, never a cut transcript or a traceback."""
    good = tmp_path / "train.csv"
    good.write_bytes('\ufeffaudio,text,duration\nclip.wav,"in being, comparatively\nmodern.",2.5\n'.encode("utf-8"))
    [utt] = read_manifest(good)
    assert utt.text == "in being, comparatively\nmodern." and utt.duration == 2.5
    cases = {
        "more fields": ("audio,text\nclip.wav,in being, comparatively modern.\n".encode(), "more fields than the header"),
        "fewer fields": ("audio,text,language\nclip.wav,hello\n".encode(), "fewer fields than the header"),
        "latin-1": ("audio,text\nclip.wav,caf\xe9\n".encode("latin-1"), "not UTF-8"),
        "duration": ("audio,text,duration\nclip.wav,hello,long\n".encode(), "is not a number"),
        "jsonl duration": (b'{"audio": "clip.wav", "text": "hi", "duration": "nan"}\n', "is not a number"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / ("bad.jsonl" if name.startswith("jsonl") else "bad.csv")
        path.write_bytes(data)
        with pytest.raises(DataError, match=message) as error:
            read_manifest(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value), name


def test_one_manifest_with_a_split_field_and_split_expressions(tmp_path):
    """A folder like ../shared/data's: one manifest.jsonl whose rows carry their split."""
    _tone(tmp_path / "a.wav", 1.0)
    rows = [{"audio": "a.wav", "text": f"{split} {i}", "split": split}
            for split, n in (("train", 3), ("dev", 2), ("test", 1)) for i in range(n)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [u.text for u in load_folder_split(tmp_path, "test")] == ["test 0"]
    assert [u.text for u in load_folder_split(tmp_path, "validation")] == ["dev 0", "dev 1"]  # one split, three names
    assert len(load_folder_split(tmp_path, "train+valid")) == 5
    assert load_folder_split(tmp_path, "extra", required=False) is None
    with pytest.raises(DataError, match="no row of manifest.jsonl has split 'extra'"):
        load_folder_split(tmp_path, "extra")
    with pytest.raises(UserError, match="joined by"):
        load_folder_split(tmp_path, "train+")


def test_validation_inside_the_training_split_is_replaced_by_a_held_out_slice(tmp_path, folder):
    from mlx_whisper_lora.tuner.data_prep import read_splits
    from mlx_whisper_lora.tuner.run_config import RunConfig

    (folder / "valid.jsonl").write_text("".join(json.dumps({"audio": "clips/a.wav", "text": f"v{i}"}) + "\n"
                                                for i in range(14)))
    messages = []
    config = RunConfig(train=True, data=str(folder), train_split="train+validation")
    splits = read_splits(config, ["train", "valid"], messages.append)
    assert len(splits["train"]) + len(splits["valid"]) == 6 + 14 and len(splits["valid"]) == 1
    assert not {id(u) for u in splits["valid"]} & {id(u) for u in splits["train"]}
    assert "includes the validation split (validation)" in messages[0]
    plain = read_splits(RunConfig(train=True, data=str(folder)), ["train", "valid"], messages.append)
    assert len(plain["valid"]) == 14 and len(messages) == 1


def test_hugging_face_split_expressions(tmp_path, folder):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"audio": [str(folder / "clips" / "a.wav")] * 3, "text": ["a", "b", "c"]})
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    assert [u.text for u in load_hf_split(str(tmp_path / "hf"), "train+valid")] == ["a", "b", "c", "a"]
    assert len(load_hf_split(str(tmp_path / "hf"), "train+validation", limit=2)) == 2


def test_a_language_whisper_lacks_is_trained_as_a_related_one_and_said_once(folder):
    from mlx_whisper_lora.text.languages import language_code

    utts = load_folder_split(folder, "train")[:2]
    kept, report = check_utterances(utts, "train", default_language="igbo", multilingual=True)
    assert [u.language for u in kept] == ["yo", "en"]  # rows without a language, and one that names English
    notes = [line for line in report.lines() if "no token" in line]
    assert len(notes) == 1 and "'yo' (yoruba)" in notes[0]
    assert language_code("zu") == "sn" and language_code("Kinyarwanda") == "sw"
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        language_code("klingon")


def test_prepared_rows_time_each_segment_and_keep_the_previous_text_out_of_the_loss(tmp_path):
    """A window of a long recording (prepare) trains as Whisper's data is laid out: every segment timed
    inside the window, and, when conditioned, the text before it as a <|startofprev|> prompt the loss skips."""
    import json

    from mlx_whisper_lora.data.labels import collate, make_label
    from mlx_whisper_lora.data.manifests import read_manifest
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    (tmp_path / "train.jsonl").write_text(json.dumps({
        "audio": "w.flac", "text": "First one. Second one.", "language": "en", "duration": 7.0,
        "segments": [[0.4, 2.0, "First one."], [2.6, 6.5, "Second one."]], "previous_text": "Before that."}) + "\n")
    row = read_manifest(tmp_path / "train.jsonl")[0]
    assert row.segments == [(0.4, 2.0, "First one."), (2.6, 6.5, "Second one.")] and row.previous_text == "Before that."
    tok = get_tokenizer(False)
    label = make_label(tok, row.text, "en", duration=row.duration, timestamps=True, segments=row.segments,
                       previous_text=row.previous_text)
    t = tok.timestamp_begin
    prompt = [tok.sot_prev] + tok.encode(" Before that.")
    assert label.tokens[:len(prompt)] == prompt and label.tokens[len(prompt)] == tok.sot
    body = label.tokens[label.prefix_len:]
    assert body == ([t + 20] + tok.encode(" First one.") + [t + 100] + [t + 130] + tok.encode(" Second one.")
                    + [t + 325, tok.eot])
    inputs, targets, mask = collate([label], 0)
    counted = [int(x) for x, m in zip(targets[0], mask[0]) if m]
    assert counted == body  # the prompt and the prefix are inputs only, never targets
    plain = make_label(tok, row.text, "en", duration=row.duration, timestamps=False, segments=row.segments)
    assert plain.tokens[plain.prefix_len:] == tok.encode(" First one. Second one.") + [tok.eot]


def test_prompt_fraction_conditions_that_share_of_the_rows_that_know_their_previous_text():
    from mlx_whisper_lora.data.examples import ExampleSet
    from mlx_whisper_lora.data.manifests import Utterance
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    tok = get_tokenizer(False)
    rows = [Utterance(f"{i}.flac", "words here", "en", 3.0, previous_text="said before" if i % 2 else None)
            for i in range(400)]
    examples, _ = ExampleSet.build(rows, tok, "transcribe", 80, 448, 0.5, 0, "train", "keep", prompt_fraction=0.5)
    prompted = [lab.tokens[0] == tok.sot_prev for lab in examples.labels]
    assert not any(p for p, u in zip(prompted, rows) if not u.previous_text)
    assert 70 <= sum(prompted) <= 130  # half of the 200 rows that have one


def test_without_a_validation_split_whole_speakers_are_held_out_when_there_are_enough():
    from mlx_whisper_lora.data.manifests import Utterance
    from mlx_whisper_lora.data.splits import hold_out_groups

    rows = [Utterance(f"{s}-{i}.flac", "words", group=f"speaker:{s}") for s in range(10) for i in range(10)]
    kept, held, how = hold_out_groups(rows, 0.1, seed=3)
    assert len(held) == 10 and len({u.group for u in held}) == 1 and how == "1 whole speaker of 10"
    assert not {u.group for u in held} & {u.group for u in kept}
    few = rows[:30]  # three speakers: too few to give one away, so rows are drawn from all
    kept, held, how = hold_out_groups(few, 0.1, seed=3)
    assert len(held) == 3 and how == "drawn at random" and len(kept) == 27


def test_lora_holds_out_a_validation_slice_when_the_data_has_none(tmp_path, folder):
    from mlx_whisper_lora.tuner.data_prep import read_splits
    from mlx_whisper_lora.tuner.run_config import RunConfig

    rows = [{"audio": "clips/a.wav", "text": f"word {i}", "speaker": i % 6} for i in range(60)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    said = []
    splits = read_splits(RunConfig(train=True, data=str(tmp_path)), ["train", "valid"], said.append)
    assert len(splits["valid"]) == 10 and len(splits["train"]) == 50
    assert any("10 of the 60 training rows are held out to validate on (1 whole speaker of 6" in s for s in said)
    splits = read_splits(RunConfig(train=True, data=str(tmp_path), valid_fraction=0.0), ["train", "valid"], said.append)
    assert splits["valid"] is None and len(splits["train"]) == 60
