"""`--no-speech-fraction`: generated noise and silence clips with empty transcripts join training
(scoring/no_speech.py), labelled to end the transcript at once."""

import numpy as np
import pytest

from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.data.labels import make_label
from mlx_whisper_lora.data.manifests import Utterance, check_utterances
from mlx_whisper_lora.errors import UserError
from mlx_whisper_lora.lora import main
from mlx_whisper_lora.text.tokenizer import get_tokenizer
from mlx_whisper_lora.scoring.no_speech import no_speech_clips, no_speech_training_clips
from mlx_whisper_lora.tuner.run_config import RunConfig


@pytest.mark.parametrize("timestamps", [False, True])
def test_an_empty_transcript_is_trained_to_end_at_once(timestamps):
    tok = get_tokenizer(True, task="transcribe")
    label = make_label(tok, "  ", "yo", duration=8.0, timestamps=timestamps)
    # timestamp decoding must begin with a time, so no-speech targets are always without timestamps
    assert label.tokens == [tok.sot, tok.language_token_for("yo"), tok.transcribe, tok.no_timestamps, tok.eot]
    assert label.target_count == 1
    spoken = make_label(tok, "ẹ kú àárọ̀", "yo", duration=8.0, timestamps=timestamps)
    assert spoken.target_count > 2  # ordinary text keeps its words (and its times when asked)


def test_training_clips_are_noise_or_silence_in_the_rows_languages_and_bounded_in_memory():
    clips = no_speech_training_clips(60, ["de", "yo"], seed=3, distinct_clips=24)
    again = no_speech_training_clips(60, ["de", "yo"], seed=3, distinct_clips=24)
    assert len(clips) == 60 and all(u.no_speech and u.text == "" for u in clips)
    assert [u.language for u in clips] == [u.language for u in again] and {u.language for u in clips} == {"de", "yo"}
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(clips, again))
    assert len({id(u.audio) for u in clips}) == 24  # the rest repeat them
    levels = [float(np.sqrt(np.mean(u.audio.astype(np.float32) ** 2))) for u in clips[:24]]
    assert min(levels) == 0.0 and max(levels) < 0.11  # some digital silence; nothing above -19 dBFS
    assert all(2.0 <= u.duration <= 30.0 for u in clips) and len({round(u.duration) for u in clips}) > 8
    report = no_speech_clips()  # the report's clips are not among the training ones
    assert not any(len(r.audio) == len(c.audio) and np.allclose(r.audio, c.audio) for r in report[1:] for c in clips)
    short = no_speech_training_clips(24, ["de"], seed=3, longest=8.0)  # --max-duration 8 would drop longer ones
    assert all(u.duration <= 8.0 for u in short) and max(u.duration for u in short) > 6.0


def test_the_data_check_keeps_no_speech_clips_and_still_skips_empty_transcripts():
    clip = no_speech_training_clips(1, [], seed=0)[0]
    empty = Utterance(audio=np.zeros(16000, np.float32), text=" ", id="oops")
    kept, report = check_utterances([clip, empty], "train")
    assert kept == [clip] and report.skipped == 1 and "empty transcript" in "\n".join(report.lines())


def test_no_speech_fraction_is_checked():
    with pytest.raises(UserError, match="--no-speech-fraction"):
        RunConfig(train=True, no_speech_fraction=1.0).check()


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_training_mixes_the_clips_in_at_the_fraction(tmp_path, capsys):
    out = tmp_path / "adapters"
    main(["--train", "--iters", "1", "--batch-size", "4", "--freeze-encoder", "--no-speech-fraction", "0.2",
          "--adapter-path", str(out), "--no-progress", "--alignment-heads", "keep", "--steps-per-eval", "100",
          "--pack-fraction", "0"])
    log = capsys.readouterr().err
    train = sum(1 for line in (ASSETS / "demo_data" / "train.jsonl").read_text().splitlines() if line.strip())
    clips = round(0.2 / 0.8 * train)
    assert f"no speech: {clips} noise or silence clips with empty transcripts join the {train} training" in log, log
    assert f"training on {train + clips} utterances" in log, log


def test_a_stream_draws_replay_and_no_speech_rows_into_its_batches(tiny_en):
    from mlx_whisper_lora.tuner.data_prep import streamed_train_batches
    from mlx_whisper_lora.recipes.run import streamed_mixes

    config = RunConfig(train=True, streaming=True, batch_size=8, replay_data="builtin", replay_fraction=0.25,
                       no_speech_fraction=0.125).check()
    messages = []
    mixes = streamed_mixes(config, [], messages.append)
    assert any("replay: 25% of the rows of each batch" in m for m in messages)
    assert any("no speech: 12.5% of the rows of each batch" in m for m in messages)
    batches = streamed_train_batches(tiny_en, config, "keep", mixed=mixes)
    rows = {"replay": 0, "no speech": 0, "stream": 0}
    tok = get_tokenizer(False)
    for number in range(24):
        examples, indices = batches.batch(number)
        assert len(indices) == 8
        kinds = ["no speech" if u.no_speech else "replay" if u.id.startswith("replay:") else "stream"
                 for u in examples.utterances]
        assert "stream" in kinds  # every batch reads the stream
        for kind, label in zip(kinds, examples.labels):
            rows[kind] += 1
            assert (label.tokens[-2:] == [tok.no_timestamps, tok.eot]) == (kind == "no speech")
    assert 0.15 < rows["replay"] / 192 < 0.35 and 0.06 < rows["no speech"] / 192 < 0.2, rows
    again = streamed_train_batches(tiny_en, config, "keep", mixed=streamed_mixes(config, [], messages.append))
    first = [u.id for u in batches.batch(3)[0].utterances if u.no_speech or u.id.startswith("replay:")]
    assert first == [u.id for u in again.batch(3)[0].utterances if u.no_speech or u.id.startswith("replay:")]


def test_self_replay_is_refused_on_a_stream():
    with pytest.raises(UserError, match="--replay-data self"):
        RunConfig(train=True, streaming=True, replay_data="self", replay_fraction=0.2).check()
    RunConfig(train=True, streaming=True, no_speech_fraction=0.1).check()  # no-speech clips mix into a stream
