"""Training data read as a stream, so memory does not grow with the number of rows: a hub
dataset, local parquet/arrow shards, a `save_to_disk` folder or a manifest folder, row by row
through `datasets`' shuffle buffer, capped at `max_samples` rows.

Everything goes through a `datasets.IterableDataset` (the maintained streaming reader), so the
shuffle buffer, epochs and split expressions behave the same for every kind of source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Tuple

from .manifests import TEXT_COLUMNS, DataError, find_manifest, read_manifest, row_utterance, shared_manifest, split_names, Utterance
from .splits import split_parts

SHARD_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists())


def _shards(folder: Path, split: str) -> list:
    """Parquet/arrow files of a split: under a folder named after it, or named after it (train-00001.parquet)."""
    files = [f for f in sorted(folder.rglob("*")) if f.suffix in SHARD_SUFFIXES and f.is_file()]
    names = split_names(split)
    return [f for f in files if any(n in f.relative_to(folder).parts[:-1] or f.name.startswith(n) for n in names)]


def _manifest_stream(folder: Path, split: str):
    import datasets

    path = find_manifest(folder, split)
    shared = shared_manifest(folder) if path is None else None
    if path is None and shared is None:
        raise DataError(f"{folder} has no {split}.jsonl or {split}.csv and no manifest.jsonl")

    def rows():
        for u in (read_manifest(path) if path is not None else read_manifest(shared, splits=split_names(split))):
            yield {"audio": u.audio, "text": u.text, "language": u.language, "id": u.id}

    return datasets.IterableDataset.from_generator(rows)


def open_stream(source: str, split: str, config: Optional[str] = None, folder_data: bool = False):
    """An IterableDataset of a split expression of `source`; `folder_data`: `source` is a --data folder."""
    import datasets

    parts = []
    for part in split_parts(split):
        path = Path(source)
        try:
            if folder_data:
                parts.append(_manifest_stream(path, part))
            elif _is_saved_dataset(path):
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    found = next((n for n in split_names(part) if n in loaded), None)
                    if found is None:
                        raise DataError(f"dataset {source} has no split {part!r} (splits: {', '.join(loaded)})")
                    loaded = loaded[found]
                parts.append(loaded.to_iterable_dataset(num_shards=min(64, max(1, len(loaded) // 1000))))
            elif path.is_dir():
                shards = _shards(path, part)
                if not shards:
                    raise DataError(f"{source} has no parquet or arrow files for split {part!r}")
                kind = SHARD_SUFFIXES[shards[0].suffix]
                parts.append(datasets.load_dataset(kind, data_files={part: [str(f) for f in shards]}, split=part,
                                                   streaming=True))
            else:
                parts.append(datasets.load_dataset(source, config, split=part, streaming=True))
        except DataError:
            raise
        except (ValueError, FileNotFoundError, ConnectionError, OSError) as e:
            raise DataError(f"cannot stream split {part!r} of {source!r}: {str(e).splitlines()[0]}") from None
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def stream_utterances(ds, audio_column: str = "audio", text_column: Optional[str] = None,
                      language_column: str = "language", seed: int = 0, epoch: int = 0, buffer_size: int = 1000,
                      max_samples: Optional[int] = None, name: str = "train",
                      shard: Tuple[int, int] = (0, 1)) -> Iterator[Utterance]:
    """Utterances of one epoch of the stream, shuffled through a buffer of `buffer_size` rows.
    `shard` (rank, processes): a data-parallel run's process keeps every processes-th row of the
    one shuffled order, from its rank on (the audio of the others is never decoded here)."""
    import datasets

    features = ds.features or {}
    if isinstance(features.get(audio_column), datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    if buffer_size > 1:
        # each epoch its own order (set_epoch does not reorder a single-shard stream in datasets 5)
        ds = ds.shuffle(seed=(int(seed) * 1_000_003 + int(epoch)) % (1 << 32), buffer_size=int(buffer_size))
    if max_samples is not None:
        ds = ds.take(int(max_samples))
    rank, processes = shard
    for i, row in enumerate(ds):
        if i % processes != rank:
            continue
        if audio_column not in row:
            raise DataError(f"the {name} stream has no audio column {audio_column!r} (columns: {', '.join(row)}); "
                            "pass --audio-column")
        text = text_column or next((c for c in TEXT_COLUMNS if c in row), None)
        if text is None or text not in row:
            raise DataError(f"the {name} stream has no text column {text_column or 'text'!r} (columns: "
                            f"{', '.join(row)}); pass --text-column")
        yield row_utterance(row, audio_column, text, language_column, str(row.get("id") or f"{name}[{i}]"))
