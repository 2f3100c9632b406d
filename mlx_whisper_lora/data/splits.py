"""Split expressions (`train+validation`) and the names a split goes by, for every dataset kind.

A folder's `valid.jsonl`, a hub dataset's `validation` and a manifest row's `dev` are one split;
when the training expression takes in the validation split, validation would score data the
model trained on, so a slice of the training data is held out instead (and the user told).
"""

from __future__ import annotations

import random
from typing import List, Sequence, Tuple

from ..errors import UserError

ALIASES = (("valid", "validation", "dev", "val"), ("test", "eval"), ("train",))


def split_parts(expression: str) -> List[str]:
    """`"train+validation"` -> ["train", "validation"]; an empty part is refused."""
    parts = [p.strip() for p in str(expression).split("+")]
    if not parts or any(not p for p in parts):
        raise UserError(f"split {expression!r}: write split names joined by '+', like train+validation")
    return parts


def split_names(split: str) -> Tuple[str, ...]:
    """The names a split may have in a folder or a manifest, the given one first."""
    for group in ALIASES:
        if split in group:
            return (split,) + tuple(n for n in group if n != split)
    return (split,)


def canonical(split: str) -> str:
    """One name per split: valid for validation/dev/val, test for eval."""
    return next((group[0] for group in ALIASES if split in group), split)


def overlap(train_expression: str, other_expression: str) -> List[str]:
    """Parts of `other_expression` that the training expression also reads."""
    train = {canonical(p) for p in split_parts(train_expression)}
    return [p for p in split_parts(other_expression) if canonical(p) in train]


def hold_out(items: Sequence, fraction: float = 0.05, at_most: int = 200, seed: int = 0) -> Tuple[list, list]:
    """(kept, held out): a seeded random slice of `items` (at least one, `fraction` of them, at most `at_most`)."""
    count = min(at_most, max(1, int(round(len(items) * fraction))))
    if len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


MIN_GROUPS = 5  # fewer recordings, sessions or speakers than this: held-out rows are drawn from all of them


def hold_out_groups(items: Sequence, fraction: float, seed: int = 0, at_most: int = 200) -> Tuple[list, list, str]:
    """(kept, held out, how): about `fraction` of the rows held out to validate on, whole groups (the rows'
    `group`: recording, session or speaker) when every row has one and there are MIN_GROUPS or more, so validation
    hears voices or recordings training did not; else a seeded random slice of the rows."""
    groups = [getattr(x, "group", None) for x in items]
    names = sorted(set(groups), key=str)
    if None in groups or len(names) < MIN_GROUPS:
        kept, held = hold_out(items, fraction, at_most, seed)
        return kept, held, "drawn at random"
    random.Random(seed).shuffle(names)
    wanted = max(1, int(round(len(items) * fraction)))
    chosen, count = set(), 0
    for name in names[:-1]:  # never every group
        if count >= wanted:
            break
        chosen.add(name)
        count += groups.count(name)
    kind = names[0].split(":", 1)[0] if ":" in str(names[0]) else "group"
    return ([x for x, g in zip(items, groups) if g not in chosen], [x for x, g in zip(items, groups) if g in chosen],
            f"{len(chosen)} whole {kind}{'s' if len(chosen) > 1 else ''} of {len(names)}")
