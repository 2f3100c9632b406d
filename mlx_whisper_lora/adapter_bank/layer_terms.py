"""What one bank layer holds, framework-free: each adapter's low-rank term for the layer, the row
selection shared by every bank layer, and the stacked arrays a selection needs (adapter_bank.py
explains the scheme; bank_layer_mlx.py and bank_layer_torch.py compute with them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

BASE = None  # the row's "adapter" when it asks for the base model


@dataclass
class LayerUpdate:
    """One adapter's term in one linear layer: x @ a @ b (scale folded into b), then, for DoRA,
    the output rows rescaled by `rescale` = m / ||W + delta||."""

    a: np.ndarray  # (in, rank)
    b: np.ndarray  # (rank, out), already multiplied by alpha / rank
    rescale: Optional[np.ndarray] = None  # (out,) DoRA only


class Selection:
    """Which adapter each row of the next model calls uses: `rows` is a tuple of adapter names
    (BASE for the base model); one name applies to every row. A batch made larger by repeating each
    row (beams, best-of samples) is matched by repeating the names the same way."""

    def __init__(self):
        self.rows: Tuple[Optional[str], ...] = (BASE,)
        self.version = 0  # bumped when an adapter is added (bank layers then rebuild their stacks)

    def names_for(self, batch: int) -> Tuple[Optional[str], ...]:
        rows = self.rows
        if len(rows) == 1 or len(rows) == batch:
            return rows if len(rows) == batch else rows * batch
        if batch % len(rows):
            raise RuntimeError(f"a batch of {batch} rows cannot follow an adapter selection of {len(rows)} rows")
        k = batch // len(rows)
        return tuple(name for name in rows for _ in range(k))


class LayerTerms:
    """The per-adapter terms of one bank layer and the arrays built for the current row selection
    (kept until the selection changes). A plain object, so that MLX does not take it for parameters."""

    def __init__(self, key: str, selection: Selection, to_array: Callable):
        self.key = key
        self.selection = selection
        self.to_array = to_array
        self.terms: Dict[str, LayerUpdate] = {}
        self.cached: Tuple[tuple, object] = ((), None)

    def plan(self, batch: int):
        """None (no adapter term for any row), or (a, b, rescale): (in,r), (r,out), (out,) or None when
        all rows share one adapter; A (n,in,r), B (n,r,out), rescale (n,1,out) or None otherwise."""
        names = self.selection.names_for(batch)
        key = (self.selection.version, names)
        if self.cached[0] == key:
            return self.cached[1]
        if not any(n is not BASE and n in self.terms for n in names):
            plan = None
        elif len(set(names)) == 1:
            u = self.terms[names[0]]
            plan = (self.to_array(u.a), self.to_array(u.b), None if u.rescale is None else self.to_array(u.rescale))
        else:
            plan = self._stacked(names)
        self.cached = (key, plan)
        return plan

    def _stacked(self, names):
        used = [n for n in set(names) if n is not BASE and n in self.terms]
        n_in, n_out = self.terms[used[0]].a.shape[0], self.terms[used[0]].b.shape[1]
        rank = max(self.terms[n].a.shape[1] for n in used)
        a = np.zeros((len(names), n_in, rank), np.float32)
        b = np.zeros((len(names), rank, n_out), np.float32)
        dora = any(self.terms[n].rescale is not None for n in used)
        rescale = np.ones((len(names), 1, n_out), np.float32) if dora else None
        for i, name in enumerate(names):
            u = self.terms.get(name) if name is not BASE else None
            if u is None:
                continue
            r = u.a.shape[1]
            a[i, :, :r], b[i, :r, :] = u.a, u.b
            if u.rescale is not None:
                rescale[i, 0] = u.rescale
        return (self.to_array(a), self.to_array(b), None if rescale is None else self.to_array(rescale))

    def add_terms(self, x, y, bias, cast: Callable):
        """`y` (the base layer's output for `x`, bias included) plus each row's adapter term, and for
        DoRA rows the rescale. Written once for both frameworks: their arrays share these operators;
        `cast(array, like)` gives `array` in `like`'s dtype."""
        plan = self.plan(x.shape[0])
        if plan is None:
            return y
        a, b, rescale = plan
        z = cast((x @ cast(a, x)) @ cast(b, x), y)  # one product per row when stacked
        if rescale is None:
            return y + z
        plain = y - bias if bias is not None else y
        out = (plain + z) * cast(rescale, y)
        return out + bias if bias is not None else out
