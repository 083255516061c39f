"""The sweep statistics against values computed by hand (and, for the exact tests, against a
brute-force enumeration of every sign pattern)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bpttlab.analysis import stats

Z = 1.959963984540054  # the 97.5 % normal quantile


def test_normal_quantile():
    assert stats.normal_quantile(0.975) == pytest.approx(Z, abs=1e-12)
    assert stats.normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)


def test_wilson_interval_by_hand():
    """3/3: centre (1 + z²/6) / (1 + z²/3), half-width z/(1 + z²/3) · sqrt(z²/36)."""
    z2 = Z * Z
    centre = (1 + z2 / 6) / (1 + z2 / 3)
    half = Z / (1 + z2 / 3) * math.sqrt(z2 / 36)
    assert stats.wilson(3, 3) == pytest.approx((centre - half, 1.0), abs=1e-12)
    assert stats.wilson(3, 3)[0] == pytest.approx(0.438503, abs=1e-6)  # the published value
    assert stats.wilson(0, 3) == pytest.approx((0.0, 1 - (centre - half)), abs=1e-12)
    assert stats.wilson(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert all(math.isnan(v) for v in stats.wilson(0, 0))


@pytest.mark.parametrize(
    ("df", "quantile"), [(1, 12.706205), (2, 4.302653), (4, 2.776445), (29, 2.045230)]
)
def test_t_quantile_matches_the_table(df, quantile):
    assert stats.t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)


def test_t_cdf_closed_forms():
    """df = 1 is Cauchy, df = 2 has P(T <= t) = 1/2 + t / (2 sqrt(2 + t²))."""
    for t in (-3.0, -0.5, 0.0, 0.7, 5.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_mean_interval_by_hand():
    """[1, 2, 3]: mean 2, s = 1, half-width t_{2, .975} / sqrt(3)."""
    mean, half = stats.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    mean, half = stats.mean_interval([0.5])
    assert mean == 0.5 and math.isnan(half)


def test_sign_test_by_hand():
    assert stats.sign_test([1, 2, 3]) == pytest.approx(2 / 8)
    assert stats.sign_test([1, 1, 1, 1, 1, -1]) == pytest.approx(2 * (1 + 6) / 64)
    assert stats.sign_test([1, 2, 0, 0, 3]) == pytest.approx(2 / 8)  # zeros dropped
    assert stats.sign_test([1, -1]) == 1.0
    assert stats.sign_test([0, 0]) == 1.0


def test_wilcoxon_by_hand():
    # all six positive: W+ = 21, P(W+ >= 21) = 1/64
    assert stats.wilcoxon([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # rank 2 negative: W+ = 19; negative rank sums <= 2: {}, {1}, {2}
    assert stats.wilcoxon([1, -2, 3, 4, 5, 6]) == pytest.approx(2 * 3 / 64)
    # ties: |d| ranks 1, 2.5, 2.5, 4; W+ = 9; negative sums <= 1: {}, {1}
    assert stats.wilcoxon([-1, 2, 2, 3]) == pytest.approx(2 * 2 / 16)
    assert stats.wilcoxon([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # n = 5 cannot reach 0.05
    assert stats.wilcoxon([0.0]) == 1.0


def brute_force_wilcoxon(d: np.ndarray) -> float:
    d = d[d != 0]
    r = stats.ranks(np.abs(d))
    observed = r[d > 0].sum()
    sums = [
        sum(ri for ri, s in zip(r, signs, strict=True) if s)
        for signs in itertools.product((0, 1), repeat=len(d))
    ]
    sums = np.array(sums)
    return min(1.0, 2 * min((sums <= observed + 1e-9).mean(), (sums >= observed - 1e-9).mean()))


def test_wilcoxon_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 10))
        d = rng.integers(-3, 4, size=n).astype(float)
        assert stats.wilcoxon(d) == pytest.approx(brute_force_wilcoxon(d), abs=1e-12)


def test_ranks_average_ties():
    assert list(stats.ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]


def test_smallest_p():
    assert stats.smallest_p(5) == 2 / 32 and stats.smallest_p(6) == 2 / 64 < 0.05
