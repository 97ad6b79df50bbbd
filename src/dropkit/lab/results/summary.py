"""Groups of runs and their summaries over seeds: labels, means, intervals, the best group.

Groups. Runs whose configs are identical except for the seed (and the fold) form one *group*
(an arm at given rates and strengths); its seeds are a sample of independent observations. A
group's label (:func:`group_label`) names its arm with the arm's strengths attached
(``l2=0.0001``, ``max_norm=3``), then its dropout rates (``p=0.4``, ``input_p=0.2``).

Folds. With k-fold cross-validation (``DataSpec.folds = k``) a seed has k runs, one per fold.
They are averaged first, metric by metric (final scores, losses, ``info`` values, epochs to
converge): one observation per seed (:func:`seed_runs`). Means, intervals and the paired tests
are over seeds, and ``n_seeds`` counts seeds; a seed with a diverged fold is a diverged seed.

Tasks. For classification the scores are accuracies; for regression (``DataSpec.task =
"regression"``) the ``*_acc`` values are R² = 1 − SSE/SST of the split and the losses mean
squared errors, and the summaries add the RMSE and MAE over seeds (:func:`score_name`); their
``to_dict()`` names the regression keys ``*_r2_*`` instead of ``*_acc_*``.

Choosing the best group. :func:`best_rate` chooses on the validation score (``info["val_acc"]``
of runs with a validation split or folds) when every candidate group has one, else on the
test score: the test set then doubles as validation, as in the published case study. The rule
(:data:`CHOICE_RULE`): the groups not significantly below the highest mean tie, and the
simplest of them wins; list order never decides.

Choosing by a calibration metric. ``best_rate(summaries, choose_by="nll")`` ranks the groups by
a metric whose lower value is better (:class:`Criterion`, :func:`criterion`): ``"nll"``,
``"brier"`` or ``"ece"`` (regression: ``"nll"`` or ``"rmse"``) of the runs' ``info``
(:mod:`dropkit.lab.results.calibration_metrics`), optionally prefixed ``"det_"`` (dropout off)
or ``"mc_"`` (Monte Carlo dropout; unprefixed: MC dropout when every group recorded it). The
same rule is read from the lowest mean (the groups not significantly above it tie), on the
metric's validation values (``val_mc_nll`` ...) when every ranked group has them, else on the
test set (:func:`criterion_on`), and the evidence names the metric and its tests against the
baseline (Holm-adjusted together).

Intervals. ``mean ± t_{n-1, 0.975} · s / sqrt(n)`` (Student's t, ``n - 1`` degrees of freedom;
see :mod:`dropkit.lab.results.significance`), kept inside the metric's range (:data:`SCORE_RANGES`).

Diverged runs. A run whose final train/test score or loss is NaN or infinite is counted in
``n_nan`` and left out of every statistic of its group (means, intervals, tests).

Comparisons. Every group is compared with the baseline, on the split that chooses
(:func:`chosen_on`): the ``none`` group or, when there is none, the group with the lowest
rates. In this lab a seed fixes a run's initial weights, its
data order and its dropout masks' stream, so two groups that share data, architecture and
training settings and were run on the same set of seeds are *paired by seed*: then the paired
t-test on the per-seed differences is used (``scipy.stats.ttest_rel``), which removes the
seed-to-seed variance both groups share. Otherwise (different seeds, a different architecture or
data) Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``). When the
per-seed differences have no spread at all the paired t statistic is undefined and the exact
sign test is made instead (its ``note`` says so); when both unpaired samples are constant no
test is made (p is NaN). The p-values of all comparisons against the baseline are adjusted
together with Holm's step-down method (Holm 1979); ``significant`` means adjusted ``p < 0.05``;
each comparison states its power figures (:func:`~dropkit.lab.results.significance.with_power`).

Epochs to converge. The first epoch at which the trailing moving average of the test score
(window: 2% of the epochs, at least 1) comes within ``0.01`` of that average's maximum. A run
that overfits converges at its peak; a run still improving converges near its last epoch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.plan.arms import entry_regularizer
from dropkit.lab.plan.config import RunConfig
from dropkit.lab.results.calibration_metrics import (
    MODE_NAMES,
    calibration_metric,
    info_key,
    is_binary,
    metric_bounds,
    parse_choose_by,
)
from dropkit.lab.results.significance import (
    ALPHA,
    MIN_SEEDS_FOR_CLAIM,
    UNBOUNDED,
    Comparison,
    finite_values,
    holm_adjusted,
    mean_ci,
    paired,
    welch,
    with_power,
)
from dropkit.lab.store import StoredRun

__all__ = [
    "CHOICE_RULE",
    "CONVERGE_TOL",
    "CONVERGE_WINDOW",
    "SCORE",
    "SCORE_NAMES",
    "SCORE_RANGES",
    "ArmSummary",
    "BestRate",
    "Criterion",
    "best_rate",
    "choice_rule",
    "chosen_on",
    "compare",
    "compare_scores",
    "criterion",
    "criterion_on",
    "epochs_to_converge",
    "gap_range",
    "group_label",
    "group_runs",
    "json_ready",
    "loss_name",
    "plain_name",
    "score_name",
    "score_range",
    "seed_curves",
    "seed_runs",
    "seed_test",
    "selection_score",
    "summarize",
    "tied_with",
]

CONVERGE_TOL = 0.01
CONVERGE_WINDOW = 0.02

SCORE_NAMES = {"classification": "accuracy", "regression": "R²"}
"""The score of each task, as the ``*_acc`` metrics hold it."""

SCORE_RANGES = {"classification": (0.0, 1.0), "regression": (-math.inf, 1.0)}
"""The range of each task's score: intervals of it are kept inside (accuracy in [0, 1];
R² = 1 − SSE/SST is at most 1 and unbounded below)."""

_NON_NEGATIVE = (0.0, math.inf)


def score_range(task: str) -> tuple[float, float]:
    """The range of the task's score (:data:`SCORE_RANGES`)."""
    score_name(task)  # the task check
    return SCORE_RANGES[task]


def gap_range(task: str) -> tuple[float, float]:
    """The range of a train − test (or validation) score gap: [−1, 1] for accuracies,
    unbounded for R² (a test R² has no lower bound)."""
    return (-1.0, 1.0) if task == "classification" else UNBOUNDED


def score_name(task: str) -> str:
    """``"accuracy"`` for classification, ``"R²"`` for regression (the ``*_acc`` metrics)."""
    try:
        return SCORE_NAMES[task]
    except KeyError:
        raise ValueError(f"`task` must be one of {', '.join(SCORE_NAMES)}, got {task!r}") from None


def loss_name(task: str) -> str:
    """The data loss of the ``*_loss`` metrics: ``"cross-entropy"`` or ``"MSE"``."""
    return "MSE" if score_name(task) == "R²" else "cross-entropy"


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
    data.pop("fold", None)
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


def _fold(run: StoredRun) -> int:
    return -1 if run.config.fold is None else run.config.fold


def group_runs(runs: Sequence[StoredRun]) -> list[tuple[str, list[StoredRun]]]:
    """Runs grouped by config-without-seed-and-fold, baseline first, as ``[(label, runs)]``,
    each group's runs ordered by seed, then fold.

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
        result.append((label, sorted(groups[key], key=lambda r: (r.config.seed, _fold(r)))))
    return result


def _by_seed(runs: Sequence[StoredRun]) -> list[list[StoredRun]]:
    """The runs of each seed (its folds, in fold order), seeds ascending."""
    seeds: dict[int, list[StoredRun]] = {}
    for run in runs:
        seeds.setdefault(run.config.seed, []).append(run)
    return [sorted(seeds[seed], key=_fold) for seed in sorted(seeds)]


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _seed_mean(runs: Sequence[StoredRun]) -> StoredRun:
    if len(runs) == 1:
        return runs[0]
    infos = [_info(r) for r in runs]
    shared = [k for k in infos[0] if all(k in info for info in infos[1:])]
    best_epoch = _mean([r.best_epoch for r in runs])
    return replace(
        runs[0],
        train_acc=_mean([r.train_acc for r in runs]),
        test_acc=_mean([r.test_acc for r in runs]),
        train_loss=_mean([r.train_loss for r in runs]),
        test_loss=_mean([r.test_loss for r in runs]),
        best_test_acc=_mean([r.best_test_acc for r in runs]),
        best_epoch=round(best_epoch) if math.isfinite(best_epoch) else runs[0].best_epoch,
        seconds=float(sum(r.seconds for r in runs)),
        info={k: _mean([info[k] for info in infos]) for k in shared},
    )


def seed_runs(runs: Sequence[StoredRun]) -> list[StoredRun]:
    """One observation per seed, seeds ascending: the fold runs of a seed averaged.

    A seed with a single run (no folds) gives that run unchanged. A seed with several fold runs
    (k-fold cross-validation) gives one run with the means over its folds of the final metrics
    (``train_acc``, ``test_acc``, ``train_loss``, ``test_loss``, ``best_test_acc``: NaN or inf
    when a fold's is, so a diverged fold makes a diverged seed) and of the ``info`` values every
    fold recorded (``val_acc``, ``test_rmse`` ...), the rounded mean best epoch, the summed
    seconds, and the config and key of its lowest fold. A seed whose folds did not all finish
    is the mean of those that did.
    """
    return [_seed_mean(members) for members in _by_seed(runs)]


def seed_curves(
    runs: Sequence[StoredRun], curves: Mapping[str, Mapping[str, NDArray[np.float64]]]
) -> list[dict[str, NDArray[np.float64]]]:
    """Per-epoch curves, one per seed (seeds ascending): a seed's fold runs averaged per epoch.

    A seed with one run gives its curves; with several fold runs, each metric's mean over the
    folds that have a finite value at that epoch (NaN where none has), over the longest fold.
    """
    result: list[dict[str, NDArray[np.float64]]] = []
    for members in _by_seed(runs):
        if len(members) == 1:
            result.append(dict(curves[members[0].key]))
            continue
        folds = [curves[r.key] for r in members]
        merged = {}
        for metric in folds[0]:
            length = max(len(c[metric]) for c in folds)
            values = np.full((len(folds), length), math.nan)
            for i, c in enumerate(folds):
                values[i, : len(c[metric])] = c[metric]
            finite = np.isfinite(values)
            count = finite.sum(axis=0)
            mean = np.full(length, math.nan)
            np.divide(np.where(finite, values, 0.0).sum(axis=0), count, out=mean, where=count > 0)
            merged[metric] = mean
        result.append(merged)
    return result


@dataclass(frozen=True)
class ArmSummary:
    """One group (an arm at given rates) over its seeds. ``*_ci95`` are ``(low, high)``.

    The ``*_acc`` values are the task's score (:attr:`score_name`): accuracy for
    classification, R² for regression. Statistics leave out the group's diverged seeds
    (``n_nan``); ``n_seeds`` counts all seeds (with folds, a seed's fold runs are one
    observation, their mean). ``val_*`` come from the runs' validation split or folds (NaN
    without one); ``test_rmse_*`` and ``test_mae_*`` from regression runs (NaN otherwise).

    Kept for the statistics that read them, never in :meth:`to_dict`: ``test_scores`` and
    ``val_scores`` (per seed), ``seed_infos`` (each seed's ``info``, its folds averaged:
    :meth:`info_values`, :meth:`records`) and ``binary`` (built-in two-class data: its Brier
    score is at most 1).
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
    task: str = "classification"
    validation: float = 0.0
    folds: int = 0
    val_acc_mean: float = math.nan
    val_acc_ci95: tuple[float, float] = (math.nan, math.nan)
    val_loss_mean: float = math.nan
    test_rmse_mean: float = math.nan
    test_rmse_ci95: tuple[float, float] = (math.nan, math.nan)
    test_mae_mean: float = math.nan
    test_mae_ci95: tuple[float, float] = (math.nan, math.nan)
    val_gap_mean: float = math.nan
    val_gap_ci95: tuple[float, float] = (math.nan, math.nan)
    train_rmse_mean: float = math.nan
    val_rmse_mean: float = math.nan
    val_rmse_ci95: tuple[float, float] = (math.nan, math.nan)
    val_mae_mean: float = math.nan
    val_mae_ci95: tuple[float, float] = (math.nan, math.nan)
    keys: tuple[str, ...] = field(default=(), repr=False)
    test_scores: tuple[float, ...] = field(default=(), repr=False)
    val_scores: tuple[float, ...] = field(default=(), repr=False)
    seed_infos: tuple[dict[str, float], ...] = field(default=(), repr=False, compare=False)
    binary: bool = field(default=False, repr=False, compare=False)

    @property
    def n_valid(self) -> int:
        """Seeds that entered the statistics (not diverged)."""
        return self.n_seeds - self.n_nan

    @property
    def is_baseline(self) -> bool:
        return self.vs_baseline is None

    @property
    def score_name(self) -> str:
        """The score the ``*_acc`` values hold: ``"accuracy"`` or ``"R²"``."""
        return score_name(self.task)

    def strength(self, name: str) -> float | None:
        return dict(self.regularizers).get(name)

    def scores(self, on: str) -> tuple[float, ...]:
        """The per-seed scores on split ``on`` (``"validation"`` or ``"test"``), aligned with
        :attr:`seeds`; NaN for a diverged seed."""
        return self.val_scores if on == "validation" else self.test_scores

    def gap(self, on: str) -> float:
        """The mean train − ``on`` score gap (``on``: ``"validation"`` or ``"test"``)."""
        return self.val_gap_mean if on == "validation" else self.gap_mean

    def info_values(self, key: str) -> tuple[float, ...]:
        """The per-seed values of ``info[key]`` (a seed's folds averaged), aligned with
        :attr:`seeds`; NaN for a diverged seed or one without ``key``."""
        if not self.seed_infos:
            return tuple(math.nan for _ in self.seeds)
        return tuple(
            math.nan if math.isnan(score) else info.get(key, math.nan)
            for score, info in zip(self.test_scores, self.seed_infos, strict=True)
        )

    def records(self, key: str) -> bool:
        """Whether every seed of the group recorded ``info[key]`` (a seed's folds all did)."""
        return bool(self.seed_infos) and all(key in info for info in self.seed_infos)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None; ``vs_baseline`` gains ``significant``; ``score_name``
        is added. For regression the score keys say what they hold: ``train_r2_mean``,
        ``test_r2_mean``, ``test_r2_ci95``, ``val_r2_mean`` ... instead of ``*_acc_*`` (beside
        ``test_rmse_*``, ``test_mae_*``, ``val_rmse_*``, ``val_mae_*``)."""
        data = asdict(self)
        for name in ("keys", "test_scores", "val_scores", "seed_infos", "binary"):
            del data[name]
        data["score_name"] = self.score_name
        if self.task == "regression":
            data = {k.replace("_acc", "_r2"): v for k, v in data.items()}
        result: dict[str, Any] = json_ready(data)
        if self.vs_baseline is not None:
            result["vs_baseline"]["significant"] = self.vs_baseline.significant
        return result


def _interval(
    values: Sequence[float], bounds: tuple[float, float] = UNBOUNDED
) -> tuple[float, tuple[float, float]]:
    mean, low, high = mean_ci(values, bounds=bounds)
    return mean, (low, high)


def _info_values(infos: Sequence[Mapping[str, float]], name: str) -> list[float]:
    return [info[name] for info in infos if name in info]


def _summary(
    label: str,
    members: Sequence[StoredRun],
    curves: Mapping[str, Mapping[str, NDArray[np.float64]]] | None,
    vs_baseline: Comparison | None,
) -> ArmSummary:
    first = members[0].config
    task = first.data.task
    scores, gaps = score_range(task), gap_range(task)
    per_seed = _by_seed(members)
    observations = [_seed_mean(runs) for runs in per_seed]
    kept = [i for i, o in enumerate(observations) if not _diverged(o)]
    valid = [observations[i] for i in kept]
    test = [r.test_acc for r in valid]
    train_mean, train_ci = _interval([r.train_acc for r in valid], scores)
    test_mean, test_ci = _interval(test, scores)
    best_mean, best_ci = _interval([r.best_test_acc for r in valid], scores)
    loss_mean, loss_ci = _interval([r.test_loss for r in valid], _NON_NEGATIVE)
    gap_mean, gap_ci = _interval([r.gap for r in valid], gaps)
    epochs = (1.0, float(max(1, first.train.epochs)))
    converge = [
        _mean([epochs_to_converge(curves[r.key]["test_acc"]) for r in per_seed[i]])
        for i in kept
        if curves is not None and all(r.key in curves for r in per_seed[i])
    ]
    converge_mean, converge_ci = _interval(converge, epochs)
    infos = [_info(r) for r in valid]
    stops = _info_values(infos, "stop_epoch")
    val_mean, val_ci = _interval(_info_values(infos, "val_acc"), scores)
    val_gap_mean, val_gap_ci = _interval(
        [
            r.train_acc - info["val_acc"]
            for r, info in zip(valid, infos, strict=True)
            if "val_acc" in info
        ],
        gaps,
    )
    rmse_mean, rmse_ci = _interval(_info_values(infos, "test_rmse"), _NON_NEGATIVE)
    mae_mean, mae_ci = _interval(_info_values(infos, "test_mae"), _NON_NEGATIVE)
    val_rmse_mean, val_rmse_ci = _interval(_info_values(infos, "val_rmse"), _NON_NEGATIVE)
    val_mae_mean, val_mae_ci = _interval(_info_values(infos, "val_mae"), _NON_NEGATIVE)
    finite_test = finite_values(test)
    all_infos = [_info(o) for o in observations]
    return ArmSummary(
        arm=first.arm,
        p=first.p,
        input_p=first.input_p,
        max_norm=first.max_norm,
        n_seeds=len(observations),
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
        seeds=tuple(r.config.seed for r in observations),
        n_nan=len(observations) - len(valid),
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
        task=task,
        validation=first.data.validation,
        folds=first.data.folds,
        val_acc_mean=val_mean,
        val_acc_ci95=val_ci,
        val_loss_mean=mean_ci(_info_values(infos, "val_loss"))[0],
        test_rmse_mean=rmse_mean,
        test_rmse_ci95=rmse_ci,
        test_mae_mean=mae_mean,
        test_mae_ci95=mae_ci,
        val_gap_mean=val_gap_mean,
        val_gap_ci95=val_gap_ci,
        train_rmse_mean=mean_ci(_info_values(infos, "train_rmse"))[0],
        val_rmse_mean=val_rmse_mean,
        val_rmse_ci95=val_rmse_ci,
        val_mae_mean=val_mae_mean,
        val_mae_ci95=val_mae_ci,
        test_scores=tuple(math.nan if _diverged(o) else o.test_acc for o in observations),
        val_scores=tuple(
            math.nan if _diverged(o) else info.get("val_acc", math.nan)
            for o, info in zip(observations, all_infos, strict=True)
        ),
        keys=tuple(r.key for r in members),
        seed_infos=tuple(all_infos),
        binary=is_binary(first.data.name, all_infos),
    )


def _score_on(run: StoredRun, on: str) -> float:
    """A seed's final score on split ``on``; NaN when diverged or not recorded."""
    if _diverged(run):
        return math.nan
    if on == "validation":
        return _info(run).get("val_acc", math.nan)
    return run.test_acc


def compare(
    group: Sequence[StoredRun],
    baseline: Sequence[StoredRun],
    baseline_name: str,
    *,
    on: str = "test",
) -> Comparison:
    """Final score of ``group`` against ``baseline`` on split ``on``: paired when seeds pair.

    ``on`` is ``"test"`` (the final test score) or ``"validation"`` (``info["val_acc"]``: the
    split that chooses the best group, when there is one). The fold runs of a seed are
    averaged first (:func:`seed_runs`): one observation per seed. Seeds pair when both groups
    share data, architecture and training settings and hold the same set of seeds; diverged
    seeds are left out (with their partners). Otherwise Welch's t-test. The returned
    ``p_adjusted`` is this test alone's p-value.
    """
    group, baseline = seed_runs(group), seed_runs(baseline)
    shapes = {r.config.shape_key() for r in group}
    result = seed_test(
        [(r.config.seed, _score_on(r, on)) for r in group],
        [(r.config.seed, _score_on(r, on)) for r in baseline],
        baseline_name,
        pairable=len(shapes) == 1 and shapes == {r.config.shape_key() for r in baseline},
    )
    return replace(result, compared_on=on)


def seed_test(
    a: Sequence[tuple[int, float]],
    b: Sequence[tuple[int, float]],
    name: str,
    *,
    pairable: bool = True,
) -> Comparison:
    """``(seed, score)`` pairs of a group against another's: the paired t-test by seed when
    both hold the same seeds, each once (and the runs are ``pairable``: same data, model and
    training), else Welch's t-test on the scores in the order given."""
    seeds = [seed for seed, _ in a]
    if pairable and sorted(seeds) == sorted(seed for seed, _ in b) and len(set(seeds)) == len(a):
        partner = dict(b)
        ordered = sorted(a, key=lambda pair: pair[0])
        return paired([v for _, v in ordered], [partner[seed] for seed, _ in ordered], name)
    return welch([v for _, v in a], [v for _, v in b], name)


@dataclass(frozen=True)
class Criterion:
    """What :func:`best_rate` ranks the groups by (:func:`criterion` resolves a name).

    Attributes:
        name: the ``choose_by`` name, resolved: ``"score"``, ``"mc_nll"``, ``"det_ece"`` ...,
            or ``"rmse"`` (regression runs without calibration metrics: their plain RMSE).
        key: the ``info`` key of its test value (``"mc_nll"``, ``"test_rmse"``); ``""``
            for the task's score.
        validation_key: the ``info`` key of its validation value (``"val_mc_nll"``).
        label: its name in a sentence (``"NLL (MC dropout)"``); ``""`` for the score.
        metric: the calibration metric's name (``"nll"``), for its range.
        lower_is_better: True for the calibration metrics, False for the score.
        spec: the format of its values in a sentence (``".3f"``; ``".4g"`` for regression's,
            in the target's units).
    """

    name: str = "score"
    key: str = ""
    validation_key: str = ""
    label: str = ""
    metric: str = ""
    lower_is_better: bool = False
    spec: str = ".3f"

    @property
    def is_score(self) -> bool:
        """Whether this is the task's score (accuracy or R², higher is better)."""
        return not self.key

    def words(self, summary: ArmSummary) -> str:
        """Its name in a sentence: the label, or the task's score name."""
        return summary.score_name if self.is_score else self.label

    def bounds(self, summary: ArmSummary) -> tuple[float, float]:
        """Its range for ``summary``'s data (:func:`score_range` for the score)."""
        if self.is_score:
            return score_range(summary.task)
        metric = calibration_metric(summary.task, self.metric)
        return metric_bounds(metric, summary.binary)

    def values(self, summary: ArmSummary, on: str) -> tuple[float, ...]:
        """The per-seed values on split ``on``, aligned with the group's seeds (NaN for a
        diverged seed or one without it)."""
        if self.is_score:
            return summary.scores(on)
        return summary.info_values(self.validation_key if on == "validation" else self.key)

    def mean(self, summary: ArmSummary, on: str) -> float:
        """The group's mean on split ``on`` (:func:`selection_score` for the score)."""
        if self.is_score:
            return selection_score(summary, on)
        return mean_ci(self.values(summary, on))[0]

    def interval(self, summary: ArmSummary, on: str) -> tuple[float, float]:
        """The 95% interval of the group's mean on split ``on``, kept inside the range."""
        if self.is_score:
            return summary.val_acc_ci95 if on == "validation" else summary.test_acc_ci95
        _, low, high = mean_ci(self.values(summary, on), bounds=self.bounds(summary))
        return low, high

    def rank(self, summary: ArmSummary, on: str) -> float:
        """A sort key: the better the mean, the smaller (the mean, or minus it)."""
        mean = self.mean(summary, on)
        return mean if self.lower_is_better else -mean


SCORE = Criterion()
"""The default :class:`Criterion`: the task's score (accuracy or R²), higher is better."""


def criterion(summaries: Sequence[ArmSummary], choose_by: str = "score") -> Criterion:
    """The :class:`Criterion` a ``choose_by`` name stands for in these groups.

    ``"score"``: the task's score. A calibration metric (``"nll"``, ``"brier"``, ``"ece"``;
    for regression ``"nll"``, ``"rmse"``; lower is better) optionally prefixed with its mode
    (``"det_"``: dropout off, ``"mc_"``: Monte Carlo dropout). Unprefixed, the mode is MC
    dropout when every group (with a finite test score) recorded it, else the deterministic
    one when every group did, else the mode some group recorded (the others are not ranked);
    a group records a metric when every one of its seeds has it in ``info``. Regression runs
    without calibration metrics are chosen by ``"rmse"`` on their plain RMSE.

    Raises:
        ValueError: an unknown name (the message lists the names the task takes), or a metric
            no group recorded.
    """
    task = summaries[0].task if summaries else "classification"
    mode, metric = parse_choose_by(choose_by, task)
    if metric is None:
        return SCORE
    candidates = [s for s in summaries if math.isfinite(s.test_acc_mean)] or list(summaries)
    modes = (mode,) if mode else ("mc", "det")
    for every in (True, False):
        for m in modes:
            key = info_key(m, metric)
            holders = [s for s in candidates if s.records(key)]
            if holders and (not every or len(holders) == len(candidates)):
                return Criterion(
                    f"{m}_{metric}",
                    key,
                    info_key(m, metric, "validation"),
                    f"{calibration_metric(task, metric).label} ({MODE_NAMES[m]})",
                    metric,
                    lower_is_better=True,
                    spec=".4g" if task == "regression" else ".3f",
                )
    if mode is None and metric == "rmse" and any(s.records("test_rmse") for s in candidates):
        return Criterion("rmse", "test_rmse", "val_rmse", "RMSE", "rmse", True, ".4g")
    wanted = f"{mode}_{metric}" if mode else f"det_{metric} or mc_{metric}"
    raise ValueError(
        f"`choose_by`={choose_by!r}: no group's runs recorded {wanted}; runs record calibration "
        "metrics when trained with `evaluate` set ('deterministic', 'mc' or 'both')"
    )


def compare_scores(
    group: ArmSummary, other: ArmSummary, on: str, *, name: str | None = None
) -> Comparison:
    """``group``'s per-seed scores on split ``on`` against ``other``'s, from the summaries:
    paired by seed when both hold the same seeds (the groups of one experiment share data,
    model and training), else Welch's t-test; with its power figures (one comparison)."""
    return with_power(_criterion_test(group, other, on, other.name if name is None else name))


def _criterion_test(
    group: ArmSummary, other: ArmSummary, on: str, name: str, by: Criterion = SCORE
) -> Comparison:
    """``group``'s per-seed values of ``by`` on split ``on`` against ``other``'s, without the
    power figures (the tie rule reads p only)."""
    result = seed_test(
        list(zip(group.seeds, by.values(group, on), strict=True)),
        list(zip(other.seeds, by.values(other, on), strict=True)),
        name,
    )
    return replace(result, compared_on=on)


def summarize(
    runs: Sequence[StoredRun],
    curves: Mapping[str, Mapping[str, NDArray[np.float64]]] | None = None,
) -> list[ArmSummary]:
    """Group runs (identical but for the seed and fold) and summarize each group over its seeds.

    Args:
        runs: stored runs, of one data set and model (the caller's experiment).
        curves: per-run curves by run key (``store.curves(key)``), for the epochs to converge;
            None leaves them NaN.

    Returns:
        The baseline group first (no ``vs_baseline``), then every other group, compared with it
        on the split that chooses the best group (:func:`chosen_on`: validation when every
        group has a validation score, else test; paired or Welch's t-test, Holm-adjusted over
        all the groups, with the power figures of
        :func:`~dropkit.lab.results.significance.with_power`).
    """
    grouped = group_runs(runs)
    if not grouped:
        return []
    plain = [_summary(label, members, curves, None) for label, members in grouped]
    on = chosen_on(plain)
    baseline_name, baseline = grouped[0]
    raw = [compare(members, baseline, baseline_name, on=on) for _, members in grouped[1:]]
    comparisons: list[Comparison | None] = [None, *holm_adjusted(raw)]
    return [
        replace(summary, vs_baseline=comparison)
        for summary, comparison in zip(plain, comparisons, strict=True)
    ]


def chosen_on(summaries: Sequence[ArmSummary]) -> str:
    """The split that chooses the best group: ``"validation"`` when every group with a finite
    mean test score has a finite mean validation score, else ``"test"``."""
    candidates = [s for s in summaries if math.isfinite(s.test_acc_mean)]
    if candidates and all(math.isfinite(s.val_acc_mean) for s in candidates):
        return "validation"
    return "test"


def selection_score(summary: ArmSummary, on: str) -> float:
    """The mean score a group is ranked by when the best group is chosen ``on`` a split."""
    return summary.val_acc_mean if on == "validation" else summary.test_acc_mean


def criterion_on(summaries: Sequence[ArmSummary], by: Criterion = SCORE) -> str:
    """The split that chooses by ``by``: for the score :func:`chosen_on`; for a calibration
    metric ``"validation"`` when every group with a finite test score and a test value of it
    has a validation value too, else ``"test"``."""
    if by.is_score:
        return chosen_on(summaries)
    candidates = [s for s in summaries if math.isfinite(s.test_acc_mean)]
    ranked = [s for s in candidates if math.isfinite(by.mean(s, "test"))]
    if ranked and all(math.isfinite(by.mean(s, "validation")) for s in ranked):
        return "validation"
    return "test"


@dataclass(frozen=True)
class BestRate:
    """The best group, how it was chosen, the groups tied with it, and its evidence.

    Attributes:
        summary: the chosen group.
        evidence: one sentence: the group, its score on the split that chose it, the groups
            tied with it, its test score once (with the RMSE for regression), its test against
            the baseline, and whether the seeds suffice for a claim.
        chosen_on: ``"validation"`` (held-out rows of the training split, or the folds'
            validation parts) or ``"test"`` (without a validation split the test set doubles as
            validation, as in the published case study).
        choice: one line naming the split that chose and the rule, for the report and the CLI.
        top: the group with the highest mean score on that split.
        tied: the groups not significantly worse than ``top`` (``top`` and the chosen group
            included), simplest first (the chosen group leads): the rule cannot tell them
            apart.
        rule: the choice rule, in words (:data:`CHOICE_RULE`).
        held_out: when chosen on validation, the chosen group against the baseline on the
            test set: read once, for the winner only (None otherwise, or for the baseline).
        provisional: fewer usable seeds than
            :data:`~dropkit.lab.results.significance.MIN_SEEDS_FOR_CLAIM` in the chosen group or the
            baseline: the answer is a pointer, not a claim.
        choose_by: what the groups were ranked by (:func:`criterion`): ``"score"`` (the
            task's accuracy or R²) or a calibration metric with its mode (``"mc_nll"``).
    """

    summary: ArmSummary
    evidence: str
    chosen_on: str = "test"
    choice: str = ""
    top: str = ""
    tied: tuple[str, ...] = ()
    rule: str = ""
    held_out: Comparison | None = None
    provisional: bool = False
    choose_by: str = "score"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``name`` (the group's label), ``arm``, ``p``, ``evidence``,
        ``chosen_on``, ``choice``, ``top``, ``tied``, ``rule``, ``held_out`` (a comparison or
        None), ``provisional`` and, when the groups were not ranked by the score,
        ``choose_by``."""
        held = None
        if self.held_out is not None:
            held = json_ready(asdict(self.held_out))
            held["significant"] = self.held_out.significant
        result: dict[str, Any] = {
            "name": self.summary.name,
            "arm": self.summary.arm,
            "p": self.summary.p,
            "evidence": self.evidence,
            "chosen_on": self.chosen_on,
            "choice": self.choice,
            "top": self.top,
            "tied": list(self.tied),
            "rule": self.rule,
            "held_out": held,
            "provisional": self.provisional,
        }
        if self.choose_by != "score":
            result["choose_by"] = self.choose_by
        return result


CHOICE_RULE = (
    "the groups whose mean score is not significantly below the highest (paired t-test on the "
    f"per-seed scores, two-sided, p >= {ALPHA:g}; with fewer than 2 seeds only equal means) "
    "tie; of them the simplest wins: no regularization first, then the fewest regularizers, "
    "then the lowest total drop rate, then the higher mean"
)
"""How :func:`best_rate` chooses, as the report and the CLI state it."""


def choice_rule(by: Criterion = SCORE) -> str:
    """The choice rule in words for ``by``: :data:`CHOICE_RULE` for the score; for a metric
    whose lower value is better, the same rule read from the lowest mean."""
    if by.is_score:
        return CHOICE_RULE
    extreme, side, order = (
        ("lowest", "above", "lower") if by.lower_is_better else ("highest", "below", "higher")
    )
    return (
        f"the groups whose mean {by.label} is not significantly {side} the {extreme} (paired "
        f"t-test on the per-seed values, two-sided, p >= {ALPHA:g}; with fewer than 2 seeds "
        "only equal means) tie; of them the simplest wins: no regularization first, then the "
        f"fewest regularizers, then the lowest total drop rate, then the {order} mean"
    )


def _ci_text(interval: tuple[float, float], n_valid: int, spec: str = ".3f") -> str:
    low, high = interval
    if math.isfinite(low):
        return f"95% CI [{low:{spec}}, {high:{spec}}]"
    if n_valid == 1:
        return "(one seed: no interval)"
    if n_valid > 1:
        return f"(no spread over {n_valid} seeds: no interval)"
    return "(no usable seed: no interval)"


def _choice(best: ArmSummary, on: str, by: Criterion = SCORE) -> str:
    score = by.words(best)
    rule = choice_rule(by)
    if on == "validation":
        if best.folds:
            where = f"each seed's {best.folds} cross-validation folds averaged"
        else:
            where = f"{best.validation:.0%} of the training split held out"
        return (
            f"chosen on validation {score} over seeds ({where}): {rule}; the test set "
            "took no part in the choice and is read once, for the chosen group"
        )
    if best.folds or best.validation > 0:
        reason = f"not every group has a validation {score}"
    else:
        reason = "there is no validation split"
    return (
        f"chosen on the test set: {reason}, so the test set doubles as validation (as in the "
        f"published tutorial) and the chosen group's test {score} is optimistic; {rule}"
    )


def _is_plain_baseline(s: ArmSummary) -> bool:
    return s.arm == "none" and s.p == 0 and s.input_p == 0 and not s.regularizers


def plain_name(summary: ArmSummary, summaries: Sequence[ArmSummary]) -> str:
    """A group's name in a sentence: the unregularized group reads ``"no dropout (p = 0)"``
    when every group differs only in its dropout rates, ``"no regularization (none)"``
    otherwise; any other group its label."""
    if _is_plain_baseline(summary) and summary.max_norm is None:
        rates_only = all(not s.regularizers and s.max_norm is None for s in summaries)
        return "no dropout (p = 0)" if rates_only else "no regularization (none)"
    return summary.name or f"{summary.arm} p={summary.p:g}"


def _simplicity(
    s: ArmSummary, on: str, by: Criterion = SCORE
) -> tuple[int, int, float, float, str]:
    regularized = 0 if _is_plain_baseline(s) and s.max_norm is None else 1
    tokens = 0 if s.arm == "none" else len(s.arm.split("+"))
    return (regularized, tokens, s.p + s.input_p, by.rank(s, on), s.name)


def tied_with(
    top: ArmSummary, summaries: Sequence[ArmSummary], on: str, *, by: Criterion = SCORE
) -> list[ArmSummary]:
    """The groups whose score on ``on`` is not significantly below ``top``'s (``top`` included).

    A group ties when the two-sided test of its per-seed scores against ``top``'s
    (:func:`compare_scores`: paired by seed) gives ``p >= α`` (0.05), or, when no test can be
    made (fewer than two seeds), when its mean equals ``top``'s. ``by``: rank by another
    :class:`Criterion` (a calibration metric: not significantly worse than ``top``'s).
    """
    tied = []
    for s in summaries:
        if s is top:
            tied.append(s)
            continue
        test = _criterion_test(s, top, on, top.name, by)
        if math.isfinite(test.p_value):
            if test.p_value >= ALPHA:
                tied.append(s)
        elif by.mean(s, on) == by.mean(top, on):
            tied.append(s)
    return tied


def _versus_text(c: Comparison, by: Criterion = SCORE) -> str:
    """A comparison in words: the difference, the split, the test's numbers and, when it is
    not significant, the power figures; the fallback's note. ``by``: the metric compared
    (named, and read with its direction, when it is not the score)."""
    spec = by.spec
    p_text = f"{c.test_name} p={c.p_value:.2g}"
    if math.isfinite(c.p_adjusted) and c.p_adjusted != c.p_value:
        p_text += f", Holm-adjusted p={c.p_adjusted:.2g}"
    where = "validation" if c.compared_on == "validation" else "test"
    difference = f"{c.difference:+{spec}}"
    if c.significant:
        better = c.difference < 0 if by.lower_is_better else c.difference > 0
        verdict = "better" if better else "worse"
        if by.is_score:
            text = (
                f"{verdict} than {c.baseline} on {where} by {difference} ({p_text}, significant "
                f"at {ALPHA:g})"
            )
        else:
            direction = "lower" if by.lower_is_better else "higher"
            text = (
                f"{verdict} {by.label} than {c.baseline} on {where} by {difference} "
                f"({direction} is better; {p_text}, significant at {ALPHA:g})"
            )
    else:
        what = "" if by.is_score else f"{by.label} "
        text = f"{what}{difference} against {c.baseline} on {where} is NOT significant ({p_text})"
        power_parts = []
        if math.isfinite(c.detectable):
            power_parts.append(f"these seeds detect about ±{c.detectable:{spec}} at 80% power")
        if c.seeds_needed is not None:
            power_parts.append(f"about {c.seeds_needed} seeds per group would detect {difference}")
        if power_parts:
            text += ": " + ", ".join(power_parts)
    if c.note:
        text += f" [{c.note}]"
    return text


def _evidence(
    best: ArmSummary,
    top: ArmSummary,
    tied: Sequence[ArmSummary],
    on: str,
    held_out: Comparison | None,
    name: str,
    by: Criterion = SCORE,
    versus: Mapping[str, Comparison] | None = None,
) -> str:
    """The best group's sentence: its value on the choosing split, the groups tied with it,
    its test score once, its test against the baseline and, when the rule chose a simpler
    group than the top, the top's test too. ``by`` and ``versus``: a calibration metric
    ranked the groups, and each group's test of it against the baseline (by name)."""
    score = best.score_name
    test_text = (
        f"test {score} {best.test_acc_mean:.3f} {_ci_text(best.test_acc_ci95, best.n_valid)}"
    )
    if best.task == "regression" and math.isfinite(best.test_rmse_mean):
        test_text += f", RMSE {best.test_rmse_mean:.4g}"
        if math.isfinite(best.test_mae_mean):
            test_text += f", MAE {best.test_mae_mean:.4g}"
    if not by.is_score:
        test_text = f"{_criterion_text(best, 'test', by)}, {test_text}"
    others = [s.name for s in tied if s is not best]
    tie_text = ""
    if others:
        where = "it" if best is top else f"the top, {top.name}"
        relation = "below" if by.is_score else "worse than"
        tie_text = (
            f"; tied with {', '.join(others)} (not significantly {relation} {where}): "
            "the simplest of them is chosen"
        )
    if by.is_score:
        lead = f"{score} {best.val_acc_mean:.3f} {_ci_text(best.val_acc_ci95, best.n_valid)}"
    else:
        lead = _criterion_text(best, "validation", by)
    if on == "validation":
        text = f"best: {name}, chosen on validation {lead}{tie_text}; held-out {test_text}"
    else:
        text = f"best: {name}, {test_text}{tie_text}"
    if by.is_score:
        comparison, top_versus = best.vs_baseline, top.vs_baseline
        better = "scored significantly better"
    else:
        comparison = (versus or {}).get(best.name)
        top_versus = (versus or {}).get(top.name)
        better = f"had a significantly better {by.label}"
    if comparison is None:
        text += "" if top is not best else f"; no other setting {better}"
    elif math.isfinite(comparison.p_value):
        text += f"; {_versus_text(comparison, by)}"
    else:
        text += f"; not enough seeds (or spread) to test it against {comparison.baseline}"
    if top is not best and top_versus is not None:
        if math.isfinite(top_versus.p_value):
            text += f"; the top, {top.name}, {_versus_text(top_versus, by)}"
        else:
            text += f"; not enough seeds (or spread) to test the top, {top.name}"
    if held_out is not None and math.isfinite(held_out.p_value):
        text += f"; on the held-out test set {_versus_text(held_out, by)}"
    if on == "test":
        text += "; chosen on the test set, which doubles as validation"
    return text


def _criterion_text(summary: ArmSummary, on: str, by: Criterion) -> str:
    """``"NLL (MC dropout) 0.312 95% CI [...]"``: ``by``'s mean on ``on`` (prefixed with
    ``test`` on the test set) and its interval."""
    values = by.values(summary, on)
    n_valid = sum(math.isfinite(v) for v in values)
    where = "test " if on == "test" else ""
    interval = _ci_text(by.interval(summary, on), n_valid, by.spec)
    return f"{where}{by.label} {by.mean(summary, on):{by.spec}} {interval}"


def _versus_baseline(
    summaries: Sequence[ArmSummary], baseline: ArmSummary | None, on: str, by: Criterion
) -> dict[str, Comparison]:
    """Each group's values of ``by`` on ``on`` against the baseline's, by group name,
    Holm-adjusted together (with the power figures)."""
    if baseline is None:
        return {}
    others = [s for s in summaries if s is not baseline]
    raw = [_criterion_test(s, baseline, on, baseline.name, by) for s in others]
    return {s.name: c for s, c in zip(others, holm_adjusted(raw), strict=True)}


def best_rate(summaries: Sequence[ArmSummary], choose_by: str = "score") -> BestRate | None:
    """The best group by :data:`CHOICE_RULE`, with the groups tied with it and its evidence.

    The split (:func:`chosen_on`): validation when every candidate group has a validation
    score, else the test set. The group with the highest mean score there is the *top*; the
    groups not significantly below it tie (:func:`tied_with`); the simplest of the tied wins
    (no regularization, fewest regularizers, lowest total drop rate, higher mean): never the
    order of the list. When validation chose, the winner's test score is its held-out
    estimate and is compared with the baseline's on the test set (one paired test).

    ``choose_by`` ranks by another metric (:func:`criterion`): ``"score"`` (the default: the
    task's accuracy or R²), or ``"nll"``, ``"brier"``, ``"ece"`` (regression: ``"nll"``,
    ``"rmse"``), optionally prefixed ``"det_"`` or ``"mc_"``, whose lower value is better. The
    same rule then reads from the lowest mean, on the metric's validation values when every
    ranked group has them (:func:`criterion_on`), and the evidence names the metric; each
    group is compared with the baseline on it (Holm-adjusted together).

    Raises:
        ValueError: an unknown ``choose_by`` (the message lists the names), or a metric no
            group recorded.
    """
    parse_choose_by(choose_by, summaries[0].task if summaries else "classification")
    finite = [s for s in summaries if math.isfinite(s.test_acc_mean)]
    if not finite:
        return None
    by = criterion(finite, choose_by)
    on = criterion_on(finite, by)
    ranked = [s for s in finite if math.isfinite(by.mean(s, on))] or finite
    top = min(ranked, key=lambda s: (by.rank(s, on), _simplicity(s, on, by)))
    tied = sorted(tied_with(top, ranked, on, by=by), key=lambda s: _simplicity(s, on, by))
    best = tied[0]
    baseline = summaries[0] if summaries and summaries[0].is_baseline else None
    held_out = None
    if on == "validation" and baseline is not None and best is not baseline:
        held_out = with_power(_criterion_test(best, baseline, "test", baseline.name, by))
    versus = None if by.is_score else _versus_baseline(ranked, baseline, on, by)
    name = plain_name(best, summaries)
    evidence = _evidence(best, top, tied, on, held_out, name, by, versus)
    seeds = min([best.n_valid] + ([baseline.n_valid] if baseline is not None else []))
    provisional = seeds < MIN_SEEDS_FOR_CLAIM
    if provisional:
        evidence += (
            f"; only {seeds} usable seed{'s' if seeds != 1 else ''}: below the "
            f"{MIN_SEEDS_FOR_CLAIM} a claim needs, so treat this as provisional"
        )
    return BestRate(
        best,
        evidence,
        on,
        _choice(best, on, by),
        top=top.name,
        tied=tuple(s.name for s in tied),
        rule=choice_rule(by),
        held_out=held_out,
        provisional=provisional,
        choose_by=by.name,
    )
