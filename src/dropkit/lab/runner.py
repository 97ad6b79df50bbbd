"""Run a set of run configs: skip the finished ones, train the rest in batches, store each batch.

The flow is one-way: configs → data → engine (training) → store. A batch is stored as soon
as it finishes, in one transaction, so an interrupted sweep keeps every finished batch and the
next invocation trains only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dropkit.lab.config import DataSpec, RunConfig
from dropkit.lab.data import Dataset, load_dataset
from dropkit.lab.engines import Engine, InProcessEngine
from dropkit.lab.store import ResultsStore
from dropkit.lab.train import to_records

__all__ = ["NullProgress", "Progress", "SweepOutcome", "plan_batches", "run_configs"]


class Progress(Protocol):
    """Where progress goes: a terminal bar, a log, or nowhere. Units are run-epochs."""

    def begin(self, total: int, description: str) -> None: ...

    def advance(self, amount: int) -> None: ...

    def end(self) -> None: ...


class NullProgress:
    """Progress that shows nothing."""

    def begin(self, total: int, description: str) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class SweepOutcome:
    """What a call to :func:`run_configs` found and did."""

    keys: tuple[str, ...]
    total: int
    already_done: int
    trained: int
    seconds: float


def plan_batches(configs: Sequence[RunConfig], max_batch: int) -> list[list[RunConfig]]:
    """Group configs that share data, model and training settings; split groups to ``max_batch``."""
    groups: dict[object, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(config.shape_key(), []).append(config)
    return [
        group[start : start + max_batch]
        for group in groups.values()
        for start in range(0, len(group), max_batch)
    ]


def run_configs(
    configs: Sequence[RunConfig],
    store: ResultsStore,
    *,
    engine: Engine | None = None,
    progress: Progress | None = None,
    max_batch: int = 128,
    datasets: dict[DataSpec, Dataset] | None = None,
) -> SweepOutcome:
    """Train every config not yet in ``store`` and store the results batch by batch.

    ``datasets`` may hold data sets already loaded (the CLI loads them first to refuse bad
    data before anything is written); the others are loaded once each.

    Returns:
        The keys of all ``configs`` (finished now or before) and what was done.
    """
    start = time.perf_counter()
    engine = engine or InProcessEngine()
    progress = progress or NullProgress()
    unique = list({c.key(): c for c in configs}.items())
    keys = tuple(k for k, _ in unique)
    done = store.done_keys(list(keys))
    pending = [c for k, c in unique if k not in done]
    trained = 0
    if pending:
        total = sum(c.train.epochs for c in pending)
        progress.begin(total, f"training {len(pending)} runs")
        datasets = dict(datasets or {})
        try:
            for batch in plan_batches(pending, max_batch):
                first = batch[0]
                if first.data not in datasets:
                    datasets[first.data] = load_dataset(first.data)
                size = len(batch)

                def on_epoch(_epoch: int, size: int = size) -> None:
                    progress.advance(size)

                result = engine.run_batch(datasets[first.data], batch, on_epoch=on_epoch)
                trained += store.add_runs(to_records(batch, result))
        finally:
            progress.end()
    return SweepOutcome(
        keys=keys,
        total=len(keys),
        already_done=len(done),
        trained=trained,
        seconds=time.perf_counter() - start,
    )
