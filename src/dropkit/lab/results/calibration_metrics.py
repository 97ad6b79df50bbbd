r"""The calibration metrics a run records in its ``info``: names, modes, ranges, directions.

A run trained with ``TrainSpec.evaluate`` set records, on its test rows (and, prefixed
``val_``, on its validation rows when the data has a validation split or folds), for each
*mode* ``m`` it was measured in:

- ``det``: the network with dropout off, one pass;
- ``mc``: Monte Carlo dropout (Gal & Ghahramani 2016), the mean of ``T`` stochastic passes.

Classification (``p̄`` the predictive class probabilities, ``c = max_k p̄_k`` the top-label
confidence, ``y`` the true class, ``N`` the rows):

- ``{m}_acc``: the share of rows whose ``argmax p̄`` is ``y``;
- ``{m}_nll``: ``−(1/N) Σ_i log p̄_{i,y_i}`` (nats);
- ``{m}_brier``: ``(1/N) Σ_i Σ_k (p̄_{i,k} − 1[y_i = k])²`` (Brier 1950), in [0, 2]; for binary
  data ``(1/N) Σ_i (p̄_{i,1} − y_i)²``, scikit-learn's convention, in [0, 1];
- ``{m}_ece``: ``Σ_b (|B_b|/N)·|acc(B_b) − conf(B_b)|`` over :data:`N_BINS` equal-width bins
  ``B_b = (b/15, (b+1)/15]`` of ``c`` (Naeini et al. 2015; Guo et al. 2017), in [0, 1];
- ``{m}_bin{b:02d}_n``, ``_conf``, ``_hit``: the rows of bin ``b``, the sum of their
  confidences and the number of them classified correctly (sums: a group pools its runs by
  adding them);
- ``mc_mi``: the mean mutual information ``H[p̄] − (1/T) Σ_t H[p_t]`` between the prediction
  and the dropout mask (BALD, Houlsby et al. 2011); ``mc_entropy``: the mean ``H[p̄]``.

Regression (the predictive normal ``N(μ, s²)``):

- ``{m}_rmse``; ``{m}_nll``: ``mean ½[log(2π s²) + (y − μ)²/s²]`` (Lakshminarayanan et al.
  2017; unbounded below), with ``s²`` the noise variance ``σ²`` (the deterministic network's
  mean squared residual on the rows it fit; ``noise_sd`` is ``σ``) for ``det`` and the MC
  variance of the ``T`` outputs plus ``σ²`` for ``mc``;
- ``{m}_cover90``: the share of targets inside ``μ ± 1.645 s`` (a calibrated normal covers
  0.90); ``mc_sd``: the mean predictive standard deviation.

A group records a mode when every one of its runs has ``{m}_nll`` (:func:`recorded_modes`): the
modes are read from the runs, never from their configs.

Choosing by a metric (:func:`parse_choose_by`): ``"score"`` (the task's accuracy or R²,
higher is better) or a metric whose lower value is better (:data:`CHOOSABLE`), optionally
prefixed with its mode (``"mc_nll"``, ``"det_ece"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BINARY_DATASETS",
    "CHOOSABLE",
    "CLASSIFICATION_METRICS",
    "COMPARED",
    "COVERAGE",
    "MODES",
    "MODE_NAMES",
    "N_BINS",
    "REGRESSION_METRICS",
    "CalibrationMetric",
    "bin_key",
    "calibration_metric",
    "calibration_metrics",
    "check_choose_by",
    "choose_by_names",
    "has_calibration",
    "info_key",
    "is_binary",
    "metric_bounds",
    "parse_choose_by",
    "recorded_modes",
]

MODES = ("det", "mc")
"""The evaluation modes, in the order tables show them: dropout off, Monte Carlo dropout."""

MODE_NAMES = {"det": "deterministic", "mc": "MC dropout"}
"""A mode's name in a sentence or a heading."""

N_BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. 2017)."""

COVERAGE = 0.90
"""The nominal coverage of the regression interval ``μ ± 1.645 s`` (``cover90``)."""

BINARY_DATASETS = frozenset({"circles", "moons", "breast_cancer", "sequence"})
"""The built-in data sets with two classes: their Brier score (scikit-learn's binary form) is
at most 1. Other data is binary when its runs recorded ``classes == 2`` (:func:`is_binary`);
any other classification data keeps the multi-class range [0, 2]."""

_NON_NEGATIVE = (0.0, math.inf)
_UNBOUNDED = (-math.inf, math.inf)


@dataclass(frozen=True)
class CalibrationMetric:
    """One metric a run records per mode.

    Attributes:
        name: its ``info`` name after the mode (``"nll"`` of ``"mc_nll"``).
        label: its name in tables and sentences (``"NLL"``).
        bounds: its range: intervals are kept inside it.
        lower_is_better: True (NLL, Brier, ECE, RMSE), False (accuracy) or None (no better
            direction: coverage is best at its nominal 0.90, MI and entropy describe).
        modes: the modes that record it (MI, entropy and the predictive sd: MC dropout only).
    """

    name: str
    label: str
    bounds: tuple[float, float]
    lower_is_better: bool | None
    modes: tuple[str, ...] = MODES


CLASSIFICATION_METRICS = (
    CalibrationMetric("acc", "accuracy", (0.0, 1.0), False),
    CalibrationMetric("nll", "NLL", _NON_NEGATIVE, True),
    CalibrationMetric("brier", "Brier", (0.0, 2.0), True),
    CalibrationMetric("ece", "ECE", (0.0, 1.0), True),
    CalibrationMetric("mi", "MI", _NON_NEGATIVE, None, ("mc",)),
    CalibrationMetric("entropy", "entropy", _NON_NEGATIVE, None, ("mc",)),
)
"""Classification's metrics, in table order."""

REGRESSION_METRICS = (
    CalibrationMetric("rmse", "RMSE", _NON_NEGATIVE, True),
    CalibrationMetric("nll", "Gaussian NLL", _UNBOUNDED, True),
    CalibrationMetric("cover90", "90% coverage", (0.0, 1.0), None),
    CalibrationMetric("sd", "predictive sd", _NON_NEGATIVE, None, ("mc",)),
)
"""Regression's metrics, in table order."""

COMPARED = {"classification": ("nll", "brier", "ece"), "regression": ("rmse", "nll", "cover90")}
"""The metrics each group's calibration is compared with the baseline's by, in the tables and
the diagnosis (accuracy has its own comparisons; MI, entropy and the predictive sd describe)."""

CHOOSABLE = {"classification": ("nll", "brier", "ece"), "regression": ("nll", "rmse")}
"""The metrics the best group can be chosen by besides ``"score"`` (lower is better)."""


def calibration_metrics(task: str, mode: str | None = None) -> tuple[CalibrationMetric, ...]:
    """The task's metrics (those ``mode`` records, when given), in table order."""
    found = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    return tuple(m for m in found if mode is None or mode in m.modes)


def calibration_metric(task: str, name: str) -> CalibrationMetric:
    """The task's metric called ``name``; KeyError when it has none."""
    for metric in calibration_metrics(task):
        if metric.name == name:
            return metric
    raise KeyError(name)


def is_binary(data_name: str, infos: Sequence[Mapping[str, float]]) -> bool:
    """Whether a group's Brier score is the binary form (in [0, 1]): a built-in two-class data
    set, or every run recorded ``classes == 2`` (the measured runs of any data record it)."""
    if data_name in BINARY_DATASETS:
        return True
    return bool(infos) and all(info.get("classes") == 2.0 for info in infos)


def metric_bounds(metric: CalibrationMetric, binary: bool) -> tuple[float, float]:
    """``metric``'s range: the Brier score of binary data is in [0, 1], not [0, 2]."""
    return (0.0, 1.0) if metric.name == "brier" and binary else metric.bounds


def info_key(mode: str, metric: str, on: str = "test") -> str:
    """The ``info`` key of ``metric`` in ``mode`` on split ``on`` (``"test"`` or
    ``"validation"``): ``"mc_nll"``, ``"val_det_ece"``."""
    return f"{'val_' if on == 'validation' else ''}{mode}_{metric}"


def bin_key(mode: str, b: int, part: str) -> str:
    """The ``info`` key of reliability bin ``b`` (``part``: ``"n"``, ``"conf"`` or ``"hit"``)."""
    return f"{mode}_bin{b:02d}_{part}"


def recorded_modes(infos: Sequence[Mapping[str, float]]) -> tuple[str, ...]:
    """The modes every one of ``infos`` records (``{m}_nll`` present), in :data:`MODES` order;
    none for no infos."""
    if not infos:
        return ()
    return tuple(m for m in MODES if all(info_key(m, "nll") in info for info in infos))


def has_calibration(infos: Sequence[Mapping[str, float]]) -> bool:
    """Whether any of ``infos`` records a calibration metric (``det_nll`` or ``mc_nll``)."""
    return any(info_key(m, "nll") in info for info in infos for m in MODES)


def choose_by_names(task: str) -> tuple[str, ...]:
    """Every name ``choose_by`` takes for ``task``: ``"score"``, the metrics of
    :data:`CHOOSABLE`, then each prefixed with ``det_`` and ``mc_``."""
    plain = CHOOSABLE["regression" if task == "regression" else "classification"]
    return ("score", *plain, *(f"{m}_{name}" for m in MODES for name in plain))


def check_choose_by(name: object, task: str) -> str:
    """``name`` when ``choose_by`` takes it for ``task`` (:func:`choose_by_names`).

    Raises:
        ValueError: any other value (the message lists the names the task takes).
    """
    parse_choose_by(name, task)
    assert isinstance(name, str)
    return name


def parse_choose_by(name: object, task: str) -> tuple[str | None, str | None]:
    """``(mode, metric)`` of a ``choose_by`` name: ``(None, None)`` for ``"score"``,
    ``(None, "nll")`` for ``"nll"``, ``("mc", "nll")`` for ``"mc_nll"``.

    Raises:
        ValueError: a name the task does not take (the message lists those it takes).
    """
    names = choose_by_names(task)
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"`choose_by` must be one of {', '.join(names)} for {task}, got {name!r}")
    if name == "score":
        return None, None
    mode, _, metric = name.partition("_")
    return (mode, metric) if mode in MODES else (None, name)
