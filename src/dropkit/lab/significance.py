"""Significance tests over seeds: t-intervals, paired and Welch's t-tests, Holm's adjustment.

Each seed of a group is one independent observation of a run's final metric. Non-finite values
(the metrics of a diverged run) are left out of every function here.

Interval. For ``n`` finite values with mean ``x̄`` and sample standard deviation ``s`` (``n - 1``
in the denominator), :func:`mean_ci` gives Student's t-interval::

    x̄ ± t_{n-1, (1 + c)/2} · s / sqrt(n)        (c = 0.95 by default)

Fewer than two values give no interval (``nan, nan``).

Paired or Welch. A group's final test accuracy is compared with a baseline group's. When the
two groups were run on the same seeds and a seed fixes everything but the regularizer (initial
weights, data order, dropout masks' stream), the runs pair by seed and :func:`paired` tests the
per-seed differences ``d_i = a_i - b_i``::

    t = d̄ / (s_d / sqrt(n)),   n - 1 degrees of freedom        (scipy.stats.ttest_rel)

which removes the seed-to-seed variance both groups share. Otherwise (different seeds, a
different architecture or data) :func:`welch` makes Welch's unequal-variance t-test::

    t = (ā - b̄) / sqrt(s_a²/n_a + s_b²/n_b),
    ν = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a - 1) + (s_b²/n_b)²/(n_b - 1))
                                                     (scipy.stats.ttest_ind(equal_var=False))

When the per-seed differences have no spread at all the paired t statistic is undefined and
Welch's test is used instead; when both samples are constant (or a side has fewer than two
values) no test is made: p is NaN and nothing is significant. Both tests are two-sided.

Holm. The p-values of all the comparisons made against one baseline are adjusted together with
Holm's step-down method (Holm 1979): with the ``m`` finite p-values sorted ascending,
``p_(1) ≤ … ≤ p_(m)``, the adjusted value of ``p_(i)`` is::

    max_{j ≤ i} min(1, (m - j + 1) · p_(j))

Rejecting where the adjusted value is below α = 0.05 controls the family-wise error rate at α:
``Comparison.significant`` means adjusted ``p < 0.05``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

__all__ = [
    "ALPHA",
    "Comparison",
    "finite_values",
    "holm",
    "holm_adjusted",
    "mean_ci",
    "paired",
    "welch",
    "welch_from_stats",
]

ALPHA = 0.05
"""The significance level of every test of the lab (after Holm's adjustment)."""


def finite_values(values: Sequence[float]) -> NDArray[np.float64]:
    """``values`` as a float array without its NaN and infinite entries."""
    data = np.asarray(values, dtype=np.float64)
    return data[np.isfinite(data)]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval ``mean ± t_{n-1} · s / sqrt(n)``.

    NaN values are ignored; with fewer than two values the interval is ``(nan, nan)``.
    """
    data = finite_values(values)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2:
        return mean, math.nan, math.nan
    half = float(
        sps.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size)
    )
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Comparison:
    """A t-test of a group's final test accuracy against a baseline group.

    Attributes:
        baseline: the baseline group's label.
        difference: mean of the group minus mean of the baseline.
        t_statistic: the test's t (NaN when no test was possible).
        p_value: the two-sided p-value of this test alone.
        test: ``"paired"`` (t-test on per-seed differences), ``"welch"`` or ``"none"``.
        p_adjusted: the p-value after Holm's correction over all comparisons made together
            (equal to ``p_value`` for a single comparison).
        n: seeds in the test (pairs for a paired test, ``n_group + n_baseline`` for Welch's).
    """

    baseline: str
    difference: float
    t_statistic: float
    p_value: float
    test: str = "welch"
    p_adjusted: float = math.nan
    n: int = 0

    @property
    def significant(self) -> bool:
        """Adjusted ``p < 0.05``."""
        return bool(self.p_adjusted < ALPHA)

    @property
    def test_name(self) -> str:
        return {"paired": "paired t-test", "welch": "Welch's t-test"}.get(self.test, "no test")


def welch(sample: Sequence[float], baseline: Sequence[float], baseline_name: str) -> Comparison:
    """Welch's unequal-variance t-test of ``sample`` against ``baseline`` (two-sided)."""
    a, b = finite_values(sample), finite_values(baseline)
    difference = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2 or (a.std(ddof=1) == 0 and b.std(ddof=1) == 0):
        # Both constant (few seeds of a discrete accuracy): the t statistic is undefined and a
        # p-value of 0 would claim certainty that a handful of identical runs cannot give.
        return Comparison(baseline_name, difference, math.nan, math.nan, "none", n=a.size + b.size)
    with warnings.catch_warnings():
        # SciPy warns of precision loss when the seeds agree almost exactly; the test is still
        # the right one, its p-value just reflects that tiny spread.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_ind(a, b, equal_var=False)
    p_value = float(result.pvalue)
    return Comparison(
        baseline_name,
        difference,
        float(result.statistic),
        p_value,
        "welch",
        p_value,
        a.size + b.size,
    )


def welch_from_stats(
    mean: float,
    std: float,
    n: int,
    baseline_mean: float,
    baseline_std: float,
    baseline_n: int,
    baseline_name: str,
) -> Comparison:
    """Welch's t-test from two samples' means, standard deviations (``ddof=1``) and sizes.

    The same test as :func:`welch` when only the summaries are left; no test (p is NaN) when a
    side has fewer than two values, a non-finite spread, or both spreads are zero.
    """
    difference = mean - baseline_mean
    spreads = (std, baseline_std)
    if n < 2 or baseline_n < 2 or not all(math.isfinite(s) for s in spreads):
        return Comparison(baseline_name, difference, math.nan, math.nan, "none")
    if std == 0 and baseline_std == 0:
        return Comparison(baseline_name, difference, math.nan, math.nan, "none")
    result = sps.ttest_ind_from_stats(
        mean, std, n, baseline_mean, baseline_std, baseline_n, equal_var=False
    )
    p_value = float(result.pvalue)
    return Comparison(
        baseline_name,
        difference,
        float(result.statistic),
        p_value,
        "welch",
        p_value,
        n + baseline_n,
    )


def paired(sample: Sequence[float], baseline: Sequence[float], baseline_name: str) -> Comparison:
    """Paired t-test of ``sample[i]`` against ``baseline[i]`` (two-sided; same seed ``i``).

    Pairs with a NaN on either side are dropped. With fewer than two pairs, or differences that
    do not vary, the paired statistic is undefined: Welch's test on the two samples is used.
    """
    a = np.asarray(sample, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 2 or np.ptp(a - b) == 0:
        return welch(a.tolist(), b.tolist(), baseline_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_rel(a, b)
    p_value = float(result.pvalue)
    return Comparison(
        baseline_name,
        float((a - b).mean()),
        float(result.statistic),
        p_value,
        "paired",
        p_value,
        a.size,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given; NaN stays NaN (not counted).

    With the ``m`` finite p-values sorted ascending, ``p_(1) ≤ … ≤ p_(m)``, the adjusted value
    of ``p_(i)`` is ``max_{j ≤ i} min(1, (m - j + 1) · p_(j))`` (Holm 1979). Rejecting where the
    adjusted value is below α controls the family-wise error rate at α.
    """
    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(values.shape, math.nan)
    index = np.flatnonzero(np.isfinite(values))
    order = index[np.argsort(values[index], kind="stable")]
    m, running = order.size, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(values[i])))
        adjusted[i] = running
    return [float(v) for v in adjusted]


def holm_adjusted(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with ``p_adjusted`` set by :func:`holm` over all of them together."""
    adjusted = holm([c.p_value for c in comparisons])
    return [replace(c, p_adjusted=p) for c, p in zip(comparisons, adjusted, strict=True)]
