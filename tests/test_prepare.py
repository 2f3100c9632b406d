"""`prepare`: long recordings with a plain transcript or subtitles into windows of at most 30 s cut at
pauses, with their segments and the text before them; bad inputs are one line each and the rest still prepare."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlx_whisper_lora.preparing.text_alignment import align_words, segments_from
from mlx_whisper_lora.data.windows import Segment, cut_windows
from mlx_whisper_lora.errors import UserError

from conftest import read_manifest


def test_windows_hold_whole_segments_cut_in_pauses_with_the_text_before():
    # 20 sentences of 4 s with 1 s pauses: 100 s of speech
    segments = [Segment(1 + 5 * i, 5 + 5 * i, f"sentence {i}.") for i in range(20)]
    windows = cut_windows(segments, duration=102.0)
    assert all(w.duration <= 30.0 for w in windows) and len(windows) == 4
    assert [t.strip() for w in windows for t in w.text.split(".") if t.strip()] == [f"sentence {i}" for i in range(20)]
    for w in windows:
        for start, end, _ in w.segments:  # times inside the window, on Whisper's 20 ms grid
            assert 0 <= start < end <= w.duration + 1e-9 and round(start / 0.02, 6) % 1 == 0
        spoken = [(s.start, s.end) for s in segments]
        for edge in (w.start, w.end):  # every edge in a pause
            assert not any(a < edge < b for a, b in spoken)
    assert windows[0].previous_text == "" and windows[1].previous_text.endswith("sentence 5.")
    assert all(a.end <= b.start for a, b in zip(windows, windows[1:]))  # no audio in two windows


def test_an_unaligned_stretch_is_in_no_window_and_breaks_the_prompt_chain():
    segments = [Segment(1, 5, "one."), Segment(6, 10, "two."), Segment(10, 14, "???", usable=False),
                Segment(15, 19, "three.")]
    windows = cut_windows(segments, duration=20.0)
    assert [w.text for w in windows] == ["one. two.", "three."]
    assert windows[0].end <= 10 and windows[1].start >= 14 and windows[1].previous_text == ""


def test_a_segment_longer_than_a_window_is_cut_at_its_longest_pause():
    words = [(f"w{i}", 0.5 * i + (2.0 if i >= 40 else 0), 0.5 * i + 0.4 + (2.0 if i >= 40 else 0)) for i in range(80)]
    windows = cut_windows([Segment(0, words[-1][2], " ".join(w for w, _, _ in words), words=words)], 45.0)
    assert len(windows) == 2 and windows[0].text.split()[-1] == "w39" and windows[1].text.split()[0] == "w40"


def test_reference_words_take_the_recognised_times_and_disagreement_is_dropped():
    recognised = [("Hello", 0.0, 0.4), ("world.", 0.5, 0.9), ("This", 2.0, 2.2), ("is", 2.3, 2.4), ("fine.", 2.5, 2.9),
                  ("music", 4.0, 4.5), ("music", 4.6, 5.0), ("music", 5.1, 5.5), ("music", 5.6, 6.0),
                  ("Last", 7.0, 7.3), ("words.", 7.4, 7.9)]
    alignment = align_words("HELLO WORLD. This is FINE! Last words.", recognised)
    assert [w.start for w in alignment.words] == [0.0, 0.5, 2.0, 2.3, 2.5, 7.0, 7.4]
    assert alignment.dropped and alignment.dropped[0]["reason"] == "speech not in the text"
    segments = segments_from(alignment, 8.0)
    usable = [s.text for s in segments if s.usable]
    assert usable == ["HELLO WORLD.", "This is FINE!", "Last words."]
    windows = cut_windows(segments, 8.0)
    assert not any(w.start < 4.5 < w.end for w in windows)  # the music's audio is in no window


@pytest.fixture(scope="module")
def long_recording(shared_data, tmp_path_factory):
    """Five LibriSpeech utterances of one chapter joined 0.4 s apart (about a minute), with the forced aligner's
    word times in the recording: (folder, wav path, words)."""
    import soundfile as sf

    from mlx_whisper_lora.data.audio import load_audio

    data = shared_data / "librispeech_2spk"
    if not (data / "word_alignments.jsonl").exists():
        pytest.skip("word_alignments.jsonl is not in ../shared/data/librispeech_2spk")
    rows = [r for r in read_manifest(data) if r["id"].startswith("4406-16882-")][:5]
    aligned = {r["id"]: r["words"] for r in map(json.loads, (data / "word_alignments.jsonl").read_text().splitlines())}
    folder = tmp_path_factory.mktemp("recordings")
    pieces, words, t = [], [], 0.0
    for r in rows:
        audio = load_audio(data / r["audio"])
        words += [(w, t + s, t + e) for w, s, e in aligned[r["id"]]]
        pieces += [audio, np.zeros(6400, np.float32)]
        t += len(audio) / 16000 + 0.4
    wav = folder / "chapter.wav"
    sf.write(str(wav), np.concatenate(pieces), 16000)
    return folder, wav, words, " ".join(r["text"] for r in rows)


def _rows(out):
    return [json.loads(line) for split in ("train", "valid", "test") if (out / f"{split}.jsonl").exists()
            for line in (out / f"{split}.jsonl").read_text().splitlines()]


def _check_windows(rows, words, total_words):
    from mlx_whisper_lora.preparing.text_alignment import key

    kept = " ".join(r["text"] for r in sorted(rows, key=lambda r: r["start"])).split()
    assert len(kept) >= 0.95 * total_words
    for r in rows:
        assert r["end"] - r["start"] <= 30.0 and r["segments"] and r["recording"].endswith("chapter.wav")
        assert not any(s + 0.15 < edge < e - 0.15 for _, s, e in words for edge in (r["start"], r["end"]))
        # the window's text is the words said in it: every word inside (but for 50 ms: the aligner's times are
        # the recogniser's, 20 ms steps, and subtitles are fitted to them), and no word that is not partly inside
        whole = " ".join(key(w) for w, s, e in words if s >= r["start"] - 0.05 and e <= r["end"] + 0.05)
        partly = " ".join(key(w) for w, s, e in words if e > r["start"] and s < r["end"])
        said = " ".join(key(w) for w in r["text"].split())
        assert whole in said and said in partly, (whole, said)
    ordered = sorted(rows, key=lambda r: r["start"])
    assert ordered[0]["previous_text"] == "" and ordered[1]["previous_text"].endswith(ordered[0]["text"])


def test_plain_text_recording_prepares_into_windows_lora_reads(long_recording, tmp_path, tiny_en):
    from mlx_whisper_lora.data.manifests import load_folder_split
    from mlx_whisper_lora.prepare import main

    folder, wav, words, text = long_recording
    (folder / "chapter.txt").write_text(text.lower() + "\n")
    (folder / "chapter.srt").unlink(missing_ok=True)
    out = tmp_path / "data"
    main([str(wav), "--output", str(out), "--no-progress", "--language", "en"])
    rows = _rows(out)
    _check_windows(rows, words, len(text.split()))
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["splits"]["train"] == [str(wav)] and report["windows"] == len(rows)
    assert len(load_folder_split(out, "train")) == len(rows)  # lora --train reads the folder as it is
    # run again (an interrupted run, say): the recording's windows are kept, not aligned again
    again = []
    from mlx_whisper_lora.prepare import prepare

    prepare([str(wav)], out, language="en", progress=False, log=again.append)
    assert any("prepared by an earlier run" in line for line in again) and _rows(out) == rows
    (folder / "chapter.txt").write_text(text.lower() + " and one more line\n")  # a changed transcript is done again
    again.clear()
    prepare([str(wav)], out, language="en", progress=False, log=again.append)
    assert not any("prepared by an earlier run" in line for line in again)


def test_subtitles_with_an_offset_are_shifted_back(long_recording, tmp_path, tiny_en):
    from mlx_whisper_lora.formats.transcript_writers import format_timestamp
    from mlx_whisper_lora.prepare import prepare

    folder, wav, words, text = long_recording
    cues = [words[i:i + 10] for i in range(0, len(words), 10)]
    (folder / "chapter.srt").write_text("".join(
        f"{n}\n{format_timestamp(c[0][1] + 2.0, True, ',')} --> {format_timestamp(c[-1][2] + 2.0, True, ',')}\n"
        f"{' '.join(w for w, _, _ in c)}\n\n" for n, c in enumerate(cues, 1)))
    (folder / "chapter.txt").unlink(missing_ok=True)
    out = tmp_path / "data"
    messages = []
    report = prepare([str(wav)], out, language="en", progress=False, log=messages.append)
    note = report["recordings"][0]["note"]
    shift = float(note.split("shifted by ")[1].split(" s")[0])
    assert abs(shift + 2.0) < 0.3, note
    _check_windows(_rows(out), words, len(words))


def test_bad_transcripts_are_one_line_each_and_the_rest_still_prepare(long_recording, tmp_path, capsys):
    import shutil

    from mlx_whisper_lora.prepare import main

    folder, wav, _, text = long_recording
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("good", "latin1", "empty", "broken", "missing"):
        shutil.copy(wav, inputs / f"{name}.wav")
    (inputs / "good.txt").write_text(text)
    (inputs / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (inputs / "empty.txt").write_text("  \n")
    (inputs / "broken.srt").write_text("1\n00:00:01,000 --> 00:00:03,000\nhello\n\n2\n00:00:04 --> 00:00:05,000\nworld\n")
    out = tmp_path / "data"
    assert main([str(inputs), "--output", str(out), "--no-progress", "--test-fraction", "0", "--valid-fraction", "0",
                 "--language", "en"]) == 0
    err = capsys.readouterr().err
    assert "latin1.txt line 1: not UTF-8" in err and "empty.txt: the transcript is empty" in err
    assert "broken.srt line 6: malformed cue timing" in err and "missing.wav: no transcript beside it" in err
    assert "Traceback" not in err
    report = json.loads((out / "prepare_report.json").read_text())
    assert [r["name"] for r in report["recordings"]] == ["good"] and len(report["failed"]) == 4


def test_command_line_mistakes_are_one_line(tmp_path, capsys, tiny_en):
    import soundfile as sf

    from mlx_whisper_lora.prepare import main

    sf.write(str(tmp_path / "x.wav"), np.zeros(16000, np.float32), 16000)
    (tmp_path / "empty").mkdir()

    for argv, message in [([str(tmp_path / "nope.wav"), "-o", str(tmp_path / "d")], "no such file"),
                          ([str(tmp_path), "-o", str(tmp_path / "d"), "--test-fraction", "0.6", "--valid-fraction", "0.5"],
                           "leave nothing to train on"),
                          ([str(tmp_path / "empty"), "-o", str(tmp_path / "d")], "no audio files found"),
                          ([str(tmp_path / "x.wav"), "-o", str(tmp_path / "d"), "--model", "tiny.en", "--language", "de"],
                           "English-only model cannot align")]:
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_recordings_go_to_one_split_each():
    from mlx_whisper_lora.prepare import split_recordings

    splits = split_recordings([f"r{i}" for i in range(20)], 0.1, 0.1, seed=0)
    assert sorted(splits.values()).count("test") == 2 and sorted(splits.values()).count("valid") == 2
    assert split_recordings(["a", "b"], 0.1, 0.1, 0) == {"a": "train", "b": "train"}
    with pytest.raises(UserError):
        from mlx_whisper_lora.prepare import find_recordings

        find_recordings(["/nonexistent/x.wav"], print)


def test_lora_cuts_training_clips_longer_than_a_window_instead_of_skipping_them(tmp_path, shared_data):
    """A 43 s German clip (FLEURS) in a training manifest: cut into windows at pauses, with their segments,
    and said so; nothing of it skipped."""
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.data.manifests import read_manifest
    from mlx_whisper_lora.tuner.data_prep import prepare_split
    from mlx_whisper_lora.tuner.run_config import RunConfig

    fleurs = shared_data / "fleurs_en_de"
    row = next(r for r in map(json.loads, (fleurs / "manifest.jsonl").read_text().splitlines()) if r["duration"] > 30)
    (tmp_path / "train.jsonl").write_text(json.dumps(dict(row, audio=str(fleurs / row["audio"]))) + "\n")
    said = []
    config = RunConfig(train=True, model="base", adapter_path=str(tmp_path / "adapters"), progress=False)
    examples, report = prepare_split(load_model("base"), read_manifest(tmp_path / "train.jsonl"), "train", config,
                                     said.append, timestamps=True)
    assert report.skipped == 0 and len(examples) >= 2
    assert all(u.duration <= 30.0 and u.segments for u in examples.utterances)
    assert sum(u.duration for u in examples.utterances) > 25  # its speech runs from 3 s to 34 s
    assert any(line.startswith("long clips: 1 training clips longer than 30 s") for line in said)
    words = " ".join(u.text for u in examples.utterances).split()
    assert len(words) >= 0.9 * len(row["text"].split())


def test_forced_alignment_times_a_known_text_window_after_window(tiny_en):
    """The demo clip nine times over (about 70 s, three windows): every word timed, in order, and each copy's
    first word near where that copy starts."""
    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.inference.forced_alignment import forced_words

    clip = load_audio(ASSETS / "demo.flac")
    gap = np.zeros(8000, np.float32)
    audio = np.concatenate([np.concatenate([clip, gap]) for _ in range(9)])
    text = ("Whisper can be adapted to your own voice with low rank adapters. "
            "This short clip was spoken by a speech synthesizer.").split()
    timed = forced_words(lambda a, b: audio[a:b], len(audio), text * 9, tiny_en, "en")
    assert [w for w, _, _ in timed] == text * 9 and all(s is not None for _, s, _ in timed)
    starts = [s for _, s, _ in timed]
    assert starts == sorted(starts) and timed[-1][2] <= len(audio) / 16000 + 0.02
    copy = (len(clip) + len(gap)) / 16000
    for k in range(9):
        assert abs(timed[k * len(text)][1] - k * copy) < 0.6, (k, timed[k * len(text)])


def test_forced_alignment_goes_on_after_a_stretch_it_cannot_follow(tiny_en):
    """Sixteen demo clips in a row, the sixth one's speech replaced by noise while the text keeps its words:
    the words pile up there, and the alignment resumes after it instead of leaving the rest of the recording
    untimed (each later clip's first word near where that clip starts)."""
    import json

    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.inference.forced_alignment import forced_words

    folder = ASSETS / "demo_data"
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()][:16]
    gap = np.zeros(8000, np.float32)
    pieces, starts, t = [], [], 0.0
    for k, row in enumerate(rows):
        clip = load_audio(folder / row["audio"])
        if k == 5:
            clip = np.random.default_rng(0).normal(0, 0.05, len(clip)).astype(np.float32)
        starts.append(t)
        pieces += [clip, gap]
        t += (len(clip) + len(gap)) / 16000
    audio = np.concatenate(pieces)
    texts = [row["text"].split() for row in rows]
    timed = forced_words(lambda a, b: audio[a:b], len(audio), [w for text in texts for w in text], tiny_en, "en")
    first = np.cumsum([0] + [len(text) for text in texts])
    assert any(s is None for _, s, _ in timed[first[5]:first[8]])  # the stretch it could not follow
    for k in range(8, 16):
        assert all(s is not None for _, s, _ in timed[first[k]:first[k + 1]]), k
        assert abs(timed[first[k]][1] - starts[k]) < 0.6, (k, timed[first[k]], starts[k])


def test_pauses_found_by_voice_activity_open_between_forced_words(tiny_en):
    """Forced alignment gives every frame to a word, so words touch and a window could not be cut at a pause;
    silero-vad's silences open the half-second gaps between eight demo clips again (and the rest of each
    clip's words stay in order)."""
    import json

    pytest.importorskip("silero_vad")
    from mlx_whisper_lora.assets_dir import ASSETS
    from mlx_whisper_lora.data.audio import load_audio
    from mlx_whisper_lora.inference.forced_alignment import forced_words, open_pauses
    from mlx_whisper_lora.inference.vad_chunks import silences

    folder = ASSETS / "demo_data"
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()][:8]
    gap = np.zeros(8000, np.float32)
    audio = np.concatenate([x for row in rows for x in (load_audio(folder / row["audio"]), gap)])
    texts = [row["text"].split() for row in rows]
    read = lambda a, b: audio[a:b]  # noqa: E731
    timed = forced_words(read, len(audio), [w for text in texts for w in text], tiny_en, "en")
    opened = open_pauses(timed, silences(read, len(audio), 0.2))
    first = np.cumsum([0] + [len(text) for text in texts])
    touching = sum(timed[k][1] - timed[k - 1][2] < 0.1 for k in first[1:-1])
    assert touching >= 4  # what the warping path alone gives: most clip boundaries without a pause
    for k in first[1:-1]:
        assert opened[k][1] - opened[k - 1][2] >= 0.3, (k, opened[k - 1], opened[k])
    assert all(s < e for _, s, e in opened) and all(a[2] <= b[1] for a, b in zip(opened, opened[1:]))


def test_matched_share_counts_only_words_written_as_the_text_does():
    """A transcript that is gibberish but for a few short common words still gets most of the text 'aligned'
    (runs of misheard words between agreeing ones take the runs' times), which is what sent Yoruba recordings
    to slow recognition; the matched share, which decides between recognition and forced alignment, does not."""
    from mlx_whisper_lora.preparing.text_alignment import align_words

    text = "ọrọ ìyànjù odò to ba gbagbe ni orisun rẹ gbigbe lo ma ngbe ti ẹyin ọmọ odùduwà ni ayé ibi ti wọn"
    heard = "Tawwa Apele Niki Shie to Ibeji Kulipa ni Uko Da Si Uko Amut ti Adupelo Ului Ilu ni Budlog Junatan ti Tobo"
    recognised = [(w, 0.4 * i, 0.4 * i + 0.3) for i, w in enumerate(heard.split())]
    gibberish = align_words(text, recognised)
    assert gibberish.aligned_share > 0.7 and gibberish.matched_share < 0.3
    same = align_words(text, [(w, 0.4 * i, 0.4 * i + 0.3) for i, w in enumerate(text.split())])
    assert same.matched_share == 1.0
