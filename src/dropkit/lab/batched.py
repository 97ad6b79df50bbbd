"""Many runs as ONE computation: R multilayer perceptrons trained together, weights stacked.

A sweep's runs share data and architecture and differ in dropout rates, max-norm and seed. Here
they train as one batched computation: every weight has a leading run axis ``R``, every matmul
is a ``bmm`` over runs, and the per-run knobs are tensors (drop rates, max-norm bounds), so an
epoch costs the same few dozen tensor ops whether it trains 1 run or 90.

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
``torch.Generator`` draws that took a third of each epoch.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from dropkit.lab.config import ModelSpec, TrainSpec
from dropkit.lab.data import Dataset

__all__ = [
    "METRICS",
    "BatchResult",
    "RunSettings",
    "compiler_available",
    "keep_factors",
    "mask_keys",
    "rate_tensors",
    "train_batch",
    "unit_index",
]

METRICS = ("train_acc", "test_acc", "train_loss", "test_loss")
_RESOLUTION = 1 << 16


@dataclass(frozen=True)
class RunSettings:
    """What may differ between the runs of one batch."""

    seed: int
    p: float = 0.0
    input_p: float = 0.0
    max_norm: float | None = None


@dataclass(frozen=True)
class BatchResult:
    """What training a batch of ``R`` runs produced.

    Attributes:
        curves: per-epoch metrics, ``curves[name]`` of shape ``(R, epochs)``.
        seconds: wall time of the whole batch.
        states: per run, the final weights as the ``state_dict`` of the module that
            :func:`dropkit.lab.models.build_model` builds for its config (None: not kept).
        info: per run, scalar facts of its training (e.g. ``stop_epoch`` for early stopping).
    """

    curves: dict[str, NDArray[np.float64]]
    seconds: float
    states: list[dict[str, Tensor]] | None = None
    info: list[dict[str, float]] | None = None


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


def mask_keys(seeds: Sequence[int], epoch: int, site: int) -> Tensor:
    """Per-run 32-bit keys ``(R, 1, 1)`` (int32) of the masks of one (epoch, dropout site)."""
    stream = _mix32_int(_mix32_int(epoch) ^ (site * 0x632BE5AB + 0x5BD1E995))
    return torch.tensor(
        [_signed32(_mix32_int(_mix32_int(seed) ^ stream)) for seed in seeds], dtype=torch.int32
    ).view(-1, 1, 1)


def unit_index(rows: int, width: int) -> Tensor:
    """Counters ``(1, rows, width)`` (int32) of a dropout site's units over one epoch."""
    return torch.arange(rows * width, dtype=torch.int32).view(1, rows, width)


def rate_tensors(rates: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Per-run thresholds ``round(p · 65536)`` (int32) and scales ``1 / (1 - p)``, ``(R, 1, 1)``."""
    thresholds = [round(p * _RESOLUTION) for p in rates]
    scales = [0.0 if p >= 1.0 else 1.0 / (1.0 - p) for p in rates]
    return (
        torch.tensor(thresholds, dtype=torch.int32).view(-1, 1, 1),
        torch.tensor(scales, dtype=torch.float32).view(-1, 1, 1),
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


def _train_step(
    weights: list[Tensor],
    biases: list[Tensor],
    x: Tensor,
    y: Tensor,
    masks: list[tuple[Tensor, Tensor, Tensor, Tensor] | None],
    n_classes: int,
    fused: bool,
) -> list[Tensor]:
    """Gradients ``[dW0, db0, dW1, db1, ...]`` of one mini-batch for all runs.

    ``x`` ``(R, B, d)``, ``y`` ``(R, B)``. ``masks[0]`` is the input dropout, ``masks[l]``
    the dropout after hidden layer ``l``: the arguments of :func:`keep_factors`, or None for
    no dropout there. With ``a_l`` the layer inputs, ``h_l = relu(a_{l-1} W_l + b_l)`` and
    ``a_l = h_l ⊙ f_l``, the backward pass is ``dW_l = a_{l-1}ᵀ dz_l``, ``db_l = Σ_batch dz_l``
    and ``dz_{l-1} = (dz_l W_lᵀ) ⊙ f ⊙ [h > 0]``.
    """
    factors = [None if m is None else keep_factors(*m) for m in masks]
    a = x if factors[0] is None else x * factors[0]
    inputs, hidden = [a], []
    for layer in range(len(weights) - 1):
        h = (_mm(a, weights[layer], fused) + biases[layer]).relu()
        f = factors[layer + 1]
        a = h if f is None else h * f
        hidden.append(h)
        inputs.append(a)
    dz = _output_grad(_mm(a, weights[-1], fused) + biases[-1], y, n_classes)
    grads: list[Tensor] = []
    for layer in reversed(range(len(weights))):
        grads[:0] = [_mm_tn(inputs[layer], dz), dz.sum(1, keepdim=True)]
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
) -> Tensor:
    """Inference pass over ``x`` ``(n, d)`` (train rows first): ``(4, R)`` metrics (see METRICS)."""
    a = x
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        a = (_mm(a, weight, fused) + bias).relu()
    logits = _mm(a, weights[-1], fused) + biases[-1]
    if n_classes == 2:
        z = logits.squeeze(-1)
        correct = (z > 0) == y.bool()
        loss = torch.nn.functional.softplus(z) - y.to(z.dtype) * z
    else:
        correct = logits.argmax(-1) == y
        picked = logits.gather(-1, y.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
        loss = torch.logsumexp(logits, -1) - picked
    correct = correct.to(logits.dtype)
    return torch.stack(
        [
            correct[:, :n_train].mean(1),
            correct[:, n_train:].mean(1),
            loss[:, :n_train].mean(1),
            loss[:, n_train:].mean(1),
        ]
    )


def _make_adam(params: list[Tensor], train: TrainSpec) -> torch.optim.Adam:
    options = {"lr": train.lr, "betas": train.betas, "eps": train.eps}
    try:
        return torch.optim.Adam(params, **options, fused=True)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):  # fused Adam needs torch >= 2.4 on the CPU
        return torch.optim.Adam(params, **options, foreach=True)  # type: ignore[arg-type]


def compiler_available() -> bool:
    """Whether ``torch.compile``'s CPU backend can build kernels here (it needs a C++ compiler)."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def train_batch(
    data: Dataset,
    model: ModelSpec,
    train: TrainSpec,
    runs: Sequence[RunSettings],
    *,
    compile: bool | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> BatchResult:
    """Train ``len(runs)`` MLPs on ``data`` as one stacked computation.

    Every epoch: a per-run shuffle (skipped when one batch holds the whole training set, where
    the order cannot change the mean gradient), mini-batches of ``train.batch_size`` with
    inverted dropout on the inputs (``input_p``) and after every hidden ReLU (``p``), Adam,
    the max-norm constraint on each hidden unit's incoming weights, then an inference pass
    over the training and test sets that records accuracy and cross-entropy.

    Args:
        data: the data set (shared by all runs).
        model: hidden layer widths.
        train: epochs, batch size and Adam settings.
        runs: per-run seed, rates and max-norm.
        compile: fuse each step with ``torch.compile`` (None: when a C++ compiler is found).
            Several times faster for small models; costs seconds of compilation up front.
        on_epoch: called with the number of finished epochs after each epoch.

    Returns:
        The per-epoch curves of every run, in the order of ``runs``.
    """
    start = time.perf_counter()
    fused = compiler_available() if compile is None else compile
    n_runs = len(runs)
    generators = [torch.Generator().manual_seed(r.seed) for r in runs]
    widths = [data.n_features, *model.hidden, 1 if data.n_classes == 2 else data.n_classes]
    weights, biases = _init_weights(widths, generators)
    params = [t for pair in zip(weights, biases, strict=True) for t in pair]
    optimizer = _make_adam(params, train)
    train_step, evaluate = _train_step, _evaluate
    if fused:
        train_step = torch.compile(_train_step, dynamic=False, fullgraph=True)
        evaluate = torch.compile(_evaluate, dynamic=False, fullgraph=True)

    x_train = torch.from_numpy(data.x_train)
    y_train = torch.from_numpy(data.y_train)
    x_eval = torch.cat([x_train, torch.from_numpy(data.x_test)])
    y_eval = torch.cat([y_train, torch.from_numpy(data.y_test)])
    n_train = x_train.shape[0]
    batch_size = min(train.batch_size, n_train)
    shuffle = batch_size < n_train
    # Per dropout site (inputs, then each hidden layer): rates, or None when no run drops there.
    site_rates = [[r.input_p for r in runs]] + [[r.p for r in runs]] * len(model.hidden)
    site_widths = [data.n_features, *model.hidden]
    sites = [
        (rate_tensors(rates), unit_index(n_train, width)) if any(rates) else None
        for rates, width in zip(site_rates, site_widths, strict=True)
    ]
    seeds = [r.seed for r in runs]
    bounds = [math.inf if r.max_norm is None else r.max_norm for r in runs]
    max_norm = torch.tensor(bounds).view(-1, 1, 1) if any(map(math.isfinite, bounds)) else None
    history = torch.empty(train.epochs, 4, n_runs)

    with torch.no_grad():
        for epoch in range(train.epochs):
            if shuffle:
                order = torch.stack([torch.randperm(n_train, generator=g) for g in generators])
                x_epoch, y_epoch = x_train[order], y_train[order]
            else:
                x_epoch, y_epoch = x_train.expand(n_runs, -1, -1), y_train.expand(n_runs, -1)
            # Row i of a site's mask serves the i-th sample of this epoch's order.
            keys = [
                None if site is None else mask_keys(seeds, epoch, number)
                for number, site in enumerate(sites)
            ]
            for begin in range(0, n_train, batch_size):
                rows = slice(begin, begin + batch_size)
                masks = [
                    None if key is None or site is None else (key, site[1][:, rows], *site[0])
                    for key, site in zip(keys, sites, strict=True)
                ]
                grads = train_step(
                    weights,
                    biases,
                    x_epoch[:, rows],
                    y_epoch[:, rows],
                    masks,
                    data.n_classes,
                    fused,
                )
                for param, grad in zip(params, grads, strict=True):
                    param.grad = grad
                optimizer.step()
                if max_norm is not None:
                    for weight in weights[:-1]:
                        norms = torch.linalg.vector_norm(weight, dim=1, keepdim=True)
                        weight.mul_((max_norm / norms).clamp_(max=1.0))
            history[epoch] = evaluate(
                weights, biases, x_eval, y_eval, n_train, data.n_classes, fused
            )
            if on_epoch is not None:
                on_epoch(epoch + 1)

    values = history.permute(1, 2, 0).double().numpy()
    return BatchResult(
        curves={name: values[i] for i, name in enumerate(METRICS)},
        seconds=time.perf_counter() - start,
    )
