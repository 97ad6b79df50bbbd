"""The result of a lab call: :class:`Experiment`, the stored runs of one experiment, analysed.

An experiment is a set of runs that share data, model and training settings (the runs of one
:func:`dropkit.lab.sweep`, :func:`~dropkit.lab.compare` or :func:`~dropkit.lab.demo` call, or
one experiment of a store read back with :func:`~dropkit.lab.load`). Its statistics are
computed once, when it is made, from the results store alone (:mod:`dropkit.lab.results.analysis`);
figures, curves and the HTML report read the store again when asked for, so an experiment
never holds an open database connection.

Its numbers speak the experiment's task (:attr:`Experiment.task`): accuracy for classification,
R² (with the test RMSE and MAE) for regression.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropkit.lab.results import ArmSummary, BestRate, Diagnosis
from dropkit.lab.results.analysis import Analysis
from dropkit.lab.results.plots import (
    Curves,
    Figure,
    accuracy_curves_figure,
    arm_figure,
    learning_curves_figure,
    rate_figure,
    stack_curves,
)
from dropkit.lab.results.summary import json_ready, score_name, seed_curves
from dropkit.lab.results.tables import Table
from dropkit.lab.store import StoredRun

__all__ = ["Experiment"]


class Experiment:
    """The runs of one experiment with their statistics, curves, figures and report.

    Made by :func:`dropkit.lab.sweep`, :func:`~dropkit.lab.compare`, :func:`~dropkit.lab.demo`
    and :func:`~dropkit.lab.load`; not meant to be built by hand.

    Attributes:
        store: the path of the SQLite results store that holds the runs.
        title: one line: data set, model, epochs and batch size.
        command: ``"sweep"``, ``"compare"``, ``"demo"`` or ``"load"``.
        settings: what the call asked for (data set, model, epochs, seeds, rates or arms).
        notes: what loading the data did that the user should know (one sentence each).
        trained: runs trained by the call that made this experiment (0 when all were stored).
        already_done: runs the call found finished in the store and did not train again.
    """

    def __init__(
        self,
        store: Path,
        analysis: Analysis,
        *,
        command: str,
        settings: Mapping[str, Any] | None = None,
        notes: Sequence[str] = (),
        trained: int = 0,
        already_done: int = 0,
    ) -> None:
        self.store = Path(store)
        self.title = analysis.title
        self.command = command
        self.settings = dict(settings or {})
        self.notes = tuple(notes)
        self.trained = trained
        self.already_done = already_done
        self._analysis = analysis

    # -- statistics ----------------------------------------------------------------------------

    @property
    def analysis(self) -> Analysis:
        """The analysis behind every attribute below (:mod:`dropkit.lab.results.analysis`)."""
        return self._analysis

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``: the ``*_acc`` values hold accuracy or
        R² (:attr:`score_name`)."""
        return self._analysis.task

    @property
    def score_name(self) -> str:
        """``"accuracy"`` or ``"R²"``."""
        return score_name(self.task)

    @property
    def summaries(self) -> tuple[ArmSummary, ...]:
        """One :class:`~dropkit.lab.results.ArmSummary` per group, the baseline first."""
        return self._analysis.summaries

    @property
    def summary(self) -> list[dict[str, Any]]:
        """One row per group (the baseline first), with the keys of the CLI's ``--json``
        summary: ``name``, ``arm``, ``p``, ``n_seeds``, ``train_acc_mean``, ``test_acc_mean``,
        ``test_acc_ci95``, ``gap_mean``, ``vs_baseline``, ``task``, ``score_name``,
        ``val_acc_mean``, ``test_rmse_mean``, ... (NaN written as None)."""
        return [s.to_dict() for s in self._analysis.summaries]

    @property
    def best(self) -> BestRate | None:
        """The best group, with a sentence of evidence; None when no run finished.

        ``best.summary`` is the group, ``best.evidence`` the sentence, ``best.chosen_on`` the
        split that chose it: ``"validation"`` (when every group has a validation score: data
        with a validation split or folds) or ``"test"`` (the test set then doubles as
        validation, as in the published tutorial), ``best.choice`` a line that says so and
        states the rule: the groups not significantly below the top (``best.top``) tie
        (``best.tied``, simplest first) and the simplest wins. ``best.held_out`` is the
        chosen group's one test against the baseline on the test set when validation chose;
        ``best.provisional`` is true below 10 seeds."""
        return self._analysis.best

    @property
    def comparisons(self) -> list[dict[str, Any]]:
        """Each group's test against the baseline on the split that chooses (``compared_on``:
        ``"validation"`` or ``"test"``): ``group``, ``baseline``, ``difference`` (of mean
        score: accuracy or R²), ``test`` (``paired``, ``sign``, ``welch`` or ``none``),
        ``p_value``, ``p_adjusted`` (Holm over all groups), ``significant`` (adjusted
        p < 0.05), ``n``, ``detectable`` (the smallest difference these seeds detect at 80%
        power), ``seeds_needed`` (for a difference that is not significant: seeds per group to
        detect it) and ``note`` (why the test is not the usual one). When validation chose,
        the test set is compared once, for the chosen group: ``best.held_out``."""
        rows = []
        for s in self._analysis.summaries:
            c = s.vs_baseline
            if c is None:
                continue
            rows.append(
                json_ready(
                    {
                        "group": s.name,
                        "baseline": c.baseline,
                        "difference": c.difference,
                        "test": c.test,
                        "p_value": c.p_value,
                        "p_adjusted": c.p_adjusted,
                        "significant": c.significant,
                        "n": c.n,
                        "compared_on": c.compared_on,
                        "detectable": c.detectable,
                        "seeds_needed": c.seeds_needed,
                        "note": c.note,
                    }
                )
            )
        return rows

    @property
    def findings(self) -> tuple[Diagnosis, ...]:
        """The diagnosis: what the numbers say and what to change, each finding with its
        measured numbers (``rule``, ``severity``, ``message``, ``numbers``, ``group``)."""
        return self._analysis.findings

    @property
    def calibration(self) -> list[dict[str, Any]]:
        """Each group's calibration on the test set (the baseline first), when the runs were
        trained with ``evaluate`` set (empty otherwise): ``name``, ``modes`` (``"det"``,
        ``"mc"``), ``test`` and ``validation`` (``{mode: {metric: {mean, ci95, n,
        vs_baseline}}}``; metrics ``acc``, ``nll``, ``brier``, ``ece``, ``mi``, ``entropy``,
        or for regression ``rmse``, ``nll``, ``cover90``, ``sd``), ``mc_vs_det`` (``{metric:
        comparison}``: MC dropout − deterministic, paired by seed) and ``bins`` (the
        reliability bins pooled over seeds). See docs/report.md for the definitions."""
        return [c.to_dict() for c in self._analysis.calibration]

    def calibration_tables(self) -> list[Table]:
        """The calibration tables, one per evaluation mode (empty when the runs recorded no
        calibration metrics): :func:`~dropkit.lab.results.tables.calibration_tables`."""
        from dropkit.lab.results.tables import calibration_tables

        return calibration_tables(self._analysis.calibration)

    @property
    def runs(self) -> tuple[StoredRun, ...]:
        """The stored runs, each with its config, final metrics and key."""
        return self._analysis.runs

    @property
    def groups(self) -> list[str]:
        """The group labels, the baseline first (the ``name`` of each summary row)."""
        return [label for label, _ in self._analysis.groups]

    def curves(self, groups: str | Sequence[str] | None = None) -> dict[str, Curves]:
        """Per-epoch curves of each group: ``{label: {metric: array (seeds, epochs)}}``.

        Metrics are ``train_acc``, ``test_acc`` (accuracy, or R² for regression), ``train_loss``
        and ``test_loss``; rows are the group's seeds in seed order (with folds, a seed's fold
        runs averaged per epoch), NaN-padded where a run stopped early.

        Args:
            groups: a label, several labels, or None for every group.

        Raises:
            ValueError: a label that is not a group of this experiment (the message lists them).
            TypeError: ``groups`` is neither a label nor a sequence of labels.
        """
        chosen = self._chosen(groups)
        members = dict(self._analysis.groups)
        return {
            label: stack_curves(seed_curves(members[label], self._analysis.curves))
            for label in chosen
        }

    def _chosen(self, groups: str | Sequence[str] | None) -> list[str]:
        labels = self.groups
        if groups is None:
            return labels
        if isinstance(groups, str):
            wanted = [groups]
        elif isinstance(groups, Sequence) and all(isinstance(g, str) for g in groups):
            wanted = list(groups)
        else:
            raise TypeError(f"`groups` must be a group label or a sequence of them, got {groups!r}")
        unknown = [g for g in wanted if g not in labels]
        if unknown:
            raise ValueError(
                f"`groups`: no group {unknown[0]!r} in this experiment; groups: "
                + ", ".join(map(repr, labels))
            )
        return wanted

    def _default_curve_groups(self) -> list[str]:
        """The baseline and the best group (the only group when there is one)."""
        labels = self.groups
        if not labels:
            return []
        shown = [labels[0]]
        if self.best is not None and self.best.summary.name not in shown:
            shown.append(self.best.summary.name)
        return shown

    # -- figures -------------------------------------------------------------------------------

    def plot_curves(
        self, groups: str | Sequence[str] | None = None, *, metrics: str = "accuracy"
    ) -> Figure:
        """Learning curves: mean over seeds per epoch with the mean's 95% t-interval band.

        Args:
            groups: labels to draw (default: the baseline and the best group).
            metrics: ``"accuracy"`` (train dashed, test solid, one panel: the task's score, R²
                for regression; ``"score"`` is the same) or ``"all"`` (one panel per metric:
                train/test score and loss).

        Returns:
            A matplotlib figure.
        """
        chosen = self._chosen(groups) if groups is not None else self._default_curve_groups()
        curves = self.curves(chosen)
        seeds = max((s.n_seeds for s in self.summaries), default=0)
        title = f"{self.title}: mean and 95% CI over {seeds} seeds"
        pairs = list(curves.items())
        if metrics in ("accuracy", "score"):
            return accuracy_curves_figure(pairs, title=title, task=self.task)
        if metrics == "all":
            return learning_curves_figure(pairs, title=title, task=self.task)
        raise ValueError(f"`metrics` must be 'accuracy', 'score' or 'all', got {metrics!r}")

    def plot_rates(self) -> Figure:
        """Final test (and train) score against the dropout rate, with 95% CI error bars."""
        score = self.score_name
        return rate_figure(
            [(score, list(self.summaries))], title=f"{self.title}: {score} vs dropout rate"
        )

    def plot_arms(self) -> Figure:
        """Each group's final test score with its 95% CI, the baseline marked (and, for
        regression, a panel of the test RMSE)."""
        return arm_figure(list(self.summaries), title=f"{self.title}: arms compared")

    # -- output --------------------------------------------------------------------------------

    def report(self, path: str | Path = "report.html", *, title: str | None = None) -> Path:
        """Write the self-contained HTML report of this experiment's runs; returns its path."""
        from dropkit.lab.results.report import write_report
        from dropkit.lab.store import ResultsStore

        with ResultsStore(self.store) as store:
            return write_report(
                store,
                path,
                keys=[r.key for r in self.runs],
                title=title or f"dropkit {self.command}: {self.title}",
                analyses=[self._analysis],
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the settings, data notes, the analysis (``experiment``, ``runs``,
        ``summary``, ``findings``, ``best`` and, when the runs recorded calibration metrics,
        ``calibration``), the comparisons and the store's path."""
        return {
            "command": self.command,
            **self.settings,
            "data_notes": list(self.notes),
            **self._analysis.to_dict(),
            "comparisons": self.comparisons,
            "store": str(self.store),
        }

    def tables(self) -> list[Table]:
        """The tables to read, in order: the groups on the split that chooses (validation
        when there is one, else test), then, when validation chose, every group's test
        figures read after the choice (:mod:`dropkit.lab.results.tables`)."""
        from dropkit.lab.results.tables import after_choice_table, choice_table

        after = after_choice_table(self.summaries, self.best)
        return [choice_table(self.summaries), *([] if after is None else [after])]

    def _repr_html_(self) -> str:
        """The table led by the split that chooses, the best group, the test figures read
        after the choice (when validation chose) and the diagnosis, for a notebook cell that
        ends with ``e``."""
        from dropkit.lab.results.tables import to_html

        choice, *after = self.tables()
        best = (
            ""
            if self.best is None
            else f"<p><b>{html.escape(self.best.evidence)}</b><br>"
            f"{html.escape(self.best.choice)}</p>"
        )
        findings = "".join(
            f"<li>{html.escape(f.severity)} [{html.escape(f.rule)}]: {html.escape(f.message)}</li>"
            for f in self.findings
        )
        calibration = "".join(to_html(t) for t in self.calibration_tables())
        return (
            f"<div><p>{html.escape(self.title)} · {len(self.runs)} runs · store "
            f"<code>{html.escape(self.store.name)}</code></p>{to_html(choice)}{best}"
            f"{''.join(to_html(t) for t in after)}{calibration}"
            f"{f'<ul>{findings}</ul>' if findings else ''}</div>"
        )

    def __repr__(self) -> str:
        best = "none" if self.best is None else self.best.summary.name
        return (
            f"Experiment({self.command}: {self.title}; {len(self.runs)} runs in "
            f"{len(self.groups)} groups; best: {best}; store={str(self.store)!r})"
        )
