"""Statistics over seeds: mean ± 95% confidence interval, Welch's t-test, the best rate.

Each group of runs that differ only in their seed (same arm and rates) is one sample of
independent observations. Confidence intervals use Student's t distribution with ``n - 1``
degrees of freedom; comparisons use Welch's unequal-variance t-test (SciPy).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from dropkit.lab.store import StoredRun

__all__ = ["ArmSummary", "BestRate", "Comparison", "best_rate", "mean_ci", "summarize", "welch"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval ``mean ± t_{n-1} · s / sqrt(n)``.

    NaN values are ignored; with fewer than two values the interval is ``(nan, nan)``.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
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
    """Welch's t-test of a group's final test accuracy against a baseline group."""

    baseline: str
    difference: float
    t_statistic: float
    p_value: float

    @property
    def significant(self) -> bool:
        return bool(self.p_value < 0.05)


def welch(sample: Sequence[float], baseline: Sequence[float], baseline_name: str) -> Comparison:
    """Welch's unequal-variance t-test of ``sample`` against ``baseline`` (two-sided)."""
    a = np.asarray(sample, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    difference = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return Comparison(baseline_name, difference, math.nan, math.nan)
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        # Both constant (few seeds of a discrete accuracy): the t statistic is undefined and a
        # p-value of 0 would claim certainty that a handful of identical runs cannot give.
        return Comparison(baseline_name, difference, math.nan, math.nan)
    with warnings.catch_warnings():
        # SciPy warns of precision loss when the seeds agree almost exactly; the test is still
        # the right one, its p-value just reflects that tiny spread.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_ind(a, b, equal_var=False)
    return Comparison(baseline_name, difference, float(result.statistic), float(result.pvalue))


@dataclass(frozen=True)
class ArmSummary:
    """One (arm, rates) group over its seeds. ``*_ci95`` are ``(low, high)``."""

    arm: str
    p: float
    input_p: float
    max_norm: float | None
    n_seeds: int
    train_acc_mean: float
    train_acc_ci95: tuple[float, float]
    test_acc_mean: float
    test_acc_ci95: tuple[float, float]
    test_acc_std: float
    best_test_acc_mean: float
    gap_mean: float
    vs_baseline: Comparison | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        result: dict[str, Any] = clean(asdict(self))
        if self.vs_baseline is not None:
            result["vs_baseline"]["significant"] = self.vs_baseline.significant
        return result


def summarize(runs: Sequence[StoredRun]) -> list[ArmSummary]:
    """Group runs by (arm, p, input_p, max_norm) and summarize each over its seeds.

    The baseline is the group without any regularization (``arm == "none"``) or, when there is
    none (every run has input dropout, say), the group with the lowest dropout rate; every
    other group is compared with it by Welch's t-test on the final test accuracy.
    """
    groups: dict[tuple[str, float, float, float | None], list[StoredRun]] = {}
    for run in runs:
        c = run.config
        groups.setdefault((run.arm, c.p, c.input_p, c.max_norm), []).append(run)
    order = sorted(groups, key=lambda k: (k[0] != "none", k[1], k[2], k[3] or 0.0))
    baseline_key = order[0] if order else None
    baseline = [] if baseline_key is None else groups[baseline_key]
    baseline_name = "none" if baseline_key is None else _group_name(*baseline_key)
    summaries = []
    for key in order:
        (arm, p, input_p, max_norm), members = key, groups[key]
        train = [r.train_acc for r in members]
        test = [r.test_acc for r in members]
        train_mean, train_low, train_high = mean_ci(train)
        test_mean, test_low, test_high = mean_ci(test)
        finite_test = np.asarray(test)[np.isfinite(test)]
        summaries.append(
            ArmSummary(
                arm=arm,
                p=p,
                input_p=input_p,
                max_norm=max_norm,
                n_seeds=len(members),
                train_acc_mean=train_mean,
                train_acc_ci95=(train_low, train_high),
                test_acc_mean=test_mean,
                test_acc_ci95=(test_low, test_high),
                test_acc_std=float(finite_test.std(ddof=1)) if finite_test.size > 1 else math.nan,
                best_test_acc_mean=mean_ci([r.best_test_acc for r in members])[0],
                gap_mean=mean_ci([r.gap for r in members])[0],
                vs_baseline=(
                    None
                    if key == baseline_key
                    else welch(test, [r.test_acc for r in baseline], baseline_name)
                ),
            )
        )
    return summaries


def _group_name(arm: str, p: float, input_p: float, max_norm: float | None) -> str:
    return "none" if arm == "none" else f"{arm} p={p:g}"


@dataclass(frozen=True)
class BestRate:
    """The group with the highest mean test accuracy, and whether it beats the baseline."""

    summary: ArmSummary
    evidence: str


def best_rate(summaries: Sequence[ArmSummary]) -> BestRate | None:
    """The best group by mean final test accuracy, with a sentence of evidence."""
    finite = [s for s in summaries if math.isfinite(s.test_acc_mean)]
    if not finite:
        return None
    best = max(finite, key=lambda s: s.test_acc_mean)
    low, high = best.test_acc_ci95
    interval = f"[{low:.3f}, {high:.3f}]" if math.isfinite(low) else "(one seed: no interval)"
    text = f"best: {best.arm} p={best.p:g}, test accuracy {best.test_acc_mean:.3f} {interval}"
    comparison = best.vs_baseline
    if comparison is None:
        evidence = f"{text}; it is the baseline: no higher dropout rate beat it"
    elif not math.isfinite(comparison.p_value):
        evidence = f"{text}; not enough seeds to test it against {comparison.baseline}"
    elif comparison.significant:
        evidence = (
            f"{text}; better than {comparison.baseline} by {comparison.difference:+.3f} "
            f"(Welch's t-test p={comparison.p_value:.2g}, significant at 0.05)"
        )
    else:
        evidence = (
            f"{text}; {comparison.difference:+.3f} against {comparison.baseline} is NOT "
            f"significant (Welch's t-test p={comparison.p_value:.2g}): more seeds or a larger "
            "effect needed"
        )
    return BestRate(best, evidence)
