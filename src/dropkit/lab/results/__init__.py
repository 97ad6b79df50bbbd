"""What the stored runs say: the last stage of the lab's pipeline; it reads the store only.

``significance → calibration_metrics → summary → calibration_stats → diagnosis → analysis →
plots → tables → report → experiment``: the tests over seeds, the calibration metrics' names,
the groups and the best group, the groups' calibration, the rules of the diagnosis, one
analysis per experiment of a store, its figures, its tables, the HTML report and the
:class:`~dropkit.lab.results.experiment.Experiment` a lab call returns. It never imports the
trainers or the runner: a report can be rebuilt from any store without training.

This namespace gathers the statistics and the diagnosis, each module readable alone:

- :mod:`dropkit.lab.results.significance`: the tests: t-intervals kept in the metric's range
  (:func:`mean_ci`), the paired (with its sign-test fallback) and Welch's t-tests
  (:func:`paired`, :func:`welch`), Holm's adjustment (:func:`holm`) and power
  (:func:`seeds_needed`, :func:`detectable_difference`), with their formulas;
- :mod:`dropkit.lab.results.summary`: runs grouped by config-without-seed (:func:`group_runs`,
  :func:`group_label`), each group summarized over its seeds and compared with the baseline
  (:func:`summarize`, :class:`ArmSummary`, :func:`compare`), the best group by the tie rule
  :data:`CHOICE_RULE` (:func:`best_rate`) and the epochs to converge
  (:func:`epochs_to_converge`);
- :mod:`dropkit.lab.results.calibration_metrics`: the calibration metrics a run records in its
  ``info`` (per mode: deterministic, MC dropout), their ranges and the names ``choose_by``
  takes (:func:`check_choose_by`);
- :mod:`dropkit.lab.results.calibration_stats`: each group's calibration over seeds, its tests
  against the baseline and of MC dropout against the deterministic network, and its pooled
  reliability bins (:func:`summarize_calibration`, :class:`CalibrationSummary`);
- :mod:`dropkit.lab.results.diagnosis`: what to change, one function per rule (:func:`diagnose`,
  :class:`Diagnosis`, :class:`Thresholds`).

``Finding`` is the former name of :class:`Diagnosis`, kept as an alias; new code should use
``Diagnosis`` (``dropkit.checks.Finding`` is the unrelated finding of the model checks).
"""

from __future__ import annotations

from dropkit.lab.results.calibration_metrics import check_choose_by, choose_by_names
from dropkit.lab.results.calibration_stats import (
    CalibrationSummary,
    MetricStats,
    PooledBins,
    summarize_calibration,
)
from dropkit.lab.results.diagnosis import RULES, Diagnosis, Rule, Thresholds, diagnose
from dropkit.lab.results.significance import (
    ALPHA,
    MIN_SEEDS_FOR_CLAIM,
    Comparison,
    detectable_difference,
    holm,
    mean_ci,
    paired,
    seeds_needed,
    welch,
)
from dropkit.lab.results.summary import (
    CHOICE_RULE,
    CONVERGE_TOL,
    CONVERGE_WINDOW,
    ArmSummary,
    BestRate,
    best_rate,
    compare,
    epochs_to_converge,
    group_label,
    group_runs,
    summarize,
)

__all__ = [
    "ALPHA",
    "CHOICE_RULE",
    "CONVERGE_TOL",
    "CONVERGE_WINDOW",
    "MIN_SEEDS_FOR_CLAIM",
    "RULES",
    "ArmSummary",
    "BestRate",
    "CalibrationSummary",
    "Comparison",
    "Diagnosis",
    "Finding",
    "MetricStats",
    "PooledBins",
    "Rule",
    "Thresholds",
    "best_rate",
    "check_choose_by",
    "choose_by_names",
    "compare",
    "detectable_difference",
    "diagnose",
    "epochs_to_converge",
    "group_label",
    "group_runs",
    "holm",
    "mean_ci",
    "paired",
    "seeds_needed",
    "summarize",
    "summarize_calibration",
    "welch",
]

Finding = Diagnosis
"""Deprecated alias of :class:`Diagnosis` (its name before the diagnosis had a module)."""
