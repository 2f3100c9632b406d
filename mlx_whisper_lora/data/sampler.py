"""The training batch sampler: which utterances go together in each batch of an epoch.

Reproducible from (seed, epoch) alone, so a resumed or data-parallel run draws the same batches; batches
are grouped by label length so they need little padding."""

from __future__ import annotations

from typing import List

import numpy as np


def epoch_batches(lengths: List[int], batch_size: int, seed: int, epoch: int, bucket: bool = True) -> List[List[int]]:
    """Batches of indices for one epoch, the same for the same (seed, epoch): shuffled, then grouped
    by label length in windows of 16 batches so batches need little padding, then batch order shuffled."""
    n = len(lengths)
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n)
    if bucket:
        window = batch_size * 16
        chunks = [order[i:i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort([lengths[j] for j in c], kind="stable")] for c in chunks]) if chunks else order
    batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    rng.shuffle(batches)
    return batches
