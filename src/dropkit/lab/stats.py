"""Statistics over seeds and the diagnosis: does a regularizer help, and what to change.

Groups. Runs whose configs are identical except for the seed form one *group* (an arm at
given rates and strengths); its seeds are a sample of independent observations.

Intervals. ``mean ± t_{n-1, 0.975} · s / sqrt(n)`` (Student's t, ``n - 1`` degrees of freedom).

Diverged runs. A run whose final train/test accuracy or loss is NaN or infinite is counted in
``n_nan`` and left out of every statistic of its group (means, intervals, tests).

Comparisons. Every group is compared with the baseline: the ``none`` group or, when there is
none, the group with the lowest rates. In this lab a seed fixes a run's initial weights, its
data order and its dropout masks' stream, so two groups that share data, architecture and
training settings and were run on the same set of seeds are *paired by seed*: then the paired
t-test on the per-seed differences is used (``scipy.stats.ttest_rel``), which removes the
seed-to-seed variance both groups share. Otherwise (different seeds, a different architecture or
data) Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``). When the
per-seed differences have no spread at all the paired t statistic is undefined and Welch's test
is used instead; when both samples are constant no test is made (p is NaN). The p-values of all
comparisons against the baseline are adjusted together with Holm's step-down method (Holm 1979);
``significant`` means adjusted ``p < 0.05``.

Epochs to converge. The first epoch at which the trailing moving average of the test accuracy
(window: 2% of the epochs, at least 1) comes within ``0.01`` of that average's maximum. A run
that overfits converges at its peak; a run still improving converges near its last epoch.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

from dropkit.lab.arms import entry_regularizer
from dropkit.lab.config import RunConfig
from dropkit.lab.store import StoredRun

__all__ = [
    "ALPHA",
    "ArmSummary",
    "BestRate",
    "Comparison",
    "Finding",
    "Thresholds",
    "best_rate",
    "compare",
    "diagnose",
    "epochs_to_converge",
    "group_label",
    "group_runs",
    "holm",
    "mean_ci",
    "paired",
    "summarize",
    "welch",
]

ALPHA = 0.05
CONVERGE_TOL = 0.01
CONVERGE_WINDOW = 0.02


def _clean(value: Any) -> Any:
    """JSON-ready: non-finite floats become None, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _finite(values: Sequence[float]) -> NDArray[np.float64]:
    data = np.asarray(values, dtype=np.float64)
    return data[np.isfinite(data)]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the t-interval ``mean ± t_{n-1} · s / sqrt(n)``.

    NaN values are ignored; with fewer than two values the interval is ``(nan, nan)``.
    """
    data = _finite(values)
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
    a, b = _finite(sample), _finite(baseline)
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


def epochs_to_converge(
    test_acc: Sequence[float] | NDArray[np.float64],
    *,
    tol: float = CONVERGE_TOL,
    window: int | None = None,
) -> float:
    """The first epoch (1-based) at which the smoothed test accuracy is within ``tol`` of its best.

    Smoothing: a trailing moving average over ``window`` epochs (default ``max(1,
    ceil(0.02 · epochs))``), NaN epochs skipped. NaN when the curve has no finite value.
    """
    values = np.asarray(test_acc, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return math.nan
    width = window or max(1, math.ceil(CONVERGE_WINDOW * values.size))
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    end = np.arange(1, values.size + 1)
    start = np.maximum(0, end - width)
    n = counts[end] - counts[start]
    smooth = np.full(values.size, -math.inf)
    np.divide(sums[end] - sums[start], n, out=smooth, where=n > 0)
    # "within tol" includes tol itself (up to float rounding of the subtraction).
    return float(np.argmax(smooth >= smooth.max() - tol - 1e-12) + 1)


def _diverged(run: StoredRun) -> bool:
    metrics = (run.train_acc, run.test_acc, run.train_loss, run.test_loss)
    return not all(math.isfinite(v) for v in metrics)


def _info(run: StoredRun) -> dict[str, float]:
    """A run's recorded training facts (``stop_epoch`` ...); empty for stores without them."""
    info = getattr(run, "info", None) or {}
    return {str(k): float(v) for k, v in info.items()}


def _group_key(config: RunConfig) -> str:
    data = config.to_dict()
    del data["seed"]
    return json.dumps(data, sort_keys=True)


def group_label(config: RunConfig) -> str:
    """A group's label: its arm with strengths, then its rates (``dropout+l2=0.0001 p=0.4``).

    A regularizer named in the arm carries its strength there (``l2=0.0001``); one that is on
    or off (``batchnorm``, strength 1) shows no number.
    """
    if config.arm == "none":
        return "none"
    strengths = {
        name: strength
        for name, strength in config.regularizers
        if not (entry_regularizer(name).switch and strength == 1.0)
    }
    tokens = config.arm.split("+")
    parts = ["+".join(f"{t}={strengths.pop(t):g}" if t in strengths else t for t in tokens)]
    parts += [f"{name}={strength:g}" for name, strength in strengths.items()]
    if config.p > 0:
        parts.append(f"p={config.p:g}")
    if config.input_p > 0:
        parts.append(f"input_p={config.input_p:g}")
    if config.max_norm is not None:
        parts.append(f"max_norm={config.max_norm:g}")
    return " ".join(parts)


def _is_baseline_like(config: RunConfig) -> tuple[bool, float, float, float]:
    return (config.arm != "none", config.p, config.input_p, config.max_norm or 0.0)


def group_runs(runs: Sequence[StoredRun]) -> list[tuple[str, list[StoredRun]]]:
    """Runs grouped by config-without-seed, baseline first, as ``[(label, runs by seed)]``.

    Order: the ``none`` group, then by rates (``p``, ``input_p``, ``max_norm``), arm label and
    the full config. Labels are unique (a short hash of the config is appended on a clash).
    """
    groups: dict[str, list[StoredRun]] = {}
    for run in runs:
        groups.setdefault(_group_key(run.config), []).append(run)
    order = sorted(
        groups,
        key=lambda k: (
            *_is_baseline_like(groups[k][0].config),
            group_label(groups[k][0].config),
            k,
        ),
    )
    labels = [group_label(groups[k][0].config) for k in order]
    result = []
    for key, label in zip(order, labels, strict=True):
        if labels.count(label) > 1:
            label = f"{label} [{groups[key][0].config.key()[:6]}]"
        result.append((label, sorted(groups[key], key=lambda r: r.config.seed)))
    return result


@dataclass(frozen=True)
class ArmSummary:
    """One group (an arm at given rates) over its seeds. ``*_ci95`` are ``(low, high)``.

    Statistics leave out the group's diverged runs (``n_nan``); ``n_seeds`` counts all runs.
    """

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
    name: str = ""
    regularizers: tuple[tuple[str, float], ...] = ()
    seeds: tuple[int, ...] = ()
    n_nan: int = 0
    epochs: int = 0
    best_test_acc_ci95: tuple[float, float] = (math.nan, math.nan)
    train_loss_mean: float = math.nan
    test_loss_mean: float = math.nan
    test_loss_ci95: tuple[float, float] = (math.nan, math.nan)
    gap_ci95: tuple[float, float] = (math.nan, math.nan)
    converge_epoch_mean: float = math.nan
    converge_epoch_ci95: tuple[float, float] = (math.nan, math.nan)
    stop_epoch_mean: float = math.nan
    n_stopped: int = 0
    keys: tuple[str, ...] = field(default=(), repr=False)

    @property
    def n_valid(self) -> int:
        """Runs that entered the statistics (not diverged)."""
        return self.n_seeds - self.n_nan

    @property
    def is_baseline(self) -> bool:
        return self.vs_baseline is None

    def strength(self, name: str) -> float | None:
        return dict(self.regularizers).get(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None; ``vs_baseline`` gains ``significant``."""
        data = asdict(self)
        del data["keys"]
        result: dict[str, Any] = _clean(data)
        if self.vs_baseline is not None:
            result["vs_baseline"]["significant"] = self.vs_baseline.significant
        return result


def _interval(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    mean, low, high = mean_ci(values)
    return mean, (low, high)


def _summary(
    label: str,
    members: Sequence[StoredRun],
    curves: Mapping[str, Mapping[str, NDArray[np.float64]]] | None,
    vs_baseline: Comparison | None,
) -> ArmSummary:
    first = members[0].config
    valid = [r for r in members if not _diverged(r)]
    test = [r.test_acc for r in valid]
    train_mean, train_ci = _interval([r.train_acc for r in valid])
    test_mean, test_ci = _interval(test)
    best_mean, best_ci = _interval([r.best_test_acc for r in valid])
    loss_mean, loss_ci = _interval([r.test_loss for r in valid])
    gap_mean, gap_ci = _interval([r.gap for r in valid])
    converge = [
        epochs_to_converge(curves[r.key]["test_acc"])
        for r in valid
        if curves is not None and r.key in curves
    ]
    converge_mean, converge_ci = _interval(converge)
    stops = [info["stop_epoch"] for info in map(_info, valid) if "stop_epoch" in info]
    finite_test = _finite(test)
    return ArmSummary(
        arm=first.arm,
        p=first.p,
        input_p=first.input_p,
        max_norm=first.max_norm,
        n_seeds=len(members),
        train_acc_mean=train_mean,
        train_acc_ci95=train_ci,
        test_acc_mean=test_mean,
        test_acc_ci95=test_ci,
        test_acc_std=float(finite_test.std(ddof=1)) if finite_test.size > 1 else math.nan,
        best_test_acc_mean=best_mean,
        gap_mean=gap_mean,
        vs_baseline=vs_baseline,
        name=label,
        regularizers=first.regularizers,
        seeds=tuple(r.config.seed for r in members),
        n_nan=len(members) - len(valid),
        epochs=first.train.epochs,
        best_test_acc_ci95=best_ci,
        train_loss_mean=mean_ci([r.train_loss for r in valid])[0],
        test_loss_mean=loss_mean,
        test_loss_ci95=loss_ci,
        gap_ci95=gap_ci,
        converge_epoch_mean=converge_mean,
        converge_epoch_ci95=converge_ci,
        stop_epoch_mean=mean_ci(stops)[0],
        n_stopped=len(stops),
        keys=tuple(r.key for r in members),
    )


def compare(
    group: Sequence[StoredRun], baseline: Sequence[StoredRun], baseline_name: str
) -> Comparison:
    """Final test accuracy of ``group`` against ``baseline``: paired t-test when seeds pair.

    Seeds pair when both groups share data, architecture and training settings and hold the
    same set of seeds (each seed once); diverged runs are left out (with their partners).
    Otherwise Welch's t-test. The returned ``p_adjusted`` is this test alone's p-value.
    """

    def accuracy(run: StoredRun) -> float:
        return math.nan if _diverged(run) else run.test_acc

    seeds_a = [r.config.seed for r in group]
    seeds_b = [r.config.seed for r in baseline]
    same_shape = {r.config.shape_key() for r in group} == {r.config.shape_key() for r in baseline}
    if (
        same_shape
        and len({r.config.shape_key() for r in group}) == 1
        and sorted(seeds_a) == sorted(seeds_b)
        and len(set(seeds_a)) == len(seeds_a)
    ):
        by_seed = {r.config.seed: r for r in baseline}
        ordered = sorted(group, key=lambda r: r.config.seed)
        return paired(
            [accuracy(r) for r in ordered],
            [accuracy(by_seed[r.config.seed]) for r in ordered],
            baseline_name,
        )
    return welch([accuracy(r) for r in group], [accuracy(r) for r in baseline], baseline_name)


def summarize(
    runs: Sequence[StoredRun],
    curves: Mapping[str, Mapping[str, NDArray[np.float64]]] | None = None,
) -> list[ArmSummary]:
    """Group runs (identical but for the seed) and summarize each group over its seeds.

    Args:
        runs: stored runs, of one data set and model (the caller's experiment).
        curves: per-run curves by run key (``store.curves(key)``), for the epochs to converge;
            None leaves them NaN.

    Returns:
        The baseline group first (no ``vs_baseline``), then every other group, compared with it
        (paired or Welch's t-test, Holm-adjusted over all the groups).
    """
    grouped = group_runs(runs)
    if not grouped:
        return []
    baseline_name, baseline = grouped[0]
    raw = [compare(members, baseline, baseline_name) for _, members in grouped[1:]]
    adjusted = holm([c.p_value for c in raw])
    comparisons: list[Comparison | None] = [None]
    for comparison, p_adjusted in zip(raw, adjusted, strict=True):
        comparisons.append(
            Comparison(
                comparison.baseline,
                comparison.difference,
                comparison.t_statistic,
                comparison.p_value,
                comparison.test,
                p_adjusted,
                comparison.n,
            )
        )
    return [
        _summary(label, members, curves, comparison)
        for (label, members), comparison in zip(grouped, comparisons, strict=True)
    ]


@dataclass(frozen=True)
class BestRate:
    """The group with the highest mean test accuracy, and whether it beats the baseline."""

    summary: ArmSummary
    evidence: str


def _ci_text(interval: tuple[float, float], n_valid: int) -> str:
    low, high = interval
    if math.isfinite(low):
        return f"95% CI [{low:.3f}, {high:.3f}]"
    return f"({n_valid} usable seed{'s' if n_valid != 1 else ''}: no interval)"


def best_rate(summaries: Sequence[ArmSummary]) -> BestRate | None:
    """The best group by mean final test accuracy, with a sentence of evidence."""
    finite = [s for s in summaries if math.isfinite(s.test_acc_mean)]
    if not finite:
        return None
    best = max(finite, key=lambda s: s.test_acc_mean)
    name = best.name or (best.arm if best.arm == "none" else f"{best.arm} p={best.p:g}")
    interval = _ci_text(best.test_acc_ci95, best.n_valid)
    if "no interval" in interval:
        interval = "(one seed: no interval)" if best.n_valid == 1 else interval
    text = f"best: {name}, test accuracy {best.test_acc_mean:.3f} {interval}"
    comparison = best.vs_baseline
    if comparison is None:
        return BestRate(best, f"{text}; it is the baseline: no other setting beat it")
    if not math.isfinite(comparison.p_value):
        evidence = f"{text}; not enough seeds (or spread) to test it against {comparison.baseline}"
    else:
        p_text = f"{comparison.test_name} p={comparison.p_value:.2g}"
        if comparison.p_adjusted != comparison.p_value:
            p_text += f", Holm-adjusted p={comparison.p_adjusted:.2g}"
        if comparison.significant:
            evidence = (
                f"{text}; better than {comparison.baseline} by {comparison.difference:+.3f} "
                f"({p_text}, significant at 0.05)"
            )
        else:
            evidence = (
                f"{text}; {comparison.difference:+.3f} against {comparison.baseline} is NOT "
                f"significant ({p_text}): more seeds or a larger effect needed"
            )
    return BestRate(best, evidence)


# -- diagnosis ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The numbers the diagnosis rules compare against (accuracies are fractions).

    Attributes:
        fit_train_acc: a baseline whose mean final train accuracy is below this cannot fit its
            training set (capacity rule).
        large_gap: a mean train–test accuracy gap at or above this is overfitting (gap rule).
        underfit_drop: a regularized group whose train accuracy is this much below a fitting
            baseline's, without a better test accuracy, fails to train (convergence rule).
        slower_ratio: dropout's epochs to converge over the baseline's at or above this is
            reported (more-epochs rule; Srivastava et al. report 2–3×).
        late_fraction: converging after this fraction of the epochs means still improving.
    """

    fit_train_acc: float = 0.90
    large_gap: float = 0.10
    underfit_drop: float = 0.10
    slower_ratio: float = 1.5
    late_fraction: float = 0.9


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a rule id, ``info`` or ``warning``, a message with the measured numbers."""

    rule: str
    severity: str
    message: str
    numbers: dict[str, float]
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _clean(asdict(self))
        return result


def _has_dropout(s: ArmSummary) -> bool:
    return s.p > 0 or s.input_p > 0


def diagnose(
    summaries: Sequence[ArmSummary], thresholds: Thresholds | None = None
) -> list[Finding]:
    """Apply the diagnosis rules to :func:`summarize`'s groups (baseline first).

    Rules (ids): ``diverged`` (runs with NaN/inf metrics), ``one_seed`` (no interval),
    ``capacity`` (baseline cannot fit its training set: dropout will not help), ``large_gap``
    (baseline overfits, or the highest rate tried still does: raise the rate; silent when the
    capacity rule fires), ``no_convergence``
    (a regularized group fails to fit what the baseline fits and tests no better: lower it),
    ``more_epochs`` (dropout's epochs to converge over the baseline's), ``not_converged`` (still
    improving at the last epochs), ``bn_order`` (dropout after vs before batch norm).
    """
    t = thresholds or Thresholds()
    findings: list[Finding] = []
    if not summaries:
        return findings
    base = summaries[0]
    others = list(summaries[1:])
    for s in summaries:
        if s.n_nan:
            fix = "lower the learning rate" + (" or the rate" if _has_dropout(s) else "")
            findings.append(
                Finding(
                    "diverged",
                    "warning",
                    f"{s.name}: {s.n_nan} of {s.n_seeds} runs ended with NaN/inf metrics "
                    f"(diverged); they are left out of every statistic: {fix}",
                    {"n_nan": s.n_nan, "n_runs": s.n_seeds},
                    s.name,
                )
            )
    few = [s for s in summaries if s.n_valid < 2]
    if few:
        names = ", ".join(f"{s.name} ({s.n_valid})" for s in few)
        findings.append(
            Finding(
                "one_seed",
                "info",
                f"fewer than 2 usable seeds in {names}: no confidence interval and no test is "
                "possible there; 10 seeds are the minimum for a claim",
                {"groups": len(few)},
            )
        )
    fits = math.isfinite(base.train_acc_mean) and base.train_acc_mean >= t.fit_train_acc
    if math.isfinite(base.train_acc_mean) and not fits:
        findings.append(
            Finding(
                "capacity",
                "warning",
                f"the baseline ({base.name}) fits only {base.train_acc_mean:.3f} of its training "
                f"set (mean final train accuracy < {t.fit_train_acc:.2f}; train loss "
                f"{base.train_loss_mean:.3f}): the model cannot fit its data, a capacity (or "
                "optimization) problem that dropout will not fix: widen or deepen the model, or "
                "train longer",
                {
                    "train_acc": base.train_acc_mean,
                    "train_loss": base.train_loss_mean,
                    "threshold": t.fit_train_acc,
                },
                base.name,
            )
        )
    # A model that cannot fit its data is not overfitting whatever its gap: no gap advice then.
    gap_rules = fits or not math.isfinite(base.train_acc_mean)
    if gap_rules and math.isfinite(base.gap_mean) and base.gap_mean >= t.large_gap:
        findings.append(
            Finding(
                "large_gap",
                "warning",
                f"the baseline ({base.name}) overfits: train–test gap {base.gap_mean:.3f} (train "
                f"{base.train_acc_mean:.3f}, test {base.test_acc_mean:.3f}; threshold "
                f"{t.large_gap:.2f}): regularize it, e.g. with dropout",
                {
                    "gap": base.gap_mean,
                    "train_acc": base.train_acc_mean,
                    "test_acc": base.test_acc_mean,
                    "threshold": t.large_gap,
                },
                base.name,
            )
        )
    # The highest rate of each dropout family (same arm, other settings equal but p).
    families: dict[tuple[Any, ...], ArmSummary] = {}
    for s in others:
        if s.p > 0:
            family = (s.arm, s.input_p, s.max_norm, s.regularizers, s.epochs)
            if family not in families or s.p > families[family].p:
                families[family] = s
    # A group that cannot fit (no_convergence below) gets "lower the rate", never "raise" too.
    underfit = {
        s.name
        for s in others
        if fits
        and base.train_acc_mean - s.train_acc_mean > t.underfit_drop
        and not s.test_acc_mean > base.test_acc_mean
    }
    for s in families.values():
        if s.name in underfit:
            continue
        if gap_rules and math.isfinite(s.gap_mean) and s.gap_mean >= t.large_gap:
            findings.append(
                Finding(
                    "large_gap",
                    "warning",
                    f"{s.name}: the gap is still {s.gap_mean:.3f} at the highest rate tried "
                    f"(p={s.p:g}; train {s.train_acc_mean:.3f}, test {s.test_acc_mean:.3f}; "
                    f"threshold {t.large_gap:.2f}): raise the rate",
                    {"gap": s.gap_mean, "p": s.p, "threshold": t.large_gap},
                    s.name,
                )
            )
    if fits:
        for s in others:
            drop = base.train_acc_mean - s.train_acc_mean
            if s.name in underfit:
                knob = "rate" if _has_dropout(s) else "strength"
                findings.append(
                    Finding(
                        "no_convergence",
                        "warning",
                        f"{s.name}: training does not converge: train accuracy "
                        f"{s.train_acc_mean:.3f} is {drop:.3f} below the baseline's "
                        f"{base.train_acc_mean:.3f} (threshold {t.underfit_drop:.2f}) and its "
                        f"test accuracy {s.test_acc_mean:.3f} is no better than the baseline's "
                        f"{base.test_acc_mean:.3f}: lower the {knob}",
                        {
                            "train_acc": s.train_acc_mean,
                            "baseline_train_acc": base.train_acc_mean,
                            "test_acc": s.test_acc_mean,
                            "baseline_test_acc": base.test_acc_mean,
                            "threshold": t.underfit_drop,
                        },
                        s.name,
                    )
                )
    dropout = [s for s in others if _has_dropout(s) and math.isfinite(s.test_acc_mean)]
    if dropout and math.isfinite(base.converge_epoch_mean) and base.converge_epoch_mean > 0:
        best = max(dropout, key=lambda s: s.test_acc_mean)
        ratio = best.converge_epoch_mean / base.converge_epoch_mean
        if math.isfinite(ratio) and ratio >= t.slower_ratio:
            findings.append(
                Finding(
                    "more_epochs",
                    "info",
                    f"{best.name} takes {ratio:.1f}× the baseline's epochs to converge "
                    f"({best.converge_epoch_mean:.0f} vs {base.converge_epoch_mean:.0f} epochs to "
                    f"come within {CONVERGE_TOL} of the best smoothed test accuracy; reported from "
                    f"{t.slower_ratio:g}×, dropout typically needs 2–3×): budget more epochs",
                    {
                        "ratio": ratio,
                        "epochs": best.converge_epoch_mean,
                        "baseline_epochs": base.converge_epoch_mean,
                        "threshold": t.slower_ratio,
                    },
                    best.name,
                )
            )
    late = [
        s for s in summaries if s.epochs > 1 and s.converge_epoch_mean >= t.late_fraction * s.epochs
    ]
    if late:
        names = ", ".join(f"{s.name} ({s.converge_epoch_mean:.0f})" for s in late)
        findings.append(
            Finding(
                "not_converged",
                "warning",
                f"still improving in the last {1 - t.late_fraction:.0%} of the "
                f"{late[0].epochs} epochs (mean epoch of convergence): {names}: train longer to "
                "see where they level off",
                {"groups": len(late), "epochs": late[0].epochs, "threshold": t.late_fraction},
            )
        )
    findings += _bn_order(summaries)
    return findings


def _bn_order(summaries: Sequence[ArmSummary]) -> list[Finding]:
    """Dropout after batch norm (``batchnorm`` + p) against before it (``dropout_bn`` + p)."""
    after = {(s.p, s.epochs): s for s in summaries if s.p > 0 and s.strength("batchnorm")}
    before = {(s.p, s.epochs): s for s in summaries if s.p > 0 and s.strength("dropout_bn")}
    findings = []
    for key in sorted(set(after) & set(before)):
        a, b = after[key], before[key]
        difference = a.test_acc_mean - b.test_acc_mean
        test = _welch_from_summaries(a, b)
        worse = test.significant and difference > 0
        if worse:
            verdict = (
                "the variance-shift order (dropout feeding BN) is worse here: put dropout after BN"
            )
        elif test.significant:
            verdict = "dropout feeding BN did better here, against the usual variance-shift advice"
        else:
            verdict = "no significant order effect at 0.05"
        p_text = (
            f"{test.test_name} p={test.p_value:.2g}"
            if math.isfinite(test.p_value)
            else "not enough seeds to test it"
        )
        findings.append(
            Finding(
                "bn_order",
                "warning" if worse else "info",
                f"dropout after batch norm ({a.name}) tests {a.test_acc_mean:.3f}, dropout "
                f"before it ({b.name}) {b.test_acc_mean:.3f}: difference {difference:+.3f} "
                f"({p_text}): {verdict}",
                {
                    "after_bn": a.test_acc_mean,
                    "before_bn": b.test_acc_mean,
                    "difference": difference,
                    "p_value": test.p_value,
                },
                a.name,
            )
        )
    return findings


def _welch_from_summaries(a: ArmSummary, b: ArmSummary) -> Comparison:
    """Welch's t-test from two groups' means, standard deviations and sizes."""
    n_a, n_b = a.n_valid, b.n_valid
    difference = a.test_acc_mean - b.test_acc_mean
    if n_a < 2 or n_b < 2 or not (math.isfinite(a.test_acc_std) and math.isfinite(b.test_acc_std)):
        return Comparison(b.name, difference, math.nan, math.nan, "none")
    if a.test_acc_std == 0 and b.test_acc_std == 0:
        return Comparison(b.name, difference, math.nan, math.nan, "none")
    result = sps.ttest_ind_from_stats(
        a.test_acc_mean, a.test_acc_std, n_a, b.test_acc_mean, b.test_acc_std, n_b, equal_var=False
    )
    p_value = float(result.pvalue)
    return Comparison(
        b.name, difference, float(result.statistic), p_value, "welch", p_value, n_a + n_b
    )
