"""The statistics of a seed sweep, in plain math and numpy: a Wilson interval for a solve rate,
a Student-t interval for a mean, and two exact paired tests (sign test, Wilcoxon signed-rank).

Every interval is a 95 % interval unless ``level`` says otherwise; every p-value is two-sided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95


def normal_quantile(p: float) -> float:
    """The standard normal quantile: x with P(Z <= x) = p, by bisection on math.erf."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (nan, nan when n = 0)."""
    if n == 0:
        return math.nan, math.nan
    z = normal_quantile(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (Lentz's continued fraction)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(b, a, 1 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(log_front + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The Student-t quantile: t with P(T <= t) = p, by bisection on ``t_cdf``."""
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean and the half-width of its Student-t interval, mean ± t_{n-1} s / sqrt(n)
    (half-width nan for fewer than two values; both nan for none)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    t = t_quantile(1 - (1 - level) / 2, x.size - 1)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def sign_test(differences: Sequence[float]) -> float:
    """Exact two-sided sign test of a zero median difference; zero differences are dropped.
    p = 1 when nothing is left."""
    d = np.asarray(differences, dtype=float)
    positive, negative = int((d > 0).sum()), int((d < 0).sum())
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(positive, negative) + 1)) / 2**n
    return min(1.0, 2 * tail)


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    result = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        result[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return result


def wilcoxon(differences: Sequence[float]) -> float:
    """Exact two-sided Wilcoxon signed-rank test of a zero median difference.

    Zero differences are dropped; tied |differences| share their average rank, and the exact
    null distribution of W+ (the sum of the positive differences' ranks) is enumerated over
    every sign pattern of those ranks. p = 1 when nothing is left.
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    doubled = np.rint(2 * ranks(np.abs(d))).astype(int)  # average ranks are halves
    total = int(doubled.sum())
    distribution = np.zeros(total + 1)
    distribution[0] = 1.0
    for r in doubled:  # each rank joins W+ with probability 1/2
        distribution[r:] = 0.5 * distribution[r:] + 0.5 * distribution[: total + 1 - r].copy()
        distribution[:r] *= 0.5
    observed = int(doubled[d > 0].sum())
    lower = distribution[: observed + 1].sum()
    upper = distribution[observed:].sum()
    return float(min(1.0, 2 * min(lower, upper)))


def smallest_p(n: int) -> float:
    """The smallest two-sided p that either exact test can give with n non-zero pairs."""
    return min(1.0, 2.0 ** (1 - n)) if n > 0 else 1.0
