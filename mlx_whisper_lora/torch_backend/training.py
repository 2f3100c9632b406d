"""The training objective and step in PyTorch, mirroring `objective.py` and `trainer.py`."""

from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of counted tokens), as the MLX objective."""
    losses = F.cross_entropy(logits.float().transpose(1, 2), targets.long(), reduction="none")
    return (losses * mask).sum(), mask.sum()


def to_torch(*arrays, device="cpu"):
    return [torch.from_numpy(np.array(a)).to(device) for a in arrays]


def loss_fn(model, mel: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total, count = masked_cross_entropy(model(mel, inputs), targets, mask)
    return total / count.clamp(min=1.0)


def train_steps(model, batches: Iterable[tuple], learning_rate: float = 1e-4, max_grad_norm: float = 1.0) -> list:
    """AdamW steps over (mel, inputs, targets, mask) batches; returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for mel, inputs, targets, mask in batches:
        loss = loss_fn(model, mel, inputs, targets, mask)
        optimizer.zero_grad()
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
