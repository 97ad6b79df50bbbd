"""One summary path for every command: stored runs → experiments → statistics, best, diagnosis.

An *experiment* is the set of stored runs that share data, model and training settings (the
folds of a cross-validation included); its runs are grouped (identical configs but for the seed
and fold), summarized over seeds, compared with the baseline group, and diagnosed
(:mod:`dropkit.lab.stats`). The CLI's tables and ``--json``, the
HTML report and :class:`dropkit.lab.Experiment` all read this one analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.config import RunConfig
from dropkit.lab.stats import (
    ArmSummary,
    BestRate,
    Diagnosis,
    Thresholds,
    best_rate,
    diagnose,
    group_runs,
    summarize,
)
from dropkit.lab.store import ResultsStore, StoredRun

__all__ = ["Analysis", "analyze", "experiment_title"]


@dataclass(frozen=True)
class Analysis:
    """Runs that share data, model and training settings, with their statistics."""

    title: str
    runs: tuple[StoredRun, ...]
    groups: tuple[tuple[str, tuple[StoredRun, ...]], ...]
    summaries: tuple[ArmSummary, ...]
    findings: tuple[Diagnosis, ...]
    best: BestRate | None
    curves: dict[str, dict[str, NDArray[np.float64]]]

    @property
    def task(self) -> str:
        """The experiment's task: ``"classification"`` or ``"regression"``."""
        return self.runs[0].config.data.task if self.runs else "classification"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary rows, findings and the best group (``name``, ``arm``, ``p``,
        ``evidence``, ``chosen_on``: ``"validation"`` or ``"test"``, ``choice``: the line that
        names the split that chose)."""
        best = self.best
        return {
            "experiment": self.title,
            "runs": len(self.runs),
            "summary": [s.to_dict() for s in self.summaries],
            "findings": [f.to_dict() for f in self.findings],
            "best": None
            if best is None
            else {
                "name": best.summary.name,
                "arm": best.summary.arm,
                "p": best.summary.p,
                "evidence": best.evidence,
                "chosen_on": best.chosen_on,
                "choice": best.choice,
            },
        }


def experiment_title(config: RunConfig) -> str:
    model = config.model
    hidden = "-".join(str(h) for h in model.hidden)
    return (
        f"{Path(config.data.name).name} · {model.kind} {hidden} · {config.train.epochs} epochs, "
        f"batch {config.train.batch_size}"
    )


def analyze(
    store: ResultsStore,
    keys: Sequence[str] | None = None,
    *,
    thresholds: Thresholds | None = None,
) -> list[Analysis]:
    """The stored runs (all, or ``keys``) split into experiments, summarized and diagnosed."""
    runs = store.runs(None if keys is None else list(keys))
    by_shape: dict[str, list[StoredRun]] = {}
    for run in runs:
        c = run.config
        shape = RunConfig(c.data, c.model, c.train, fold=0 if c.data.folds else None).to_dict()
        by_shape.setdefault(repr(sorted(_flatten(shape).items())), []).append(run)
    experiments = []
    for shape_key in sorted(by_shape):
        members = by_shape[shape_key]
        curves = {r.key: store.curves(r.key) for r in members}
        summaries = summarize(members, curves)
        experiments.append(
            Analysis(
                title=experiment_title(members[0].config),
                runs=tuple(members),
                groups=tuple((label, tuple(rs)) for label, rs in group_runs(members)),
                summaries=tuple(summaries),
                findings=tuple(diagnose(summaries, thresholds)),
                best=best_rate(summaries),
                curves=curves,
            )
        )
    return experiments


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = repr(value)
    return flat
