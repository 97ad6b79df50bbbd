"""Groups of runs and their summaries over seeds: labels, means, intervals, the best group.

Groups. Runs whose configs are identical except for the seed form one *group* (an arm at
given rates and strengths); its seeds are a sample of independent observations. A group's
label (:func:`group_label`) names its arm with the arm's strengths attached (``l2=0.0001``,
``max_norm=3``), then its dropout rates (``p=0.4``, ``input_p=0.2``).

Intervals. ``mean ± t_{n-1, 0.975} · s / sqrt(n)`` (Student's t, ``n - 1`` degrees of freedom;
see :mod:`dropkit.lab.significance`).

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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.arms import entry_regularizer
from dropkit.lab.config import RunConfig
from dropkit.lab.significance import (
    Comparison,
    finite_values,
    holm_adjusted,
    mean_ci,
    paired,
    welch,
)
from dropkit.lab.store import StoredRun

__all__ = [
    "CONVERGE_TOL",
    "CONVERGE_WINDOW",
    "ArmSummary",
    "BestRate",
    "best_rate",
    "compare",
    "epochs_to_converge",
    "group_label",
    "group_runs",
    "json_ready",
    "summarize",
]

CONVERGE_TOL = 0.01
CONVERGE_WINDOW = 0.02


def json_ready(value: Any) -> Any:
    """JSON-ready: non-finite floats become None, tuples become lists (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


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

    Each number is shown once. A strength is attached to the arm's token it belongs to: a
    regularizer entry carries its own (``l2=0.0001``), and so does the max-norm bound
    (``max_norm=3``, ``dropout+max_norm=3 p=0.4``); an entry that is on or off (``batchnorm``,
    strength 1) shows no number. The dropout rates follow the arm under their own names
    (``dropout p=0.4``, ``input_dropout input_p=0.2``).
    """
    if config.arm == "none":
        return "none"
    strengths = {
        name: strength
        for name, strength in config.regularizers
        if not (entry_regularizer(name).switch and strength == 1.0)
    }
    if config.max_norm is not None:
        strengths.setdefault("max_norm", config.max_norm)
    tokens = config.arm.split("+")
    parts = ["+".join(f"{t}={strengths.pop(t):g}" if t in strengths else t for t in tokens)]
    parts += [f"{name}={strength:g}" for name, strength in strengths.items()]
    if config.p > 0:
        parts.append(f"p={config.p:g}")
    if config.input_p > 0:
        parts.append(f"input_p={config.input_p:g}")
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
        result: dict[str, Any] = json_ready(data)
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
    finite_test = finite_values(test)
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
    comparisons: list[Comparison | None] = [None, *holm_adjusted(raw)]
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
