"""`transcribe --vad`: silero-vad speech chunks decoded in batches (inference/vad_chunks.py), and the
lockstep batching of later windows in `transcribe_many` that it relies on."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("silero_vad")

from mlx_whisper_lora.data.audio import SAMPLE_RATE, load_audio  # noqa: E402

CLIPS = ["librispeech_test_clean_4/audio/1089-134691-0000.flac", "whisper_mlx_classics/audio/jfk.flac",
         "pocketsphinx_librivox/audio/sense_and_sensibility_01_austen_64kb-0880.flac",
         "librispeech_test_clean_4/audio/1089-134691-0001.flac"]


@pytest.fixture(scope="module")
def long_recording(shared_data):
    """The four clips twice (about 66 s), 3 s of silence before each: (audio, (start, end) second of each clip)."""
    parts, starts, at = [], [], 0.0
    for clip in CLIPS + CLIPS:
        audio = np.array(load_audio(shared_data / clip))
        parts += [np.zeros(3 * SAMPLE_RATE, dtype=np.float32), audio]
        starts.append((at + 3.0, at + 3.0 + len(audio) / SAMPLE_RATE))
        at += 3.0 + len(audio) / SAMPLE_RATE
    return np.concatenate(parts), starts


def test_speech_chunks_hold_the_speech_in_windows_of_at_most_30_s(long_recording):
    from mlx_whisper_lora.inference.vad_chunks import speech_chunks

    audio, starts = long_recording
    chunks = speech_chunks(audio)
    assert len(chunks) >= 2 and all(0 < e - s <= 30 * SAMPLE_RATE for s, e in chunks)
    assert all(a[1] <= b[0] for a, b in zip(chunks, chunks[1:]))  # in order, not overlapping
    assert chunks[0][0] > 2.5 * SAMPLE_RATE  # the leading silence is skipped
    for start, end in starts:  # nearly all of every clip lies in chunks (clips hold short pauses too)
        inside = sum(max(0, min(e, end * SAMPLE_RATE) - max(s, start * SAMPLE_RATE)) for s, e in chunks)
        assert inside >= 0.8 * (end - start) * SAMPLE_RATE, (start, end, chunks)


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_vad_transcript_follows_sequential_decoding_in_the_files_time(tiny_en, long_recording):
    import jiwer

    from mlx_whisper_lora.export.verify import plain
    from mlx_whisper_lora.inference.vad_chunks import transcribe_vad
    from mlx_whisper_lora.transcribe import transcribe

    audio, starts = long_recording
    sequential = transcribe(audio, tiny_en, language="en", verbose=False)
    batched = transcribe_vad(audio, tiny_en, batch_size=4, language="en", word_timestamps=True, verbose=False)
    assert jiwer.wer(plain(sequential["text"]), plain(batched["text"])) <= 0.1, (sequential["text"], batched["text"])
    segments = batched["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert all(a["start"] <= b["start"] for a, b in zip(segments, segments[1:]))
    assert segments[-1]["end"] <= len(audio) / SAMPLE_RATE + 0.01
    words = [w for s in segments for w in s["words"]]
    jfk = next(w for w in words if "fellow" in w["word"].lower())  # "And so my fellow Americans": 2nd clip
    assert starts[1][0] < jfk["start"] < starts[1][0] + 2.0, (jfk, starts)
    assert all(s["start"] >= starts[0][0] - 0.5 for s in segments)


def covered(chunks, length):
    mask = np.zeros(length, dtype=bool)
    for s, e in chunks:
        mask[s:e] = True
    return mask


def long_file(tmp_path, audio, monkeypatch):
    """The recording as a WAV that takes the long-file path (samples in a temporary file)."""
    import soundfile as sf

    from mlx_whisper_lora.data import long_audio

    monkeypatch.setattr(long_audio, "LONG_FILE_SECONDS", 1)
    path = tmp_path / "long.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    return path


def test_speech_found_block_by_block_agrees_with_the_whole_file(long_recording, tmp_path, monkeypatch):
    """Blocks of 20 s (with 30 s of context each side) find the speech the whole-file VAD finds."""
    from mlx_whisper_lora.data.long_audio import store_long_audio
    from mlx_whisper_lora.inference.vad_chunks import speech_chunks, streamed_speech_chunks

    audio, _ = long_recording
    stored = store_long_audio(long_file(tmp_path, audio, monkeypatch))
    try:
        blocks = streamed_speech_chunks(stored, block_seconds=20)
        whole_file_block = streamed_speech_chunks(stored, block_seconds=600)
    finally:
        stored.close()
    whole = speech_chunks(audio)
    assert whole_file_block == whole  # one block: the same call on the same samples
    assert all(0 < e - s <= 30 * SAMPLE_RATE for s, e in blocks)
    assert all(a[1] <= b[0] for a, b in zip(blocks, blocks[1:]))
    a, b = covered(blocks, len(audio)), covered(whole, len(audio))
    assert (a != b).sum() <= 0.02 * b.sum(), ((a != b).sum(), b.sum())


def test_vad_on_a_long_file_reads_it_in_pieces_with_the_same_transcript(tiny_en, long_recording, tmp_path, monkeypatch):
    from mlx_whisper_lora.data.long_audio import SampleFile
    from mlx_whisper_lora.inference.vad_chunks import transcribe_vad

    audio, _ = long_recording
    path = long_file(tmp_path, audio, monkeypatch)
    reads, files = [], []
    read = SampleFile.read
    monkeypatch.setattr(SampleFile, "read", lambda self, a, b: (reads.append(b - a), files.append(self), read(self, a, b))[2])
    from_file = transcribe_vad(path, tiny_en, batch_size=4, language="en", verbose=False)
    from_array = transcribe_vad(audio, tiny_en, batch_size=4, language="en", verbose=False)
    assert from_file["text"] == from_array["text"]
    assert [(s["start"], s["end"]) for s in from_file["segments"]] == [(s["start"], s["end"]) for s in from_array["segments"]]
    assert reads[1:] and max(reads[1:]) <= 30 * SAMPLE_RATE  # after the VAD's block, a chunk at a time
    assert files[0].file.closed


def test_later_windows_are_batched_with_the_same_results(tiny_en, long_recording, monkeypatch):
    """Without conditioning on previous text, every window of every file can share a batch; results
    equal `transcribe` file by file (both files are over 30 s: their second windows are batched)."""
    from mlx_whisper_lora.transcribe import transcribe, transcribe_many

    audio, _ = long_recording
    files = [audio[: 40 * SAMPLE_RATE], audio[5 * SAMPLE_RATE : 50 * SAMPLE_RATE]]
    calls = []
    embed = type(tiny_en).embed_audio
    monkeypatch.setattr(type(tiny_en), "embed_audio", lambda self, mel: (calls.append(mel.shape[0]), embed(self, mel))[1])
    batched = transcribe_many(files, tiny_en, batch_size=2, language="en", condition_on_previous_text=False,
                              progress=False, verbose=False)
    monkeypatch.undo()
    one_by_one = [transcribe(f, tiny_en, language="en", condition_on_previous_text=False, verbose=False) for f in files]
    assert [r["text"] for r in batched] == [r["text"] for r in one_by_one]
    assert calls[:2] == [2, 2], calls  # first windows together, then the second windows together


def test_vad_refuses_options_it_replaces(tmp_path, jfk):
    proc = subprocess.run([sys.executable, "-m", "mlx_whisper_lora.transcribe", str(jfk), "--vad", "--clip-timestamps",
                           "0,5", "-o", str(tmp_path)], capture_output=True, text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--vad" in lines[0], proc.stderr
