"""Calibration over seeds: each group's metrics with intervals, its tests, its pooled bins.

The metrics are those a run records when trained with ``TrainSpec.evaluate`` set
(:mod:`dropkit.lab.results.calibration_metrics`), read from each seed's ``info`` (a seed's
folds averaged first, as for every statistic of :mod:`dropkit.lab.results.summary`). A group
has a mode when every one of its seeds records it (``det_nll`` / ``mc_nll`` present): modes are
read from the runs, never from their configs.

Per group, mode and metric (:class:`MetricStats`):

- the mean over the group's usable seeds and its 95% t-interval ``mean ± t_{n−1, 0.975}·s/√n``
  (:func:`~dropkit.lab.results.significance.mean_ci`), kept inside the metric's range:
  accuracy, ECE and coverage in [0, 1], the Brier score in [0, 2] ([0, 1] on binary data), the
  classification NLL, RMSE, MI and entropy at least 0, the Gaussian NLL unbounded;
- on the test rows, against the baseline group (the first): the paired t-test over seeds
  (``scipy.stats.ttest_rel``; the exact sign test when every per-seed difference is the same;
  Welch's t-test when the seeds do not pair), the p-values of all the groups for one mode and
  metric Holm-adjusted together, with their power figures, as for the accuracy comparisons.

Per group with both modes, for each metric both record: Monte Carlo dropout against the
deterministic network, the difference ``mc − det`` paired by seed (both come from the same
runs), the p-values of all the groups for one metric Holm-adjusted together
(:attr:`CalibrationSummary.mc_vs_det`). Values that agree up to float rounding (relative
1e-9: MC dropout of a network without dropout repeats its one prediction) count as equal.

Reliability bins (:class:`PooledBins`): each mode's bin sums added over the group's usable
seeds; a bin's accuracy is its correct rows over its rows, its confidence the mean top-label
confidence (Guo et al. 2017, reliability diagram).

Diverged seeds (NaN or infinite final metrics) are left out, as everywhere; a NaN metric of a
usable seed is left out of that metric alone (and, in a paired test, with its partner).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from dropkit.lab.results.calibration_metrics import (
    MODES,
    N_BINS,
    CalibrationMetric,
    bin_key,
    calibration_metrics,
    has_calibration,
    info_key,
    metric_bounds,
    recorded_modes,
)
from dropkit.lab.results.significance import Comparison, holm_adjusted, mean_ci, paired
from dropkit.lab.results.summary import ArmSummary, json_ready, seed_test

__all__ = [
    "DETERMINISTIC",
    "CalibrationSummary",
    "MetricStats",
    "PooledBins",
    "comparison_dict",
    "summarize_calibration",
]

DETERMINISTIC = "deterministic"
"""The ``baseline`` of an MC-versus-deterministic comparison."""


def comparison_dict(comparison: Comparison) -> dict[str, Any]:
    """A comparison JSON-ready (NaN becomes None), with ``significant`` added."""
    data: dict[str, Any] = json_ready(asdict(comparison))
    data["significant"] = comparison.significant
    return data


@dataclass(frozen=True)
class MetricStats:
    """One metric of one mode of a group, over its seeds.

    Attributes:
        metric: the metric's name (``"nll"``).
        mode: ``"det"`` or ``"mc"``.
        on: ``"test"`` or ``"validation"``.
        mean: the mean over the seeds with a finite value.
        ci95: its 95% t-interval, kept inside the metric's range (NaN ends: no interval).
        n: the seeds with a finite value.
        vs_baseline: on the test rows, the group against the baseline group (difference:
            group − baseline), Holm-adjusted over the groups; None for the baseline and on
            validation.
        values: the per-seed values, aligned with the group's seeds (NaN: diverged or none).
    """

    metric: str
    mode: str
    on: str
    mean: float
    ci95: tuple[float, float]
    n: int
    vs_baseline: Comparison | None = None
    values: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``mean``, ``ci95``, ``n`` and ``vs_baseline`` (a comparison or None)."""
        versus = None if self.vs_baseline is None else comparison_dict(self.vs_baseline)
        return {
            "mean": json_ready(self.mean),
            "ci95": json_ready(self.ci95),
            "n": self.n,
            "vs_baseline": versus,
        }


@dataclass(frozen=True)
class PooledBins:
    """A mode's reliability bins added over a group's usable seeds (equal width, ``(b/15,
    (b+1)/15]``), lowest bin first.

    Attributes:
        counts: the rows of each bin.
        confidence_sums: the sum of their top-label confidences.
        hits: how many of them are classified correctly.
    """

    counts: tuple[float, ...]
    confidence_sums: tuple[float, ...]
    hits: tuple[float, ...]

    @property
    def confidence(self) -> tuple[float, ...]:
        """Each bin's mean confidence (NaN for an empty bin)."""
        return _ratios(self.confidence_sums, self.counts)

    @property
    def accuracy(self) -> tuple[float, ...]:
        """Each bin's share of correct rows (NaN for an empty bin)."""
        return _ratios(self.hits, self.counts)

    @property
    def ece(self) -> float:
        """The ECE of the pooled rows: ``Σ_b (n_b/N)·|acc_b − conf_b|`` (NaN without rows)."""
        total = sum(self.counts)
        if not total > 0:
            return math.nan
        gaps = zip(self.hits, self.confidence_sums, strict=True)
        return math.fsum(abs(hit - confidence) for hit, confidence in gaps) / total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``n``, ``confidence`` and ``accuracy`` per bin, and ``ece``."""
        data: dict[str, Any] = json_ready(
            {
                "n": list(self.counts),
                "confidence": list(self.confidence),
                "accuracy": list(self.accuracy),
                "ece": self.ece,
            }
        )
        return data


def _ratios(numerators: Sequence[float], counts: Sequence[float]) -> tuple[float, ...]:
    return tuple(a / n if n > 0 else math.nan for a, n in zip(numerators, counts, strict=True))


@dataclass(frozen=True)
class CalibrationSummary:
    """A group's calibration over its seeds (:func:`summarize_calibration`).

    Attributes:
        name: the group's label (as its :class:`~dropkit.lab.results.summary.ArmSummary`).
        task: ``"classification"`` or ``"regression"``.
        modes: the modes every seed of the group recorded (``"det"``, ``"mc"``); empty for a
            group without calibration metrics.
        seeds: the group's seeds.
        n_valid: the usable (not diverged) seeds.
        test: ``{mode: {metric: MetricStats}}`` on the test rows.
        validation: the same on the validation rows, for the metrics every seed recorded there
            (empty without a validation split or folds).
        mc_vs_det: ``{metric: Comparison}``: MC dropout − deterministic on the test rows,
            paired by seed, Holm-adjusted over the groups (empty unless both modes).
        bins: ``{mode: PooledBins}`` (classification).
        mc_samples: the Monte Carlo passes ``T`` when known (None otherwise).
        noise_sd: regression: the mean over seeds of the noise standard deviation ``σ``.
        is_baseline: the baseline group (the first).
    """

    name: str
    task: str
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    n_valid: int
    test: dict[str, dict[str, MetricStats]]
    validation: dict[str, dict[str, MetricStats]]
    mc_vs_det: dict[str, Comparison]
    bins: dict[str, PooledBins]
    mc_samples: int | None = None
    noise_sd: float = math.nan
    is_baseline: bool = False

    def stats(self, mode: str, metric: str, on: str = "test") -> MetricStats | None:
        """The :class:`MetricStats` of ``metric`` in ``mode`` on ``on`` (None when the group
        has none)."""
        found = self.validation if on == "validation" else self.test
        return found.get(mode, {}).get(metric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None): ``name``, ``task``, ``modes``, ``n_seeds``,
        ``n_valid``, ``mc_samples``, ``test`` and ``validation`` (``{mode: {metric: {mean,
        ci95, n, vs_baseline}}}``), ``mc_vs_det`` (``{metric: comparison}``), ``bins``
        (``{mode: {n, confidence, accuracy, ece}}``) and, for regression, ``noise_sd``."""
        result: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "modes": list(self.modes),
            "n_seeds": len(self.seeds),
            "n_valid": self.n_valid,
            "mc_samples": self.mc_samples,
            "test": _stats_dict(self.test),
            "validation": _stats_dict(self.validation),
            "mc_vs_det": {k: comparison_dict(c) for k, c in self.mc_vs_det.items()},
            "bins": {mode: bins.to_dict() for mode, bins in self.bins.items()},
        }
        if self.task == "regression":
            result["noise_sd"] = json_ready(self.noise_sd)
        return result


def _stats_dict(stats: dict[str, dict[str, MetricStats]]) -> dict[str, Any]:
    return {mode: {k: s.to_dict() for k, s in found.items()} for mode, found in stats.items()}


def _stats(
    summary: ArmSummary, mode: str, metric: CalibrationMetric, on: str
) -> MetricStats | None:
    key = info_key(mode, metric.name, on)
    if not summary.records(key):
        return None
    values = summary.info_values(key)
    mean, low, high = mean_ci(values, bounds=metric_bounds(metric, summary.binary))
    n = int(np.isfinite(np.asarray(values, dtype=np.float64)).sum())
    return MetricStats(metric.name, mode, on, mean, (low, high), n, values=values)


def _pooled(summary: ArmSummary, mode: str) -> PooledBins | None:
    """The mode's bins added over the usable seeds; None when the runs recorded no bins."""
    usable = [
        info
        for score, info in zip(summary.test_scores, summary.seed_infos, strict=True)
        if not math.isnan(score)
    ]
    if not usable or not all(bin_key(mode, 0, "n") in info for info in usable):
        return None
    parts = [
        tuple(
            math.fsum(info.get(bin_key(mode, b, part), 0.0) for info in usable)
            for b in range(N_BINS)
        )
        for part in ("n", "conf", "hit")
    ]
    return PooledBins(*parts)


def _group(summary: ArmSummary, mc_samples: int | None) -> CalibrationSummary:
    modes = recorded_modes(summary.seed_infos)
    test: dict[str, dict[str, MetricStats]] = {}
    validation: dict[str, dict[str, MetricStats]] = {}
    bins: dict[str, PooledBins] = {}
    for mode in modes:
        for on, found in (("test", test), ("validation", validation)):
            for metric in calibration_metrics(summary.task, mode):
                stats = _stats(summary, mode, metric, on)
                if stats is not None:
                    found.setdefault(mode, {})[metric.name] = stats
        pooled = _pooled(summary, mode) if summary.task == "classification" else None
        if pooled is not None:
            bins[mode] = pooled
    noise = [v for v in summary.info_values("noise_sd") if math.isfinite(v)]
    return CalibrationSummary(
        name=summary.name,
        task=summary.task,
        modes=modes,
        seeds=summary.seeds,
        n_valid=summary.n_valid,
        test=test,
        validation=validation,
        mc_vs_det={},
        bins=bins,
        mc_samples=mc_samples if "mc" in modes else None,
        noise_sd=float(np.mean(noise)) if noise and summary.task == "regression" else math.nan,
        is_baseline=summary.is_baseline,
    )


def _with_baseline_tests(groups: list[CalibrationSummary]) -> list[CalibrationSummary]:
    """Every group's test values against the baseline's (the first group), one Holm family
    per mode and metric."""
    baseline = groups[0]
    if not baseline.is_baseline:
        return groups
    tests: dict[tuple[int, str, str], Comparison] = {}
    for mode in MODES:
        for metric in calibration_metrics(baseline.task, mode):
            reference = baseline.stats(mode, metric.name)
            if reference is None:
                continue
            family = [
                (i, s)
                for i, g in enumerate(groups[1:], start=1)
                if (s := g.stats(mode, metric.name)) is not None
            ]
            raw = [
                replace(
                    seed_test(
                        list(zip(groups[i].seeds, s.values, strict=True)),
                        list(zip(baseline.seeds, reference.values, strict=True)),
                        baseline.name,
                    ),
                    compared_on="test",
                )
                for i, s in family
            ]
            for (i, _), comparison in zip(family, holm_adjusted(raw), strict=True):
                tests[(i, mode, metric.name)] = comparison
    result = []
    for i, g in enumerate(groups):
        test = {
            mode: {
                name: replace(s, vs_baseline=tests.get((i, mode, name)))
                for name, s in found.items()
            }
            for mode, found in g.test.items()
        }
        result.append(replace(g, test=test))
    return result


def _snapped(values: Sequence[float], reference: Sequence[float]) -> list[float]:
    """``values`` with those equal to ``reference``'s up to float rounding (relative 1e-9)
    replaced by them: MC dropout without dropout at test time (rate 0) repeats the
    deterministic prediction ``T`` times, and the rounding of their mean must not read as a
    difference (the sign test would call it one, every seed "lower")."""
    return [
        r if math.isclose(v, r, rel_tol=1e-9, abs_tol=1e-12) else v
        for v, r in zip(values, reference, strict=True)
    ]


def _with_mode_tests(groups: list[CalibrationSummary]) -> list[CalibrationSummary]:
    """MC dropout − deterministic per group with both modes, one Holm family per metric."""
    task = groups[0].task
    tests: dict[tuple[int, str], Comparison] = {}
    for metric in calibration_metrics(task, "det"):
        family = []
        for i, g in enumerate(groups):
            det, mc = g.stats("det", metric.name), g.stats("mc", metric.name)
            if det is not None and mc is not None:
                family.append(
                    (i, paired(_snapped(mc.values, det.values), det.values, DETERMINISTIC))
                )
        adjusted = holm_adjusted([c for _, c in family])
        for (i, _), comparison in zip(family, adjusted, strict=True):
            tests[(i, metric.name)] = replace(comparison, compared_on="test")
    return [
        replace(g, mc_vs_det={name: c for (j, name), c in tests.items() if j == i})
        for i, g in enumerate(groups)
    ]


def summarize_calibration(
    summaries: Sequence[ArmSummary], *, mc_samples: int | None = None
) -> list[CalibrationSummary]:
    """Each group's calibration (:class:`CalibrationSummary`), in the order of ``summaries``
    (:func:`~dropkit.lab.results.summary.summarize`'s: the baseline first); empty when no run
    recorded a calibration metric.

    Args:
        summaries: the groups of one experiment.
        mc_samples: the Monte Carlo passes ``T`` of its runs, when known (stated in the report).
    """
    if not any(has_calibration(s.seed_infos) for s in summaries):
        return []
    groups = [_group(s, mc_samples) for s in summaries]
    return _with_mode_tests(_with_baseline_tests(groups))
