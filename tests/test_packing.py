"""Packing short clips into Whisper-like windows (data/packing.py) and the labels those windows get."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from mlx_whisper_lora.assets_dir import ASSETS
from mlx_whisper_lora.data.audio import SAMPLE_RATE
from mlx_whisper_lora.data.examples import ExampleSet
from mlx_whisper_lora.data.labels import collate, make_label
from mlx_whisper_lora.data.manifests import Utterance, check_utterances, read_manifest
from mlx_whisper_lora.data.packing import PackedClips, pack, with_previous_text
from mlx_whisper_lora.text.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def clips():
    """The demo set's 16 real clips (2-5 s each), checked (durations known), as two speakers (12 and 4 clips)."""
    rows = read_manifest(ASSETS / "demo_data" / "train.jsonl")
    kept, _ = check_utterances(rows, "train")
    return [replace(u, group="speaker:a" if i < 12 else "speaker:b") for i, u in enumerate(kept)]


def test_windows_join_consecutive_clips_of_one_group_with_their_times_and_audio(clips):
    rows, packed = pack(clips, 1.0)
    windows = [r for r in rows if isinstance(r, PackedClips)]
    assert windows and packed == len(clips)  # every clip is in a window as a whole
    for w in windows:
        assert {p.group for p in w.parts} == {w.group}  # never across speakers
        assert w.duration <= 30.0 + 1e-9
        audio = w.load()
        assert len(audio) == pytest.approx(w.duration * SAMPLE_RATE, abs=2)
        whole = w.parts if not w.open_tail else w.parts[:-1]
        joined = np.concatenate([p.load() for p in whole])
        np.testing.assert_array_equal(audio[: len(joined)], joined)  # the clips themselves, in order
        starts = [s[0] for s in w.segments]
        assert starts == sorted(starts) and starts[0] == 0.0
        for (a, b, text), part in zip(w.segments, w.parts):
            assert text == part.text.strip() and b - a == pytest.approx(float(part.duration), abs=0.021)
        assert w.text == " ".join(p.text.strip() for p in whole)
    # the demo clips are 3-5 s: eight of the first speaker (26.7 s) fill a window and leave the start of a ninth
    assert any(w.open_tail for w in windows) and all(w.duration == 30.0 for w in windows if w.open_tail)


def test_a_window_label_times_every_clip_and_ends_an_open_clip_with_its_start_alone(clips):
    tok = get_tokenizer(False)
    rows, _ = pack(clips, 1.0)
    w = next(r for r in rows if isinstance(r, PackedClips) and r.open_tail)
    label = make_label(tok, w.text, "en", duration=w.duration, timestamps=True, segments=w.segments)
    body = label.tokens[label.prefix_len:]
    t = tok.timestamp_begin
    times = [x - t for x in body if x >= t]
    closed = w.segments[:-1]
    expected = [round(v / 0.02) for a, b, _ in closed for v in (a, b)] + [round(w.segments[-1][0] / 0.02)]
    assert times == expected  # <|t0|> text <|t1|><|t1|> text <|t2|> ... <|t_open|>
    assert body[-2:] == [t + expected[-1], tok.eot]
    assert tok.decode([x for x in body if x < t and x != tok.eot]).split() == w.text.split()
    _, _, mask = collate([label], 0)
    assert int(mask.sum()) == len(body)


def test_an_untimed_window_drops_its_open_clip_audio_and_all(clips):
    rows, _ = pack(clips, 1.0)
    w = next(r for r in rows if isinstance(r, PackedClips) and r.open_tail)
    tok = get_tokenizer(False)
    examples, _ = ExampleSet.build([w], tok, "transcribe", 80, 448, timestamp_fraction=0.0)
    plain = examples.utterances[0]
    assert not plain.open_tail and plain.parts == w.parts[:-1]
    assert len(plain.load()) == pytest.approx(sum(float(p.duration) for p in w.parts[:-1]) * SAMPLE_RATE, abs=2)
    assert tok.decode(examples.labels[0].tokens[examples.labels[0].prefix_len:-1]).strip() == w.text
    assert plain.audio != w.audio  # its own encoder states


def test_the_fraction_is_the_share_of_clips_packed_and_each_clip_knows_what_its_group_said_before(clips):
    rows, packed = pack(clips, 0.0)
    assert packed == 0 and len(rows) == len(clips)
    assert rows[0].previous_text is None and rows[1].previous_text == clips[0].text.strip()
    assert rows[12].previous_text is None  # the second speaker's first clip: nothing said before it in its group
    many = [replace(c, id=f"{c.id}-{k}", group=f"speaker:{k}") for k in range(10) for c in clips[:8]]
    rows, packed = pack(many, 0.5)
    assert 0.4 <= packed / len(many) <= 0.6
    assert sum(1 for r in rows if not isinstance(r, PackedClips)) == len(many) - packed
    no_group = [replace(c, group=None) for c in clips[:4]]
    assert all(u.previous_text is None for u in with_previous_text(no_group))


def test_no_speech_and_replayed_rows_and_prepared_windows_are_never_packed(clips):
    special = [replace(clips[0], id="replay:x", group=None), replace(clips[1], no_speech=True, group=None, text=""),
               replace(clips[2], segments=[(0.0, 1.0, "a")], group=None)]
    rows, packed = pack(special + [replace(c, group=None) for c in clips[3:6]], 1.0)
    assert rows[:3] == special and packed == 3


def test_lora_reads_groups_from_the_manifest_and_packs_the_training_split(tmp_path):
    from mlx_whisper_lora.tuner.data_prep import prepare_split
    from mlx_whisper_lora.tuner.run_config import RunConfig
    from mlx_whisper_lora.backend_mlx.load import load_model

    lines = (ASSETS / "demo_data" / "train.jsonl").read_text().splitlines()
    rows = [dict(json.loads(x), audio=str(ASSETS / "demo_data" / json.loads(x)["audio"]), speaker=i // 8)
            for i, x in enumerate(lines)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utterances = read_manifest(tmp_path / "train.jsonl")
    assert {u.group for u in utterances} == {"speaker:0", "speaker:1"}
    said = []
    config = RunConfig(train=True, pack_fraction=1.0, timestamp_fraction=1.0)
    examples, _ = prepare_split(load_model("tiny.en"), utterances, "train", config, said.append, timestamps=True)
    assert any(isinstance(u, PackedClips) for u in examples.utterances)
    assert any(line.startswith("packing: 16 of 16 training clips") for line in said)
    mel = examples.mel(next(i for i, u in enumerate(examples.utterances) if isinstance(u, PackedClips)))
    assert mel.shape == (3000, 80) and np.isfinite(mel).all()


def test_sentences_inside_a_clip_are_timed_by_forced_alignment_and_each_becomes_a_segment():
    """The demo clip says two sentences: its text, aligned to its audio, becomes two timed segments, the first
    ending before the second starts, inside the clip, and its timestamp label times each."""
    from mlx_whisper_lora.preparing.clip_segments import timed_parts

    text = ("Whisper can be adapted to your own voice with low rank adapters. "
            "This short clip was spoken by a speech synthesizer.")
    clip, = check_utterances([Utterance(str(ASSETS / "demo.flac"), text, "en")], "train")[0]
    said = []
    timed, = timed_parts([clip], "tiny.en", said.append, progress=False)
    assert said == ["sentence times: 1 of 1 training clips hold more than one segment (their text aligned to their "
                    "audio with tiny.en); their timestamp targets time each"]
    (a1, b1, t1), (a2, b2, t2) = timed.sentences
    assert t1.endswith("adapters.") and t2.startswith("This") and f"{t1} {t2}" == text
    assert 0 <= a1 < b1 <= a2 < b2 <= clip.duration
    assert b1 < 0.6 * clip.duration < a2 + 2  # the first sentence is the longer half of the clip
    tok = get_tokenizer(False)
    examples, _ = ExampleSet.build([timed], tok, "transcribe", 80, 448, timestamp_fraction=1.0)
    body = examples.labels[0].tokens[examples.labels[0].prefix_len:]
    assert sum(1 for x in body if x >= tok.timestamp_begin) == 4  # <|a1|> ... <|b1|><|a2|> ... <|b2|>
