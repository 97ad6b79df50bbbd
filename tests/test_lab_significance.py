"""The significance tests against SciPy's, and their degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dropkit.lab.results.significance import (
    Comparison,
    finite_values,
    holm,
    holm_adjusted,
    mean_ci,
    paired,
    welch,
    welch_from_stats,
)

A = [0.80, 0.82, 0.79, 0.81, 0.84]
B = [0.76, 0.77, 0.77, 0.78, 0.75]


def test_finite_values_drops_nan_and_inf() -> None:
    values = finite_values([1.0, math.nan, math.inf, -math.inf, 2.0])
    np.testing.assert_array_equal(values, [1.0, 2.0])


def test_mean_ci_at_another_confidence() -> None:
    mean, low, high = mean_ci(A, confidence=0.9)
    expected = sps.t.interval(0.9, len(A) - 1, loc=np.mean(A), scale=sps.sem(A))
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    assert high - mean == pytest.approx(mean - low)
    assert mean_ci(A, 0.99)[2] > high  # wider at a higher confidence


def test_welch_from_stats_is_welch_on_the_samples() -> None:
    a, b = np.array(A), np.array(B)
    from_stats = welch_from_stats(
        a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size, "base"
    )
    direct = welch(A, B, "base")
    assert from_stats.test == direct.test == "welch" and from_stats.n == direct.n == 10
    assert from_stats.p_value == pytest.approx(direct.p_value, rel=1e-9)
    assert from_stats.t_statistic == pytest.approx(direct.t_statistic, rel=1e-9)
    assert from_stats.difference == pytest.approx(direct.difference)


@pytest.mark.parametrize(
    ("std", "n", "baseline_std"),
    [(0.01, 1, 0.01), (math.nan, 5, 0.01), (0.0, 5, 0.0)],
)
def test_welch_from_stats_without_a_test(std: float, n: int, baseline_std: float) -> None:
    result = welch_from_stats(0.8, std, n, 0.7, baseline_std, 5, "base")
    assert result.test == "none" and math.isnan(result.p_value) and not result.significant
    assert result.difference == pytest.approx(0.1)


def test_paired_falls_back_to_the_sign_test_on_constant_differences() -> None:
    shifted = [b + 0.03 for b in B]  # every seed gains the same: no spread of differences
    result = paired(shifted, B, "base")
    assert (result.test, result.test_name) == ("sign", "exact sign test")
    assert result.p_value == pytest.approx(sps.binomtest(5, 5).pvalue) == 2 * 0.5**5
    assert "the paired t statistic is undefined" in result.note and "+0.03" in result.note
    assert result.difference == pytest.approx(0.03) and not result.significant
    same = paired(B, B, "base")
    assert (same.test, same.p_value, same.difference) == ("sign", 1.0, 0.0)
    assert "scored exactly the same" in same.note
    assert paired(A[:1], B[:1], "base").test == "none"


def test_paired_needs_pairs() -> None:
    with pytest.raises(ValueError, match="same length, got 5 and 4"):
        paired(A, B[:4], "base")


def test_holm_adjusted_sets_only_the_adjusted_p() -> None:
    raw = [Comparison("none", 0.1, 2.0, p, "paired", p, 10) for p in (0.01, 0.04, 0.03)]
    adjusted = holm_adjusted(raw)
    assert [c.p_adjusted for c in adjusted] == pytest.approx(holm([0.01, 0.04, 0.03]))
    assert [c.p_adjusted for c in adjusted] == pytest.approx([0.03, 0.06, 0.06])
    assert [c.p_value for c in adjusted] == [0.01, 0.04, 0.03]
    assert [c.significant for c in adjusted] == [True, False, False]
    assert all(c.test == "paired" and c.n == 10 for c in adjusted)
