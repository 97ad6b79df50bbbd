"""Figures, drawn from the results store only (matplotlib's Agg backend, no display needed).

A figure can be rebuilt at any time from the store, without retraining. The ``*_figure``
functions return a matplotlib figure; :func:`png_bytes` and :func:`save_png` render it
deterministically (no timestamp or version in the PNG metadata), so the same store gives the
same bytes.

Figures speak the task's score: accuracy for classification, R² (and the test RMSE, mean
squared error for the loss) for regression; ``task`` arguments take ``DataSpec.task``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.plan.records import CURVE_METRICS
from dropkit.lab.results import ArmSummary
from dropkit.lab.results.calibration_metrics import MODE_NAMES, N_BINS
from dropkit.lab.results.calibration_stats import PooledBins
from dropkit.lab.results.summary import chosen_on, loss_name, score_name

__all__ = [
    "R2_FLOOR",
    "Curves",
    "accuracy_curves_figure",
    "arm_figure",
    "boundary_figure",
    "learning_curves_figure",
    "metric_title",
    "png_bytes",
    "rate_figure",
    "reliability_figure",
    "save_png",
    "stack_curves",
    "uncertainty_figure",
]

Figure = Any  # matplotlib.figure.Figure (matplotlib ships no type hints mypy reads here)
Curves = dict[str, NDArray[np.float64]]
# Fixed rendering settings: the same store must give the same bytes on every call.
_RC = {"svg.hashsalt": "dropkit", "path.simplify": True, "font.size": 9}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    plt = _pyplot()
    with plt.rc_context(_RC):
        figure, axes = plt.subplots(*args, **kwargs)
    return figure, axes


def png_bytes(figure: Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, without metadata (deterministic); closes the figure."""
    plt = _pyplot()
    buffer = io.BytesIO()
    with plt.rc_context(_RC):
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def save_png(figure: Figure, path: Path, *, dpi: int = 120) -> Path:
    """Write the figure to ``path`` as PNG (folder created); closes the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(figure, dpi=dpi))
    return path


def _colors(count: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def stack_curves(curves: Sequence[Mapping[str, NDArray[np.float64]]]) -> Curves:
    """Per-run curves stacked: ``{metric: (runs, epochs)}``, NaN-padded to the longest run."""
    length = max((len(c["test_acc"]) for c in curves), default=0)
    stacked = {}
    for metric in CURVE_METRICS:
        values = np.full((len(curves), length), math.nan)
        for i, c in enumerate(curves):
            values[i, : len(c[metric])] = c[metric]
        stacked[metric] = values
    return stacked


def _measured(
    values: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """The epochs (1-based) where some run of ``values`` ``(runs, epochs)`` was measured, with
    the mean and band there (:func:`_mean_band`): curves measured every ``k``-th epoch
    (``eval_every``) are drawn through their points, not as gaps."""
    mean, half = _mean_band(values)
    kept = np.isfinite(mean)
    return np.arange(1, values.shape[1] + 1)[kept], mean[kept], half[kept]


def _mean_band(values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-epoch mean over runs and the half-width of its 95% t-interval (NaN: not computed).

    NaN entries (diverged or shorter runs) are skipped; an epoch with fewer than two finite
    values has no band.
    """
    from scipy import stats as sps

    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    filled = np.where(finite, values, 0.0)
    mean = np.full(values.shape[1], math.nan)
    np.divide(filled.sum(axis=0), count, out=mean, where=count > 0)
    squares = np.where(finite, (values - mean) ** 2, 0.0).sum(axis=0)
    half = np.full(values.shape[1], math.nan)
    several = count > 1
    dof = np.maximum(count - 1, 1)
    half[several] = (
        sps.t.ppf(0.975, dof[several])
        * np.sqrt(squares[several] / dof[several])
        / np.sqrt(count[several])
    )
    return mean, half


def metric_title(metric: str, task: str = "classification") -> str:
    """A curve metric's name for a figure: ``train acc``, ``test loss`` (classification) or
    ``train R²``, ``test MSE`` (regression)."""
    if task == "classification":
        return metric.replace("_", " ")
    split, kind = metric.split("_", 1)
    return f"{split} {score_name(task) if kind == 'acc' else loss_name(task)}"


R2_FLOOR = -1.0
"""Regression score panels show R² from this floor up: an untrained network's R² can be far
below 0 (its errors many times the target's variance) and would flatten every later epoch."""


def _floor_r2(axis: Any, lowest: float, task: str) -> None:
    if task == "regression" and lowest < R2_FLOOR:
        axis.set_ylim(bottom=R2_FLOOR)
        axis.set_title(f"{axis.get_title()} (from {R2_FLOOR:g})")


def learning_curves_figure(
    groups: Sequence[tuple[str, Curves]],
    *,
    title: str,
    metrics: Sequence[str] = CURVE_METRICS,
    task: str = "classification",
) -> Figure:
    """One panel per metric (train/test score and loss: accuracy and cross-entropy, or R² and
    MSE for regression): each group's mean over its seeds per epoch, with a band of the mean's
    95% t-interval where the group has two or more seeds."""
    columns = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / columns)
    legend_rows = math.ceil(len(groups) / 4)
    height = 3.4 * rows + 0.6 + 0.25 * legend_rows
    figure, axes = _figure(rows, columns, figsize=(11, height), squeeze=False)
    # A fixed layout: constrained layout costs as much again as drawing the figure.
    figure.subplots_adjust(
        left=0.06,
        right=0.98,
        top=1 - 0.55 / height,
        bottom=(0.55 + 0.25 * legend_rows) / height,
        hspace=0.45,
        wspace=0.15,
    )
    colors = _colors(len(groups))
    for axis, metric in zip(axes.flat, metrics, strict=False):
        lowest = math.inf
        for color, (label, curves) in zip(colors, groups, strict=True):
            values = curves[metric]
            if values.size == 0:
                continue
            epochs, mean, half = _measured(values)
            lowest = min(lowest, float(np.nanmin(mean, initial=math.inf)))
            axis.plot(epochs, mean, color=color, lw=1.2, label=label)
            if np.isfinite(half).any():
                axis.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.15, lw=0)
        axis.set_title(metric_title(metric, task))
        if metric.endswith("_acc"):
            _floor_r2(axis, lowest, task)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(metrics) :]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    figure.suptitle(title)
    return figure


def accuracy_curves_figure(
    groups: Sequence[tuple[str, Curves]], *, title: str, task: str = "classification"
) -> Figure:
    """Train (dashed) and test (solid) score per epoch for each group of seeds: accuracy, or R²
    for regression.

    Each line is the mean over the group's seeds; the band is the mean's 95% t-interval per
    epoch when the group has two or more seeds.
    """
    figure, axis = _figure(figsize=(9, 5.5), constrained_layout=True)
    present = [(label, curves) for label, curves in groups if curves["test_acc"].size]
    lowest = math.inf
    for color, (label, curves) in zip(_colors(len(present)), present, strict=True):
        for metric, style in (("train_acc", "--"), ("test_acc", "-")):
            values = curves[metric]
            epochs, mean, half = _measured(values)
            lowest = min(lowest, float(np.nanmin(mean, initial=math.inf)))
            name = "train" if metric == "train_acc" else "test"
            axis.plot(epochs, mean, style, color=color, lw=1.4, label=f"{label}: {name}")
            if np.isfinite(half).any():
                axis.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.15, lw=0)
    axis.set_xlabel("epoch")
    axis.set_ylabel(score_name(task))
    axis.set_title(title)
    _floor_r2(axis, lowest, task)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=9)
    return figure


def _errors(means: NDArray[np.float64], intervals: NDArray[np.float64]) -> NDArray[np.float64]:
    """``(2, n)`` error-bar lengths from means and ``(n, 2)`` intervals; 0 where unknown."""
    return np.nan_to_num(np.stack([means - intervals[:, 0], intervals[:, 1] - means]), nan=0.0)


def _task(summaries: Sequence[ArmSummary]) -> str:
    return summaries[0].task if summaries else "classification"


def _on(summaries: Sequence[ArmSummary]) -> tuple[str, str]:
    """``(on, word)``: the split that chooses (:func:`chosen_on`) and its name in a legend."""
    on = chosen_on(summaries)
    return on, "validation" if on == "validation" else "test"


def _score(s: ArmSummary, on: str) -> tuple[float, tuple[float, float]]:
    if on == "validation":
        return s.val_acc_mean, s.val_acc_ci95
    return s.test_acc_mean, s.test_acc_ci95


def _rmse(s: ArmSummary, on: str) -> tuple[float, tuple[float, float]]:
    if on == "validation":
        return s.val_rmse_mean, s.val_rmse_ci95
    return s.test_rmse_mean, s.test_rmse_ci95


def rate_figure(families: Sequence[tuple[str, Sequence[ArmSummary]]], *, title: str) -> Figure:
    """Mean final score on the split that chooses (solid: validation when there is one, else
    test) and train score (dashed) against the drop rate (accuracy, or R² for regression), with
    95% CI error bars, one colour per family of groups that differ only in ``p``."""
    figure, axis = _figure(figsize=(8, 4.8), constrained_layout=True)
    on, word = _on([s for _, members in families for s in members])
    for color, (label, members) in zip(_colors(len(families)), families, strict=True):
        ordered = sorted(members, key=lambda s: s.p)
        rates = [s.p for s in ordered]
        series = (
            (word, "o-", [_score(s, on) for s in ordered]),
            ("train", "s--", [(s.train_acc_mean, s.train_acc_ci95) for s in ordered]),
        )
        for name, fmt, values in series:
            means = np.array([mean for mean, _ in values])
            intervals = np.array([ci for _, ci in values], dtype=float).reshape(-1, 2)
            axis.errorbar(
                rates,
                means,
                yerr=_errors(means, intervals),
                fmt=fmt,
                color=color,
                capsize=4,
                alpha=1.0 if name == word else 0.6,
                label=f"{label}: {name}",
            )
    axis.set_xlabel("dropout rate p (drop probability)")
    task = _task([s for _, members in families for s in members])
    axis.set_ylabel(f"final {score_name(task)} (mean, 95% CI)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def _dots(
    axis: Any, y: NDArray[np.int64], scored: Sequence[tuple[float, tuple[float, float]]], label: str
) -> NDArray[np.float64]:
    """Each group's mean (a dot at height ``y``) with its 95% CI as a horizontal error bar;
    returns the means."""
    means = np.array([mean for mean, _ in scored])
    intervals = np.array([ci for _, ci in scored], dtype=float).reshape(-1, 2)
    axis.errorbar(
        means, y, xerr=_errors(means, intervals), fmt="o", color="tab:blue", capsize=3, label=label
    )
    return means


def arm_figure(summaries: Sequence[ArmSummary], *, title: str) -> Figure:
    """Each group's mean final score on the split that chooses (validation when there is one,
    else test) with its 95% CI (dots, bars) and its mean train score (hollow squares); the
    dashed line is the baseline's. The score is accuracy, or R² for regression, which adds a
    second panel: each group's mean RMSE on that split with its 95% CI."""
    count = max(len(summaries), 1)
    if _task(summaries) == "regression":
        return _regression_arm_figure(summaries, count, title)
    on, word = _on(summaries)
    figure, axis = _figure(figsize=(9, 1.2 + 0.38 * count), constrained_layout=True)
    y = np.arange(len(summaries))[::-1]
    means = _dots(axis, y, [_score(s, on) for s in summaries], word)
    train = np.array([s.train_acc_mean for s in summaries])
    axis.plot(train, y, "s", mfc="none", color="tab:orange", label="train")
    if summaries and math.isfinite(means[0]):
        axis.axvline(means[0], color="gray", ls="--", lw=1, label=f"baseline {word}")
    axis.set_yticks(y, [s.name or s.arm for s in summaries])
    axis.set_xlabel("final accuracy (mean, 95% CI)")
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="x")
    axis.legend(fontsize=8, loc="best")
    return figure


def _regression_arm_figure(summaries: Sequence[ArmSummary], count: int, title: str) -> Figure:
    on, word = _on(summaries)
    figure, (left, right) = _figure(
        1, 2, figsize=(11, 1.2 + 0.38 * count), constrained_layout=True, sharey=True
    )
    y = np.arange(len(summaries))[::-1]
    means = _dots(left, y, [_score(s, on) for s in summaries], word)
    train = np.array([s.train_acc_mean for s in summaries])
    left.plot(train, y, "s", mfc="none", color="tab:orange", label="train")
    rmse = _dots(right, y, [_rmse(s, on) for s in summaries], word)
    if summaries:
        for axis, value in ((left, means[0]), (right, rmse[0])):
            if math.isfinite(value):
                axis.axvline(value, color="gray", ls="--", lw=1, label=f"baseline {word}")
    left.set_yticks(y, [s.name or s.arm for s in summaries])
    left.set_xlabel("final R² (mean, 95% CI)")
    left.set_title(f"{word} and train R²")
    right.set_xlabel(f"final {word} RMSE (mean, 95% CI)")
    right.set_title(f"{word} RMSE (lower is better)")
    for axis in (left, right):
        axis.grid(alpha=0.3, axis="x")
        axis.legend(fontsize=8, loc="best")
    figure.suptitle(title)
    return figure


_MODE_COLORS = {"det": "tab:blue", "mc": "tab:orange"}


def reliability_figure(
    panels: Sequence[tuple[str, Mapping[str, PooledBins]]], *, title: str
) -> Figure:
    """Reliability diagrams (Guo et al. 2017), one column per group: above, each of the
    :data:`~dropkit.lab.results.calibration_metrics.N_BINS` equal-width confidence bins' share
    of correct rows (bars; deterministic and MC dropout side by side) against the diagonal of
    perfect calibration; below, the share of the rows in each bin. Bins are pooled over the
    group's seeds; a panel's title gives each mode's ECE of the pooled rows."""
    columns = max(1, len(panels))
    figure, axes = _figure(
        2,
        columns,
        figsize=(4.6 * columns, 5.6),
        squeeze=False,
        constrained_layout=True,
        gridspec_kw={"height_ratios": [3, 1]},
        sharex=True,
    )
    width = 1.0 / N_BINS
    centers = (np.arange(N_BINS) + 0.5) * width
    for column, (label, bins) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        modes = [m for m in ("det", "mc") if m in bins]
        bar = width / max(1, len(modes))
        eces = []
        for index, mode in enumerate(modes):
            pooled = bins[mode]
            offset = (index - (len(modes) - 1) / 2) * bar
            accuracy = np.nan_to_num(np.asarray(pooled.accuracy, dtype=np.float64), nan=0.0)
            counts = np.asarray(pooled.counts, dtype=np.float64)
            share = counts / counts.sum() if counts.sum() > 0 else counts
            color = _MODE_COLORS[mode]
            top.bar(centers + offset, accuracy, width=bar, color=color, alpha=0.8,
                    edgecolor="white", lw=0.4, label=MODE_NAMES[mode])  # fmt: skip
            bottom.bar(centers + offset, share, width=bar, color=color, alpha=0.8)
            eces.append(f"{'MC' if mode == 'mc' else 'det'} {pooled.ece:.3f}")
        top.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(f"{label}\nECE {', '.join(eces)}" if eces else label)
        top.set_ylabel("accuracy in the bin")
        top.grid(alpha=0.3)
        top.legend(fontsize=8, loc="upper left")
        bottom.set_xlabel("confidence (top-label probability)")
        bottom.set_ylabel("share of rows")
        bottom.grid(alpha=0.3)
    figure.suptitle(title)
    return figure


def _points(axis: Any, x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> None:
    cmap = _pyplot().get_cmap("coolwarm")
    kwargs = {"cmap": cmap, "vmin": 0, "vmax": max(1, int(max(y_train.max(), y_test.max())))}
    axis.scatter(x_train[:, 0], x_train[:, 1], c=y_train, marker="o", s=28, edgecolors="k",
                 linewidths=0.8, label="train", **kwargs)  # fmt: skip
    axis.scatter(x_test[:, 0], x_test[:, 1], c=y_test, marker="^", s=22, edgecolors="w",
                 linewidths=0.5, alpha=0.9, label="test", **kwargs)  # fmt: skip


def boundary_figure(
    panels: Sequence[tuple[str, NDArray[np.float64]]],
    grid: tuple[NDArray[np.float64], NDArray[np.float64]],
    data: Any,
    *,
    title: str,
) -> Figure:
    """Predicted regions of 2-D classifiers with the train (circles) and test (triangles) points.

    Args:
        panels: ``(label, predicted class per grid point, shape (ny, nx))`` per model.
        grid: the ``(nx,)`` and ``(ny,)`` coordinates of the grid.
        data: the :class:`~dropkit.lab.plan.data.Dataset` (2 features).
    """
    figure, axes = _figure(
        1, len(panels), figsize=(4.6 * len(panels), 4.4), constrained_layout=True, squeeze=False
    )
    levels = np.arange(data.n_classes + 1) - 0.5
    for axis, (label, classes) in zip(axes.flat, panels, strict=True):
        axis.contourf(grid[0], grid[1], classes, levels=levels, cmap="coolwarm", alpha=0.35)
        _points(axis, data.x_train, data.y_train, data.x_test, data.y_test)
        axis.set_title(label)
        axis.set_xlabel(data.feature_names[0])
        axis.set_ylabel(data.feature_names[1])
    axes.flat[0].legend(loc="lower left", fontsize=8)
    figure.suptitle(title)
    return figure


def uncertainty_figure(
    std: NDArray[np.float64],
    entropy: NDArray[np.float64],
    grid: tuple[NDArray[np.float64], NDArray[np.float64]],
    data: Any,
    *,
    title: str,
) -> Figure:
    """MC-dropout predictive std (of the predicted class probability) and entropy over a grid,
    with the train and test points."""
    figure, axes = _figure(1, 2, figsize=(10, 4.4), constrained_layout=True)
    for axis, values, name in ((axes[0], std, "predictive std"), (axes[1], entropy, "entropy")):
        mesh = axis.pcolormesh(grid[0], grid[1], values, cmap="viridis", shading="auto")
        figure.colorbar(mesh, ax=axis, shrink=0.85)
        _points(axis, data.x_train, data.y_train, data.x_test, data.y_test)
        axis.set_title(name)
        axis.set_xlabel(data.feature_names[0])
        axis.set_ylabel(data.feature_names[1])
    figure.suptitle(title)
    return figure
