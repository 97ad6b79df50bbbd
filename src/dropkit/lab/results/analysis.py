"""One summary path for every command: stored runs → experiments → statistics, best, diagnosis.

An *experiment* is the set of stored runs that share data, model and training settings (the
folds of a cross-validation included); its runs are grouped (identical configs but for the seed
and fold), summarized over seeds, compared with the baseline group, and diagnosed
(:mod:`dropkit.lab.results`). The CLI's tables and ``--json``, the
HTML report and :class:`dropkit.lab.Experiment` all read this one analysis.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.plan.config import CUSTOM_MODEL, RunConfig, TrainSpec
from dropkit.lab.results import (
    ArmSummary,
    BestRate,
    Diagnosis,
    Thresholds,
    best_rate,
    diagnose,
    group_runs,
    summarize,
)
from dropkit.lab.results.calibration_stats import CalibrationSummary, summarize_calibration
from dropkit.lab.store import ResultsStore, StoredRun

__all__ = ["Analysis", "analyze", "experiment_title", "experiment_titles"]


@dataclass(frozen=True)
class Analysis:
    """Runs that share data, model and training settings, with their statistics.

    ``calibration``: each group's calibration metrics over seeds, the baseline first
    (:func:`~dropkit.lab.results.calibration_stats.summarize_calibration`); empty when no run
    recorded them.
    """

    title: str
    runs: tuple[StoredRun, ...]
    groups: tuple[tuple[str, tuple[StoredRun, ...]], ...]
    summaries: tuple[ArmSummary, ...]
    findings: tuple[Diagnosis, ...]
    best: BestRate | None
    curves: dict[str, dict[str, NDArray[np.float64]]]
    calibration: tuple[CalibrationSummary, ...] = ()

    @property
    def task(self) -> str:
        """The experiment's task: ``"classification"`` or ``"regression"``."""
        return self.runs[0].config.data.task if self.runs else "classification"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary rows, findings and the best group (``name``, ``arm``, ``p``,
        ``evidence``, ``chosen_on``: ``"validation"`` or ``"test"``, ``choice``: the line that
        names the split and the rule, ``top``, ``tied``, ``rule``, ``held_out``,
        ``provisional``: see :class:`~dropkit.lab.results.summary.BestRate`) and, when
        the runs recorded calibration metrics, ``calibration``: one
        :meth:`~dropkit.lab.results.calibration_stats.CalibrationSummary.to_dict` per group."""
        result: dict[str, Any] = {
            "experiment": self.title,
            "runs": len(self.runs),
            "summary": [s.to_dict() for s in self.summaries],
            "findings": [f.to_dict() for f in self.findings],
            "best": None if self.best is None else self.best.to_dict(),
        }
        if self.calibration:
            result["calibration"] = [c.to_dict() for c in self.calibration]
        return result


def experiment_title(config: RunConfig) -> str:
    """One line: the data, the model (a user's by its name, and its ``model_id`` when given),
    epochs and batch size, and the learning rate, validation split or folds when set.

    Experiments of one store whose titles are equal are told apart by
    :func:`experiment_titles`.
    """
    data, model, train = config.data, config.model, config.train
    if model.kind == CUSTOM_MODEL:
        what = (model.name or "model").rpartition(":")[2]
        if model.fingerprint and not _HASH.fullmatch(model.fingerprint):
            what += f" ({model.fingerprint})"  # the user's model_id
    else:
        what = f"{model.kind} {'-'.join(str(h) for h in model.hidden)}"
    settings = [f"{train.epochs} epochs", f"batch {train.batch_size}"]
    if train.lr != TrainSpec().lr:
        settings.append(f"lr {_number(train.lr)}")
    if data.folds:
        settings.append(f"{data.folds} folds")
    elif data.validation:
        settings.append(f"validation {_number(data.validation)}")
    return f"{Path(data.name).name} · {what} · {', '.join(settings)}"


def experiment_titles(configs: Sequence[RunConfig]) -> list[str]:
    """The :func:`experiment_title` of each experiment's config, made distinct: experiments
    whose titles are equal get what sets them apart appended (``data 3f2a9c1b``: the prefix
    of a content hash or ``data_id``; ``model 1a2b3c4d``: of a model's fingerprint; the
    split seed, test size, ...)."""
    titles = [experiment_title(c) for c in configs]
    sharing: dict[str, list[int]] = {}
    for index, title in enumerate(titles):
        sharing.setdefault(title, []).append(index)
    for members in sharing.values():
        if len(members) < 2:
            continue
        fields = [_fields(configs[i]) for i in members]
        differing = [name for name in fields[0] if len({repr(f[name]) for f in fields}) > 1]
        if not differing:  # the same experiment twice
            continue
        for index, values in zip(members, fields, strict=True):
            titles[index] += " · " + ", ".join(_label(name, values[name]) for name in differing)
    return titles


_HASH = re.compile(r"[0-9a-f]{16}")  # a computed fingerprint or content hash (not a user's id)


def _number(value: float) -> str:
    """``value`` short (``0.001``), or in full when the short form would round it."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def _fields(config: RunConfig) -> dict[str, Any]:
    """Everything that makes a config's experiment: ``{"data.name": ..., "train.lr": ...}``."""
    return {
        f"{part}.{name}": value
        for part in ("data", "model", "train")
        for name, value in dataclasses.asdict(getattr(config, part)).items()
    }


def _label(field: str, value: Any) -> str:
    """A short label of one field's value in a title."""
    name = field.partition(".")[2]
    if value is None:
        return f"no {name.replace('_', ' ')}"
    if field in ("data.content_hash", "model.fingerprint"):
        text = str(value)
        return f"{field.partition('.')[0]} {text[:8] if _HASH.fullmatch(text) else text}"
    if field in ("data.name", "model.name"):
        return f"{field.partition('.')[0]} {value}"
    if isinstance(value, float):
        return f"{name.replace('_', ' ')} {_number(value)}"
    if isinstance(value, tuple):
        return f"{name} {', '.join(_number(v) if isinstance(v, float) else str(v) for v in value)}"
    return f"{name.replace('_', ' ')} {value}"


def _shape(config: RunConfig) -> str:
    """The experiment a run belongs to: its data, model and training (folds included)."""
    c = config
    shape = RunConfig(c.data, c.model, c.train, fold=0 if c.data.folds else None).to_dict()
    return repr(sorted(_flatten(shape).items()))


def analyze(
    store: ResultsStore,
    keys: Sequence[str] | None = None,
    *,
    thresholds: Thresholds | None = None,
    choose_by: str = "score",
) -> list[Analysis]:
    """The stored runs (all, or ``keys``) split into experiments, summarized and diagnosed.

    Titles are distinct among all the store's experiments (:func:`experiment_titles`), also
    when ``keys`` selects some of them. ``choose_by``: what chooses each experiment's best
    group (:func:`~dropkit.lab.results.summary.best_rate`): ``"score"`` (accuracy or R²) or
    a calibration metric such as ``"nll"`` or ``"mc_ece"``.

    Raises:
        ValueError: an unknown ``choose_by``, or a calibration metric an experiment's runs did
            not record.
    """
    runs = store.runs(None if keys is None else list(keys))
    by_shape: dict[str, list[StoredRun]] = {}
    for run in runs:
        by_shape.setdefault(_shape(run.config), []).append(run)
    shapes = store.shapes() if by_shape else []
    titles = dict(zip(map(_shape, shapes), experiment_titles(shapes), strict=True))
    experiments = []
    for shape_key in sorted(by_shape):
        members = by_shape[shape_key]
        curves = {r.key: store.curves(r.key) for r in members}
        summaries = summarize(members, curves)
        train = members[0].config.train
        calibration = summarize_calibration(
            summaries, mc_samples=train.mc_samples if train.monte_carlo else None
        )
        experiments.append(
            Analysis(
                title=titles.get(shape_key) or experiment_title(members[0].config),
                runs=tuple(members),
                groups=tuple((label, tuple(rs)) for label, rs in group_runs(members)),
                summaries=tuple(summaries),
                findings=tuple(diagnose(summaries, thresholds)),
                best=best_rate(summaries, choose_by),
                curves=curves,
                calibration=tuple(calibration),
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
