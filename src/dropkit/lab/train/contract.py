"""The training contract both lab trainers keep: shared types and one definition of each step.

The stacked MLP trainer (:mod:`dropkit.lab.train.stacked`) and the generic loop
(:mod:`dropkit.lab.train.module_loop`) differ in how they compute (stacked weights with a
hand-written backward pass, against one module at a time with autograd), not in what they compute.
Every
step they both have is defined once, here:

- the metrics (:data:`METRICS`) and what a trained batch returns (:class:`BatchResult`);
- evaluation: which prediction is correct and the cross-entropy of a sample
  (:func:`sample_scores`), and their means over the consecutive parts of an evaluation pass
  (:func:`part_means`);
- Adam with the run's ``lr``, ``betas`` and ``eps`` (:func:`make_adam`: Keras' defaults from
  :class:`~dropkit.lab.plan.config.TrainSpec`);
- the max-norm constraint (:func:`bound_unit_norms_`, the rule of :func:`dropkit.max_norm_`);
- the hold-out of early stopping without a validation split (:func:`validation_split`; with
  one, :func:`dropkit.lab.plan.splits.stopping_rows` carves it from the fit rows, never the
  validation rows) and its state machine: when a run improved, when it stops, which weights it
  restores (:class:`EarlyStopping`);
- the epochs in which ``early_dropout`` / ``late_dropout`` let the hidden dropout act
  (:func:`dropout_window`, :func:`dropout_on`);
- the feature scales of input jitter (:func:`feature_scale`);
- an ``on_epoch`` callback shared by the parts of a batch (:class:`EpochTicker`).

The functions are small and pure (tensors in, tensors out), so the stacked trainer calls them
inside its compiled step at no cost. ``tests/test_lab_trainers.py`` trains every arm both
trainers run with each and compares the results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from dropkit.lab.plan.config import RunConfig, TrainSpec
from dropkit.lab.plan.effects import run_effects
from dropkit.lab.plan.records import CURVE_METRICS

__all__ = [
    "METRICS",
    "BatchResult",
    "EarlyStopping",
    "EpochTicker",
    "augment_batch",
    "bound_unit_norms_",
    "dropout_on",
    "dropout_window",
    "feature_scale",
    "make_adam",
    "part_means",
    "sample_scores",
]

METRICS = CURVE_METRICS
"""The per-epoch curves of every run, in the store's column order: accuracy and mean
cross-entropy (the data loss, without penalties) on the rows the run trained on and on the
test set."""


@dataclass(frozen=True)
class BatchResult:
    """What training a batch of ``R`` runs produced.

    Attributes:
        curves: per-epoch metrics, ``curves[name]`` of shape ``(R, epochs)`` (see
            :data:`METRICS`).
        seconds: wall time of the whole batch.
        states: per run, the final weights as the ``state_dict`` of the module that
            :func:`dropkit.lab.plan.models.build_model` builds for its config (None: not kept).
        info: per run, scalar facts of its training (e.g. ``stop_epoch`` for early stopping).
        pairs: per run, the final ``(weight (out, in), bias (out,))`` of every layer, input
            side first (the stacked trainer with ``keep_weights``; the layout
            :func:`dropkit.lab.plan.models.load_linear_weights` reads).
    """

    curves: dict[str, NDArray[np.float64]]
    seconds: float
    states: list[dict[str, Tensor]] | None = None
    info: list[dict[str, float]] | None = None
    pairs: list[list[tuple[Tensor, Tensor]]] | None = None


# --- evaluation -------------------------------------------------------------------------------


def sample_scores(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample correctness (1.0 or 0.0) and cross-entropy of ``logits`` for labels ``y``.

    Two classes: one logit ``z`` per sample, ``(..., n, 1)``; the prediction is ``z > 0`` and
    the loss ``softplus(z) − y·z`` (binary cross-entropy of ``sigmoid(z)``). More classes:
    ``(..., n, k)``; the prediction is the arg-max and the loss ``logsumexp(z) − z_y``.

    Args:
        logits: ``(..., n, k)``, ``k = 1`` for two classes.
        y: labels ``(n,)`` or ``(..., n)`` (int64), broadcast against the leading axes.

    Returns:
        ``(correct, loss)``, each ``(..., n)`` in the dtype of ``logits``.
    """
    if logits.shape[-1] == 1:
        z = logits.squeeze(-1)
        correct = (z > 0) == y.bool()
        loss = torch.nn.functional.softplus(z) - y.to(z.dtype) * z
    else:
        correct = logits.argmax(-1) == y
        labels = y.expand(logits.shape[:-1]).unsqueeze(-1)
        loss = torch.logsumexp(logits, -1) - logits.gather(-1, labels).squeeze(-1)
    return correct.to(logits.dtype), loss


def part_means(values: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """Means over the last axis of consecutive parts of ``values`` ``(..., Σ sizes)``.

    An evaluation pass scores the rows of several splits at once (training rows, validation
    rows, test rows); part ``i`` is ``values[..., s_i : s_i + sizes[i]]``. A part of size 0
    has mean NaN. The mean is taken in the dtype of ``values``.
    """
    means, start = [], 0
    for size in sizes:
        part = values[..., start : start + size]
        means.append(part.mean(-1) if size else torch.full(part.shape[:-1], math.nan))
        start += size
    return means


# --- optimizer and constraint ----------------------------------------------------------------


def make_adam(params: Sequence[Tensor], train: TrainSpec) -> torch.optim.Adam:
    """Adam with the run's ``lr``, ``betas`` and ``eps`` (Keras' defaults: 1e-3, (0.9, 0.999),
    1e-7; :class:`~dropkit.lab.plan.config.TrainSpec`), the fused CPU kernel where this torch has
    one (torch >= 2.4), the multi-tensor one otherwise. Adam is element-wise: one Adam over
    stacked weights is, run by run, the same optimizer as one Adam per run."""
    options = {"lr": train.lr, "betas": train.betas, "eps": train.eps}
    try:
        return torch.optim.Adam(params, **options, fused=True)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **options, foreach=True)  # type: ignore[arg-type]


@torch.no_grad()
def bound_unit_norms_(weight: Tensor, bound: Tensor | float, dims: Sequence[int]) -> Tensor:
    """The max-norm constraint in place: ``w_u ← w_u · min(1, c / ‖w_u‖₂)``; returns ``weight``.

    A unit's vector ``w_u`` spans the axes ``dims`` of ``weight`` (its incoming weights); the
    other axes index units (and, stacked, runs). Vectors within the bound are multiplied by
    exactly 1 and a zero vector stays zero: the rule of :func:`dropkit.max_norm_`, bit for bit.

    Args:
        weight: e.g. a Linear weight ``(out, in)`` with ``dims=(1,)``, a Conv2d weight
            ``(out, in, kh, kw)`` with ``dims=(1, 2, 3)``, or stacked weights ``(R, in, out)``
            with ``dims=(1,)``.
        bound: ``c > 0``, a number or a tensor broadcastable to the norms (``(R, 1, 1)`` per
            run; ``inf`` leaves a run unbounded).
        dims: the axes of one unit's incoming weights.
    """
    norms = torch.linalg.vector_norm(weight, dim=tuple(dims), keepdim=True)
    return weight.mul_(torch.where(norms > bound, bound / norms, 1.0))


# --- validation split and early stopping -----------------------------------------------------


class EarlyStopping:
    """Early stopping of ``R`` runs: one rule for "improved", patience, stop and restore.

    Epoch 0 is the initial model (loss ``+inf``). After epoch ``e`` (1-based) each running run
    reports its validation loss ``v``: it *improved* when ``v < best`` (so NaN never improves),
    and then its weights of epoch ``e`` are the ones to keep; it *stops* when
    ``e − best_epoch >= patience``, and then, and after the last epoch for a run that never
    stopped, the kept weights are restored. A stopped run reports nothing more.

    Args:
        patience: per run, epochs without improvement before it stops (``>= 1``).
        epochs: epochs of every run.

    Attributes:
        best_loss: ``(R,)`` lowest validation loss so far.
        best_epoch: ``(R,)`` its epoch, 1-based (0: the initial weights).
        stop_epoch: ``(R,)`` the last epoch trained (``epochs`` for a run still running).
        stopped: ``(R,)`` bool.
    """

    def __init__(self, patience: Sequence[int], epochs: int) -> None:
        if any(p < 1 for p in patience):
            raise ValueError(f"`patience` must be >= 1 per run, got {list(patience)!r}")
        runs = len(patience)
        self.patience = torch.tensor(list(patience), dtype=torch.int64)
        self.epochs = epochs
        self.best_loss = torch.full((runs,), math.inf, dtype=torch.float64)
        self.best_epoch = torch.zeros(runs, dtype=torch.int64)
        self.stop_epoch = torch.full((runs,), epochs, dtype=torch.int64)
        self.stopped = torch.zeros(runs, dtype=torch.bool)

    def update(self, epoch: int, loss: Tensor) -> tuple[Tensor, Tensor]:
        """Record the validation losses ``(R,)`` after 1-based ``epoch``.

        Losses of stopped runs are ignored. Returns ``(improved, newly_stopped)``, ``(R,)``
        bool: keep the weights of the improved runs, restore the kept weights of the newly
        stopped ones.
        """
        loss = loss.to(torch.float64)  # exact for float32 losses: the same comparisons
        improved = (loss < self.best_loss) & ~self.stopped
        self.best_loss = torch.where(improved, loss, self.best_loss)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        newly = ~self.stopped & (epoch - self.best_epoch >= self.patience)
        self.stop_epoch = torch.where(newly, epoch, self.stop_epoch)
        self.stopped = self.stopped | newly
        return improved, newly

    def info(self) -> list[dict[str, float]]:
        """Per run: ``stop_epoch`` (the last epoch trained, ``epochs`` when it never stopped)
        and ``best_epoch`` (the epoch whose weights were restored)."""
        return [
            {"stop_epoch": float(s), "best_epoch": float(b)}
            for s, b in zip(self.stop_epoch.tolist(), self.best_epoch.tolist(), strict=True)
        ]


# --- schedules and data ----------------------------------------------------------------------


def dropout_window(config: RunConfig) -> tuple[int, int] | None:
    """The 0-based epochs ``[start, stop)`` in which the hidden dropout acts, or None (all):
    ``RunEffects.dropout_window`` of :func:`~dropkit.lab.plan.effects.run_effects`.

    ``early_dropout`` of strength ``s`` (a fraction of the ``E`` epochs) is ``(0, round(s·E))``;
    ``late_dropout`` is ``(round(s·E), E)`` (the arms declare it in the registry).
    """
    return run_effects(config).dropout_window


def dropout_on(window: tuple[int, int] | None, epoch: int) -> bool:
    """Whether the hidden dropout acts in 0-based ``epoch`` (see :func:`dropout_window`)."""
    return window is None or window[0] <= epoch < window[1]


def feature_scale(x_train: NDArray[np.float32]) -> Tensor:
    """``(d,)`` standard deviations ``s_j`` of the training set's features (``ddof = 0``,
    float32): input jitter is ``x + augment·s_j·ε``."""
    return torch.from_numpy(np.asarray(x_train.std(axis=0), dtype=np.float32))


# --- progress ---------------------------------------------------------------------------------


class EpochTicker:
    """``on_epoch`` for a batch trained in parts: each part reports its own epochs, and the
    batch's callback is called once per ``runs`` run-epochs, with the batch's finished epochs.

    Args:
        runs: runs of the whole batch.
        epochs: epochs of every run.
        on_epoch: the batch's callback (None: nothing to call).
    """

    def __init__(self, runs: int, epochs: int, on_epoch: Callable[[int], None] | None) -> None:
        self.runs, self.epochs, self.on_epoch = runs, epochs, on_epoch
        self.done = 0
        self.emitted = 0

    def part(self, runs: int) -> Callable[[int], None]:
        """The ``on_epoch`` of a part of ``runs`` runs."""

        def tick(_epoch: int) -> None:
            self.advance(runs)

        return tick

    def advance(self, run_epochs: int) -> None:
        """Count ``run_epochs`` finished run-epochs."""
        self.done += run_epochs
        self._emit(min(self.done // self.runs, self.epochs))

    def finish(self) -> None:
        """Report every epoch not reported yet (a part that ended early)."""
        self._emit(self.epochs)

    def _emit(self, upto: int) -> None:
        while self.emitted < upto:
            self.emitted += 1
            if self.on_epoch is not None:
                self.on_epoch(self.emitted)


def augment_batch(
    x: Tensor,
    strength: float,
    scale: Tensor,
    input_shape: tuple[int, ...] | None,
    generator: torch.Generator,
) -> Tensor:
    """A randomly perturbed copy of the batch ``x`` ``(N, d)``.

    Images (``input_shape`` ``(C, H, W)``): each sample shifted by ``(dy, dx)`` drawn uniformly
    from ``{−k, …, k}²``, ``k = max(1, round(strength))`` pixels, the uncovered border filled
    with 0 (the training mean, for standardized pixels). No flips: the built-in images are
    digits, and a mirrored digit is another symbol (or none). Tables and sequences: Gaussian
    jitter ``x + strength · s_j · ε``, ``s_j`` the training-set standard deviation ``scale``
    ``(d,)`` of feature ``j``, ``ε ~ N(0, 1)``. ``generator`` must be on ``x``'s device.
    """
    where = x.device
    if input_shape is not None and len(input_shape) == 3:
        channels, height, width = input_shape
        k = max(1, round(strength))
        n = x.shape[0]
        shifts = torch.randint(-k, k + 1, (2, n), generator=generator, device=where)
        padded = F.pad(x.view(n, channels, height, width), (k, k, k, k))
        rows = (torch.arange(height, device=where) + k).view(1, height) + shifts[0].view(n, 1)
        cols = (torch.arange(width, device=where) + k).view(1, width) + shifts[1].view(n, 1)
        picked = padded[
            torch.arange(n, device=where).view(n, 1, 1),
            :,
            rows.view(n, height, 1),
            cols.view(n, 1, width),
        ]  # (N, H, W, C): the advanced indices come first
        return picked.permute(0, 3, 1, 2).reshape(n, -1)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=where)
    return x + strength * scale * noise
