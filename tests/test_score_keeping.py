"""--test scores the base model beside the adapted one (cached), keeps every run, and warns when
raw and normalized WER disagree or general-domain WER rises (the forgetting check)."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.lora import main
from mlx_whisper_lora.scoring.score_keeping import comparison_lines, disagreement, forgetting_warning, keep_run


def _report(wer, nwer, cer=10.0, ncer=8.0):
    return {"wer": wer, "normalized_wer": nwer, "cer": cer, "normalized_cer": ncer, "utterances": 3, "audio_seconds": 60}


def test_side_by_side_lines_and_warnings():
    lines = comparison_lines(_report(47.0, 16.0), _report(22.0, 22.0), "Whisper's basic normalizer")
    assert "basic normalizer" in lines[0]
    wer_raw = next(line for line in lines if line.strip().startswith("WER raw"))
    assert "47.00%" in wer_raw and "22.00%" in wer_raw and "-25.00" in wer_raw and "-53.2%" in wer_raw
    # the FLEURS case of the issue: raw 47 -> 22 while normalized 16 -> 22
    assert "normalized WER rose" in disagreement(_report(47.0, 16.0), _report(22.0, 22.0))
    assert "raw WER rose" in disagreement(_report(20.0, 30.0), _report(25.0, 20.0))
    assert disagreement(_report(40.0, 30.0), _report(20.0, 15.0)) is None
    assert forgetting_warning(_report(5.0, 4.0), _report(5.0, 4.9), 1.0) is None
    assert "rose 1.50 points" in forgetting_warning(_report(5.0, 4.0), _report(5.0, 5.5), 1.0)


def test_runs_are_kept_not_overwritten(tmp_path):
    for _ in range(3):
        keep_run(tmp_path, {"test": _report(1.0, 1.0)}, 7, lambda m: None)
    assert len(list((tmp_path / "test_runs").iterdir())) == 3
    history = [json.loads(line) for line in (tmp_path / "test_history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all(h["step"] == 7 and h["test"]["wer"] == 1.0 for h in history)


def _demo_adapter_copy(folder):
    """The bundled demo adapter (tiny.en), copied: --test writes its results into the adapter folder."""
    import shutil

    from mlx_whisper_lora.assets_dir import ASSETS

    return shutil.copytree(ASSETS / "demo_adapter", folder)


def test_base_beside_adapted_cached_and_general_data(tmp_path, capsys):
    """--test with adapters scores the base model first (its own scores, cached for the next run) beside the
    adapted model, on the test split and the general data. The bundled adapter stands in for a trained one (the
    --train --test command line itself: test_torch_backend.py::test_lora_cli_trains_and_tests_with_the_torch_back_end);
    the no-speech clips are the next test's."""
    pytest.importorskip("torch")
    common = ["--backend", "torch", "--batch-size", "8", "--no-progress"]
    base_dir = tmp_path / "nothing_here"
    base_dir.mkdir()
    main(["--test", "--adapter-path", str(base_dir), *common])  # the base model alone, no comparison
    alone = json.loads((base_dir / "test_results.json").read_text())
    assert "base" not in alone and "base model on the test data" not in capsys.readouterr().err

    out = _demo_adapter_copy(tmp_path / "adapters")
    main(["--test", "--adapter-path", str(out), "--general-data", "builtin", "--no-hallucination-check", *common])
    first = capsys.readouterr().err
    assert "base model on the test data: scoring" in first and "WER normalized" in first
    results = json.loads((out / "test_results.json").read_text())
    for key in ("wer", "normalized_wer", "cer", "normalized_cer"):  # the base scores are the base model's own
        assert results["base"][key] == alone[key]
    assert results["normalized_wer"] < alone["normalized_wer"]  # the adapter is in use
    assert results["normalizer"].startswith("Whisper's English normalizer")
    assert results["general"]["base"]["wer"] == alone["wer"]  # builtin general data is the demo test set here
    assert "no_speech" not in results and "no speech" not in first

    main(["--test", "--adapter-path", str(out), "--general-data", "builtin", "--no-hallucination-check", *common])
    second = capsys.readouterr().err
    assert "base model on the test data: cached scores" in second and "base model on the general data: cached" in second
    assert json.loads((out / "test_results.json").read_text())["base"]["wer"] == alone["wer"]
    assert len(list((out / "test_runs").iterdir())) == 2
    assert len((out / "test_history.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_no_speech_clips_scored_for_base_and_adapted_and_cached(tmp_path, capsys, monkeypatch):
    """--train --test writes the words each model puts on the fixed no-speech clips, with and without the
    no-speech rule, the base model's cached for the next run. A few demo clips to train on and one to test on
    (the test split's scores are the test above's). Two of the eight report clips (silence and the loudest brown
    noise): tiny.en loops on faint dither and white noise through every fallback temperature, tens of seconds a
    clip, which is the report's subject (test_no_speech_clips_are_fixed_and_without_speech checks the eight), not
    this test's."""
    pytest.importorskip("torch")
    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.tuner import no_speech

    every_clip = no_speech.no_speech_clips
    monkeypatch.setattr(no_speech, "no_speech_clips",
                        lambda: [c for c in every_clip() if c.id in ("silence", "brown -25 dB")])

    data = tmp_path / "data"
    data.mkdir()
    for split, count in (("train", 4), ("test", 1)):
        rows = [json.loads(line) for line in (ASSETS / "demo_data" / f"{split}.jsonl").read_text().splitlines()][:count]
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps(dict(r, audio=str(ASSETS / "demo_data" / r["audio"]))) + "\n" for r in rows))
    out = tmp_path / "adapters"
    common = ["--test", "--adapter-path", str(out), "--data", str(data), "--backend", "torch", "--batch-size", "4",
              "--no-progress"]
    main(["--train", "--iters", "2", "--freeze-encoder", "--learning-rate", "1e-3", "--alignment-heads", "keep",
          *common])
    first = capsys.readouterr().err
    assert "no speech: words written on" in first and "without the no-speech rule" in first
    results = json.loads((out / "test_results.json").read_text())
    assert results["no_speech"]["clips"] == results["no_speech"]["base"]["clips"] == 2
    assert results["no_speech"]["forced"]["clips"] == 2
    assert set(results["no_speech"]["base"]["transcripts"]) == {"silence", "brown -25 dB"}
    main(common)
    second = capsys.readouterr().err
    assert "base model on the no-speech clips: cached" in second and "no speech: words written on" in second
    assert json.loads((out / "test_results.json").read_text())["no_speech"]["base"] == results["no_speech"]["base"]


def test_general_data_that_is_not_there_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--test", "--adapter-path", str(tmp_path), "--general-data", str(tmp_path / "nope"), "--no-progress"])
    assert "--general-data" in capsys.readouterr().err


def test_replay_mixes_general_utterances_at_the_fraction_in_their_language():
    from mlx_whisper_lora.data.manifests import Utterance
    from mlx_whisper_lora.tuner.run_config import RunConfig
    from mlx_whisper_lora.scoring.testing import with_replay

    train = [Utterance(audio=f"{i}.wav", text="ẹ kú àárọ̀", language="yo", id=f"t{i}") for i in range(30)]
    messages = []
    mixed = with_replay(train, RunConfig(train=True, replay_data="builtin", replay_fraction=0.25), messages.append)
    replayed = mixed[30:]
    assert len(replayed) == 10 and all(u.language == "en" and u.id.startswith("replay:") for u in replayed)
    assert len({u.id for u in replayed}) == 6  # the builtin set has 6 utterances: all used, some twice
    assert "replay: 10 utterances" in messages[0]
    assert with_replay(train, RunConfig(train=True), messages.append) is train
    from mlx_whisper_lora.recipes.replay_choice import settle_replay

    with pytest.raises(Exception, match="--replay-data"):
        settle_replay(RunConfig(train=True, replay_fraction=0.2).check(), False, messages.append)


def test_replay_is_settled_by_default_for_a_new_language_and_as_told_otherwise(capsys):
    """A multilingual model learning a language other than --general-language replays half of its rows
    as the base model reads them in English, distilled (the forgetting guard); general-domain data a third
    by default; everything else as told."""
    from mlx_whisper_lora.recipes.replay_choice import DEFAULT_FRACTION, SELF_DEFAULT_FRACTION, settle_replay
    from mlx_whisper_lora.tuner.run_config import RunConfig

    def settled(multilingual=True, **options):
        messages = []
        config = settle_replay(RunConfig(train=True, **options).check(), multilingual, messages.append)
        return (config.replay_data, config.replay_fraction, config.replay_distill), messages

    got, said = settled(language="yo")
    assert got == ("self", SELF_DEFAULT_FRACTION, True) and "forgetting guard" in said[0] and "--replay-data none" in said[0]
    for options, multilingual in [({"language": "en"}, True), ({"language": "yo", "replay_data": "none"}, True),
                                  ({}, True), ({"language": "yo"}, False), ({"language": "yo", "streaming": True}, True),
                                  ({"language": "yo", "fine_tune_type": "full"}, True)]:
        assert settled(multilingual, **options) == ((None, 0.0, False), []), options
    assert SELF_DEFAULT_FRACTION == 0.5 and DEFAULT_FRACTION == 0.33
    assert "50% of the training rows" in said[0]
    assert settled(language="yo", replay_fraction=0.25)[0] == ("self", 0.25, True)
    assert settled(replay_data="self")[0] == ("self", SELF_DEFAULT_FRACTION, True)  # asked for, same default
    assert settled(language="yo", replay_distill=False)[0] == ("self", SELF_DEFAULT_FRACTION, False)
    # the guard's noise clips come with distillation, and give way to --no-speech-fraction's empty transcripts
    assert "noise clips, read the same way in yo" in said[0]
    assert "noise clips" not in settled(language="yo", replay_distill=False)[1][0]
    assert "noise clips" not in settled(language="yo", no_speech_fraction=0.1)[1][0]
    assert settled(replay_data="builtin")[0] == ("builtin", DEFAULT_FRACTION, False)  # right transcripts: tokens
    assert settled(replay_data="builtin", replay_distill=True)[0] == ("builtin", DEFAULT_FRACTION, True)
    assert settled(language="yo", replay_fraction=0.0) == ((None, 0.0, False), [])
    with pytest.raises(UserError, match="add --replay-data"):
        settled(replay_distill=True)
    with pytest.raises(UserError, match="--replay-fraction needs --replay-data"):
        settled(language="en", replay_fraction=0.2)
    with pytest.raises(UserError, match="full fine-tuning keeps no copy"):
        settled(replay_distill=True, replay_data="builtin", fine_tune_type="full")
    for flags in (["--replay-distill"], ["--replay-fraction", "0.2"]):  # the command line: one line, no traceback
        with pytest.raises(SystemExit):
            main(["--train", "--model", "tiny.en", *flags, "--no-progress"])
        err = capsys.readouterr().err
        assert flags[0] in err and "Traceback" not in err, err


def test_no_speech_clips_are_fixed_and_without_speech():
    import numpy as np

    from mlx_whisper_lora.scoring.no_speech import no_speech_clips

    first, again = no_speech_clips(), no_speech_clips()
    assert [u.id for u in first] == [u.id for u in again] and len(first) == 8
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, again))
    assert np.abs(first[0].audio).max() == 0 and 0.04 < np.sqrt(np.mean(first[-1].audio ** 2)) < 0.07  # -25 dB
