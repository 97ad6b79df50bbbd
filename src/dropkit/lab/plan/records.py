"""What a finished run hands on, as plain data: the trainers fill it, the store keeps it.

:class:`RunRecord` is a run's config, its per-epoch curves (:data:`CURVE_METRICS`), its
training time, scalar facts of its training (``info``) and, for small models, its final weights.
It lives with the plan, not with the store, so that the trainers (:mod:`dropkit.lab.train`)
never import the store (:mod:`dropkit.lab.store`), which is the runner's alone to write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from torch import Tensor

from dropkit.lab.plan.config import RunConfig

__all__ = ["CURVE_METRICS", "MAX_STATE_PARAMETERS", "RunRecord"]

MAX_STATE_PARAMETERS = 100_000
"""Final weights are stored for models of at most this many values (a few hundred kB each)."""

CURVE_METRICS = ("train_acc", "test_acc", "train_loss", "test_loss")
"""The per-epoch curves of every run, in the store's column order."""


@dataclass(frozen=True)
class RunRecord:
    """A finished run, ready to store: its config, per-epoch curves and training time, and
    optionally scalar facts of its training (``info``) and its final weights (``state``;
    stored when it holds at most :data:`MAX_STATE_PARAMETERS` values)."""

    config: RunConfig
    curves: dict[str, NDArray[np.float64]]
    seconds: float
    info: dict[str, float] | None = None
    state: dict[str, Tensor] | None = None
