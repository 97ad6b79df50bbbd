"""Where batches of runs execute. The driver (:mod:`dropkit.lab.runner`) alone writes the store.

The in-process engine is the default: it trains each batch in the current process
(:func:`dropkit.lab.train.train_configs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from dropkit.lab.batched import BatchResult
from dropkit.lab.config import RunConfig
from dropkit.lab.data import Dataset
from dropkit.lab.train import train_configs

__all__ = ["Engine", "InProcessEngine"]


class Engine(Protocol):
    """Trains one batch of runs that share data, model and training settings (one shape key)."""

    def run_batch(
        self,
        data: Dataset,
        configs: Sequence[RunConfig],
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
        configs: Sequence[RunConfig],
        on_epoch: Callable[[int], None] | None = None,
    ) -> BatchResult:
        return train_configs(data, configs, compile=self.compile, on_epoch=on_epoch)
