"""Tolerances that follow from the computation, not from one machine.

Two float32 implementations of the same function (MLX and PyTorch, a fused and an unfused step, a cached and an
uncached path) each differ from the exact value by rounding, and how much depends on the kernels the CPU picks
(summation order and width: AVX-512, AVX2, SSE). Comparing them to each other with a fixed number passes on the
machine it was tuned on and fails on another. So these helpers measure rounding where it happens:

- `assert_float32_close(got, exact, reference)`: `exact` is the same computation in float64, `reference` a
  float32 one by a trusted implementation. Rounding errors of float32 implementations of one computation are of
  one size (the same operations, the same magnitudes, another order), so `got`'s error against float64 is bounded
  by `FACTOR` times the reference's own, with a floor of a few float32 units of the largest value (where the
  reference happens to round almost exactly). A real fault (a wrong row, a mask, a missing term) is off by a
  share of the values themselves, orders of magnitude above either.
- `reduction_bound(k, scale)`: where no float64 run is at hand, the rounding of a length-`k` float32 sum of terms
  of size `scale`: `k * eps * scale` bounds it in the worst case (Higham, Accuracy and Stability of Numerical
  Algorithms, 3.1), whatever the order.
"""

from __future__ import annotations

import os

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-07
FACTOR = 16.0  # how much larger one float32 implementation's error may be than another's of the same computation
# MLX's CPU exp and erf (softmax, GELU) are fast approximations, about 4 float32 units off where PyTorch's are
# within 0.5, and its softmax 15 units against PyTorch's 5 (measured over 10^6 values against float64): MLX's
# float32 results carry about 8-16x the rounding of PyTorch's, for a reason in the functions, not the order
MLX_FACTOR = 4 * FACTOR
FLOOR_ULPS = 64.0  # the smallest allowance, in float32 units of the largest magnitude


def as_numpy(x) -> np.ndarray:
    """float64 numpy array from numpy, MLX or torch values."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def float32_error(value, exact) -> float:
    """Largest absolute difference of a float32 result from its float64 reference."""
    return float(np.abs(as_numpy(value) - as_numpy(exact)).max())


def float32_allowance(exact, reference, factor: float = FACTOR) -> float:
    """What a float32 computation of `exact` may be off by, measured by a float32 `reference` of the same."""
    magnitude = float(np.abs(as_numpy(exact)).max())
    return max(factor * float32_error(reference, exact), FLOOR_ULPS * EPS32 * magnitude)


def assert_float32_close(got, exact, reference, name: str = "", factor: float = FACTOR) -> None:
    """`got` (float32) is as close to `exact` (float64) as float32 rounding allows, measured by `reference`."""
    error, allowed = float32_error(got, exact), float32_allowance(exact, reference, factor)
    if os.environ.get("MWL_NUMERICS_REPORT"):  # how close each check came to its bound (pytest -s)
        print(f"numerics {name}: error {error:.3g}, reference {float32_error(reference, exact):.3g}, "
              f"allowed {allowed:.3g} ({error / allowed:.0%} of it)")
    assert error <= allowed, (f"{name}: off by {error:.3g} from the float64 result, over {allowed:.3g} "
                              f"({factor:g}x the float32 reference's own {float32_error(reference, exact):.3g})")


def reduction_bound(k: int, scale: float) -> float:
    """Worst-case rounding of a float32 sum of `k` terms each at most `scale` in size (any order)."""
    return k * EPS32 * scale
