"""Dropout rates that change over training: constant, linear ramp, early and late dropout.

* ``constant``: the rate ``p`` throughout.
* ``linear``: from ``start · p`` to ``p`` over ``total_steps`` (DropBlock's authors ramp the
  rate up this way: Ghiasi et al. 2018, https://arxiv.org/abs/1810.12890).
* ``early``: ``p`` for the first ``cutoff`` fraction of training, then 0. Dropout early on
  reduces underfitting (Liu et al. 2023, "Dropout Reduces Underfitting",
  https://arxiv.org/abs/2303.01500).
* ``late``: 0 for the first ``cutoff`` fraction, then ``p``: regularization only once the
  model starts to overfit (the same paper's "late dropout").
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dropkit._base import module_rate, set_module_rate
from dropkit._validation import check_one_of, check_probability
from dropkit.surgery import find_dropout

__all__ = ["SCHEDULES", "DropoutSchedule", "scheduled_rate"]

SCHEDULES = ("constant", "linear", "early", "late")


def _check_steps(total_steps: object) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"`total_steps` must be an int >= 1, got {total_steps!r}")
    return total_steps


def scheduled_rate(
    schedule: str,
    p: float,
    step: int,
    total_steps: int,
    *,
    cutoff: float = 0.5,
    start: float = 0.0,
) -> float:
    """The drop rate at ``step`` (0-based) of ``total_steps`` under ``schedule``.

    Args:
        schedule: ``"constant"``, ``"linear"``, ``"early"`` or ``"late"``.
        p: the target drop probability.
        step: steps (or epochs) done so far; past ``total_steps`` the last rate holds.
        total_steps: the length of training in the same unit.
        cutoff: fraction of training where ``early`` switches off and ``late`` switches on.
        start: ``linear`` starts at ``start · p``.
    """
    check_one_of(schedule, "schedule", SCHEDULES)
    p = check_probability(p)
    total_steps = _check_steps(total_steps)
    cutoff = check_probability(cutoff, "cutoff", description="a fraction of training")
    start = check_probability(start, "start", description="a fraction of p")
    progress = min(max(step, 0) / total_steps, 1.0)
    if schedule == "linear":
        return p * (start + (1.0 - start) * progress)
    if schedule == "early":
        return p if progress < cutoff else 0.0
    if schedule == "late":
        return 0.0 if progress < cutoff else p
    return p


class DropoutSchedule:
    """Drive every dropout module of ``model`` along a schedule; call :meth:`step` once per step.

    Each module's rate at construction is its target ``p``; the schedule scales it over time,
    so differently rated layers keep their proportions. The rates for step 0 are set at once.

    Args:
        model: the model whose dropout modules (dropkit's and PyTorch's) are driven.
        schedule: ``"constant"``, ``"linear"``, ``"early"`` or ``"late"``.
        total_steps: how many times :meth:`step` will be called over training.
        cutoff: fraction of training where ``early`` stops and ``late`` starts (default 0.5).
        start: ``linear`` starts at ``start · p`` (default 0).

    Example::

        >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), Dropout(0.5), nn.Linear(8, 1))
        >>> schedule = DropoutSchedule(model, "early", total_steps=100, cutoff=0.2)
        >>> for epoch in range(100):
        ...     ...  # train one epoch
        ...     schedule.step()
        >>> model[2].p
        0.0
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: str = "linear",
        *,
        total_steps: int,
        cutoff: float = 0.5,
        start: float = 0.0,
    ) -> None:
        self.schedule = check_one_of(schedule, "schedule", SCHEDULES)
        self.total_steps = _check_steps(total_steps)
        self.cutoff = check_probability(cutoff, "cutoff", description="a fraction of training")
        self.start = check_probability(start, "start", description="a fraction of p")
        self.targets = [(module, module_rate(module)) for _, module in find_dropout(model)]
        if not self.targets:
            raise ValueError("`model` has no dropout module to schedule")
        self.last_step = 0
        self._apply()

    def rate(self, p: float) -> float:
        """The current rate of a module whose target is ``p``."""
        return scheduled_rate(
            self.schedule, p, self.last_step, self.total_steps, cutoff=self.cutoff, start=self.start
        )

    def _apply(self) -> None:
        for module, target in self.targets:
            set_module_rate(module, self.rate(target))

    def step(self) -> None:
        """Advance one step and set every module's rate for it."""
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """The position in the schedule, to resume training."""
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()

    def __repr__(self) -> str:
        return (
            f"DropoutSchedule({self.schedule!r}, total_steps={self.total_steps}, "
            f"step={self.last_step}, modules={len(self.targets)})"
        )
