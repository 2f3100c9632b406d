"""The torch bank layer: a frozen linear layer plus the selected adapter's term per row (adapter_bank.py)."""

from __future__ import annotations

import torch
from torch import nn

from .layer_terms import LayerTerms, Selection


class TorchBankLinear(nn.Module):
    def __init__(self, linear: nn.Module, key: str, selection: Selection):
        super().__init__()
        self.linear = linear
        device = linear.weight.device  # (an int8 layer has no parameters, only a packed weight)
        self.bank = LayerTerms(key, selection, lambda a: torch.from_numpy(a).to(device))

    @property
    def weight(self):  # code that reads the base layer's weight (dtype, device) still finds it
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bank.add_terms(x, self.linear(x), self.linear.bias, lambda a, like: a.to(like.dtype))
