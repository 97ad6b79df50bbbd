"""The results table, as plain rows: the choosing split leads, the test set comes after.

One table layout serves the CLI, the notebook view of :class:`~dropkit.lab.Experiment` and the
HTML report, so they cannot disagree on what a reader sees first:

- :func:`choice_table`: one row per group on the split that chooses the best group
  (:func:`~dropkit.lab.results.summary.chosen_on`): its mean score with the 95% interval, the train
  score, the train − that split gap and the test against the baseline on that split (for
  regression the split's RMSE and MAE beside R²). Without a validation split this is the test
  set, which then doubles as validation (the published case study's table).
- :func:`after_choice_table`: only when validation chose: every group's test figures, labelled
  as read after the choice. The chosen group's row is its held-out estimate (with its interval);
  the other rows carry means only, so nothing invites choosing on the test set after all.
- :func:`calibration_tables`: when the runs recorded calibration metrics, one table per
  evaluation mode (deterministic, MC dropout) of the test set's calibration: each metric's
  mean with its 95% interval, the difference from the baseline with its Holm-adjusted p and,
  in the MC dropout table, the MC − deterministic difference with its Holm-adjusted p.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from dropkit.lab.results.calibration_metrics import (
    COMPARED,
    MODE_NAMES,
    MODES,
    calibration_metric,
    calibration_metrics,
)
from dropkit.lab.results.calibration_stats import CalibrationSummary
from dropkit.lab.results.significance import Comparison
from dropkit.lab.results.summary import ArmSummary, BestRate, chosen_on, score_name, selection_score

__all__ = [
    "Table",
    "after_choice_table",
    "calibration_tables",
    "choice_table",
    "interval_text",
    "number",
    "to_html",
]


@dataclass(frozen=True)
class Table:
    """A titled table of text cells (``rows[i][j]`` under ``headers[j]``)."""

    title: str
    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def number(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``; ``"n/a"`` for None, NaN or an infinity."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{spec}}"


def interval_text(interval: tuple[float, float], spec: str = ".3f") -> str:
    """``"[low, high]"`` with ``spec``; ``"n/a"`` when an end is not finite (no interval)."""
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    return f"[{low:{spec}}, {high:{spec}}]"


def _versus(s: ArmSummary) -> str:
    c = s.vs_baseline
    if c is None:
        return "baseline"
    text = number(c.difference, "+.3f")
    if math.isfinite(c.p_adjusted):
        text += f" (adj. p={c.p_adjusted:.2g}{'*' if c.significant else ''})"
    return text


def _short(task: str) -> str:
    return "R²" if task == "regression" else "acc"


def choice_table(summaries: Sequence[ArmSummary]) -> Table:
    """The groups on the split that chooses: ``group, seeds, train, <split>, 95% CI, [RMSE,
    MAE,] gap, vs <baseline>``."""
    task = summaries[0].task if summaries else "classification"
    regression = task == "regression"
    on = chosen_on(summaries)
    short = _short(task)
    split = "val" if on == "validation" else "test"
    baseline = next((s.vs_baseline.baseline for s in summaries if s.vs_baseline), "baseline")
    headers = ["group", "seeds", f"train {short}", f"{split} {short}", "95% CI"]
    headers += [f"{split} RMSE", f"{split} MAE"] if regression else []
    headers += ["gap", f"vs {baseline}"]
    rows = []
    for s in summaries:
        interval = s.val_acc_ci95 if on == "validation" else s.test_acc_ci95
        seeds = f"{s.n_seeds}" + (f" ({s.n_nan} NaN)" if s.n_nan else "")
        cells = [s.name, seeds, number(s.train_acc_mean), number(selection_score(s, on))]
        cells.append(interval_text(interval))
        if regression:
            rmse = s.val_rmse_mean if on == "validation" else s.test_rmse_mean
            mae = s.val_mae_mean if on == "validation" else s.test_mae_mean
            cells += [number(rmse, ".4g"), number(mae, ".4g")]
        cells += [number(s.gap(on)), _versus(s)]
        rows.append(tuple(cells))
    score = score_name(task)
    if on == "validation":
        title = f"Validation {score} over seeds (mean, 95% CI): the split that chooses"
        caption = (
            f"gap: train − validation; vs {baseline}: on validation, Holm-adjusted over all "
            "groups; * significant at 0.05"
        )
    else:
        title = f"Final {score} over seeds (mean, 95% CI)"
        caption = "adj. p: Holm-adjusted over all groups; * significant at 0.05"
    return Table(title, caption, tuple(headers), tuple(rows))


def after_choice_table(summaries: Sequence[ArmSummary], best: BestRate | None) -> Table | None:
    """Each group's test figures, read after validation chose (None when the test set chose:
    :func:`choice_table` already shows it)."""
    if best is None or best.chosen_on != "validation" or not summaries:
        return None
    task = summaries[0].task
    regression = task == "regression"
    short = _short(task)
    headers = ["group", f"test {short}", "95% CI"]
    headers += ["test RMSE", "test MAE"] if regression else []
    headers += ["read as"]
    rows = []
    for s in summaries:
        chosen = s.name == best.summary.name
        cells = [s.name, number(s.test_acc_mean), interval_text(s.test_acc_ci95) if chosen else "–"]
        if regression:
            cells += [number(s.test_rmse_mean, ".4g"), number(s.test_mae_mean, ".4g")]
        cells.append("the chosen group's held-out estimate" if chosen else "after the choice")
        rows.append(tuple(cells))
    return Table(
        f"Test {score_name(task)}, read once after the choice",
        "only the chosen group's row is an estimate of its performance; the other rows were "
        "read after the choice and are not for choosing (that would make the test set a "
        "second validation set)",
        tuple(headers),
        tuple(rows),
    )


def _difference(c: Comparison | None, spec: str) -> str:
    """``"-0.041 (adj. p=0.003*)"``; ``"–"`` without a comparison, ``"n/a"`` without a test."""
    if c is None:
        return "–"
    text = number(c.difference, "+" + spec)
    if math.isfinite(c.p_adjusted):
        text += f" (adj. p={c.p_adjusted:.2g}{'*' if c.significant else ''})"
    return text


def calibration_tables(calibration: Sequence[CalibrationSummary]) -> list[Table]:
    """The test set's calibration, one table per mode the groups recorded (deterministic
    first, then MC dropout); empty without calibration metrics (the CLI prints each).

    Columns: ``group``, ``seeds``, each metric as ``mean [95% CI]`` over seeds (accuracy,
    NLL, Brier, ECE and, for MC dropout, the mutual information; regression: RMSE, Gaussian
    NLL, 90% coverage and MC dropout's predictive sd), each compared metric's difference from
    the baseline (``NLL vs none``: group − baseline, paired over seeds) and, in the MC dropout
    table when both modes were recorded, ``MC−det`` of each metric both modes record (paired
    by seed). p-values are Holm-adjusted over the groups; ``*`` marks significance at 0.05.
    Build them from :attr:`~dropkit.lab.results.analysis.Analysis.calibration` (an
    :class:`~dropkit.lab.Experiment` has :meth:`~dropkit.lab.Experiment.calibration_tables`).
    """
    if not calibration:
        return []
    task = calibration[0].task
    spec = ".4g" if task == "regression" else ".3f"
    baseline = calibration[0].name if calibration[0].is_baseline else None
    tables = []
    for mode in MODES:
        groups = [g for g in calibration if mode in g.modes]
        if not groups:
            continue
        shown = [m.name for m in calibration_metrics(task, mode) if m.name != "entropy"]
        compared = list(COMPARED[task]) if baseline is not None else []
        paired_modes = mode == "mc" and any(g.mc_vs_det for g in groups)
        both = [m.name for m in calibration_metrics(task, "det")] if paired_modes else []
        label = {name: calibration_metric(task, name).label for name in shown}
        headers = ["group", "seeds", *(label[n] for n in shown)]
        headers += [f"{label[n]} vs {baseline}" for n in compared]
        headers += [f"MC−det {label[n]}" for n in both]
        rows = []
        for g in groups:
            diverged = len(g.seeds) - g.n_valid
            cells = [g.name, f"{len(g.seeds)}" + (f" ({diverged} NaN)" if diverged else "")]
            for name in shown:
                stats = g.stats(mode, name)
                cells.append(
                    "–"
                    if stats is None
                    else f"{number(stats.mean, spec)} {interval_text(stats.ci95, spec)}"
                )
            for name in compared:
                stats = g.stats(mode, name)
                versus = None if stats is None else stats.vs_baseline
                cells.append("baseline" if g.is_baseline else _difference(versus, spec))
            cells += [_difference(g.mc_vs_det.get(name), spec) for name in both]
            rows.append(tuple(cells))
        samples = next((g.mc_samples for g in groups if g.mc_samples), None)
        passes = f" ({samples} passes)" if mode == "mc" and samples else ""
        caption = "mean [95% CI] over seeds"
        if compared:
            caption += (
                f"; vs {baseline}: group − {baseline}, paired over seeds, Holm-adjusted over the "
                "groups"
            )
        if both:
            caption += "; MC−det: MC dropout − deterministic, paired by seed, Holm-adjusted"
        caption += "; * significant at 0.05"
        tables.append(
            Table(
                f"Calibration on the test set: {MODE_NAMES[mode]}{passes}",
                caption,
                tuple(headers),
                tuple(rows),
            )
        )
    return tables


def to_html(table: Table, *, css_class: str = "") -> str:
    """The table as an HTML ``<table>`` with its title as a caption and its note below."""
    attribute = f" class={css_class}" if css_class else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return (
        f"<table{attribute}><caption>{html.escape(table.title)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p><small>{html.escape(table.caption)}</small></p>"
    )
