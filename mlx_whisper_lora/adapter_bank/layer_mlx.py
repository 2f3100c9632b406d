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
        bias = self.linear.bias if "bias" in self.linear else None
        return self.bank.add_terms(x, self.linear(x), bias, lambda a, like: a.astype(like.dtype))
