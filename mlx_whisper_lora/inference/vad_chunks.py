"""Batched transcription of one long file (`transcribe --vad`): speech found by silero-vad, grouped into
chunks of at most 30 s, and the chunks decoded `batch_size` at a time, as faster-whisper's
`BatchedInferencePipeline` does.

Sequential long-form decoding (`transcribe`) must finish one window before it knows where the next
starts, so the encoder and decoder run on one window at a time. Chunks cut at pauses are known in
advance, so they can share each encoder and decoder pass; silence between them is skipped. The
cost: no chunk sees the text of the one before it (no `condition_on_previous_text` across chunks), and
each chunk is one segment (decoded without timestamp tokens; word timestamps still work).
The voice-activity model is PyPI `silero-vad` (maintained, ONNX; 0.6 s for 10 minutes of audio here).

A long file (over `data.long_audio.LONG_FILE_SECONDS`) is not read whole: its samples go to a temporary
file, the VAD runs over 10-minute blocks read with 30 s more on each side, and each batch reads only its chunks, so
memory does not grow with the file's length.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Callable, List, Sequence, Tuple

import numpy as np

from ..data.audio import SAMPLE_RATE, load_audio
from ..data.long_audio import SampleFile, store_long_audio
from ..errors import UserError
from .transcriber import clock, transcribe_many

CHUNK_SECONDS = 30.0
VAD_BLOCK_SECONDS = 600  # a long file's speech is found this much at a time
VAD_CONTEXT_SECONDS = 30  # read on each side of a block: a region (at most 29 s) that starts in it ends in it
_VAD = None


def _vad_model():
    global _VAD
    if _VAD is None:
        missing = UserError("--vad needs PyPI silero-vad: pip install 'mlx-whisper-lora[vad]' (or pip install silero-vad)")
        try:
            import torch
        except ImportError:
            raise missing from None
        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad
        except ImportError:
            raise missing from None
        finally:  # importing silero_vad sets PyTorch to one thread for the whole process: undo that
            torch.set_num_threads(threads)
        try:  # silero-vad 6.2+: the whole file in a few block-level ONNX calls, same timestamps (2.6x faster)
            from silero_vad import get_speech_timestamps_sequence

            _VAD = (load_silero_vad(sequence=True), get_speech_timestamps_sequence)
        except (ImportError, TypeError):
            from silero_vad import get_speech_timestamps

            _VAD = (load_silero_vad(onnx=True), get_speech_timestamps)
    return _VAD


def speech_regions(audio: np.ndarray, max_seconds: float = CHUNK_SECONDS, pad_ms: int = 200) -> List[Tuple[int, int]]:
    """(start, end) sample offsets of the speech silero-vad finds, each at most `max_seconds` - 1 long (a
    longer stretch of speech is cut by the VAD at its quietest point), widened by `pad_ms` on each side."""
    import torch

    model, get_speech_timestamps = _vad_model()
    regions = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), model,
                                    sampling_rate=SAMPLE_RATE, max_speech_duration_s=max_seconds - 1.0,
                                    min_silence_duration_ms=160, speech_pad_ms=pad_ms)
    return [(int(r["start"]), min(int(r["end"]), len(audio))) for r in regions]


def merged_chunks(regions: Sequence[Tuple[int, int]], max_seconds: float = CHUNK_SECONDS) -> List[Tuple[int, int]]:
    """Neighbouring regions merged while a chunk spans at most `max_seconds` (one decoding window)."""
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: List[List[int]] = []
    for start, end in regions:
        if chunks and end - chunks[-1][0] <= limit:
            chunks[-1][1] = end
        else:
            chunks.append([start, end])
    return [(s, e) for s, e in chunks]


def speech_chunks(audio: np.ndarray, max_seconds: float = CHUNK_SECONDS) -> List[Tuple[int, int]]:
    """(start, end) sample offsets of speech in chunks of at most `max_seconds`."""
    return merged_chunks(speech_regions(audio, max_seconds), max_seconds)


def streamed_speech_regions(read: Callable[[int, int], np.ndarray], n_samples: int, max_seconds: float = CHUNK_SECONDS,
                            block_seconds: float = VAD_BLOCK_SECONDS, pad_ms: int = 200) -> List[Tuple[int, int]]:
    """`speech_regions` of a recording read a block at a time (`read(a, b)`: samples a..b). Each block is read
    with VAD_CONTEXT_SECONDS on either side, and keeps the regions that start inside it; a region that starts
    before the previous one ends (both blocks saw that speech) starts where it ends, so none overlap."""
    block, context = int(block_seconds * SAMPLE_RATE), int(VAD_CONTEXT_SECONDS * SAMPLE_RATE)
    regions: List[Tuple[int, int]] = []
    for begin in range(0, n_samples, block):
        first = max(0, begin - context)
        for start, end in speech_regions(read(first, begin + block + context), max_seconds, pad_ms):
            start, end = start + first, end + first
            if not begin <= start < begin + block:
                continue  # another block's
            if regions and start < regions[-1][1]:
                start = regions[-1][1]
            if end > start:
                regions.append((start, end))
    return regions


def streamed_speech_chunks(samples: SampleFile, max_seconds: float = CHUNK_SECONDS,
                           block_seconds: float = VAD_BLOCK_SECONDS) -> List[Tuple[int, int]]:
    """`speech_chunks` of a file's samples read a block at a time."""
    return merged_chunks(streamed_speech_regions(samples.read, samples.n_samples, max_seconds, block_seconds),
                         max_seconds)


PAUSE_PAD_MS = 30  # speech widened by this on each side before the silence between counts as a pause


def silences(read: Callable[[int, int], np.ndarray], n_samples: int, shortest: float) -> List[Tuple[float, float]]:
    """(start, end) in seconds of each stretch of at least `shortest` seconds between the speech silero-vad
    finds in a recording, read a block at a time (memory does not grow with its length)."""
    regions = streamed_speech_regions(read, n_samples, pad_ms=PAUSE_PAD_MS)
    edges = [0] + [x for r in regions for x in r] + [n_samples]
    return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in zip(edges[::2], edges[1::2])
            if (b - a) / SAMPLE_RATE >= shortest]


class ChunkAudio(Sequence):
    """The chunks' samples, read when a batch asks for them."""

    def __init__(self, chunks: List[Tuple[int, int]], read: Callable[[int, int], np.ndarray]):
        self.chunks, self.read = chunks, read

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> np.ndarray:
        start, end = self.chunks[index]
        return self.read(start, end)


def transcribe_vad(audio, model, *, batch_size: int = 8, verbose=None, progress=None, **options) -> dict:
    """`transcribe`'s result for one file (path or 16 kHz array), its speech chunks decoded in batches
    (windows after a chunk's first too: `transcribe_many` runs them in lockstep); segment and word times
    are in the file's time. `options`: `transcribe`'s; no window is conditioned on the text before it."""
    stored = None
    if isinstance(audio, (str, bytes)) or hasattr(audio, "__fspath__"):
        stored = store_long_audio(audio)
        if stored is None:
            audio = load_audio(audio)
    options["condition_on_previous_text"] = False  # so that every chunk's windows can share a batch
    # One window per chunk, as faster-whisper's batched pipeline decodes: with timestamp tokens the model
    # often stops at a timestamp before the chunk's end, and the rest costs another window (measured on a
    # 10-minute file: 39 windows instead of 23, 11.5 s instead of 8.2 s). A chunk is then one segment;
    # --word-timestamps still times every word (and lays out subtitle lines).
    options.setdefault("without_timestamps", True)
    try:
        if stored is not None:
            chunks = streamed_speech_chunks(stored)
            pieces = ChunkAudio(chunks, stored.read)
        else:
            audio = np.asarray(audio, dtype=np.float32)
            chunks = speech_chunks(audio)
            pieces = ChunkAudio(chunks, lambda start, end: audio[start:end])
        show = progress if progress is not None else (verbose is not False and len(chunks) > 1)
        results = transcribe_many(pieces, model, batch_size=max(1, batch_size), verbose=False, progress=show,
                                  unit="chunk", **options)
    finally:
        if stored is not None:
            stored.close()
    segments = []
    for (start, _), result in zip(chunks, results):
        offset = start / SAMPLE_RATE
        for segment in result["segments"]:
            segment = dict(segment, id=len(segments), seek=segment["seek"] + start // 160,
                           start=round(segment["start"] + offset, 3), end=round(segment["end"] + offset, 3))
            if "words" in segment:
                segment["words"] = [dict(w, start=round(w["start"] + offset, 3), end=round(w["end"] + offset, 3))
                                    for w in segment["words"]]
            segments.append(segment)
            if verbose:
                print(f"[{clock(segment['start'])} --> {clock(segment['end'])}] {segment['text'].strip()}",
                      file=sys.stdout)
    languages = Counter(r["language"] for r in results)
    language = languages.most_common(1)[0][0] if languages else options.get("language")
    return {"text": "".join(s["text"] for s in segments), "segments": segments, "language": language}
