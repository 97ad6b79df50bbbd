"""Run a set of run configs: skip the finished ones, train the rest in batches, store each batch.

The flow is one-way: configs → data → engine (training) → store. The engine may train many
batches at once (on a Ray cluster); this process alone writes the store, each batch as soon as
it comes back, in one transaction, so an interrupted sweep keeps every finished batch and the
next invocation trains only what is missing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dropkit.lab.execute.engines import BatchFailure, BatchJob, Engine, InProcessEngine
from dropkit.lab.plan.config import DataSpec, RunConfig
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.store import ResultsStore
from dropkit.lab.train.dispatch import to_records

__all__ = [
    "IncompleteSweep",
    "NullProgress",
    "Progress",
    "SweepOutcome",
    "plan_batches",
    "run_configs",
]


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


class IncompleteSweep(RuntimeError):
    """Some batches failed (their retries spent); every other batch was stored.

    Attributes:
        pending: keys of the runs that stayed pending; the next invocation trains them.
        reasons: one line per failed batch.
    """

    def __init__(self, pending: Sequence[str], reasons: Sequence[str]) -> None:
        self.pending = tuple(pending)
        self.reasons = tuple(reasons)
        super().__init__(
            f"{len(self.pending)} runs stayed pending after {len(self.reasons)} failed "
            f"batches ({self.reasons[0]}); run the same command again to train them"
        )


def plan_batches(
    configs: Sequence[RunConfig], max_batch: int, slots: int = 1
) -> list[list[RunConfig]]:
    """Group configs that share data, model and training settings, and split the groups.

    A group of ``n`` runs is cut into consecutive batches of ``min(max_batch, ceil(n / slots))``
    runs, so an engine that trains ``slots`` batches at once has work for every slot.
    """
    groups: dict[object, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(config.shape_key(), []).append(config)
    batches = []
    for group in groups.values():
        size = max(1, min(max_batch, math.ceil(len(group) / slots)))
        batches += [group[start : start + size] for start in range(0, len(group), size)]
    return batches


def run_configs(
    configs: Sequence[RunConfig],
    store: ResultsStore,
    *,
    engine: Engine | None = None,
    progress: Progress | None = None,
    max_batch: int = 128,
    datasets: dict[DataSpec, Dataset] | None = None,
    model: object = None,
    notes: Callable[[], Sequence[str]] | None = None,
) -> SweepOutcome:
    """Train every config not yet in ``store`` and store the results batch by batch.

    Batches go to ``engine`` (:class:`InProcessEngine` by default); each result is stored
    here, in one transaction, as soon as it comes back, so an interrupted sweep keeps every
    finished batch. ``datasets`` may hold data sets already loaded (the CLI loads them first
    to refuse bad data before anything is written); the others are loaded once each. ``model``
    is the user's model (:class:`~dropkit.lab.plan.user_model.ModelSource`) of ``custom`` runs; it
    travels with every batch to the engine. ``notes`` returns the notes so far (of the plan, and
    what training reported): each batch stores them with its runs, in its transaction.

    Returns:
        The keys of all ``configs`` (finished now or before) and what was done.

    Raises:
        IncompleteSweep: a batch failed on the engine; every other batch is stored.
    """
    start = time.perf_counter()
    engine = engine or InProcessEngine()
    unique = list({c.key(): c for c in configs}.items())
    keys = tuple(k for k, _ in unique)
    done = store.done_keys(list(keys))
    pending = [c for k, c in unique if k not in done]
    trained = 0
    failed: list[tuple[BatchJob, BatchFailure]] = []
    if pending:
        datasets = dict(datasets or {})
        for config in pending:
            if config.data not in datasets:
                datasets[config.data] = load_dataset(config.data)
        jobs = [
            BatchJob(datasets[batch[0].data], tuple(batch), model=model)
            for batch in plan_batches(pending, max_batch, engine.slots)
        ]
        shown = progress or NullProgress()
        shown.begin(sum(c.train.epochs for c in pending), f"training {len(pending)} runs")
        results = engine.run_batches(jobs, None if progress is None else shown.advance)
        try:
            for job, result in results:
                if isinstance(result, BatchFailure):
                    failed.append((job, result))
                else:
                    said = () if notes is None else tuple(notes())
                    trained += store.add_runs(to_records(job.configs, result), notes=said)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # an engine stopped early cancels its work in flight
            shown.end()
    if failed:
        raise IncompleteSweep(
            [c.key() for job, _ in failed for c in job.configs], [f.reason for _, f in failed]
        )
    return SweepOutcome(
        keys=keys,
        total=len(keys),
        already_done=len(done),
        trained=trained,
        seconds=time.perf_counter() - start,
    )
