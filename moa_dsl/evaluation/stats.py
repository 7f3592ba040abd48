"""Statistics over per-item scores: the win rate with its standard error and a bootstrap interval,
AlpacaEval 2.0's length-controlled win rate, percentiles, and Pareto fronts. Pure Python (no numpy)."""

from __future__ import annotations

import math
import random
from typing import Sequence

__all__ = ["BOOTSTRAP_SEED", "bootstrap_ci", "lc_win_rate", "pareto_flags", "percentile", "win_rate"]

BOOTSTRAP_SEED = 20240601  # fixed: a rerun reports the same interval
BOOTSTRAP_RESAMPLES = 2000


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


def bootstrap_ci(
    scores: Sequence[float], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float] | None:
    """A percentile bootstrap interval for the mean over items: `resamples` resamples of the items
    with replacement, drawn from a generator seeded with `seed` (so the same scores always give the
    same interval). None for no scores."""
    n = len(scores)
    if n == 0:
        return None
    rng = random.Random(seed)
    values = list(scores)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2 * 100
    low, high = percentile(means, tail), percentile(means, 100 - tail)
    assert low is not None and high is not None
    return low, high


def lc_win_rate(
    scores: Sequence[float], candidate_lengths: Sequence[int], baseline_lengths: Sequence[int]
) -> float | None:
    """AlpacaEval 2.0's length-controlled win rate, without its per-instruction difficulty term and
    its regularisation towards the baseline (a custom dataset has neither).

    A logistic regression of the judge's preference (the item's score in [0, 1], a soft label: a
    tie or split is 0.5) on an intercept and `tanh(d / std(d))`, d = candidate length - baseline
    length in characters (std with n - 1, as pandas computes it); the win rate is the model's
    prediction at zero length difference, sigmoid(intercept). AlpacaEval writes d the other way
    round (baseline - candidate), which flips the length coefficient and leaves the prediction at
    zero unchanged. When every d is the same, the length term cannot be told from the intercept and
    the plain mean is returned; when every item scored the same, that score (the fit's limit).
    None for no items.
    """
    n = len(scores)
    if not (n == len(candidate_lengths) == len(baseline_lengths)):
        raise ValueError("scores and lengths differ in number")
    if n == 0:
        return None
    deltas = [float(c - b) for c, b in zip(candidate_lengths, baseline_lengths, strict=False)]
    mean_d = sum(deltas) / n
    std = math.sqrt(sum((d - mean_d) ** 2 for d in deltas) / (n - 1)) if n > 1 else 0.0
    if std == 0.0:
        return sum(scores) / n
    if len(set(scores)) == 1:  # every item scored alike: the fit's limit is that score
        return float(scores[0])
    xs = [math.tanh(d / std) for d in deltas]
    intercept, _ = _logistic_fit(xs, [float(s) for s in scores])
    return _sigmoid(intercept)


def _logistic_fit(
    xs: Sequence[float], ys: Sequence[float], *, ridge: float = 1e-6, max_iter: int = 100
) -> tuple[float, float]:
    """(b0, b1) maximising sum y log p + (1 - y) log(1 - p), p = sigmoid(b0 + b1 x), by Newton's
    method with step halving. A negligible ridge keeps the optimum finite when the data are
    separable (every item won: sigmoid(b0) then rounds to 1.0)."""

    def loss(b0: float, b1: float) -> float:
        total = 0.5 * ridge * (b0 * b0 + b1 * b1)
        for x, y in zip(xs, ys, strict=False):
            z = b0 + b1 * x
            total += max(z, 0.0) + math.log1p(math.exp(-abs(z))) - y * z  # softplus(z) - y z
        return total

    b0 = b1 = 0.0
    current = loss(b0, b1)
    for _ in range(max_iter):
        g0, g1, h00, h01, h11 = ridge * b0, ridge * b1, ridge, 0.0, ridge
        for x, y in zip(xs, ys, strict=False):
            p = _sigmoid(b0 + b1 * x)
            w = p * (1 - p)
            g0 += p - y
            g1 += (p - y) * x
            h00 += w
            h01 += w * x
            h11 += w * x * x
        det = h00 * h11 - h01 * h01
        if det <= 0:
            break
        d0, d1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        step = 1.0
        while step > 1e-12:
            n0, n1 = b0 - step * d0, b1 - step * d1
            trial = loss(n0, n1)
            if trial <= current:
                break
            step /= 2
        else:
            break
        moved = max(abs(n0 - b0), abs(n1 - b1))
        b0, b1, current = n0, n1, trial
        if moved < 1e-12:
            break
    return b0, b1


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


def pareto_flags(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """For (cost, quality) points: True where no other point is at most as costly and at least as
    good, and strictly better on one of the two. A point with an unknown coordinate is never on the front."""
    known = [(i, x, y) for i, (x, y) in enumerate(points) if x is not None and y is not None]
    flags = [False] * len(points)
    for i, x, y in known:
        flags[i] = not any(qx <= x and qy >= y and (qx < x or qy > y) for j, qx, qy in known if j != i)
    return flags


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in 0-100."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
