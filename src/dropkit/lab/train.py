"""Train one batch of run configs: the single entry point every engine calls.

A batch holds runs that share data, architecture and training settings
(:meth:`dropkit.lab.config.RunConfig.shape_key`). Runs the stacked MLP trainer can express
train together in :func:`dropkit.lab.batched.train_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dropkit.lab.batched import BatchResult, RunSettings, train_batch
from dropkit.lab.config import RunConfig
from dropkit.lab.data import Dataset
from dropkit.lab.store import RunRecord

__all__ = ["to_records", "train_configs"]


def train_configs(
    data: Dataset,
    configs: Sequence[RunConfig],
    *,
    compile: bool | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> BatchResult:
    """Train ``configs`` (one shape key) on ``data``; curves come back in the order of ``configs``.

    Args:
        data: the loaded data set of the configs.
        configs: runs sharing ``data``, ``model`` and ``train``.
        compile: fuse training steps with ``torch.compile`` (None: when a C++ compiler exists).
        on_epoch: called with the number of finished epochs after each epoch.
    """
    if not configs:
        raise ValueError("`configs` must hold at least one run")
    first = configs[0]
    if any(c.shape_key() != first.shape_key() for c in configs):
        raise ValueError("every config of a batch must share data, model and training settings")
    settings = [RunSettings(c.seed, c.p, c.input_p, c.max_norm) for c in configs]
    return train_batch(data, first.model, first.train, settings, compile=compile, on_epoch=on_epoch)


def to_records(configs: Sequence[RunConfig], result: BatchResult) -> list[RunRecord]:
    """The store records of a trained batch, one per config, in the order of ``configs``."""
    per_run = result.seconds / len(configs)
    return [
        RunRecord(config, {name: values[i] for name, values in result.curves.items()}, per_run)
        for i, config in enumerate(configs)
    ]
