"""The generic training loop: any network :func:`dropkit.lab.plan.models.build_model` builds.

:func:`train_modules` trains each run config's module with autograd and ``torch.optim.Adam``:
the path for CNNs, LSTMs and the MLP arms the stacked trainer (:mod:`dropkit.lab.train.stacked`)
cannot express (BatchNorm, concrete dropout). Per epoch and run:

1. dropout switched on or off for ``early_dropout`` / ``late_dropout`` (the hidden rate ``p``
   acts in the epochs of :func:`dropkit.lab.train.contract.dropout_window`: ``e < round(s·E)``,
   respectively ``e >= round(s·E)``, for strength ``s`` and ``E`` epochs;
   :func:`dropkit.set_dropout` on the hidden dropout modules, and the LSTM's
   ``recurrent_dropout``);
2. mini-batches of ``train.batch_size`` in an order drawn from the run's generator; each batch
   ``augment``-ed (see :func:`augment_batch`), its loss (binary: one logit and binary
   cross-entropy; more classes: cross-entropy), plus ``λ₁·Σ|w|`` (``l1``) and ``λ₂·Σw²``
   (``l2``) over :func:`dropkit.lab.plan.models.penalized_weights`, plus the concrete-dropout
   regularizer; one Adam step (:func:`dropkit.lab.train.contract.make_adam`: ``lr``, ``betas``,
   ``eps`` of :class:`TrainSpec`, Keras' ``eps = 1e-7``); then the max-norm constraint on the
   hidden layers (:func:`dropkit.lab.train.contract.bound_unit_norms_`, the rule of
   :func:`dropkit.max_norm_`). (With BatchNorm, a last mini-batch of a single sample is
   skipped: it cannot be normalized.)
3. evaluation in eval mode, in chunks of :data:`EVAL_CHUNK` rows: accuracy and mean
   cross-entropy (:func:`dropkit.lab.train.contract.sample_scores`, averaged in float64) on the
   training rows and the test set (:data:`dropkit.lab.train.contract.METRICS`).

Regression (``data.task == "regression"``: float targets ``y``, one output). The loss is the
mean squared error of the single output; the curves hold the score ``R² = 1 − SSE/SST``
(``SST`` the sum of squares of that split's targets around their own mean; NaN when the
targets of the split are constant) in ``train_acc`` / ``test_acc`` and the mean squared error
in ``train_loss`` / ``test_loss``, and ``info`` gets ``train_rmse``, ``train_mae``,
``test_rmse`` and ``test_mae`` of the final epoch (means in float64). Arms that change class
targets (label smoothing and the like) do not apply and are refused.

A validation split (``data.validation > 0`` or ``data.folds >= 2``): every run fits on the
``fit_idx`` rows of :func:`dropkit.lab.plan.splits.validation_rows` for its fold (its ``train_*``
curves measure them), is evaluated on the ``val_idx`` rows after every epoch, and reports
``val_acc`` and ``val_loss`` (regression: also ``val_rmse`` and ``val_mae``) of the final
epoch in ``info``. These rows choose the winner, so nothing in training reads them.

Early stopping (``early_stopping``, patience ``k`` epochs), as in the stacked trainer: the
run stops on rows of its own, :func:`dropkit.lab.plan.splits.stopping_rows`. Without a validation
split they are 20% of the training set (:func:`~dropkit.lab.plan.splits.validation_split`:
stratified, at least one sample per class, the same rows for every run; regression: a plain
seeded 20%, :func:`dropkit.lab.plan.splits.holdout_rows`); with one, 20% of the fold's ``fit_idx``
rows (stratified, seeded with ``split_seed``): early stopping never sees the validation rows
that choose the winner. The run trains on the rest, which is also what its ``train_*`` curves
measure. After each epoch the loss on the stopping rows goes to
:class:`~dropkit.lab.train.contract.EarlyStopping`; when it has not fallen below its best for ``k``
epochs the run stops, the weights of the best epoch are restored, and its remaining epochs
repeat the metrics of those weights. After the last epoch every such run's best weights are
restored and the last point records them (and ``val_*`` measure them).
``info["stop_epoch"]`` is the number of epochs trained (``E`` when the patience never ran
out), ``info["best_epoch"]`` the 1-based epoch of the lowest stopping loss (0: the initial
weights).

Randomness: every run owns one ``torch.Generator`` seeded with its seed; it draws the initial
weights, then each epoch's order, the masks of every dropout layer, the noise and the
augmentation, so a run's curves are a function of its config. Runs advance epoch by epoch in
lockstep (``on_epoch`` hears each epoch once for the whole batch); run by run they compute what
they would compute alone.

Devices (``device``): the data and each run's module live on the device. On CUDA the run's CPU
generator still draws the initial weights (the CPU's weights, copied over) and each epoch's
order, while the masks, noise and augmentation come from a second generator on the device,
seeded with the run's seed (dropkit's layers draw from a generator on their input's device).
A CUDA run is therefore as reproducible as a CPU run but not the same numbers once it drops
units; without any random regularizer it computes what the CPU computes up to float rounding.

Why one run at a time: ``torch.func`` (``stack_module_state`` + ``vmap(grad(...))``) trained
10 MLPs without dropout on ``moons`` about 3.5 times faster per run-epoch than this loop
(4.5 against 15.6 ms, one thread, on a busy 2-core machine), but it cannot carry the runs'
randomness: dropkit's dropout is an ``autograd.Function`` that functorch transforms refuse,
and a per-run ``torch.Generator`` cannot be batched by ``vmap``. Keeping every mask a function
of the run's own seed was worth more; the stacked trainer (:mod:`dropkit.lab.train.stacked`) is the
fast path for the MLP arms.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropkit.concrete import ConcreteDropout, concrete_regularization
from dropkit.lab.plan.arms import target_transforms
from dropkit.lab.plan.config import RunConfig
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.effects import RunEffects, run_effects
from dropkit.lab.plan.models import (
    build_model,
    constrained_layers,
    hidden_dropout,
    penalized_weights,
)
from dropkit.lab.plan.splits import has_validation
from dropkit.lab.train.contract import (
    METRICS,
    BatchResult,
    EarlyStopping,
    augment_batch,
    bound_unit_norms_,
    dropout_on,
    feature_scale,
    make_adam,
    part_means,
    sample_scores,
)
from dropkit.recurrent import LSTM
from dropkit.surgery import set_dropout

__all__ = [
    "EVAL_CHUNK",
    "train_modules",
]

EVAL_CHUNK = 2048
"""Rows per forward pass when evaluating, so large test sets fit in memory."""

_CPU = torch.device("cpu")


def _loss(
    logits: Tensor,
    y: Tensor,
    reduction: str = "mean",
    targets: Sequence[tuple[Callable[[Tensor, float, int], Tensor], float]] = (),
    regression: bool = False,
) -> Tensor:
    """Binary cross-entropy of one logit, or cross-entropy over the classes; with
    ``regression``, the squared error ``(ŷ − y)²`` of the single output ``(N, 1)``.

    ``targets``: the run's target transforms (:func:`dropkit.lab.plan.arms.target_transforms`),
    applied in order to the targets as probabilities (``(N,)`` for one logit, one-hot
    ``(N, K)`` otherwise) before the loss; none: the labels themselves.
    """
    if regression:
        return F.mse_loss(logits.squeeze(1), y.to(logits.dtype), reduction=reduction)
    binary = logits.shape[1] == 1
    if not targets:
        if binary:
            return F.binary_cross_entropy_with_logits(
                logits.squeeze(1), y.to(logits.dtype), reduction=reduction
            )
        return F.cross_entropy(logits, y, reduction=reduction)
    classes = 2 if binary else logits.shape[1]
    soft = y.to(logits.dtype) if binary else F.one_hot(y, classes).to(logits.dtype)
    for transform, strength in targets:
        soft = transform(soft, strength, classes)
    if binary:
        return F.binary_cross_entropy_with_logits(logits.squeeze(1), soft, reduction=reduction)
    return F.cross_entropy(logits, soft, reduction=reduction)


def _evaluate(
    model: nn.Module, x: Tensor, y: Tensor, sizes: Sequence[int]
) -> list[tuple[float, float]]:
    """Accuracy and mean cross-entropy of ``model`` in eval mode on consecutive segments of
    ``(x, y)`` of the given ``sizes`` (one pass, in chunks of :data:`EVAL_CHUNK` rows; the
    scores of :func:`~dropkit.lab.train.contract.sample_scores`, their means in float64)."""
    correct, losses = [], []
    with torch.no_grad():
        for begin in range(0, len(y), EVAL_CHUNK):
            hits, loss = sample_scores(
                model(x[begin : begin + EVAL_CHUNK]), y[begin : begin + EVAL_CHUNK]
            )
            correct.append(hits)
            losses.append(loss)
    accuracy = part_means(torch.cat(correct).double(), sizes)
    loss_means = part_means(torch.cat(losses).double(), sizes)
    return [(float(a), float(m)) for a, m in zip(accuracy, loss_means, strict=True)]


def _evaluate_regression(
    model: nn.Module, x: Tensor, y: Tensor, sizes: Sequence[int]
) -> list[dict[str, float]]:
    """``r2``, ``mse``, ``rmse`` and ``mae`` of ``model`` in eval mode on consecutive segments
    of ``(x, y)`` of the given ``sizes`` (float64 sums; ``R² = 1 − SSE/SST`` with the segment's
    own target mean, NaN for an empty or constant segment)."""
    predictions = []
    with torch.no_grad():
        for begin in range(0, len(y), EVAL_CHUNK):
            predictions.append(model(x[begin : begin + EVAL_CHUNK]).squeeze(1))
    error = torch.cat(predictions).double() - y.double()
    parts, start = [], 0
    for size in sizes:
        if not size:
            nan = math.nan
            parts.append({"r2": nan, "mse": nan, "rmse": nan, "mae": nan})
            continue
        e, t = error[start : start + size], y[start : start + size].double()
        start += size
        sse = float(e.square().sum())
        sst = float((t - t.mean()).square().sum())
        mse = sse / size
        parts.append(
            {
                "r2": 1.0 - sse / sst if sst > 0 else math.nan,
                "mse": mse,
                "rmse": math.sqrt(mse),
                "mae": float(e.abs().sum()) / size,
            }
        )
    return parts


@dataclass
class _Run:
    """The state of one run while the batch trains."""

    config: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    noise_generator: torch.Generator
    fit: tuple[Tensor, Tensor]
    scale: Tensor
    evaluation: tuple[Tensor, Tensor, tuple[int, ...]]
    switched: list[nn.Module]
    recurrent: list[LSTM]
    patience: int | None
    window: tuple[int, int] | None
    history: np.ndarray
    effects: RunEffects  # what the run's entries do (run_effects), read instead of their names
    regression: bool = False
    reports_validation: bool = False
    stops: bool = False  # the evaluation holds early-stopping rows (see _Rows)
    dropout_on: bool = True
    best_state: dict[str, Tensor] | None = None
    stopped: bool = False
    final: dict[str, float] | None = None


def _set_dropout(run: _Run, on: bool) -> None:
    """Hidden dropout (and the LSTM's recurrent dropout) at rate ``p`` or 0."""
    rate = run.config.p if on else 0.0
    for module in run.switched:
        set_dropout(module, rate)
    for lstm in run.recurrent:
        lstm.recurrent_dropout = rate
    run.dropout_on = on


@dataclass(frozen=True)
class _Rows:
    """The rows a run trains on and the rows it is evaluated on, shared by runs alike.

    ``evaluation`` holds the fit rows, the test set, then the early-stopping rows (when
    ``stops``), then the validation rows (when ``validates``), with each part's size."""

    fit: tuple[Tensor, Tensor]
    scale: Tensor
    evaluation: tuple[Tensor, Tensor, tuple[int, ...]]
    stops: bool = False
    validates: bool = False


_Split = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(fit, stop, validation)`` row indices of the training set (either of the last two may
be empty)."""


def _rows(
    data: Dataset,
    split: _Split | None,
    device: torch.device = _CPU,
) -> _Rows:
    """Fit rows, the training set's feature standard deviations
    (:func:`~dropkit.lab.train.contract.feature_scale`), and the evaluation rows: the fit rows,
    the test set, then (with ``split``) its early-stopping rows and its validation rows,
    where there are any; on ``device``."""
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    x_parts, y_parts = [x, x_test], [y, y_test]
    stops = validates = False
    if split is not None:
        fit_rows, stop_rows, validation_rows = (torch.from_numpy(part) for part in split)
        x_parts, y_parts = [x[fit_rows], x_test], [y[fit_rows], y_test]
        stops, validates = len(stop_rows) > 0, len(validation_rows) > 0
        for rows in [stop_rows] * stops + [validation_rows] * validates:
            x_parts.append(x[rows])
            y_parts.append(y[rows])
    return _Rows(
        fit=(x_parts[0].to(device), y_parts[0].to(device)),
        scale=feature_scale(data.x_train).to(device),
        evaluation=(
            torch.cat(x_parts).to(device),
            torch.cat(y_parts).to(device),
            tuple(len(p) for p in y_parts),
        ),
        stops=stops,
        validates=validates,
    )


def _split_of(config: RunConfig, data: Dataset) -> tuple[Hashable, Callable[[], _Split] | None]:
    """Which rows a run fits, stops and validates on: a key shared by runs alike, and the
    function that computes its ``(fit, stop, validation)`` rows (None: all training rows, no
    validation). Early-stopping runs take theirs from :func:`dropkit.lab.plan.splits.stopping_rows`
    (never the validation rows); the others from :func:`dropkit.lab.plan.splits.validation_rows`."""
    spec, fold = config.data, config.fold
    stops = run_effects(config).patience is not None
    if stops:
        from dropkit.lab.plan.splits import stopping_rows

        key = ("early_stopping", fold) if has_validation(spec) else "early_stopping"
        return key, lambda: stopping_rows(data.y_train, spec, fold)
    if has_validation(spec):
        from dropkit.lab.plan.splits import validation_rows

        def split() -> _Split:
            fit, held = validation_rows(data.y_train, spec, fold)
            return fit, held[:0], held

        return ("validation", fold), split
    return None, None


def _mask_generator(
    model: nn.Module, generator: torch.Generator, seed: int, device: torch.device
) -> torch.Generator:
    """The generator of a run's masks, noise and augmentation: its own ``generator`` on the
    CPU; on another device a generator there, seeded with ``seed``, handed to every module of
    ``model`` that holds a generator (dropkit's layers draw on their input's device)."""
    if device.type == "cpu":
        return generator
    on_device = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(getattr(module, "generator", None), torch.Generator):
            setattr(module, "generator", on_device)  # noqa: B010 - any module type
    return on_device


def _start(config: RunConfig, data: Dataset, rows: _Rows, device: torch.device = _CPU) -> _Run:
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config, data, generator=generator).to(device)
    model.train()
    effects = run_effects(config)
    patience = effects.patience
    recurrent = [m for m in model.modules() if isinstance(m, LSTM) and m.recurrent_dropout > 0]
    return _Run(
        config=config,
        model=model,
        optimizer=make_adam(list(model.parameters()), config.train),
        generator=generator,
        noise_generator=_mask_generator(model, generator, config.seed, device),
        fit=rows.fit,
        scale=rows.scale,
        evaluation=rows.evaluation,
        switched=hidden_dropout(model, config),
        recurrent=recurrent,
        patience=patience,
        window=effects.dropout_window,
        history=np.full((len(METRICS), config.train.epochs), np.nan),
        effects=effects,
        regression=data.task == "regression",
        reports_validation=has_validation(config.data) and rows.validates,
        stops=rows.stops,
        # early stopping's epoch 0: the initial weights, restored if no epoch improves on them
        best_state=None if patience is None else copy.deepcopy(model.state_dict()),
    )


def _train_epoch(run: _Run, data: Dataset) -> None:
    config, model, generator = run.config, run.model, run.generator
    x, y = run.fit
    n = len(y)
    batch_size = min(config.train.batch_size, n)
    l1, l2 = run.effects.l1, run.effects.l2
    augment = run.effects.augment
    targets = run.effects.targets
    concrete = any(isinstance(m, ConcreteDropout) for m in model.modules())
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    constrained = constrained_layers(model) if config.max_norm is not None else []
    model.train()
    order = torch.randperm(n, generator=generator).to(x.device)
    for begin in range(0, n, batch_size):
        rows = order[begin : begin + batch_size]
        if has_bn and len(rows) == 1 and begin > 0:
            continue  # BatchNorm cannot normalize a batch of one sample: skip that remainder
        xb, yb = x[rows], y[rows]
        if augment is not None:
            xb = augment_batch(xb, augment, run.scale, data.input_shape, run.noise_generator)
        loss = _loss(model(xb), yb, targets=targets, regression=run.regression)
        if l1 or l2:
            weights = penalized_weights(model)
            zero = torch.zeros((), device=x.device)
            if l1:
                loss = loss + l1 * sum((w.abs().sum() for w in weights), zero)
            if l2:
                loss = loss + l2 * sum((w.pow(2).sum() for w in weights), zero)
        if concrete:
            loss = loss + concrete_regularization(model)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        run.optimizer.step()
        if constrained:
            assert config.max_norm is not None
            for layer in constrained:  # a unit's incoming weights: every axis but the first
                bound_unit_norms_(layer.weight, config.max_norm, range(1, layer.weight.ndim))


def _record(run: _Run, epoch: int) -> float:
    """Evaluate into the history at ``epoch`` (and the final-epoch facts into ``run.final``);
    return the loss on the early-stopping rows (NaN without)."""
    run.model.eval()
    final: dict[str, float] = {}
    if run.regression:
        train_r, test_r, *rest_r = _evaluate_regression(run.model, *run.evaluation)
        run.history[:, epoch] = (train_r["r2"], test_r["r2"], train_r["mse"], test_r["mse"])
        parts = [("train", train_r), ("test", test_r)]
        if run.reports_validation:
            validation_r = rest_r[-1]
            parts.append(("val", validation_r))
            final.update(val_acc=validation_r["r2"], val_loss=validation_r["mse"])
        for prefix, scores in parts:
            final.update({f"{prefix}_rmse": scores["rmse"], f"{prefix}_mae": scores["mae"]})
        run.final = final
        return rest_r[0]["mse"] if run.stops else math.nan
    train, test, *rest = _evaluate(run.model, *run.evaluation)
    run.history[:, epoch] = (train[0], test[0], train[1], test[1])
    if run.reports_validation:
        final.update(val_acc=rest[-1][0], val_loss=rest[-1][1])
    run.final = final
    return rest[0][1] if run.stops else math.nan


def _restore(run: _Run, epoch: int) -> None:
    """Load the run's kept weights and record them at 0-based ``epoch`` and every later one."""
    assert run.best_state is not None
    run.model.load_state_dict(run.best_state)
    _record(run, epoch)
    run.history[:, epoch + 1 :] = run.history[:, epoch : epoch + 1]


def train_modules(
    data: Dataset,
    configs: Sequence[RunConfig],
    *,
    on_epoch: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
) -> BatchResult:
    """Train each config's :func:`~dropkit.lab.plan.models.build_model` network on ``data``.

    See the module docstring for what an epoch does. ``torch.set_num_threads`` is left to the
    caller: for these small models one thread was far faster than two on a busy 2-core machine
    (10 epochs of a 32-unit LSTM on ``sequence``: 2.1 s against 55-65 s, load about 8).

    Args:
        data: the loaded data set of every config.
        configs: the runs; they must share the number of epochs (the curves are one array).
        on_epoch: called with the number of finished epochs after each epoch of the batch.
        device: where to train (a ``torch.device`` or its name, e.g. ``"cuda"``); see the
            module docstring for what holds on CUDA. Results come back on the CPU.

    Returns:
        Per-epoch curves ``(R, epochs)`` in the order of ``configs``, the final weights of each
        run (``state_dict`` of CPU tensors) and per-run ``info``: ``stop_epoch`` and
        ``best_epoch`` under early stopping, ``concrete_p{i}`` (learned rate of the i-th
        concrete layer) under concrete dropout, the validation and regression scores of the
        module docstring.

    Raises:
        ValueError: no configs, different numbers of epochs, or a regression run with an arm
            that changes class targets.
    """
    if not configs:
        raise ValueError("`configs` must hold at least one run")
    epochs = configs[0].train.epochs
    if any(c.train.epochs != epochs for c in configs):
        raise ValueError("every config of a batch must train for the same number of epochs")
    if data.task == "regression":
        for config in configs:
            changed = [name for name, _ in config.regularizers if target_transforms([(name, 0)])]
            if changed:
                raise ValueError(
                    f"regularizer {changed[0]!r} changes class targets and does not apply to "
                    "regression"
                )
    where = torch.device(device)
    start = time.perf_counter()
    rows: dict[Hashable, _Rows] = {}
    runs = []
    for config in configs:
        key, split = _split_of(config, data)
        if key not in rows:
            rows[key] = _rows(data, None if split is None else split(), where)
        runs.append(_start(config, data, rows[key], where))
    watched = [run for run in runs if run.patience is not None]
    stopper = EarlyStopping([run.patience or 0 for run in watched], epochs) if watched else None
    for epoch in range(epochs):
        losses = {}
        for run in runs:
            if run.stopped:
                continue
            on = dropout_on(run.window, epoch)
            if on != run.dropout_on:
                _set_dropout(run, on)
            _train_epoch(run, data)
            losses[id(run)] = _record(run, epoch)
        if stopper is not None:
            reported = torch.tensor([losses.get(id(run), math.nan) for run in watched])
            improved, newly = stopper.update(epoch + 1, reported)
            for run, keep, stop in zip(watched, improved.tolist(), newly.tolist(), strict=True):
                if keep:
                    run.best_state = copy.deepcopy(run.model.state_dict())
                if stop:
                    run.stopped = True
                    if epoch + 1 < epochs:
                        _restore(run, epoch + 1)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    for run in watched:  # the last point is the restored model, stopped or not
        _restore(run, epochs - 1)
    states, infos = [], []
    stop_info = dict(zip(map(id, watched), stopper.info() if stopper else [], strict=True))
    for run in runs:
        if run.dropout_on is False:
            _set_dropout(run, True)  # the stored module has the config's rates
        run.model.eval()
        states.append({k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()})
        info: dict[str, float] = dict(stop_info.get(id(run), {}))
        info.update(run.final or {})
        concrete = [m for m in run.model.modules() if isinstance(m, ConcreteDropout)]
        for index, module in enumerate(concrete):
            info[f"concrete_p{index}"] = module.p
        infos.append(info)
    history = np.stack([run.history for run in runs], axis=1)  # (metrics, R, epochs)
    return BatchResult(
        curves={name: history[i] for i, name in enumerate(METRICS)},
        seconds=time.perf_counter() - start,
        states=states,
        info=infos,
    )
