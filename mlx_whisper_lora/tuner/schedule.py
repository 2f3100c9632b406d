"""Learning-rate schedules as a plain function of the step, so both back ends follow the same curve.

Linear warmup from 1e-3 of the rate over `warmup` steps, then constant, cosine decay to zero or
linear decay to zero over the remaining steps (the shapes of mlx.optimizers' schedules).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_at(step: int, rate: float, iters: int, schedule: str = "constant", warmup: int = 0) -> float:
    """The rate used for the update that follows `step` completed steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; use {', '.join(SCHEDULES)}")
    if step < warmup:
        return rate * (1e-3 + (1 - 1e-3) * step / warmup)
    steps = max(1, iters - warmup)
    t = min(step - warmup, steps) / steps
    if schedule == "cosine":
        return rate * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return rate * (1 - t)
    return rate
