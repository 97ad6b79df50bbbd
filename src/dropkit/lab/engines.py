"""Where batches of runs execute. The driver (:mod:`dropkit.lab.runner`) alone writes the store.

The in-process engine is the default: it trains each batch in the current process as one
stacked computation (:func:`dropkit.lab.batched.train_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from dropkit.lab.batched import BatchResult, RunSettings, train_batch
from dropkit.lab.config import ModelSpec, TrainSpec
from dropkit.lab.data import Dataset

__all__ = ["Engine", "InProcessEngine"]


class Engine(Protocol):
    """Trains one batch of runs that share data, model and training settings."""

    def run_batch(
        self,
        data: Dataset,
        model: ModelSpec,
        train: TrainSpec,
        runs: Sequence[RunSettings],
        on_epoch: Callable[[int], None] | None = None,
    ) -> BatchResult: ...


class InProcessEngine:
    """Train in this process.

    Args:
        compile: fuse the training step with ``torch.compile`` (None: when a C++ compiler
            is available).
    """

    def __init__(self, *, compile: bool | None = None) -> None:
        self.compile = compile

    def run_batch(
        self,
        data: Dataset,
        model: ModelSpec,
        train: TrainSpec,
        runs: Sequence[RunSettings],
        on_epoch: Callable[[int], None] | None = None,
    ) -> BatchResult:
        return train_batch(data, model, train, runs, compile=self.compile, on_epoch=on_epoch)
