"""Many runs as ONE computation: R multilayer perceptrons trained together, weights stacked.

A sweep's runs share data and architecture and differ in seed and regularization: dropout
rates, max-norm, L1/L2 penalties, input jitter, hidden Gaussian noise, early/late dropout
schedules and early stopping (:class:`RunSettings`). Here they train as one batched
computation: every weight has a leading run axis ``R``, every matmul is a ``bmm`` over runs,
and the per-run knobs are tensors (drop rates per epoch, max-norm bounds, penalty weights,
noise scales), so an epoch costs the same few dozen tensor ops whether it trains 1 run or 90.
A knob no run of the batch uses costs nothing: its tensors are None and its ops are left out
of the (compiled) step, so a plain rate sweep runs the same step as before the others existed.

Exactness. Each run owns a ``torch.Generator`` seeded with its seed, from which it draws its
initial weights and its per-epoch data order, and its dropout masks are a pure function of
(seed, epoch, dropout site, unit): a counter-based generator, see :func:`mask_keys`. Adam is
element-wise, so one Adam over the stacked weights is, run by run, the same optimizer as R
separate ones. A run trained in a batch therefore sees exactly the numbers it would see alone;
results agree to float rounding (a batched GEMM may sum in a different order than a single one).

The backward pass is written out (no autograd): for a layer ``z = a·W + b``, ``h = relu(z)``
and dropout factor ``f``, the gradients are ``dW = aᵀ·dz``, ``db = Σ dz`` and
``dz = (da ⊙ f) ⊙ [z > 0]``.

Masks. Unit ``i`` of a dropout site draws ``u = mix(key + i·φ) >> 16``, a 16-bit integer, where
``mix`` is Chris Wellons' "lowbias32" integer hash, ``φ = 0x9E3779B9`` and ``key`` a hash of
(seed, epoch, site); the unit is dropped when ``u < round(p · 65536)``, so ``p`` is resolved
to 2**-16 (0.4 becomes 0.399994). The hash runs inside the compiled training step, in
parallel and without storing a mask: on the case-study grid it replaced a per-run loop over
``torch.Generator`` draws that took a third of each epoch. Gaussian noise (input jitter,
hidden noise) comes from the same hash: two streams per site give two 24-bit uniforms and
Box–Muller turns them into ``N(0, 1)`` (:func:`normal_noise`). Early and late dropout change
a run's threshold per epoch (0 keeps every unit, with scale 1: exactly no dropout).

Which scheme is the lab's. The lab's counter-based mask scheme is
:mod:`dropkit.lab.train.counter_masks` (a mask as a pure function of seed, optimizer step,
dropout layer and element; the vmapped trainer's, for any module): new trainers use it. This
trainer keeps its own numbering, which came first: the same ``lowbias32`` mixer and the same
``2**-16`` resolution of ``p``, but keyed by epoch rather than optimizer step, with a unit
counter that runs over the whole epoch and one hash per unit, so its masks are other numbers.
It keeps them for the results already stored: a run's identity in the store
(:meth:`~dropkit.lab.plan.config.RunConfig.key`) does not name the mask scheme, so moving this
trainer to ``counter_masks`` would give the runs of earlier sweeps different curves under the
same keys, and a sweep run again (which skips the runs already done) would mix the two.

Devices. ``device`` puts the data, the stacked weights, Adam's state and every per-run knob on
a CPU or CUDA device. Initial weights and data orders are still drawn from the runs' CPU
generators (then copied over), and the masks and noise are the counter-based hash, which
computes the same integers on any device, so a run on CUDA sees the numbers it sees on the CPU;
its curves differ only by float rounding (kernels that sum in another order). On the CPU
nothing changes: the same tensors, the same ops.

The steps this trainer shares with the generic loop (:mod:`dropkit.lab.train.module_loop`) are
defined once in :mod:`dropkit.lab.train.contract`: the metrics and the per-sample scores of
evaluation, Adam's settings, the max-norm rule, the validation split and early stopping's state
machine, the early/late dropout window and the jitter's feature scales.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from dropkit.lab.plan.config import ModelSpec, TrainSpec
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.splits import validation_split
from dropkit.lab.train.contract import (
    METRICS,
    BatchResult,
    EarlyStopping,
    EpochTicker,
    bound_unit_norms_,
    dropout_on,
    feature_scale,
    make_adam,
    part_means,
    sample_scores,
)

__all__ = [
    "RunSettings",
    "compiler_available",
    "keep_factors",
    "mask_keys",
    "normal_noise",
    "rate_tensors",
    "train_batch",
    "unit_index",
]

_RESOLUTION = 1 << 16


@dataclass(frozen=True)
class RunSettings:
    """What may differ between the runs of one batch.

    Attributes:
        seed: seeds the initial weights, the data order, the masks and the noise.
        p: drop probability after every hidden layer.
        input_p: drop probability on the inputs.
        max_norm: bound ``c`` on each hidden unit's incoming weight norm, or None.
        l1, l2: penalties ``l1·Σ|w| + l2·Σw²`` added to the loss over every layer's weights
            (not the biases); their gradients ``l1·sign(w) + 2·l2·w`` join the data gradient.
        augment: input jitter ``x + augment·s_j·ε`` in training, ``s_j`` the training-set
            standard deviation of feature ``j``, ``ε ~ N(0, 1)``.
        noise: additive ``N(0, noise²)`` on every hidden layer's output (after its dropout).
        dropout_epochs: ``(start, stop)``: the hidden dropout ``p`` acts in epochs
            ``start <= e < stop`` (0-based) only; None: in every epoch. Early dropout is
            ``(0, k)``, late dropout ``(k, epochs)``.
        patience: early stopping: stop after this many epochs without a lower validation loss
            and restore the best weights (None: no early stopping; see :func:`train_batch` and
            :class:`dropkit.lab.train.contract.EarlyStopping`).
        fold: the run's fold: with ``train_batch(validation=...)`` it picks the run's
            ``(fit, validation)`` rows (None: the data has no folds).
    """

    seed: int
    p: float = 0.0
    input_p: float = 0.0
    max_norm: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    augment: float = 0.0
    noise: float = 0.0
    dropout_epochs: tuple[int, int] | None = None
    patience: int | None = None
    fold: int | None = None


def _mix32(x: Tensor) -> Tensor:
    """Wellons' "lowbias32" hash of int32 values (wrapping multiplies, logical shifts)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975  # 0x846CA68B as a signed 32-bit integer
    return x ^ ((x >> 16) & 0xFFFF)


def _mix32_int(x: int) -> int:
    """:func:`_mix32` on one Python int, with exact unsigned 32-bit arithmetic."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _signed32(x: int) -> int:
    return x - (1 << 32) if x >= 1 << 31 else x


_GOLDEN = _signed32(0x9E3779B9)


def mask_keys(
    seeds: Sequence[int], epoch: int, site: int, *, device: torch.device | None = None
) -> Tensor:
    """Per-run 32-bit keys ``(R, 1, 1)`` (int32) of the masks of one (epoch, dropout site),
    on ``device`` (None: the CPU)."""
    stream = _mix32_int(_mix32_int(epoch) ^ (site * 0x632BE5AB + 0x5BD1E995))
    return torch.tensor(
        [_signed32(_mix32_int(_mix32_int(seed) ^ stream)) for seed in seeds],
        dtype=torch.int32,
        device=device,
    ).view(-1, 1, 1)


def unit_index(rows: int, width: int, *, device: torch.device | None = None) -> Tensor:
    """Counters ``(1, rows, width)`` (int32) of a dropout site's units over one epoch."""
    return torch.arange(rows * width, dtype=torch.int32, device=device).view(1, rows, width)


def rate_tensors(
    rates: Sequence[float], *, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Per-run thresholds ``round(p · 65536)`` (int32) and scales ``1 / (1 - p)``, ``(R, 1, 1)``."""
    thresholds = [round(p * _RESOLUTION) for p in rates]
    scales = [0.0 if p >= 1.0 else 1.0 / (1.0 - p) for p in rates]
    return (
        torch.tensor(thresholds, dtype=torch.int32, device=device).view(-1, 1, 1),
        torch.tensor(scales, dtype=torch.float32, device=device).view(-1, 1, 1),
    )


def keep_factors(keys: Tensor, index: Tensor, thresholds: Tensor, scales: Tensor) -> Tensor:
    """Dropout factors ``m / (1 - p)``: 0 where ``mix(key + index·φ) >> 16 < threshold``.

    Args:
        keys: ``(R, 1, 1)`` from :func:`mask_keys`.
        index: unit counters, e.g. a slice of :func:`unit_index`, broadcastable to the output.
        thresholds, scales: from :func:`rate_tensors`.
    """
    bits = (_mix32(keys + index * _GOLDEN) >> 16) & 0xFFFF
    return (bits >= thresholds).to(scales.dtype) * scales


def _mm(a: Tensor, b: Tensor, fused: bool) -> Tensor:
    """``a @ b`` for ``b`` of shape ``(R, K, N)`` and ``a`` of ``(R, M, K)`` or ``(M, K)``.

    For the compiler, products with a tiny inner or outer size are written as broadcast and sum,
    which it fuses into one loop without materializing anything; a BLAS call is slow there.
    """
    if fused:
        if b.shape[-1] == 1:
            return (a * b.mT).sum(-1, keepdim=True)
        if b.shape[-2] <= 8:
            return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return torch.matmul(a, b)


def _init_weights(
    widths: Sequence[int], generators: Sequence[torch.Generator]
) -> tuple[list[Tensor], list[Tensor]]:
    """Glorot-uniform weights ``(R, in, out)`` (Keras' default) and zero biases ``(R, 1, out)``."""
    runs = len(generators)
    weights = [torch.empty(runs, i, o) for i, o in itertools.pairwise(widths)]
    biases = [torch.zeros(runs, 1, o) for o in widths[1:]]
    for weight in weights:
        limit = math.sqrt(6.0 / (weight.shape[1] + weight.shape[2]))
        for run, generator in zip(weight, generators, strict=True):
            run.uniform_(-limit, limit, generator=generator)
    return weights, biases


def _output_grad(logits: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Gradient of the batch-mean cross-entropy w.r.t. logits ``(R, B, k)``; ``y`` is ``(R, B)``."""
    batch = logits.shape[1]
    if n_classes == 2:
        return (torch.sigmoid(logits) - y.unsqueeze(-1).to(logits.dtype)) / batch
    onehot = torch.nn.functional.one_hot(y, n_classes).to(logits.dtype)
    return (torch.softmax(logits, dim=-1) - onehot) / batch


def _mm_tn(a: Tensor, b: Tensor) -> Tensor:
    """``aᵀ @ b`` for ``a`` ``(R, M, K)`` and ``b`` ``(R, M, N)``: a weight gradient (a BLAS call;
    written as broadcast-and-sum, the compiler's loop order made it several times slower)."""
    return torch.bmm(a.mT, b)


def normal_noise(keys: tuple[Tensor, Tensor], index: Tensor) -> Tensor:
    """Standard normal draws from two counter-based streams (Box–Muller).

    ``u₁, u₂`` are 24-bit uniforms in (0, 1) from :func:`_mix32` of ``key + index·φ`` for the
    two keys, and ``ε = √(−2 ln u₁) · cos(2π u₂)``: a pure function of (seed, epoch, site, unit)
    like the dropout masks.

    Args:
        keys: two ``(R, 1, 1)`` keys from :func:`mask_keys` (two sites of one epoch).
        index: unit counters, broadcastable to the output.
    """
    scale = 1.0 / (1 << 24)
    u1 = (((_mix32(keys[0] + index * _GOLDEN) >> 8) & 0xFFFFFF).float() + 0.5) * scale
    u2 = (((_mix32(keys[1] + index * _GOLDEN) >> 8) & 0xFFFFFF).float() + 0.5) * scale
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


def _train_step(
    weights: list[Tensor],
    biases: list[Tensor],
    x: Tensor,
    y: Tensor,
    masks: list[tuple[Tensor, Tensor, Tensor, Tensor] | None],
    n_classes: int,
    fused: bool,
    noises: list[tuple[Tensor, Tensor, Tensor, Tensor] | None] | None = None,
    penalties: tuple[Tensor, Tensor] | None = None,
) -> list[Tensor]:
    """Gradients ``[dW0, db0, dW1, db1, ...]`` of one mini-batch for all runs.

    ``x`` ``(R, B, d)``, ``y`` ``(R, B)``. ``masks[0]`` is the input dropout, ``masks[l]``
    the dropout after hidden layer ``l``: the arguments of :func:`keep_factors`, or None for
    no dropout there. With ``a_l`` the layer inputs, ``h_l = relu(a_{l-1} W_l + b_l)`` and
    ``a_l = h_l ⊙ f_l + σ_l ε_l``, the backward pass is ``dW_l = a_{l-1}ᵀ dz_l``,
    ``db_l = Σ_batch dz_l`` and ``dz_{l-1} = (dz_l W_lᵀ) ⊙ f ⊙ [h > 0]`` (additive noise does
    not change it).

    ``noises`` (per site like ``masks``, or None): ``(key_a, key_b, index, σ)`` for
    :func:`normal_noise`; site 0 jitters the inputs before their dropout, site ``l`` adds
    noise to hidden layer ``l``'s output after its dropout. ``penalties``: per-run ``(l1, l2)``
    ``(R, 1, 1)``; ``l1·sign(W) + 2·l2·W`` is added to every weight gradient.
    """
    factors = [None if m is None else keep_factors(*m) for m in masks]
    sigmas = [None] * len(masks) if noises is None else noises
    if sigmas[0] is not None:
        key_a, key_b, index, sigma = sigmas[0]
        x = x + sigma * normal_noise((key_a, key_b), index)
    a = x if factors[0] is None else x * factors[0]
    inputs, hidden = [a], []
    for layer in range(len(weights) - 1):
        h = (_mm(a, weights[layer], fused) + biases[layer]).relu()
        f = factors[layer + 1]
        a = h if f is None else h * f
        noise = sigmas[layer + 1]
        if noise is not None:
            key_a, key_b, index, sigma = noise
            a = a + sigma * normal_noise((key_a, key_b), index)
        hidden.append(h)
        inputs.append(a)
    dz = _output_grad(_mm(a, weights[-1], fused) + biases[-1], y, n_classes)
    grads: list[Tensor] = []
    for layer in reversed(range(len(weights))):
        dw = _mm_tn(inputs[layer], dz)
        if penalties is not None:
            l1, l2 = penalties
            w = weights[layer]
            dw = dw + l1 * torch.sign(w) + (2.0 * l2) * w
        grads[:0] = [dw, dz.sum(1, keepdim=True)]
        if layer > 0:
            da = _mm(dz, weights[layer].mT, fused)
            f = factors[layer]
            if f is not None:
                da = da * f
            dz = da * (hidden[layer - 1] > 0)
    return grads


def _evaluate(
    weights: list[Tensor],
    biases: list[Tensor],
    x: Tensor,
    y: Tensor,
    n_train: int,
    n_classes: int,
    fused: bool,
    n_val: int = 0,
    n_stop: int = 0,
) -> Tensor:
    """Inference pass over ``x`` ``(n, d)``: train rows, then ``n_stop`` early-stopping rows,
    then ``n_val`` validation rows, then test rows. Returns ``(4, R)`` metrics (see METRICS),
    then, when ``n_stop > 0``, the early-stopping loss, and, when ``n_val > 0``, the validation
    loss and accuracy. Scores and means: :func:`~dropkit.lab.train.contract.sample_scores`,
    :func:`~dropkit.lab.train.contract.part_means`."""
    a = x
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        a = (_mm(a, weight, fused) + bias).relu()
    correct, loss = sample_scores(_mm(a, weights[-1], fused) + biases[-1], y)
    sizes = (n_train, n_stop, n_val, y.shape[-1] - n_train - n_stop - n_val)
    (train_acc, _, val_acc, test_acc), (train_loss, stop_loss, val_loss, test_loss) = (
        part_means(correct, sizes),
        part_means(loss, sizes),
    )
    rows = [train_acc, test_acc, train_loss, test_loss]
    if n_stop:
        rows.append(stop_loss)
    if n_val:
        rows += [val_loss, val_acc]
    return torch.stack(rows)


def compiler_available(device: torch.device | str | None = None) -> bool:
    """Whether ``torch.compile`` can build kernels here for ``device`` (None: the CPU): its CPU
    backend needs a C++ compiler, its CUDA backend the ``triton`` package."""
    if device is not None and torch.device(device).type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


_NOISE_SITES = 64  # noise at site s draws from the streams of sites 64 + 2s and 65 + 2s


def train_batch(
    data: Dataset,
    model: ModelSpec,
    train: TrainSpec,
    runs: Sequence[RunSettings],
    *,
    compile: bool | None = None,
    on_epoch: Callable[[int], None] | None = None,
    keep_weights: bool = False,
    device: torch.device | str = "cpu",
    validation: Mapping[int | None, tuple[NDArray[np.intp], NDArray[np.intp]]] | None = None,
    stopping: Mapping[int | None, tuple[NDArray[np.intp], NDArray[np.intp]]] | None = None,
) -> BatchResult:
    """Train ``len(runs)`` MLPs on ``data`` as one stacked computation.

    Every epoch: a per-run shuffle (skipped when one batch holds the whole training set, where
    the order cannot change the mean gradient), mini-batches of ``train.batch_size`` with
    input jitter (``augment``), inverted dropout on the inputs (``input_p``) and after every
    hidden ReLU (``p``, in the epochs of ``dropout_epochs``), hidden noise (``noise``), the
    ``l1``/``l2`` penalty gradients, Adam, the max-norm constraint on each hidden unit's
    incoming weights, then an inference pass over the training and test sets that records
    accuracy and cross-entropy (the data loss, without penalties).

    Early stopping (runs with ``patience``). These runs train on the ``fit`` rows of
    ``stopping`` and stop on the loss of its ``stop`` rows (without ``stopping``: a hold-out of
    :data:`~dropkit.lab.plan.splits.VALIDATION_FRACTION` of the training set,
    :func:`~dropkit.lab.plan.splits.validation_split`), so they form their own stacked computation
    (their shapes differ). After each epoch the loss on the stopping rows is measured; the
    weights of the lowest one so far are kept; ``patience`` epochs without a lower one stop the
    run and restore those weights. A stopped run's curves repeat the
    restored model's metrics until the last epoch, so every curve has ``epochs`` points, and
    the last point is always the restored model (a run whose patience never ran out restores
    its best weights at the end too). Its ``train_*`` metrics are measured on the rows it
    trained on. ``info`` holds ``stop_epoch`` (the last epoch trained, 1-based; ``epochs``
    when it never stopped) and ``best_epoch`` (the epoch whose weights were restored).

    A validation split (``validation``: the ``(fit, validation)`` row indices of the training
    set per fold, from :func:`dropkit.lab.plan.splits.validation_rows`). Every run trains on its
    fold's ``fit`` rows (its ``train_*`` curves measure those) and ``info`` gets ``val_acc``
    and ``val_loss`` of the final epoch (for early stopping: of the restored weights). Early
    stopping never sees the validation rows, which choose the winner: its runs need
    ``stopping``, whose rows (:func:`dropkit.lab.plan.splits.stopping_rows`) are carved from the
    fold's fit rows. Runs of different folds train as separate stacked computations.

    Args:
        data: the data set (shared by all runs).
        model: hidden layer widths.
        train: epochs, batch size and Adam settings.
        runs: per-run seed and regularization.
        compile: fuse each step with ``torch.compile`` (None: when a C++ compiler is found).
            Several times faster for small models; costs seconds of compilation up front.
        on_epoch: called with the number of finished epochs after each epoch.
        keep_weights: return every run's final weights in ``pairs``.
        device: where to train: a ``torch.device`` or its name (``"cpu"``, ``"cuda"``,
            ``"cuda:N"``; see the module docstring). Curves and weights come back on the CPU.
        validation: per fold (the runs' :attr:`RunSettings.fold`; None without folds), the
            ``(fit, validation)`` rows of the training set; None: no validation split.
        stopping: per fold, the ``(fit, stop)`` rows of the runs with ``patience``: the first
            two of :func:`dropkit.lab.plan.splits.stopping_rows`. None: without ``validation``, the
            hold-out of :func:`~dropkit.lab.plan.splits.validation_split`; required with it.

    Returns:
        The per-epoch curves of every run, in the order of ``runs``.

    Raises:
        ValueError: no runs, a run's fold missing from ``validation``, or an early-stopping
            run's fold missing from ``stopping`` (required with ``validation``).
    """
    start = time.perf_counter()
    where = torch.device(device)
    fused = compiler_available(where) if compile is None else compile
    groups = _groups(runs, validation, stopping)
    ticker = EpochTicker(len(runs), train.epochs, on_epoch) if len(groups) > 1 else None
    values = np.empty((len(METRICS), len(runs), train.epochs))
    info: list[dict[str, float]] = [{} for _ in runs]
    pairs: list[list[tuple[Tensor, Tensor]]] = [[] for _ in runs]
    for group in groups:
        if ticker is not None:
            tick = ticker.part(len(group))
        else:  # one part: the batch's own callback, nothing to count
            tick = on_epoch if on_epoch is not None else _no_epoch_callback
        fold, stops = runs[group[0]].fold, runs[group[0]].patience is not None
        rows = None if validation is None else validation[fold]
        carved = stopping[fold] if stopping is not None and stops else None
        part = _train_group(
            data, model, train, [runs[i] for i in group], fused, tick, where, rows, carved
        )
        values[:, group] = part.history
        for position, index in enumerate(group):
            info[index] = part.info[position]
            if keep_weights:
                pairs[index] = part.pairs[position]
    if ticker is not None:
        ticker.finish()
    return BatchResult(
        curves={name: values[i] for i, name in enumerate(METRICS)},
        seconds=time.perf_counter() - start,
        info=info,
        pairs=pairs if keep_weights else None,
    )


_FoldRows = Mapping[int | None, tuple[NDArray[np.intp], NDArray[np.intp]]]
"""Per fold, two arrays of row indices of the training set (see :func:`train_batch`)."""


def _groups(
    runs: Sequence[RunSettings], validation: _FoldRows | None, stopping: _FoldRows | None
) -> list[list[int]]:
    """The runs (their positions) that train as one stacked computation: per fold (one fold
    without ``validation``), those without early stopping, then those with it (their training
    rows differ). Checks that ``validation`` and ``stopping`` hold the runs' folds."""
    if not runs:
        raise ValueError("`runs` must hold at least one run")
    folds = list(dict.fromkeys(r.fold for r in runs)) if validation is not None else [None]
    if validation is not None:
        missing = [fold for fold in folds if fold not in validation]
        if missing:
            raise ValueError(
                f"`validation` must hold the rows of every run's fold, missing fold {missing[0]!r}"
            )
    stopped_folds = dict.fromkeys(r.fold for r in runs if r.patience is not None)
    if stopping is not None or (validation is not None and stopped_folds):
        missing = [fold for fold in stopped_folds if stopping is None or fold not in stopping]
        if missing:
            raise ValueError(
                "`stopping` must hold the early-stopping rows of every early-stopping run's "
                f"fold (with `validation`, early stopping never sees the validation rows), "
                f"missing fold {missing[0]!r}"
            )
    groups = []
    for fold in folds:
        mine = [i for i, r in enumerate(runs) if validation is None or r.fold == fold]
        groups += [
            group
            for group in (
                [i for i in mine if runs[i].patience is None],
                [i for i in mine if runs[i].patience is not None],
            )
            if group
        ]
    return groups


def _no_epoch_callback(_epoch: int) -> None:
    pass


@dataclass(frozen=True)
class _GroupResult:
    history: NDArray[np.float64]  # (len(METRICS), R, epochs)
    info: list[dict[str, float]]
    pairs: list[list[tuple[Tensor, Tensor]]]


# --- one group: its parts ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Stack:
    """A group's R networks, stacked: per layer ``weights`` ``(R, in, out)`` and ``biases``
    ``(R, 1, out)`` on the device, ``params`` (the two interleaved, layer by layer), one Adam
    over them, and the step functions (``fused``: compiled): :func:`_train_step` and
    :func:`_evaluate`."""

    weights: list[Tensor]
    biases: list[Tensor]
    params: list[Tensor]
    optimizer: torch.optim.Optimizer
    train_step: Callable[..., list[Tensor]]
    evaluate: Callable[..., Tensor]
    fused: bool
    n_classes: int


def _stack(
    data: Dataset,
    model: ModelSpec,
    train: TrainSpec,
    generators: Sequence[torch.Generator],
    fused: bool,
    device: torch.device,
) -> _Stack:
    """The runs' initial networks (drawn from their ``generators``), Adam and the steps."""
    widths = [data.n_features, *model.hidden, data.n_outputs]
    weights, biases = _init_weights(widths, generators)
    weights = [w.to(device) for w in weights]
    biases = [b.to(device) for b in biases]
    params = [t for pair in zip(weights, biases, strict=True) for t in pair]
    optimizer = make_adam(params, train)
    train_step, evaluate = _train_step, _evaluate
    if fused:
        train_step = torch.compile(_train_step, dynamic=False, fullgraph=True)
        evaluate = torch.compile(_evaluate, dynamic=False, fullgraph=True)
    return _Stack(weights, biases, params, optimizer, train_step, evaluate, fused, data.n_classes)


@dataclass(frozen=True)
class _GroupRows:
    """A group's rows on the device: ``x_train`` ``(n_train, d)`` and ``y_train`` ``(n_train,)``
    the runs train on; ``x_eval`` ``(n, d)`` and ``y_eval`` ``(n,)`` an epoch measures: the
    training rows, ``n_stop`` early-stopping rows, ``n_val`` validation rows, the test rows."""

    x_train: Tensor
    y_train: Tensor
    x_eval: Tensor
    y_eval: Tensor
    n_stop: int
    n_val: int

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]


def _group_rows(
    data: Dataset,
    split: tuple[NDArray[np.intp], NDArray[np.intp]] | None,
    stopping: tuple[NDArray[np.intp], NDArray[np.intp]] | None,
    stops: bool,
    device: torch.device,
) -> _GroupRows:
    """The rows of a group (see :func:`_train_group` for ``split`` and ``stopping``; ``stops``:
    its runs stop early)."""
    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_train, y_train = x_all, y_all
    x_stop, y_stop = x_val, y_val = x_all[:0], y_all[:0]
    if split is not None:
        fit, held = split
        x_train, y_train, x_val, y_val = x_all[fit], y_all[fit], x_all[held], y_all[held]
    if stops:  # early stopping's rows: never the validation rows
        fit, held = stopping if stopping is not None else validation_split(data.y_train)
        x_train, y_train, x_stop, y_stop = x_all[fit], y_all[fit], x_all[held], y_all[held]
    x_eval = torch.cat([x_train, x_stop, x_val, torch.from_numpy(data.x_test)]).to(device)
    y_eval = torch.cat([y_train, y_stop, y_val, torch.from_numpy(data.y_test)]).to(device)
    return _GroupRows(
        x_train.to(device), y_train.to(device), x_eval, y_eval, x_stop.shape[0], x_val.shape[0]
    )


@dataclass(frozen=True)
class _Knobs:
    """A group's per-run regularization as tensors on the device (None where no run uses one).

    Per site (the inputs, then each hidden layer): ``rates``, the dropout thresholds and
    scales of :func:`rate_tensors` ``(R, 1, 1)``; ``sigmas``, the noise σ (``(R, 1, d)`` for
    the input jitter, ``(R, 1, 1)`` for hidden noise); ``index``, the unit counters of
    :func:`unit_index` ``(1, n_train, width)`` of a site with dropout or noise. ``active``
    ``(epochs, R, 1, 1)`` bool: whether the hidden dropout acts (early/late dropout);
    ``penalties``: ``(l1, l2)``, each ``(R, 1, 1)``; ``max_norm`` ``(R, 1, 1)``."""

    seeds: list[int]
    rates: list[tuple[Tensor, Tensor] | None]
    sigmas: list[Tensor | None]
    index: list[Tensor | None]
    active: Tensor | None
    penalties: tuple[Tensor, Tensor] | None
    max_norm: Tensor | None


def _knobs(
    data: Dataset,
    model: ModelSpec,
    runs: Sequence[RunSettings],
    n_train: int,
    epochs: int,
    device: torch.device,
) -> _Knobs:
    """The :class:`_Knobs` of ``runs`` training on ``n_train`` rows for ``epochs`` epochs."""
    n_runs, n_hidden = len(runs), len(model.hidden)
    site_widths = [data.n_features, *model.hidden]
    site_rates = [[r.input_p for r in runs]] + [[r.p for r in runs]] * n_hidden
    rates = [rate_tensors(r, device=device) if any(r) else None for r in site_rates]
    sigmas: list[Tensor | None] = [None] * (1 + n_hidden)
    if any(r.augment for r in runs):
        std = feature_scale(data.x_train).to(device)
        augment = torch.tensor([r.augment for r in runs], device=device)
        sigmas[0] = augment.view(-1, 1, 1) * std.view(1, 1, -1)
    if any(r.noise for r in runs):
        hidden_sigma = torch.tensor([r.noise for r in runs], device=device).view(-1, 1, 1)
        sigmas[1:] = [hidden_sigma] * n_hidden
    index = [
        unit_index(n_train, width, device=device)
        if rates[s] is not None or sigmas[s] is not None
        else None
        for s, width in enumerate(site_widths)
    ]
    active: Tensor | None = None
    if any(r.dropout_epochs is not None for r in runs):
        active = torch.tensor(
            [dropout_on(r.dropout_epochs, e) for e in range(epochs) for r in runs], device=device
        ).view(epochs, n_runs, 1, 1)
    penalties = None
    if any(r.l1 for r in runs) or any(r.l2 for r in runs):
        penalties = (
            torch.tensor([r.l1 for r in runs], device=device).view(-1, 1, 1),
            torch.tensor([r.l2 for r in runs], device=device).view(-1, 1, 1),
        )
    bounds = [math.inf if r.max_norm is None else r.max_norm for r in runs]
    max_norm = (
        torch.tensor(bounds, device=device).view(-1, 1, 1)
        if any(map(math.isfinite, bounds))
        else None
    )
    seeds = [r.seed for r in runs]
    return _Knobs(seeds, rates, sigmas, index, active, penalties, max_norm)


_Mask = tuple[Tensor, Tensor, Tensor, Tensor]
"""A site's arguments of :func:`keep_factors` (key, index, thresholds, scales) or of
:func:`normal_noise` (key, key, index, σ), as :func:`_train_step` takes them."""


@dataclass(frozen=True)
class _EpochMasks:
    """One epoch's dropout and noise, per site (None where a site has none): ``rates`` (the
    thresholds and scales after early/late dropout), the mask ``keys`` and the two noise
    keys ``noise_keys``, each ``(R, 1, 1)``; ``index`` and ``sigmas`` as :class:`_Knobs`."""

    rates: list[tuple[Tensor, Tensor] | None]
    keys: list[Tensor | None]
    noise_keys: list[tuple[Tensor, Tensor] | None]
    index: list[Tensor | None]
    sigmas: list[Tensor | None]

    def batch(self, rows: slice) -> tuple[list[_Mask | None], list[_Mask | None] | None]:
        """The masks and noise of the mini-batch at the epoch's positions ``rows``: row ``i``
        of a site's counters serves the ``i``-th sample of the epoch's order. The noise is
        None when no site has any."""
        masks: list[_Mask | None] = [
            None if key is None or r is None or at is None else (key, at[:, rows], *r)
            for key, r, at in zip(self.keys, self.rates, self.index, strict=True)
        ]
        if all(sigma is None for sigma in self.sigmas):
            return masks, None
        noises: list[_Mask | None] = [
            None if pair is None or sigma is None or at is None else (*pair, at[:, rows], sigma)
            for pair, sigma, at in zip(self.noise_keys, self.sigmas, self.index, strict=True)
        ]
        return masks, noises


def _epoch_masks(knobs: _Knobs, epoch: int, device: torch.device) -> _EpochMasks:
    """The :class:`_EpochMasks` of ``epoch`` (0-based)."""
    seeds = knobs.seeds
    rates = list(knobs.rates)
    hidden_rates = knobs.rates[-1]
    if knobs.active is not None and hidden_rates is not None:
        on = knobs.active[epoch]
        scheduled = (
            torch.where(on, hidden_rates[0], 0),
            torch.where(on, hidden_rates[1], 1.0),
        )
        rates[1:] = [scheduled] * (len(rates) - 1)
    keys = [
        None if r is None else mask_keys(seeds, epoch, site, device=device)
        for site, r in enumerate(rates)
    ]
    noise_keys = [
        None
        if sigma is None
        else (
            mask_keys(seeds, epoch, _NOISE_SITES + 2 * site, device=device),
            mask_keys(seeds, epoch, _NOISE_SITES + 2 * site + 1, device=device),
        )
        for site, sigma in enumerate(knobs.sigmas)
    ]
    return _EpochMasks(rates, keys, noise_keys, knobs.index, knobs.sigmas)


class _Stopping:
    """Early stopping of a group whose runs all stop early: ``stopper`` (patience, best and
    stop epochs, which runs stopped) and each run's best weights so far, a copy of
    ``params``."""

    def __init__(
        self, runs: Sequence[RunSettings], epochs: int, params: list[Tensor], device: torch.device
    ) -> None:
        self.stopper = EarlyStopping([r.patience or 0 for r in runs], epochs)
        self.params, self.device = params, device
        self.best = [param.clone() for param in params]

    def restore(self, which: Tensor) -> None:
        """Set the runs ``which`` ``(R,)`` bool back to their best weights."""
        which = which.to(self.device).view(-1, 1, 1)
        for param, kept in zip(self.params, self.best, strict=True):
            param.copy_(torch.where(which, kept, param))

    def update(self, epoch: int, stop_loss: Tensor) -> None:
        """Record the stopping rows' loss ``(R,)`` after ``epoch`` (0-based) and keep the
        weights of the runs that improved."""
        improved, _ = self.stopper.update(epoch + 1, stop_loss.cpu())
        keep = improved.to(self.device).view(-1, 1, 1)
        for param, kept in zip(self.params, self.best, strict=True):
            kept.copy_(torch.where(keep, param, kept))


# --- one group: its steps ----------------------------------------------------------------------


def _epoch_rows(
    rows: _GroupRows, generators: Sequence[torch.Generator], shuffle: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Each run's training rows in this epoch's order, ``(R, n_train, d)`` and
    ``(R, n_train)``: its permutation from its generator (``shuffle``), else as they are."""
    if shuffle:
        order = torch.stack([torch.randperm(rows.n_train, generator=g) for g in generators])
        order = order.to(device)
        return rows.x_train[order], rows.y_train[order]
    n_runs = len(generators)
    return rows.x_train.expand(n_runs, -1, -1), rows.y_train.expand(n_runs, -1)


def _train_epoch(
    stack: _Stack,
    rows: _GroupRows,
    knobs: _Knobs,
    generators: Sequence[torch.Generator],
    epoch: int,
    batch_size: int,
    device: torch.device,
) -> None:
    """One epoch (0-based ``epoch``) of mini-batches of ``batch_size`` rows for every run: the
    gradients of :func:`_train_step`, Adam, then max-norm on the hidden units' weights. The
    order is drawn only when one batch does not hold every row (else it cannot change the
    mean gradient)."""
    n_train = rows.n_train
    x_epoch, y_epoch = _epoch_rows(rows, generators, batch_size < n_train, device)
    masks = _epoch_masks(knobs, epoch, device)
    for begin in range(0, n_train, batch_size):
        batch = slice(begin, begin + batch_size)
        site_masks, noises = masks.batch(batch)
        grads = stack.train_step(
            stack.weights,
            stack.biases,
            x_epoch[:, batch],
            y_epoch[:, batch],
            site_masks,
            stack.n_classes,
            stack.fused,
            noises,
            knobs.penalties,
        )
        for param, grad in zip(stack.params, grads, strict=True):
            param.grad = grad
        stack.optimizer.step()
        if knobs.max_norm is not None:
            for weight in stack.weights[:-1]:  # (R, in, out): a unit's weights span axis 1
                bound_unit_norms_(weight, knobs.max_norm, (1,))


def _measure(stack: _Stack, rows: _GroupRows) -> Tensor:
    """The metrics of every run on the evaluation rows: :func:`_evaluate`'s ``(m, R)``."""
    return stack.evaluate(
        stack.weights,
        stack.biases,
        rows.x_eval,
        rows.y_eval,
        rows.n_train,
        stack.n_classes,
        stack.fused,
        rows.n_val,
        rows.n_stop,
    )


def _train_epochs(
    stack: _Stack,
    rows: _GroupRows,
    knobs: _Knobs,
    generators: Sequence[torch.Generator],
    train: TrainSpec,
    on_epoch: Callable[[int], None],
    stopping: _Stopping | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Train every epoch and measure after each. Returns the curves
    ``(epochs, len(METRICS), R)`` and the last measure's validation rows ``(2, R)`` (loss and
    accuracy; none without validation rows). Under early stopping, each epoch measures the
    stopped runs' best weights, once every run has stopped the epochs left repeat that
    measure, and at the end every run's best weights are restored and measured as its last
    epoch."""
    epochs, n_metrics = train.epochs, len(METRICS)
    history = torch.empty(epochs, n_metrics, len(generators), device=device)
    val_at = n_metrics + (1 if rows.n_stop else 0)  # the rows of _measure after the curves
    batch_size = min(train.batch_size, rows.n_train)
    final = torch.empty(0)
    for epoch in range(epochs):
        _train_epoch(stack, rows, knobs, generators, epoch, batch_size, device)
        if stopping is not None:
            stopping.restore(stopping.stopper.stopped)  # a stopped run is measured at its best
        metrics = _measure(stack, rows)
        history[epoch] = metrics[:n_metrics]
        final = metrics[val_at:]
        if stopping is None:
            on_epoch(epoch + 1)
            continue
        stopping.update(epoch, metrics[n_metrics])
        on_epoch(epoch + 1)
        if epoch + 1 < epochs and bool(stopping.stopper.stopped.all()):
            stopping.restore(stopping.stopper.stopped)
            history[epoch + 1 :] = _measure(stack, rows)[:n_metrics]
            for later in range(epoch + 2, epochs + 1):  # the epochs it had no need of
                on_epoch(later)
            break
    if stopping is not None:
        stopping.restore(torch.ones(len(generators), dtype=torch.bool))
        metrics = _measure(stack, rows)
        history[-1] = metrics[:n_metrics]
        final = metrics[val_at:]
    return history, final


def _train_group(
    data: Dataset,
    model: ModelSpec,
    train: TrainSpec,
    runs: Sequence[RunSettings],
    fused: bool,
    on_epoch: Callable[[int], None],
    device: torch.device,
    split: tuple[NDArray[np.intp], NDArray[np.intp]] | None = None,
    stopping: tuple[NDArray[np.intp], NDArray[np.intp]] | None = None,
) -> _GroupResult:
    """:func:`train_batch` for runs that all stop early or all do not (one training set).

    ``split``: the ``(fit, validation)`` rows of a validation split (None: none). ``stopping``:
    the ``(fit, stop)`` rows of early-stopping runs (None: the hold-out of
    :func:`~dropkit.lab.plan.splits.validation_split`)."""
    generators = [torch.Generator().manual_seed(r.seed) for r in runs]
    stack = _stack(data, model, train, generators, fused, device)
    stops = runs[0].patience is not None
    rows = _group_rows(data, split, stopping, stops, device)
    knobs = _knobs(data, model, runs, rows.n_train, train.epochs, device)
    early = _Stopping(runs, train.epochs, stack.params, device) if stops else None
    with torch.no_grad():
        history, final_val = _train_epochs(
            stack, rows, knobs, generators, train, on_epoch, early, device
        )
    info: list[dict[str, float]] = [{} for _ in runs] if early is None else early.stopper.info()
    if split is not None and rows.n_val:
        val_loss, val_acc = final_val.double().cpu().tolist()
        for run_info, loss, accuracy in zip(info, val_loss, val_acc, strict=True):
            run_info.update(val_acc=accuracy, val_loss=loss)
    pairs = [
        [
            (w[run].T.contiguous().cpu(), b[run, 0].cpu().clone())
            for w, b in zip(stack.weights, stack.biases, strict=True)
        ]
        for run in range(len(runs))
    ]
    return _GroupResult(history.permute(1, 2, 0).double().cpu().numpy(), info, pairs)
