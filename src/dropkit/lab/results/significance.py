"""Significance tests over seeds: intervals, paired, sign and Welch's tests, Holm, power.

Each seed of a group is one independent observation of a run's final metric. Non-finite values
(the metrics of a diverged run) are left out of every function here.

Interval. For ``n`` finite values with mean ``x̄`` and sample standard deviation ``s`` (``n - 1``
in the denominator), :func:`mean_ci` gives Student's t-interval::

    x̄ ± t_{n-1, (1 + c)/2} · s / sqrt(n)        (c = 0.95 by default)

kept inside the metric's range (``bounds``: truncation never uncovers a true mean that lies in
the range, so the coverage is the t-interval's). Fewer than two values, or values with no
spread at all, give no interval (``nan, nan``).

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

When the per-seed differences have no spread at all the paired t statistic is undefined: the
exact sign test on the differences is made instead (:func:`paired`: ``p = 2 · 0.5^n`` for ``n``
equal non-zero differences), and the comparison's ``note`` says so. When both unpaired samples
are constant (or a side has fewer than two values) no test is made: p is NaN and nothing is
significant. Every test is two-sided.

Holm. The p-values of all the comparisons made against one baseline are adjusted together with
Holm's step-down method (Holm 1979): with the ``m`` finite p-values sorted ascending,
``p_(1) ≤ … ≤ p_(m)``, the adjusted value of ``p_(i)`` is::

    max_{j ≤ i} min(1, (m - j + 1) · p_(j))

Rejecting where the adjusted value is below α = 0.05 controls the family-wise error rate at α:
``Comparison.significant`` means adjusted ``p < 0.05``.

Power. For a true difference ``d`` and a spread ``s`` (of the per-seed differences, paired; of
each group, unpaired), the two-sided t-test at level α detects ``d`` with probability
``P(|T| > t_{1-α/2})``, ``T`` noncentral t with ``n − 1`` degrees of freedom and
noncentrality ``d / (s / sqrt(n))`` (unpaired: ``2n − 2`` and ``d / (s · sqrt(2/n))``):
:func:`t_test_power`. :func:`detectable_difference` inverts it in ``d``, :func:`seeds_needed`
in ``n``. Each comparison carries both, at the level ``α/m`` of Holm's strictest step
(:func:`with_power`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import optimize
from scipy import stats as sps

__all__ = [
    "ALPHA",
    "MIN_SEEDS_FOR_CLAIM",
    "POWER",
    "UNBOUNDED",
    "Comparison",
    "detectable_difference",
    "finite_values",
    "holm",
    "holm_adjusted",
    "mean_ci",
    "paired",
    "seeds_needed",
    "t_test_power",
    "welch",
    "welch_from_stats",
    "with_power",
]

ALPHA = 0.05
"""The significance level of every test of the lab (after Holm's adjustment)."""

POWER = 0.8
"""The power at which the smallest detectable difference and the seeds needed are stated."""

MIN_SEEDS_FOR_CLAIM = 10
"""Seeds per group below which the lab calls a claim provisional, whatever its p-value: the
case study's dropout gain (+0.021 accuracy over 30 seeds, per-seed differences spread by 0.019)
needs 9 seeds to be detected with 80% power (:func:`seeds_needed`), and it is the size of
effect the lab is asked about; :func:`seeds_needed` gives the number another difference and
spread need."""

UNBOUNDED = (-math.inf, math.inf)


def finite_values(values: Sequence[float]) -> NDArray[np.float64]:
    """``values`` as a float array without its NaN and infinite entries."""
    data = np.asarray(values, dtype=np.float64)
    return data[np.isfinite(data)]


def mean_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    *,
    bounds: tuple[float, float] = UNBOUNDED,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval ``mean ± t_{n-1} · s / sqrt(n)``, kept in ``bounds``.

    ``bounds`` is the range of the metric (``(0, 1)`` for an accuracy, ``(-inf, 1)`` for R²):
    the interval is truncated to it. The true mean lies in that range, so truncation keeps
    every interval that covered it and the coverage is the t-interval's, while no end reads
    as an impossible value. NaN values are ignored. With fewer than two values, or values with
    no spread at all (a few seeds of a discrete accuracy that agree), the interval is
    ``(nan, nan)``: a zero-width interval would claim a certainty the seeds cannot give.
    """
    data = finite_values(values)
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2 or np.ptp(data) == 0:
        return mean, math.nan, math.nan
    half = float(
        sps.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size)
    )
    low, high = bounds
    return mean, max(low, mean - half), min(high, mean + half)


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
        spread: the standard deviation the test divides by: of the per-seed differences
            (paired, sign) or pooled over both groups (Welch's); NaN without a test.
        detectable: the smallest difference (in the metric's units) this many seeds detect
            with probability :data:`POWER` at the spread seen, at the level ``α/m`` of the
            strictest step of Holm's correction over ``m`` comparisons
            (:func:`detectable_difference`).
        seeds_needed: for a difference that is not significant, about how many seeds per group
            would detect a true difference of the size seen (same power and level;
            :func:`seeds_needed`); None when significant or not computable.
        note: why the test is not the usual one (the paired test's fallback), or ``""``.
        compared_on: the split whose scores were compared: ``"test"`` or ``"validation"``.
    """

    baseline: str
    difference: float
    t_statistic: float
    p_value: float
    test: str = "welch"
    p_adjusted: float = math.nan
    n: int = 0
    spread: float = math.nan
    detectable: float = math.nan
    seeds_needed: int | None = None
    note: str = ""
    compared_on: str = "test"

    @property
    def significant(self) -> bool:
        """Adjusted ``p < 0.05``."""
        return bool(self.p_adjusted < ALPHA)

    @property
    def test_name(self) -> str:
        return {
            "paired": "paired t-test",
            "welch": "Welch's t-test",
            "sign": "exact sign test",
        }.get(self.test, "no test")


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
        spread=_pooled(float(a.std(ddof=1)), float(b.std(ddof=1))),
    )


def _pooled(std_a: float, std_b: float) -> float:
    return math.sqrt((std_a**2 + std_b**2) / 2)


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
        spread=_pooled(std, baseline_std),
    )


def paired(sample: Sequence[float], baseline: Sequence[float], baseline_name: str) -> Comparison:
    """Paired t-test of ``sample[i]`` against ``baseline[i]`` (two-sided; same seed ``i``).

    Pairs with a NaN on either side are dropped. With fewer than two pairs no test is made
    (p is NaN). When the per-seed differences do not vary at all (every seed gained exactly
    the same, common with a discrete accuracy), the t statistic is undefined; the exact
    two-sided sign test on the differences is made instead: ``p = 2 · 0.5^n`` when all ``n``
    differences are equal and non-zero (``scipy.stats.binomtest``), ``p = 1`` when all are
    zero, and :attr:`Comparison.note` says so.
    """
    a = np.asarray(sample, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    if a.size < 2:
        difference = float(d.mean()) if d.size else math.nan
        return Comparison(baseline_name, difference, math.nan, math.nan, "none", n=int(a.size))
    if np.allclose(d, d[0], rtol=0.0, atol=1e-12):  # equal up to the rounding of a - b
        return _sign_test(float(d.mean()) if d[0] != 0 else 0.0, int(d.size), baseline_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_rel(a, b)
    p_value = float(result.pvalue)
    return Comparison(
        baseline_name,
        float(d.mean()),
        float(result.statistic),
        p_value,
        "paired",
        p_value,
        a.size,
        spread=float(d.std(ddof=1)),
    )


def _sign_test(difference: float, n: int, baseline_name: str) -> Comparison:
    """The exact sign test of ``n`` per-seed differences that all equal ``difference``."""
    if difference == 0:
        p_value = 1.0
        why = f"all {n} seeds scored exactly the same on both sides"
    else:
        p_value = float(sps.binomtest(n, n, 0.5).pvalue)
        why = f"all {n} per-seed differences are exactly {difference:+.4g}"
    note = (
        f"{why}: the paired t statistic is undefined (no spread), so the exact sign test "
        f"on the differences was made instead (p = {p_value:.2g})"
    )
    return Comparison(
        baseline_name, difference, math.nan, p_value, "sign", p_value, n, spread=0.0, note=note
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
    """The comparisons with ``p_adjusted`` set by :func:`holm` over all of them together, and
    their power figures (:func:`with_power`) at the level of Holm's strictest step."""
    adjusted = holm([c.p_value for c in comparisons])
    m = max(1, sum(math.isfinite(p) for p in adjusted))
    return [
        with_power(replace(c, p_adjusted=p), comparisons=m)
        for c, p in zip(comparisons, adjusted, strict=True)
    ]


# -- power: what an experiment of this size can detect, and the seeds a difference needs -------


def _is_paired(test: str) -> bool:
    return test in ("paired", "sign")


def t_test_power(
    difference: float,
    spread: float,
    seeds: int,
    *,
    alpha: float = ALPHA,
    paired: bool = True,
) -> float:
    """Probability that a two-sided t-test at level ``alpha`` detects a true ``difference``.

    Paired (one difference per seed, ``spread`` their standard deviation): the statistic is
    noncentral t with ``seeds − 1`` degrees of freedom and noncentrality
    ``δ = difference / (spread / sqrt(seeds))``. Two independent groups of ``seeds`` each
    (``spread`` the common standard deviation): ``2·seeds − 2`` degrees of freedom and
    ``δ = difference / (spread · sqrt(2 / seeds))``. Power is
    ``P(|T| > t_{1−α/2})`` under that noncentral t (``scipy.stats.nct``).
    """
    if seeds < 2 or not (math.isfinite(difference) and math.isfinite(spread)):
        return math.nan
    if spread <= 0:
        return 1.0 if difference != 0 else alpha
    df = seeds - 1 if paired else 2 * seeds - 2
    scale = spread / math.sqrt(seeds) if paired else spread * math.sqrt(2 / seeds)
    delta = abs(difference) / scale
    critical = float(sps.t.ppf(1 - alpha / 2, df))
    upper = float(sps.nct.sf(critical, df, delta))
    lower = float(sps.nct.cdf(-critical, df, delta))  # NaN far in the tail: it is ~0 there
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def detectable_difference(
    spread: float,
    seeds: int,
    *,
    alpha: float = ALPHA,
    power: float = POWER,
    paired: bool = True,
) -> float:
    """The smallest true difference detected with probability ``power`` (:func:`t_test_power`).

    NaN with fewer than 2 seeds or a non-finite spread; 0 for a spread of 0.
    """
    if seeds < 2 or not math.isfinite(spread):
        return math.nan
    if spread <= 0:
        return 0.0
    high = spread
    while t_test_power(high, spread, seeds, alpha=alpha, paired=paired) < power:
        high *= 2
    return float(
        optimize.brentq(
            lambda d: t_test_power(d, spread, seeds, alpha=alpha, paired=paired) - power,
            0.0,
            high,
            xtol=spread * 1e-6,
        )
    )


def seeds_needed(
    difference: float,
    spread: float,
    *,
    alpha: float = ALPHA,
    power: float = POWER,
    paired: bool = True,
    comparisons: int = 1,
    most: int = 100_000,
) -> int | None:
    """Seeds per group for a two-sided t-test to detect ``difference`` with probability ``power``.

    Args:
        difference: the true difference of mean scores to detect (e.g. +0.02 accuracy).
        spread: the standard deviation of the per-seed differences (``paired=True``: runs of
            both groups share their seeds, as in the lab) or of each group's scores (False).
        alpha: the significance level, divided by ``comparisons`` (Bonferroni: the strictest
            step of Holm's correction when ``comparisons`` groups are tested together).
        power: the probability of detecting it (0.8 by default).
        paired: the paired test (the lab's, for groups run on the same seeds) or Welch's.
        comparisons: how many comparisons are made together (Holm's ``m``).
        most: the largest answer searched; None beyond it (or for a zero difference).

    Returns:
        The smallest number of seeds ``n >= 2`` whose :func:`t_test_power` reaches ``power``; None
        when no number up to ``most`` does.
    """
    if not (math.isfinite(difference) and math.isfinite(spread)) or difference == 0:
        return None
    if spread < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(
            "`spread` must be >= 0 and `alpha`, `power` in (0, 1), got "
            f"spread={spread}, alpha={alpha}, power={power}"
        )
    level = alpha / max(1, comparisons)

    def enough(n: int) -> bool:
        return t_test_power(difference, spread, n, alpha=level, paired=paired) >= power

    if enough(2):
        return 2
    low, high = 2, 4
    while not enough(high):
        if high >= most:
            return None
        low, high = high, min(most, high * 2)
    while high - low > 1:  # power grows with n: bisect for the first n that is enough
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle
    return high


def with_power(comparison: Comparison, *, comparisons: int = 1) -> Comparison:
    """``comparison`` with :attr:`~Comparison.detectable` and, when it is not significant,
    :attr:`~Comparison.seeds_needed` filled in at the level ``α / comparisons``."""
    c = comparison
    level = ALPHA / max(1, comparisons)
    if c.test == "sign":  # p = 2 · 0.5^n: significant from the first n with 2 · 0.5^n < level
        fewest = math.ceil(math.log2(2 / level) + 1e-9)
        return replace(c, seeds_needed=None if c.significant or c.difference == 0 else fewest)
    if c.test == "none" or not math.isfinite(c.spread):
        return c
    paired_test = _is_paired(c.test)
    seeds = c.n if paired_test else c.n // 2
    detectable = detectable_difference(c.spread, seeds, alpha=level, paired=paired_test)
    needed: int | None = None
    if not c.significant and c.difference != 0:
        needed = seeds_needed(c.difference, c.spread, paired=paired_test, comparisons=comparisons)
    return replace(c, detectable=detectable, seeds_needed=needed)
