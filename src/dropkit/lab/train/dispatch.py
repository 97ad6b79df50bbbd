"""Train one batch of run configs: the single entry point every engine calls.

A batch holds runs that share data, architecture and training settings
(:meth:`dropkit.lab.plan.config.RunConfig.shape_key`). MLP runs whose regularizers the stacked
trainer can express (:data:`dropkit.lab.plan.comparison.BATCHED_REGULARIZERS`; dropout rates,
max-norm) train together in :func:`dropkit.lab.train.stacked.train_batch`; the others (BatchNorm,
concrete dropout, CNNs, LSTMs) in :func:`dropkit.lab.train.module_loop.train_modules`. A batch may
mix the two: it is split, and the results come back in the order of the configs. ``trainer="loop"``
trains every config in the generic loop (the stacked trainer's arms included: the two
trainers keep one contract, :mod:`dropkit.lab.train.contract`, and are tested against each other).

Regression runs (``data.task == "regression"``) train in the generic loop (mean squared error;
the stacked trainer's hand-written backward is cross-entropy only). Runs of a user's own model
(``ModelSpec.kind == "custom"``) train in :func:`dropkit.lab.train.vmapped.train_custom`, which
builds them from the model source passed as ``model``.

Devices: ``device`` is ``"cpu"`` (the default), ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA
when :func:`torch.cuda.is_available`, else the CPU; :func:`resolve_device`). Data and weights
live on the device; curves come back as CPU NumPy arrays and final weights as CPU tensors. On
the CPU the results are those of the trainers before devices existed, bit for bit. On CUDA the
stacked trainer draws the same initial weights and data orders (from CPU generators) and the
same masks and noise (its counter-based hash, computed on the device), so it computes the same
numbers up to float rounding; the generic loop draws its initial weights and data order on the
CPU as well, but its masks, noise and augmentation from a CUDA generator seeded with the run's
seed, so its curves are statistically, not numerically, those of the CPU.

Final weights are kept for small models only (at most
:data:`dropkit.lab.store.MAX_STATE_PARAMETERS` values), as the ``state_dict`` of the module
:func:`dropkit.lab.plan.models.build_model` builds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from dropkit.lab.plan.comparison import BATCHED_REGULARIZERS
from dropkit.lab.plan.config import CUSTOM_MODEL, RunConfig
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.effects import run_effects
from dropkit.lab.plan.records import MAX_STATE_PARAMETERS, RunRecord
from dropkit.lab.plan.splits import has_validation
from dropkit.lab.train.contract import METRICS, BatchResult, EpochTicker
from dropkit.lab.train.stacked import RunSettings, train_batch

__all__ = [
    "DEVICES",
    "TRAINERS",
    "batched_settings",
    "is_batched",
    "parse_device",
    "resolve_device",
    "to_records",
    "train_configs",
]

TRAINERS = ("auto", "stacked", "loop")
"""Choices of :func:`train_configs`' ``trainer``."""

DEVICES = ("cpu", "cuda", "cuda:N", "auto")
"""The forms of a lab trainer's ``device`` (see :func:`resolve_device`)."""


def parse_device(device: str | torch.device) -> torch.device | None:
    """``device`` parsed (None for ``"auto"``) without asking whether this machine has it: a
    Ray driver checks the name and leaves the device to the workers.

    Raises:
        ValueError: not ``"auto"`` nor a CPU or CUDA device name.
        TypeError: neither a str nor a ``torch.device``.
    """
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        if device.strip().lower() == "auto":
            return None
        try:
            parsed = torch.device(device.strip())
        except (RuntimeError, ValueError):
            parsed = None
    else:
        raise TypeError(
            f"`device` must be a str or torch.device, got {type(device).__name__}: {device!r}"
        )
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"`device` must be one of {', '.join(DEVICES)}, got {device!r}")
    return parsed


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` a lab trainer trains on.

    ``"auto"``: ``cuda`` when :func:`torch.cuda.is_available`, else ``cpu``. ``"cpu"``,
    ``"cuda"`` and ``"cuda:N"`` (or a ``torch.device`` of those types) as given, once checked
    against this machine.

    Raises:
        ValueError: an unknown device string; a CUDA device when CUDA is not available, or an
            index past the last CUDA device.
        TypeError: neither a str nor a ``torch.device``.
    """
    parsed = parse_device(device)
    if parsed is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if parsed.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"`device` {str(device)!r}: no CUDA device is available "
            "(torch.cuda.is_available() is False); use 'cpu' or 'auto'"
        )
    count = torch.cuda.device_count()
    if parsed.index is not None and not 0 <= parsed.index < count:
        raise ValueError(
            f"`device` {str(device)!r}: the CUDA device index must be in [0, {count}) on "
            f"this machine ({count} CUDA device{'s' if count != 1 else ''}), got {parsed.index}"
        )
    return parsed


def is_batched(config: RunConfig) -> bool:
    """Whether the stacked MLP trainer can train ``config`` (MLP classification runs whose
    entries' arms all list ``stacked`` in their ``trainers``: :data:`BATCHED_REGULARIZERS`)."""
    return (
        config.model.kind == "mlp"
        and config.data.task == "classification"
        and all(name in BATCHED_REGULARIZERS for name, _ in config.regularizers)
    )


def batched_settings(config: RunConfig) -> RunSettings:
    """The :class:`RunSettings` of a config the stacked trainer can train (see :func:`is_batched`):
    its rates and its :func:`~dropkit.lab.plan.effects.run_effects`.

    ``early_dropout`` / ``late_dropout`` of strength ``s`` switch at epoch ``round(s·E)``
    (:func:`dropkit.lab.train.contract.dropout_window`).
    """
    effects = run_effects(config)
    return RunSettings(
        seed=config.seed,
        p=config.p,
        input_p=config.input_p,
        max_norm=config.max_norm,
        l1=effects.l1 or 0.0,
        l2=effects.l2 or 0.0,
        augment=effects.augment or 0.0,
        noise=effects.noise or 0.0,
        dropout_epochs=effects.dropout_window,
        patience=effects.patience,
        fold=config.fold,
    )


def _validation_rows(
    data: Dataset, configs: Sequence[RunConfig]
) -> dict[int | None, tuple[NDArray[np.intp], NDArray[np.intp]]] | None:
    """The ``(fit_idx, val_idx)`` rows of every fold among ``configs`` (None: no validation)."""
    spec = configs[0].data
    if not has_validation(spec):
        return None
    from dropkit.lab.plan.splits import validation_rows

    folds = dict.fromkeys(c.fold for c in configs)
    return {fold: validation_rows(data.y_train, spec, fold) for fold in folds}


def _stopping_rows(
    data: Dataset, configs: Sequence[RunConfig]
) -> dict[int | None, tuple[NDArray[np.intp], NDArray[np.intp]]] | None:
    """The ``(fit_idx, stop_idx)`` rows of the early-stopping runs of every fold among
    ``configs`` (:func:`dropkit.lab.plan.splits.stopping_rows`; None: no run stops early)."""
    folds = dict.fromkeys(c.fold for c in configs if run_effects(c).patience is not None)
    if not folds:
        return None
    from dropkit.lab.plan.splits import stopping_rows

    spec = configs[0].data
    return {fold: stopping_rows(data.y_train, spec, fold)[:2] for fold in folds}


def _parameter_count(widths: Sequence[int]) -> int:
    return sum(i * o + o for i, o in itertools.pairwise(widths))


def _module_states(
    data: Dataset, configs: Sequence[RunConfig], pairs: Sequence[Sequence[tuple[Tensor, Tensor]]]
) -> list[dict[str, Tensor]]:
    """The final weights of stacked-trainer runs as ``build_model`` state dicts."""
    from dropkit.lab.plan.models import build_model, load_linear_weights

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
    device: str | torch.device = "cpu",
    model: Any = None,
    batched: bool | None = None,
    max_batch_memory: int | None = None,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    eval_every: int | None = None,
) -> BatchResult:
    """Train ``configs`` (one shape key) on ``data``; results come back in the order of ``configs``.

    Args:
        data: the loaded data set of the configs.
        configs: runs sharing ``data``, ``model`` and ``train``.
        compile: fuse the training and evaluation steps with ``torch.compile`` (None: the
            stacked trainer when a C++ compiler exists, the custom-model trainer when the runs'
            work also repays compiling; False: never; True: always, where a compiler exists).
        on_epoch: called with the number of finished epochs of the whole batch after each
            epoch (once per epoch even when the batch trains in parts).
        trainer: ``"auto"``: the stacked trainer for the configs it can train
            (:func:`is_batched`), the generic loop for the others; ``"loop"``: the generic
            loop for every config (slower; to check one trainer against the other);
            ``"stacked"``: the stacked trainer for every config. Custom-model runs have
            one trainer (``"stacked"`` is refused for them).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (:func:`resolve_device`); see
            the module docstring for what results hold on CUDA.
        model: the model source of custom-model configs (``ModelSpec.kind == "custom"``): an
            object with ``build(p, seed) -> nn.Module``
            (:class:`dropkit.lab.plan.user_model.ModelSource`); must be None for built-in models.
        batched, max_batch_memory, log: passed to :func:`dropkit.lab.train.vmapped.train_custom`
            for custom-model configs (whether to train the runs as one vmapped computation,
            its memory bound, a callback for notes); unused by the built-in trainers.
        threads: for custom-model configs on the CPU, the most intra-op threads their
            vmapped groups may choose, by timing their epochs, against one
            (:class:`dropkit.lab.train.threads.ThreadChooser`); None: torch's setting as it is.
            The built-in trainers train with torch's setting.
        eval_every: for custom-model configs, the curves' resolution
            (:func:`dropkit.lab.train.vmapped.train_custom`); the built-in trainers measure
            every epoch.

    With a validation split (``data.validation > 0`` or ``data.folds >= 2``) every run fits
    on the ``fit_idx`` rows of :func:`dropkit.lab.plan.splits.validation_rows` (of its ``fold``),
    its ``train_*`` curves measure those rows, and ``info`` gets ``val_acc`` and ``val_loss``
    of the final epoch (regression: also ``val_rmse`` and ``val_mae``). Early stopping never
    sees the ``val_idx`` rows that choose the winner: its runs train on most of ``fit_idx``
    and stop on the rest (:func:`dropkit.lab.plan.splits.stopping_rows`), in every trainer.

    Returns:
        Curves, seconds, ``info`` per run, and ``states`` per run when the model has at most
        :data:`MAX_STATE_PARAMETERS` parameters (None otherwise).

    Raises:
        ValueError: no configs, configs of different shape keys, an unknown ``trainer`` or
            ``device``, a CUDA ``device`` without CUDA, ``trainer="stacked"`` with a config
            the stacked trainer cannot train, custom-model configs without ``model``, or a
            ``model`` for built-in configs.
    """
    if not configs:
        raise ValueError("`configs` must hold at least one run")
    if trainer not in TRAINERS:
        raise ValueError(f"`trainer` must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    first = configs[0]
    if any(c.shape_key() != first.shape_key() for c in configs):
        raise ValueError("every config of a batch must share data, model and training settings")
    where = resolve_device(device)
    if first.model.kind == CUSTOM_MODEL:
        if model is None:
            raise ValueError(
                f"configs of the custom model {first.model.name!r} need `model`: the model "
                "source to build their networks from (dropkit.lab.plan.user_model.model_source)"
            )
        if trainer == "stacked":
            raise ValueError(
                "`trainer` is 'stacked' but the stacked trainer trains built-in MLPs only, "
                f"not the custom model {first.model.name!r}"
            )
        from dropkit.lab.train.vmapped import train_custom

        return train_custom(
            model,
            data,
            configs,
            device=where,
            batched=batched,
            max_batch_memory=max_batch_memory,
            on_epoch=on_epoch,
            log=log,
            compile=compile,
            threads=threads,
            eval_every=eval_every,
        )
    if model is not None:
        raise ValueError(
            f"`model` is for custom-model configs; these configs build the built-in "
            f"{first.model.kind!r} model, so leave it None"
        )
    start = time.perf_counter()
    widths = [data.n_features, *first.model.hidden, data.n_outputs]
    small = _parameter_count(widths) <= MAX_STATE_PARAMETERS
    classes = data.task == "classification"  # the data decides, whatever a config says
    stacked = [i for i, c in enumerate(configs) if trainer != "loop" and classes and is_batched(c)]
    looped = sorted(set(range(len(configs))) - set(stacked))
    if trainer == "stacked" and looped:
        refused = configs[looped[0]]
        what = (
            "regression (its backward pass is cross-entropy only)"
            if not classes or refused.data.task == "regression"
            else f"arm {refused.arm!r} of model kind {refused.model.kind!r}"
        )
        raise ValueError(f"`trainer` is 'stacked' but the stacked trainer cannot train {what}")
    epochs = first.train.epochs
    measured = first.train.evaluate is not None  # the final weights are measured
    ticker = EpochTicker(len(configs), epochs, on_epoch)
    values = np.empty((len(METRICS), len(configs), epochs))
    info: list[dict[str, float]] = [{} for _ in configs]
    states: list[dict[str, Tensor] | None] = [None] * len(configs)
    final: list[dict[str, Tensor] | None] = [None] * len(configs)
    if stacked:
        part = train_batch(
            data,
            first.model,
            first.train,
            [batched_settings(configs[i]) for i in stacked],
            compile=compile,
            on_epoch=ticker.part(len(stacked)),
            keep_weights=small or measured,
            device=where,
            validation=_validation_rows(data, [configs[i] for i in stacked]),
            stopping=_stopping_rows(data, [configs[i] for i in stacked]),
        )
        if part.pairs is not None:
            for i, state in zip(
                stacked,
                _module_states(data, [configs[i] for i in stacked], part.pairs),
                strict=True,
            ):
                states[i] = state if small else None
                final[i] = state
        _place(values, info, stacked, part)
    if looped:
        from dropkit.lab.train.module_loop import train_modules

        part = train_modules(
            data, [configs[i] for i in looped], on_epoch=ticker.part(len(looped)), device=where
        )
        for i, state in zip(looped, part.states or [], strict=False):
            final[i] = state
            if sum(v.numel() for v in state.values()) <= MAX_STATE_PARAMETERS:
                states[i] = state
        _place(values, info, looped, part)
    ticker.finish()
    if measured:
        _measure(data, configs, final, info, where, log, compile)
    kept = [s for s in states if s is not None]
    return BatchResult(
        curves={name: values[m] for m, name in enumerate(METRICS)},
        seconds=time.perf_counter() - start,
        states=kept if len(kept) == len(states) else None,
        info=info,
    )


def _measure(
    data: Dataset,
    configs: Sequence[RunConfig],
    final: Sequence[dict[str, Tensor] | None],
    info: list[dict[str, float]],
    device: torch.device,
    log: Callable[[str], None] | None,
    compile: bool | None,
) -> None:
    """Add the predictive metrics of the runs' final weights to their ``info``
    (:func:`dropkit.lab.train.vmapped.measure_modules`; ``TrainSpec.evaluate``)."""
    from dropkit.lab.plan.models import build_model
    from dropkit.lab.train.vmapped import measure_modules

    modules = []
    for config, state in zip(configs, final, strict=True):
        if state is None:  # pragma: no cover - every trainer hands its weights back
            raise RuntimeError(f"run with seed {config.seed} returned no weights to measure")
        module = build_model(config, data)
        module.load_state_dict(state)
        modules.append(module)
    # The built models take flat rows (they reshape them themselves) and carry their own
    # input dropout: no second one around them.
    flat = replace(data, input_shape=None)
    plain = [replace(c, input_p=0.0) for c in configs]
    measured = measure_modules(modules, flat, plain, device=device, log=log, compile=compile)
    for entry, values in zip(info, measured, strict=True):
        entry.update(values)


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
