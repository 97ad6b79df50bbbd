"""Train one batch of run configs: the single entry point every engine calls.

A batch holds runs that share data, architecture and training settings
(:meth:`dropkit.lab.config.RunConfig.shape_key`). MLP runs whose regularizers the stacked
trainer can express (:data:`dropkit.lab.regularizers.BATCHED_REGULARIZERS`; dropout rates,
max-norm) train together in :func:`dropkit.lab.batched.train_batch`; the others (BatchNorm,
concrete dropout, CNNs, LSTMs) in :func:`dropkit.lab.loop.train_modules`. A batch may mix the
two: it is split, and the results come back in the order of the configs. ``trainer="loop"``
trains every config in the generic loop (the stacked trainer's arms included: the two
trainers keep one contract, :mod:`dropkit.lab.training`, and are tested against each other).

Final weights are kept for small models only (at most
:data:`dropkit.lab.store.MAX_STATE_PARAMETERS` values), as the ``state_dict`` of the module
:func:`dropkit.lab.models.build_model` builds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from dropkit.lab.batched import RunSettings, train_batch
from dropkit.lab.config import RunConfig
from dropkit.lab.data import Dataset
from dropkit.lab.regularizers import BATCHED_REGULARIZERS
from dropkit.lab.store import MAX_STATE_PARAMETERS, RunRecord
from dropkit.lab.training import METRICS, BatchResult, EpochTicker, dropout_window

__all__ = ["TRAINERS", "batched_settings", "is_batched", "to_records", "train_configs"]

TRAINERS = ("auto", "stacked", "loop")
"""Choices of :func:`train_configs`' ``trainer``."""


def is_batched(config: RunConfig) -> bool:
    """Whether the stacked MLP trainer can train ``config``."""
    return config.model.kind == "mlp" and all(
        name in BATCHED_REGULARIZERS for name, _ in config.regularizers
    )


def batched_settings(config: RunConfig) -> RunSettings:
    """The :class:`RunSettings` of a config the stacked trainer can train (see :func:`is_batched`).

    ``early_dropout`` / ``late_dropout`` of strength ``s`` switch at epoch ``round(s·E)``
    (:func:`dropkit.lab.training.dropout_window`).
    """
    patience = config.strength("early_stopping")
    return RunSettings(
        seed=config.seed,
        p=config.p,
        input_p=config.input_p,
        max_norm=config.max_norm,
        l1=config.strength("l1", 0.0) or 0.0,
        l2=config.strength("l2", 0.0) or 0.0,
        augment=config.strength("augment", 0.0) or 0.0,
        noise=config.strength("gaussian_noise", 0.0) or 0.0,
        dropout_epochs=dropout_window(config),
        patience=None if patience is None else max(1, round(patience)),
    )


def _parameter_count(widths: Sequence[int]) -> int:
    return sum(i * o + o for i, o in itertools.pairwise(widths))


def _module_states(
    data: Dataset, configs: Sequence[RunConfig], pairs: Sequence[Sequence[tuple[Tensor, Tensor]]]
) -> list[dict[str, Tensor]]:
    """The final weights of stacked-trainer runs as ``build_model`` state dicts."""
    from dropkit.lab.models import build_model, load_linear_weights

    states = []
    for config, weights in zip(configs, pairs, strict=True):
        module = load_linear_weights(build_model(config, data), weights)
        states.append({k: v.detach().clone() for k, v in module.state_dict().items()})
    return states


def train_configs(
    data: Dataset,
    configs: Sequence[RunConfig],
    *,
    compile: bool | None = None,
    on_epoch: Callable[[int], None] | None = None,
    trainer: str = "auto",
) -> BatchResult:
    """Train ``configs`` (one shape key) on ``data``; results come back in the order of ``configs``.

    Args:
        data: the loaded data set of the configs.
        configs: runs sharing ``data``, ``model`` and ``train``.
        compile: fuse the stacked trainer's steps with ``torch.compile`` (None: when a C++
            compiler exists).
        on_epoch: called with the number of finished epochs of the whole batch after each
            epoch (once per epoch even when the batch trains in parts).
        trainer: ``"auto"``: the stacked trainer for the configs it can train
            (:func:`is_batched`), the generic loop for the others; ``"loop"``: the generic
            loop for every config (slower; to check one trainer against the other);
            ``"stacked"``: the stacked trainer for every config.

    Returns:
        Curves, seconds, ``info`` per run, and ``states`` per run when the model has at most
        :data:`MAX_STATE_PARAMETERS` parameters (None otherwise).

    Raises:
        ValueError: no configs, configs of different shape keys, an unknown ``trainer``, or
            ``trainer="stacked"`` with a config the stacked trainer cannot train.
    """
    if not configs:
        raise ValueError("`configs` must hold at least one run")
    if trainer not in TRAINERS:
        raise ValueError(f"`trainer` must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    first = configs[0]
    if any(c.shape_key() != first.shape_key() for c in configs):
        raise ValueError("every config of a batch must share data, model and training settings")
    start = time.perf_counter()
    widths = [data.n_features, *first.model.hidden, 1 if data.n_classes == 2 else data.n_classes]
    small = _parameter_count(widths) <= MAX_STATE_PARAMETERS
    stacked = [i for i, c in enumerate(configs) if trainer != "loop" and is_batched(c)]
    looped = sorted(set(range(len(configs))) - set(stacked))
    if trainer == "stacked" and looped:
        raise ValueError(
            f"`trainer` is 'stacked' but the stacked trainer cannot train arm "
            f"{configs[looped[0]].arm!r} of model kind {configs[looped[0]].model.kind!r}"
        )
    epochs = first.train.epochs
    ticker = EpochTicker(len(configs), epochs, on_epoch)
    values = np.empty((len(METRICS), len(configs), epochs))
    info: list[dict[str, float]] = [{} for _ in configs]
    states: list[dict[str, Tensor] | None] = [None] * len(configs)
    if stacked:
        part = train_batch(
            data,
            first.model,
            first.train,
            [batched_settings(configs[i]) for i in stacked],
            compile=compile,
            on_epoch=ticker.part(len(stacked)),
            keep_weights=small,
        )
        if part.pairs is not None:
            for i, state in zip(
                stacked,
                _module_states(data, [configs[i] for i in stacked], part.pairs),
                strict=True,
            ):
                states[i] = state
        _place(values, info, stacked, part)
    if looped:
        from dropkit.lab.loop import train_modules

        part = train_modules(data, [configs[i] for i in looped], on_epoch=ticker.part(len(looped)))
        for i, state in zip(looped, part.states or [], strict=False):
            if sum(v.numel() for v in state.values()) <= MAX_STATE_PARAMETERS:
                states[i] = state
        _place(values, info, looped, part)
    ticker.finish()
    kept = [s for s in states if s is not None]
    return BatchResult(
        curves={name: values[m] for m, name in enumerate(METRICS)},
        seconds=time.perf_counter() - start,
        states=kept if len(kept) == len(states) else None,
        info=info,
    )


def _place(
    values: np.ndarray, info: list[dict[str, float]], where: list[int], part: BatchResult
) -> None:
    for m, name in enumerate(METRICS):
        values[m, where] = part.curves[name]
    for position, index in enumerate(where):
        if part.info is not None:
            info[index] = dict(part.info[position])


def to_records(configs: Sequence[RunConfig], result: BatchResult) -> list[RunRecord]:
    """The store records of a trained batch, one per config, in the order of ``configs``."""
    per_run = result.seconds / len(configs)
    return [
        RunRecord(
            config,
            {name: values[i] for name, values in result.curves.items()},
            per_run,
            info=None if result.info is None else result.info[i],
            state=None if result.states is None else result.states[i],
        )
        for i, config in enumerate(configs)
    ]
