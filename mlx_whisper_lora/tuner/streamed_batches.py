"""Where the training loop gets its batches: a labelled example set read in seeded, length-bucketed
epochs (`IndexedBatches`), or a stream read row by row (`StreamedBatches`, --streaming), each batch
then a small example set of its own, so memory does not grow with the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.examples import ExampleSet
from ..data.manifests import DataError, Utterance
from ..data.sampler import epoch_batches


class IndexedBatches:
    """Batches of a whole example set: the same for the same (seed, epoch), reshuffled each epoch.
    Every process of a data-parallel run draws the same batches and reads only its share."""

    streamed = False

    def __init__(self, examples: ExampleSet, batch_size: int, seed: int, bucket: bool = True,
                 shard: Callable[[list], list] = list):
        self.examples, self.batch_size, self.seed, self.bucket = examples, batch_size, seed, bucket
        self.shard = shard  # a data-parallel run's share of each batch for this process (World.shard)
        self.per_epoch = -(-len(examples) // batch_size)
        self._epochs: Dict[int, list] = {}

    def batch(self, number: int) -> Tuple[ExampleSet, List[int]]:
        """The examples and usable indices of micro-batch `number` (counted from the run's start)."""
        epoch, index = divmod(number, self.per_epoch)
        if epoch not in self._epochs:
            self._epochs.clear()
            self._epochs[epoch] = epoch_batches(self.examples.lengths, self.batch_size, self.seed, epoch, self.bucket)
        return self.examples, self.examples.usable(self.shard(self._epochs[epoch][index]))

    def skip(self, batches: int) -> None:
        """Nothing to skip: batch numbers index the epochs directly."""

    def describe(self) -> str:
        return f"{len(self.examples)} utterances ({self.examples.seconds(range(len(self.examples))) / 60:.1f} min of audio)"

    def failures(self) -> Dict[str, str]:
        return {self.examples.utterances[i].id: why for i, why in self.examples.failed.items()}


@dataclass
class MixedRows:
    """Rows mixed into a stream's batches (replay, no-speech clips): each batch slot is taken from
    `pool` with probability `share`, drawn with the seed and the batch number (so a resumed run draws
    the same). The pool is held in memory, so it is a bounded set, not the stream."""

    pool: Sequence[Utterance]
    share: float
    seed: int


class StreamedBatches:
    """Batches read from a stream (one epoch after another). `open_epoch(epoch)` gives the epoch's
    utterances (in a data-parallel run, this process's rows: data_prep.py); `check(utterances)` keeps the usable ones; `label(utterances)` makes an ExampleSet."""

    streamed = True

    def __init__(self, open_epoch: Callable[[int], Iterator[Utterance]], check: Callable[[list], list],
                 label: Callable[[list], ExampleSet], batch_size: int, max_samples: Optional[int] = None,
                 mixed: Sequence[MixedRows] = ()):
        self.open_epoch, self.check, self.label, self.batch_size = open_epoch, check, label, batch_size
        self.max_samples = max_samples
        self.mixed = [m for m in mixed if m.pool and m.share > 0]
        self.epoch, self.rows, self.skipped = 0, 0, 0
        self._stream: Optional[Iterator[Utterance]] = None
        self._epoch_rows = 0
        self._failed: Dict[str, str] = {}

    def _next(self) -> Utterance:
        while True:
            if self._stream is None:
                self._stream, self._epoch_rows = self.open_epoch(self.epoch), 0
            try:
                utterance = next(self._stream)
            except StopIteration:
                if self._epoch_rows == 0:
                    raise DataError("the training stream holds no rows") from None
                self.epoch, self._stream = self.epoch + 1, None
                continue
            self._epoch_rows += 1
            self.rows += 1
            return utterance

    def _mixed_rows(self, number: int) -> List[Utterance]:
        """The rows of batch `number` drawn from the mixed pools (each slot on its own)."""
        out = []
        for m in self.mixed:
            rng = np.random.default_rng([int(m.seed), int(number), 77])
            for _ in range(self.batch_size):
                if rng.random() < m.share and len(out) < self.batch_size - 1:  # a stream row in every batch
                    out.append(m.pool[int(rng.integers(len(m.pool)))])
        return out

    def batch(self, number: int) -> Tuple[ExampleSet, List[int]]:
        kept: List[Utterance] = self.check(self._mixed_rows(number)) if self.mixed else []
        for _ in range(100 * self.batch_size):  # a stream of nothing usable stops, not spins
            if len(kept) == self.batch_size:
                break
            candidates = self.check([self._next()])
            self.skipped += 1 - len(candidates)
            kept += candidates
        if not kept:
            raise DataError(f"none of the last {100 * self.batch_size} rows of the training stream is usable")
        examples = self.label(kept)
        indices = examples.usable(list(range(len(examples))))
        for i, why in examples.failed.items():
            if len(self._failed) < 1000:  # a bounded list, for the summary
                self._failed[examples.utterances[i].id] = why
        return examples, indices

    def skip(self, batches: int) -> None:
        """Resume: pass over the rows the first `batches` batches took (unchecked, so approximately)."""
        for _ in range(batches * self.batch_size):
            self._next()

    def describe(self) -> str:
        cap = f", at most {self.max_samples} rows an epoch" if self.max_samples else ""
        mixed = "".join(f", {100 * m.share:g}% of batch rows from a set of {len(m.pool)}" for m in self.mixed)
        return f"a stream (read row by row through a shuffle buffer{cap}{mixed})"

    def failures(self) -> Dict[str, str]:
        return dict(self._failed)
