"""Figures, drawn from the results store only (matplotlib, no display needed).

A figure can be rebuilt at any time from the store, without retraining.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.stats import ArmSummary
from dropkit.lab.store import ResultsStore, StoredRun

__all__ = ["plot_learning_curves", "plot_rate_curve"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(run: StoredRun) -> str:
    c = run.config
    parts = [run.arm] if run.arm == "none" else [f"dropout p={c.p:g}"] if c.p > 0 else []
    if c.input_p > 0:
        parts.append(f"input p={c.input_p:g}")
    if c.max_norm is not None:
        parts.append(f"max-norm {c.max_norm:g}")
    return ", ".join(parts) or run.arm


def _stack(store: ResultsStore, runs: Sequence[StoredRun], metric: str) -> NDArray[np.float64]:
    curves = [store.curves(r.key)[metric] for r in runs]
    length = min(len(c) for c in curves)
    return np.stack([c[:length] for c in curves])


def plot_learning_curves(
    store: ResultsStore, groups: Sequence[Sequence[StoredRun]], path: Path, *, title: str
) -> Path:
    """Train (dashed) and test (solid) accuracy per epoch for each group of seeds.

    Each line is the mean over the group's seeds; the band spans the 2.5–97.5% range of the
    mean (t-interval per epoch) when the group has two or more seeds.
    """
    from scipy import stats as sps

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, runs in enumerate(g for g in groups if g):
        color = colors[index % len(colors)]
        label = _label(runs[0])
        for metric, style in (("train_acc", "--"), ("test_acc", "-")):
            values = _stack(store, runs, metric)
            epochs = np.arange(1, values.shape[1] + 1)
            mean = np.nanmean(values, axis=0)
            name = "train" if metric == "train_acc" else "test"
            axis.plot(epochs, mean, style, color=color, lw=1.4, label=f"{label}: {name}")
            if values.shape[0] > 1:
                half = sps.t.ppf(0.975, values.shape[0] - 1) * np.nanstd(values, axis=0, ddof=1)
                half /= math.sqrt(values.shape[0])
                axis.fill_between(epochs, mean - half, mean + half, color=color, alpha=0.15, lw=0)
    axis.set_xlabel("epoch")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_rate_curve(summaries: Sequence[ArmSummary], path: Path, *, title: str) -> Path:
    """Mean final test (and train) accuracy against the drop rate, with 95% CI error bars."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    ordered = sorted(summaries, key=lambda s: s.p)
    rates = [s.p for s in ordered]
    for name, fmt in (("test", "o-"), ("train", "s--")):
        means = np.array([getattr(s, f"{name}_acc_mean") for s in ordered])
        intervals = np.array([getattr(s, f"{name}_acc_ci95") for s in ordered], dtype=np.float64)
        errors = np.nan_to_num(
            np.stack([means - intervals[:, 0], intervals[:, 1] - means]), nan=0.0
        )
        axis.errorbar(rates, means, yerr=errors, fmt=fmt, capsize=4, label=f"{name} accuracy")
    axis.set_xlabel("dropout rate p (drop probability)")
    axis.set_ylabel("final accuracy (mean, 95% CI)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
