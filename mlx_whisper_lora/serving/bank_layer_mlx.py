"""The MLX bank layer: a frozen linear layer plus the selected adapter's term per row (adapter_bank.py)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layer_terms import LayerTerms, Selection


class MLXBankLinear(nn.Module):
    def __init__(self, linear: nn.Module, key: str, selection: Selection):
        super().__init__()
        self.linear = linear
        self.bank = LayerTerms(key, selection, lambda a: mx.array(a))

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        plan = self.bank.plan(x.shape[0])
        if plan is None:
            return y
        kind, a, b, rescale = plan
        z = (x @ a.astype(x.dtype)) @ b.astype(x.dtype)  # (n, t, r) per row when stacked
        if rescale is None:
            return y + z.astype(y.dtype)
        bias = self.linear.bias if "bias" in self.linear else None
        plain = y - bias if bias is not None else y
        out = (plain + z.astype(y.dtype)) * rescale.astype(y.dtype)
        return out + bias if bias is not None else out
