"""Statistics over per-item scores: the win rate with its standard error, percentiles."""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["percentile", "win_rate"]


def win_rate(scores: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); None where undefined."""
    n = len(scores)
    if n == 0:
        return None, None
    mean = sum(scores) / n
    if n < 2:
        return mean, None
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, math.sqrt(var / n)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in 0-100."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
