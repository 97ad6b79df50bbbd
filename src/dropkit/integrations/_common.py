"""What the Lightning and Hugging Face callbacks share: one definition of each behaviour."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from dropkit._validation import check_one_of
from dropkit.checks import Finding, check_model, format_findings
from dropkit.schedules import DropoutSchedule
from dropkit.surgery import find_dropout_sites

__all__ = [
    "INTERVALS",
    "ON_ERROR",
    "check_interval",
    "check_on_error",
    "check_schedule",
    "eval_mode_dropout",
    "missing_extra",
    "report_findings",
    "schedule_rate",
    "sync_schedule",
    "warn_eval_mode_dropout",
]

INTERVALS = ("step", "epoch")
"""When a :class:`~dropkit.DropoutSchedule` advances: every optimizer step or every epoch."""

ON_ERROR = ("raise", "warn")
"""What the check callbacks do with warnings of :func:`dropkit.check_model`."""


def missing_extra(module: str, framework: str, extra: str) -> ImportError:
    """The one-line error for an integration whose framework is not installed."""
    return ImportError(f'{module} needs {framework}: pip install "dropkit[{extra}]"')


def check_schedule(schedule: object) -> DropoutSchedule:
    """Return ``schedule`` after checking it is a :class:`~dropkit.DropoutSchedule`."""
    if not isinstance(schedule, DropoutSchedule):
        raise TypeError(
            f"`schedule` must be a dropkit.DropoutSchedule, got {type(schedule).__name__}"
        )
    return schedule


def check_interval(interval: object) -> str:
    return check_one_of(interval, "interval", INTERVALS)


def check_on_error(on_error: object) -> str:
    return check_one_of(on_error, "on_error", ON_ERROR)


def sync_schedule(schedule: DropoutSchedule, position: int) -> float:
    """Move ``schedule`` to ``position`` (steps or epochs done), set the rates; return the rate.

    Setting the position rather than counting calls keeps the schedule right under gradient
    accumulation, skipped steps and resumed training.
    """
    if position != schedule.last_step:
        schedule.load_state_dict({"last_step": position})
    return schedule_rate(schedule)


def schedule_rate(schedule: DropoutSchedule) -> float:
    """The highest current rate among the modules ``schedule`` drives (the one to log)."""
    return max(schedule.rate(target) for _, target in schedule.targets)


def eval_mode_dropout(model: nn.Module) -> list[str]:
    """Dropout sites with ``p > 0`` that are off because their module is in eval mode.

    A site is a dropout module or a float rate that its module applies
    (:func:`dropkit.find_dropout_sites`); either way the module's ``training`` flag is the switch.
    """
    return [
        site.name or "<model>"
        for site in find_dropout_sites(model)
        if site.p > 0 and not site.module.training
    ]


def warn_eval_mode_dropout(model: nn.Module, *, stacklevel: int = 2) -> bool:
    """Warn when ``model`` trains with dropout in eval mode; return whether it warned."""
    names = eval_mode_dropout(model)
    if not names:
        return False
    shown = ", ".join(f"`{n}`" for n in names[:5]) + (" …" if len(names) > 5 else "")
    warnings.warn(
        f"{type(model).__name__} trains with {len(names)} dropout site(s) in eval mode, so "
        f"their dropout is off: {shown}. A module put in eval mode before training (a model "
        "loaded in eval mode, an .eval() call, an overridden train()) stays so unless the loop "
        "calls model.train(). Call model.train() before training, or drop those rates to 0 "
        "if they are meant to be off.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def report_findings(model: nn.Module, example_input: Any, on_error: str) -> list[Finding]:
    """Run :func:`dropkit.check_model`; raise or warn on its warnings; return all findings.

    Raises:
        RuntimeError: with ``on_error="raise"``, when a check reports a warning.
    """
    findings = check_model(model, example_input)
    problems = [f for f in findings if f.severity == "warning"]
    if problems:
        text = f"dropkit.check_model found dropout mistakes in {type(model).__name__}:\n"
        text += format_findings(problems)
        if on_error == "raise":
            raise RuntimeError(text)
        warnings.warn(text, UserWarning, stacklevel=3)
    return findings
