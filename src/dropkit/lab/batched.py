"""Many runs as ONE computation: R multilayer perceptrons trained together, weights stacked.

A sweep's runs share data and architecture and differ in dropout rates, max-norm and seed. Here
they train as one batched computation: every weight has a leading run axis ``R``, every matmul
is a ``bmm`` over runs, and the per-run knobs are tensors (drop rates, max-norm bounds), so an
epoch costs the same few dozen tensor ops whether it trains 1 run or 90.

Exactness. Each run owns a ``torch.Generator`` seeded with its seed and draws, in a fixed
order, its initial weights, its per-epoch data order and its dropout masks. Adam is element-wise,
so one Adam over the stacked weights is, run by run, the same optimizer as R separate ones.
A run trained in a batch therefore sees exactly the numbers it would see alone; results agree
to float rounding (a batched GEMM may sum in a different order than a single one, and the
gradients here are written out by hand rather than taken by autograd).

The backward pass is written out (no autograd): for a layer ``z = a·W + b``, ``h = relu(z)``
and dropout factor ``f``, the gradients are ``dW = aᵀ·dz``, ``db = Σ dz`` and
``dz = (da ⊙ f) ⊙ [z > 0]``.

Masks use 16-bit random integers, four per 64-bit random word: a unit is dropped when its
integer is below ``round(p · 65536)``, so ``p`` is resolved to 2**-16 (0.4 becomes
0.399994). This is several times faster than drawing float uniforms on a CPU.
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
    "draw_mask_bits",
    "keep_factors",
    "train_batch",
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
    """Per-epoch metrics of each run: ``curves[name]`` has shape ``(R, epochs)``."""

    curves: dict[str, NDArray[np.float64]]
    seconds: float


def _rate_tensors(rates: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Per-run int16 drop thresholds ``(R, 1, 1)`` and keep scales ``1 / (1 - p)`` ``(R, 1, 1)``.

    A unit is dropped when its random 16-bit integer, read as signed, is below the threshold
    ``round(p · 65536) - 32768``; ``p = 1`` keeps the top integer but gets scale 0.
    """
    thresholds = [min(round(p * _RESOLUTION), _RESOLUTION - 1) - (1 << 15) for p in rates]
    scales = [0.0 if p >= 1.0 else 1.0 / (1.0 - p) for p in rates]
    return (
        torch.tensor(thresholds, dtype=torch.int16).view(-1, 1, 1),
        torch.tensor(scales, dtype=torch.float32).view(-1, 1, 1),
    )


def draw_mask_bits(
    generators: Sequence[torch.Generator], rates: Sequence[float], rows: int, width: int
) -> Tensor:
    """Random int16 ``(R, rows, width)``: run ``r``'s from ``generators[r]``, four per 64-bit word.

    A run with rate 0 draws nothing (its bits are 0: everything kept), so what a run draws
    depends on its own settings only: it gets the same masks alone or in any batch.
    """
    count = rows * width
    words = torch.zeros(len(generators), -(-count // 4), dtype=torch.int64)
    for row, generator, p in zip(words, generators, rates, strict=True):
        if p > 0:
            row.random_(-(1 << 63), None, generator=generator)  # all 64 bits
    return words.view(torch.int16)[:, :count].view(len(generators), rows, width)


def keep_factors(bits: Tensor, thresholds: Tensor, scales: Tensor) -> Tensor:
    """Dropout factors ``m / (1 - p)`` from :func:`draw_mask_bits` and :func:`_rate_tensors`."""
    # (bits >= t) * scale: several times faster on the CPU than torch.where(bits < t, 0, scale).
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
    factors: list[Tensor | None],
    n_classes: int,
    fused: bool,
) -> list[Tensor]:
    """Gradients ``[dW0, db0, dW1, db1, ...]`` of one mini-batch for all runs.

    ``x`` ``(R, B, d)``, ``y`` ``(R, B)``. ``factors[0]`` is the input dropout, ``factors[l]``
    the dropout after hidden layer ``l`` (None: no dropout there). With ``a_l`` the layer
    inputs, ``h_l = relu(a_{l-1} W_l + b_l)`` and ``a_l = h_l ⊙ f_l``, the backward pass is
    ``dW_l = a_{l-1}ᵀ dz_l``, ``db_l = Σ_batch dz_l`` and ``dz_{l-1} = (dz_l W_lᵀ) ⊙ f ⊙ [h > 0]``.
    """
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
    train_step, evaluate, make_factors = _train_step, _evaluate, keep_factors
    if fused:
        # Three graphs, not one: a kernel fusing the int16 mask compare into the training step
        # ran scalar code and took twice as long as the two graphs apart.
        train_step = torch.compile(_train_step, dynamic=False, fullgraph=True)
        evaluate = torch.compile(_evaluate, dynamic=False, fullgraph=True)
        make_factors = torch.compile(keep_factors, dynamic=False, fullgraph=True)

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
    sites = [(rates, _rate_tensors(rates)) if any(rates) else None for rates in site_rates]
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
            # One draw per dropout site for the whole epoch; row i serves the i-th sample.
            factors = [
                None
                if site is None
                else make_factors(draw_mask_bits(generators, site[0], n_train, width), *site[1])
                for site, width in zip(sites, site_widths, strict=True)
            ]
            for begin in range(0, n_train, batch_size):
                rows = slice(begin, begin + batch_size)
                grads = train_step(
                    weights,
                    biases,
                    x_epoch[:, rows],
                    y_epoch[:, rows],
                    [None if f is None else f[:, rows] for f in factors],
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
