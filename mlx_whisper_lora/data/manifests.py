"""Training data: manifests in a folder (jsonl or csv) or Hugging Face datasets, checked up front.

A manifest line is `{"audio": path relative to the manifest, "text": ..., "language": optional}`.
Problems that would stop a run hours in are found before training: missing or unreadable files,
empty transcripts and audio over the duration limit are skipped, counted and listed; an unknown
language code stops with a message naming the line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

import numpy as np

from .audio import SAMPLE_RATE, AudioError, finite, load_audio, resample
from .splits import split_names, split_parts
from ..errors import UserError
from ..text.languages import language_code, language_note

MANIFEST_SUFFIXES = (".jsonl", ".csv")
SHARED_MANIFESTS = ("manifest", "metadata")
TEXT_COLUMNS = ("sentence", "text", "transcription", "transcript")  # a dataset's text column, when not named


class DataError(UserError):
    """The training data cannot be read or has no usable utterance."""


@dataclass
class Utterance:
    """One example. audio: a file path, encoded bytes (from a Hugging Face dataset) or samples."""

    audio: Union[str, bytes, np.ndarray]
    text: str
    language: Optional[str] = None
    duration: Optional[float] = None
    id: str = ""
    sampling_rate: int = SAMPLE_RATE  # for samples given as an array
    no_speech: bool = False  # a clip without speech: its empty transcript is the target, not a data error
    segments: Optional[list] = None  # [start, end, text] inside the clip (a window of a long recording: prepare)
    previous_text: Optional[str] = None  # what was said before the clip in its recording (the prompt)
    group: Optional[str] = None  # the recording, session or speaker it belongs to (packing joins clips of one group)
    start: Optional[float] = None  # seconds into its recording (a window `prepare` cut)
    sentences: Optional[list] = None  # (start, end, text) inside a pre-cut clip, timed by preparing/clip_segments.py

    def load(self) -> np.ndarray:
        """Mono float32 samples at 16 kHz."""
        name = self.id or "an example"
        if isinstance(self.audio, np.ndarray):
            return finite(resample(np.asarray(self.audio, dtype=np.float32), self.sampling_rate, SAMPLE_RATE), name)
        if isinstance(self.audio, bytes):
            import soundfile as sf

            try:
                data, sr = sf.read(io.BytesIO(self.audio), dtype="float32", always_2d=True)
            except Exception as e:  # noqa: BLE001 - any decoder failure
                raise AudioError(f"cannot decode the audio of {name}: {e}") from None
            return finite(resample(data.mean(axis=1), sr, SAMPLE_RATE), name)
        return load_audio(self.audio)


@dataclass
class SkipReport:
    """Utterances left out of a split, by reason, with a few examples of each."""

    split: str
    kept: int = 0
    reasons: Dict[str, List[str]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)  # said once each: languages mapped to a related one

    def add(self, reason: str, example: str) -> None:
        self.reasons.setdefault(reason, []).append(example)

    @property
    def skipped(self) -> int:
        return sum(len(v) for v in self.reasons.values())

    def lines(self) -> List[str]:
        out = list(self.notes)
        for reason, examples in self.reasons.items():
            shown = ", ".join(examples[:3]) + (", ..." if len(examples) > 3 else "")
            out.append(f"{self.split}: skipped {len(examples)} ({reason}): {shown}")
        return out

    def to_json(self) -> dict:
        return {"split": self.split, "kept": self.kept, "skipped": {k: len(v) for k, v in self.reasons.items()}}


# ---------------------------------------------------------------- manifests
def _manifest_rows(path: Path) -> Iterable[tuple]:
    """(line number, row dict) of a jsonl or csv manifest (UTF-8, a byte-order mark allowed)."""
    try:
        yield from (_jsonl_rows(path) if path.suffix == ".jsonl" else _csv_rows(path))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _jsonl_rows(path: Path) -> Iterable[tuple]:
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number} is not valid JSON ({e.msg}); each line must be an object "
                                'like {"audio": "clip.wav", "text": "..."}') from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _csv_rows(path: Path) -> Iterable[tuple]:
    """Rows through the csv module (quoted fields may hold commas and line breaks); a row with more
    or fewer fields than the header is an error, not a silently cut transcript."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            number = reader.line_num
            if None in row:
                raise DataError(f"{path} line {number} has more fields than the header "
                                f"({', '.join(reader.fieldnames or [])}): put a text that holds commas in double quotes")
            if any(value is None for value in row.values()):
                raise DataError(f"{path} line {number} has fewer fields than the header "
                                f"({', '.join(reader.fieldnames or [])})")
            yield number, row


def _duration(value, path: Path, number: int) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path} line {number}: duration {value!r} is not a number of seconds") from None
    if not np.isfinite(seconds) or seconds < 0:
        raise DataError(f"{path} line {number}: duration {value!r} is not a number of seconds")
    return seconds


def read_manifest(path: Union[str, Path], audio_column: str = "audio", text_column: str = "text",
                  language_column: str = "language", splits: Optional[tuple] = None) -> List[Utterance]:
    """Utterances of a jsonl or csv manifest; audio paths are relative to the manifest's folder.
    With `splits`, only the rows whose `split` field is one of them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    folder = path.parent
    out = []
    for number, row in _manifest_rows(path):
        if splits is not None and str(row.get("split", "")) not in splits:
            continue
        if audio_column not in row:
            raise DataError(f"{path} line {number} has no {audio_column!r} field (fields: {', '.join(row) or 'none'})")
        text_key = text_column if text_column in row else next((k for k in ("text", "sentence", "transcript") if k in row), None)
        if text_key is None:
            raise DataError(f"{path} line {number} has no {text_column!r} field (fields: {', '.join(row)})")
        audio = str(row[audio_column])
        audio_path = Path(audio) if Path(audio).is_absolute() else folder / audio
        out.append(Utterance(
            audio=str(audio_path), text=str(row[text_key] or ""), language=(row.get(language_column) or None),
            duration=_duration(row.get("duration"), path, number), id=f"{path.name}:{number}",
            segments=_segments(row.get("segments"), f"{path} line {number}"), previous_text=row.get("previous_text") or None,
            group=group_of(row), start=_seconds(row.get("start"), "start", path, number),
        ))
    return out


def _seconds(value, name: str, path: Path, number: int) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path} line {number}: {name} {value!r} is not a number of seconds") from None


GROUP_FIELDS = ("recording", "session", "speaker", "speaker_id", "client_id")


def group_of(row: dict) -> Optional[str]:
    """The recording, session or speaker a row belongs to (the first of GROUP_FIELDS it has), or None."""
    for name in GROUP_FIELDS:
        if row.get(name) not in (None, ""):
            return f"{name}:{row[name]}"
    return None


def _segments(value, where: str) -> Optional[list]:
    """A row's `segments`: [[start, end, text], ...] in seconds inside the clip (a JSON string in a csv)."""
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: segments is not JSON ([[start, end, text], ...])") from None
    try:
        segments = [(float(a), float(b), str(t)) for a, b, t in value]
    except (TypeError, ValueError):
        raise DataError(f"{where}: segments must be [[start, end, text], ...] (seconds)") from None
    if any(not 0 <= a <= b for a, b, _ in segments):
        raise DataError(f"{where}: a segment ends before it starts, or starts before 0")
    return segments


def find_manifest(folder: Union[str, Path], split: str) -> Optional[Path]:
    """`SPLIT.jsonl` or `SPLIT.csv` in `folder`, under any of the split's usual names."""
    folder = Path(folder)
    for name in split_names(split):
        for suffix in MANIFEST_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.exists():
                return candidate
    return None


def shared_manifest(folder: Path) -> Optional[Path]:
    """One manifest for every split (rows carry a `split` field): manifest.jsonl, metadata.csv, ..."""
    for stem in SHARED_MANIFESTS:
        for suffix in MANIFEST_SUFFIXES:
            if (folder / f"{stem}{suffix}").exists():
                return folder / f"{stem}{suffix}"
    return None


def load_folder_split(folder: Union[str, Path], split: str, required: bool = True) -> Optional[List[Utterance]]:
    """The utterances of a split expression (`train`, `train+valid`) of a data folder: from
    `SPLIT.jsonl`/`.csv` files, or from the rows of one shared manifest whose `split` field names it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder} is not a folder; it should hold train.jsonl, valid.jsonl and test.jsonl "
                        "(or .csv), or one manifest.jsonl whose rows have a split field")
    out: List[Utterance] = []
    for part in split_parts(split):
        path = find_manifest(folder, part)
        if path is not None:
            out += read_manifest(path)
            continue
        shared = shared_manifest(folder)
        rows = read_manifest(shared, splits=split_names(part)) if shared is not None else []
        if not rows:
            if required:
                where = f" and no row of {shared.name} has split {part!r}" if shared is not None else ""
                raise DataError(f"{folder} has no {part}.jsonl or {part}.csv{where}")
            return None
        out += rows
    return out


# ---------------------------------------------------------------- Hugging Face datasets
def load_hf_split(name: str, split: str, config: Optional[str] = None, audio_column: str = "audio",
                  text_column: Optional[str] = None, language_column: str = "language",
                  streaming: bool = False, limit: Optional[int] = None) -> List[Utterance]:
    """A split expression (`train+validation`) of a Hugging Face dataset (a hub id, or a folder
    written by `save_to_disk`).

    Audio is read undecoded (bytes or path) and decoded here with libsndfile, so no extra audio
    back end is needed. With streaming, rows are read one by one (nothing else is downloaded)."""
    out = []
    for part in split_parts(split):
        ds = open_hf_split(name, part, config, streaming)
        out += _hf_utterances(ds, name, part, audio_column, text_column, language_column,
                              None if limit is None else limit - len(out))
    return out


def open_hf_split(name: str, split: str, config: Optional[str] = None, streaming: bool = False):
    """One split of a hub dataset or of a `save_to_disk` folder (under any of its usual names)."""
    import datasets

    try:
        if Path(name).is_dir() and ((Path(name) / "dataset_dict.json").exists() or (Path(name) / "state.json").exists()):
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                found = next((n for n in split_names(split) if n in loaded), None)
                if found is None:
                    raise DataError(f"dataset {name} has no split {split!r} (splits: {', '.join(loaded)})")
                return loaded[found]
            return loaded
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as e:
        raise DataError(f"cannot load split {split!r} of dataset {name!r}: {str(e).splitlines()[0]}") from None


def _hf_utterances(ds, name: str, split: str, audio_column: str, text_column: Optional[str], language_column: str,
                   limit: Optional[int]) -> List[Utterance]:
    import datasets

    columns = list(ds.column_names or []) if ds.column_names else None
    if columns is not None and audio_column not in columns:
        raise DataError(f"dataset {name} has no audio column {audio_column!r} (columns: {', '.join(columns)}); "
                        "pass --audio-column")
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if columns and c in columns), "text")
    if columns is not None and text_column not in columns:
        raise DataError(f"dataset {name} has no text column {text_column!r} (columns: {', '.join(columns)}); "
                        "pass --text-column")
    if isinstance(ds.features.get(audio_column) if ds.features else None, datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    out = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        out.append(row_utterance(row, audio_column, text_column, language_column, f"{split}[{i}]"))
    return out


def row_utterance(row: dict, audio_column: str, text_column: str, language_column: str, id: str) -> Utterance:
    """An Utterance of a dataset row whose audio column holds undecoded audio (bytes or a path) or samples."""
    audio = row[audio_column]
    if isinstance(audio, dict):
        if audio.get("bytes"):
            value = audio["bytes"]
        elif audio.get("array") is not None:
            value = np.asarray(audio["array"], dtype=np.float32)
        else:
            value = audio.get("path") or ""
        sr = int(audio.get("sampling_rate") or SAMPLE_RATE)
    else:
        value, sr = audio, SAMPLE_RATE
    return Utterance(audio=value, text=str(row.get(text_column) or ""), language=row.get(language_column) or None,
                     id=id, sampling_rate=sr, group=group_of(row),
                     segments=_stream_segments(row), previous_text=row.get("previous_text") or None)


def _stream_segments(row: dict) -> Optional[list]:
    """A prepared window's segments read as a stream; a dataset's own `segments` column of another shape is
    not this package's and is left alone."""
    try:
        return _segments(row.get("segments"), "a streamed row")
    except DataError:
        return None


# ---------------------------------------------------------------- checks
def audio_duration(utt: Utterance) -> float:
    """Seconds of audio, from the file header when possible; raises AudioError when unreadable."""
    if isinstance(utt.audio, np.ndarray):
        return len(utt.audio) / utt.sampling_rate
    import soundfile as sf

    if isinstance(utt.audio, bytes):
        try:
            info = sf.info(io.BytesIO(utt.audio))
            return info.frames / info.samplerate
        except Exception:  # noqa: BLE001
            return len(utt.load()) / SAMPLE_RATE
    path = Path(utt.audio)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
        if info.frames <= 0:
            raise AudioError(f"audio file holds no samples: {path}")
        return info.frames / info.samplerate
    except AudioError:
        raise
    except Exception:  # noqa: BLE001 - not a libsndfile format: decode it (ffmpeg) to know
        return len(load_audio(path)) / SAMPLE_RATE


def check_utterances(utterances: List[Utterance], split: str, max_duration: float = 30.0,
                     default_language: Optional[str] = None, multilingual: bool = True,
                     progress: Optional[Callable[[Iterable], Iterable]] = None,
                     longer: Optional[list] = None) -> tuple:
    """Keep the usable utterances; returns (kept, SkipReport). Unknown languages raise DataError. With a
    `longer` list, utterances over `max_duration` go there (to be cut into windows) instead of being skipped."""
    report = SkipReport(split)
    kept = []
    items = progress(utterances) if progress else utterances
    for utt in items:
        lang = utt.language or default_language
        if lang:
            note = language_note(str(lang))
            if note and note not in report.notes:
                report.notes.append(note)
            try:
                lang = language_code(str(lang))
            except ValueError:
                raise DataError(f"{utt.id}: unknown language {utt.language or default_language!r}; "
                                "use a code such as en, de, fr (or a name such as german)") from None
            if not multilingual and lang != "en":
                raise DataError(f"{utt.id}: language {lang!r} but the model is English-only; "
                                "use a multilingual model (for example base) or drop the language field")
        utt.language = lang
        if not utt.text.strip() and not utt.no_speech:
            report.add("empty transcript", utt.id)
            continue
        try:
            duration = audio_duration(utt)
        except AudioError as e:
            report.add("missing or unreadable audio", f"{utt.id} ({e})")
            continue
        if duration <= 0:
            report.add("empty audio", utt.id)
            continue
        if duration > max_duration and longer is not None:
            utt.duration = duration
            longer.append(utt)
            continue
        if duration > max_duration:
            report.add(f"longer than {max_duration:g} s", f"{utt.id} ({duration:.1f} s)")
            continue
        utt.duration = duration
        kept.append(utt)
    report.kept = len(kept)
    return kept, report
