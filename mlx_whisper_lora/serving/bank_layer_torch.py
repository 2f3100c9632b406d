"""The torch bank layer: a frozen linear layer plus the selected adapter's term per row (adapter_bank.py)."""

from __future__ import annotations

import torch
from torch import nn

from .layer_terms import LayerTerms, Selection


class TorchBankLinear(nn.Module):
    def __init__(self, linear: nn.Module, key: str, selection: Selection):
        super().__init__()
        self.linear = linear
        device = next(linear.parameters()).device
        self.bank = LayerTerms(key, selection, lambda a: torch.from_numpy(a).to(device))

    @property
    def weight(self):  # code that reads the base layer's weight (dtype, device) still finds it
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        plan = self.bank.plan(x.shape[0])
        if plan is None:
            return y
        kind, a, b, rescale = plan
        z = (x @ a.to(x.dtype)) @ b.to(x.dtype)
        if rescale is None:
            return y + z.to(y.dtype)
        bias = self.linear.bias
        plain = y - bias if bias is not None else y
        out = (plain + z.to(y.dtype)) * rescale.to(y.dtype)
        return out + bias if bias is not None else out
