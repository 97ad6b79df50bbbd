"""Validation rows: which training rows choose the best rate or arm, and which ones fit.

The test set only measures. A sweep that *chooses* (the best dropout rate, the best arm) must
choose on rows it does not report on, so the training split is cut once more
(:attr:`DataSpec.validation <dropkit.lab.plan.config.DataSpec>`: one hold-out;
:attr:`DataSpec.folds`: k-fold cross-validation, Stone 1974). The cut depends on the labels and
``spec.split_seed`` only, so every run of a sweep, every trainer and every batch sees the same
rows.

Nothing used during training sees the rows that choose. Early stopping picks its epoch on a
loss too; with a validation split it takes its rows from the run's *fit* rows
(:func:`stopping_rows`), so it never sees the validation rows that choose the winner, and an
arm cannot win the comparison by having watched them.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.plan.config import DataSpec

__all__ = [
    "VALIDATION_FRACTION",
    "has_validation",
    "holdout_rows",
    "stopping_rows",
    "validation_rows",
    "validation_split",
]


VALIDATION_FRACTION = 0.2
"""Share of the training set that early-stopping runs hold out to choose their stopping epoch
(of the fit rows with a validation split: :func:`dropkit.lab.plan.splits.stopping_rows`)."""


def validation_split(
    y: NDArray[np.int64], fraction: float = VALIDATION_FRACTION, seed: int = 0
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices ``(fit, validation)`` of a stratified hold-out of ``fraction`` of ``y``, sorted.

    Each class gives ``round(fraction · n_c)`` samples, at least 1 and at most ``n_c − 1`` (so
    a class of two or more samples stays in the fit part too), drawn with
    ``numpy.random.default_rng(seed)``: every run, every batch and both trainers hold out the
    same rows, so a run's result does not depend on its batch or its trainer. ``y`` is the
    training set's labels: the test set never chooses the stopping epoch; it only measures.

    Raises:
        ValueError: nothing would be left to train on.
    """
    rng = np.random.default_rng(seed)
    held: list[NDArray[np.int64]] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = max(1, round(fraction * len(members)))
        take = min(take, max(1, len(members) - 1))
        held.append(rng.choice(members, size=take, replace=False))
    validation = np.sort(np.concatenate(held)).astype(np.intp)
    fit = np.setdiff1d(np.arange(len(y), dtype=np.intp), validation)
    if not len(fit):
        raise ValueError(
            f"early stopping holds out a validation split of the training set, but its "
            f"{len(y)} samples leave nothing to train on"
        )
    return fit, validation


def has_validation(spec: DataSpec) -> bool:
    """Whether runs of ``spec`` hold out validation rows of the training split
    (``validation > 0`` or ``folds >= 2``; see :func:`dropkit.lab.plan.splits.validation_rows`)."""
    return spec.validation > 0 or spec.folds >= 2


def _no_rows() -> NDArray[np.intp]:
    return np.empty(0, dtype=np.intp)


def holdout_rows(
    y: NDArray[np.generic], fraction: float, seed: int, *, stratify: bool
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices ``(fit, validation)`` of a hold-out of ``fraction`` of the rows of ``y``, sorted.

    Stratified (``stratify=True``, class labels): each class ``c`` of ``n_c`` rows gives
    ``min(max(1, round(fraction · n_c)), n_c − 1)`` rows, so every class keeps at least one row
    on each side, drawn with ``numpy.random.default_rng(seed)`` class by class in sorted label
    order: the rule and the draws of :func:`dropkit.lab.plan.splits.validation_split`. Plain
    (regression targets): ``min(max(1, round(fraction · n)), n − 1)`` rows of one seeded
    permutation.

    Raises:
        ValueError: a class with fewer than 2 rows (stratified), or fewer than 2 rows in all.
    """
    n = len(y)
    rng = np.random.default_rng(seed)
    if stratify:
        labels, counts = np.unique(y, return_counts=True)
        if len(labels) and counts.min() < 2:
            k = int(np.argmin(counts))
            raise ValueError(
                f"`validation` ({fraction}) holds out rows of every class, but class "
                f"{labels[k].item()!r} has {counts[k]} training row: each class needs at least 2 "
                "(one to fit, one to validate)"
            )
        held = []
        for label, count in zip(labels, counts, strict=True):
            members = np.flatnonzero(y == label)
            take = min(max(1, round(fraction * int(count))), int(count) - 1)
            held.append(rng.choice(members, size=take, replace=False))
        validation = np.sort(np.concatenate(held)).astype(np.intp) if held else _no_rows()
    else:
        if n < 2:
            raise ValueError(
                f"`validation` ({fraction}) needs at least 2 training rows (one to fit, one to "
                f"validate), got {n}"
            )
        take = min(max(1, round(fraction * n)), n - 1)
        validation = np.sort(rng.permutation(n)[:take]).astype(np.intp)
    fit = np.setdiff1d(np.arange(n, dtype=np.intp), validation).astype(np.intp)
    return fit, validation


def _fold_rows(
    y: NDArray[np.generic], spec: DataSpec, fold: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    k, n = spec.folds, len(y)
    if spec.task == "classification":
        labels, counts = np.unique(y, return_counts=True)
        small = np.flatnonzero(counts < k)
        if len(small):
            shown = ", ".join(f"{labels[i].item()!r} has {counts[i]}" for i in small[:5])
            more = f" and {len(small) - 5} more classes" if len(small) > 5 else ""
            raise ValueError(
                f"`folds` ({k}) needs at least {k} training rows of every class (one in each "
                f"fold), but class {shown}{more}; use fewer folds or more data"
            )
        splitter: StratifiedKFold | KFold = StratifiedKFold(
            n_splits=k, shuffle=True, random_state=spec.split_seed
        )
    else:
        if n < k:
            raise ValueError(
                f"`folds` ({k}) needs at least {k} training rows (one in each fold), got {n}"
            )
        splitter = KFold(n_splits=k, shuffle=True, random_state=spec.split_seed)
    rows = np.zeros(n)  # the splitters read only the number of rows (and y, when stratified)
    for index, (fit, validation) in enumerate(splitter.split(rows, y)):
        if index == fold:
            return np.sort(fit).astype(np.intp), np.sort(validation).astype(np.intp)
    raise AssertionError("unreachable: fold was checked against folds")  # pragma: no cover


def validation_rows(
    y_train: NDArray[np.generic], spec: DataSpec, fold: int | None
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Indices ``(fit_idx, val_idx)`` into the training split: sorted, disjoint, together all rows.

    - ``spec.folds = k >= 2``: k-fold cross-validation, scikit-learn's ``StratifiedKFold``
      (classification: every fold holds each class in proportion) or ``KFold`` (regression),
      ``shuffle=True, random_state=spec.split_seed``; fold ``fold`` validates, the other
      ``k − 1`` fit. The k validation parts are disjoint and cover the rows.
    - else ``spec.validation = f > 0``: one seeded hold-out of ``f`` of the rows
      (:func:`holdout_rows`; stratified for classification, each class on both sides).
    - else ``(arange(n), [])``: no validation rows.

    Args:
        y_train: ``(n,)`` the training split's targets (class labels or regression values).
        spec: the data spec (``task``, ``validation``, ``folds``, ``split_seed``).
        fold: ``0 .. k − 1`` with folds, None without.

    Raises:
        ValueError: ``fold`` out of range (or given without folds), a class with fewer rows
            than folds (or than 2, for a hold-out), or too few rows.
    """
    y = np.asarray(y_train)
    if y.ndim != 1:
        raise ValueError(f"`y_train` must be one target per row, shape (n,), got {y.shape}")
    k = spec.folds
    if k >= 2:
        if (
            isinstance(fold, bool)
            or not isinstance(fold, (int, np.integer))  # NumPy ints too
            or not 0 <= fold < k
        ):
            raise ValueError(f"`fold` must be an int in [0, {k}) with {k} folds, got {fold!r}")
        return _fold_rows(y, spec, int(fold))
    if fold is not None:
        raise ValueError(f"`fold` must be None when the data has no folds, got {fold!r}")
    if spec.validation > 0:
        return holdout_rows(
            y, spec.validation, spec.split_seed, stratify=spec.task == "classification"
        )
    return np.arange(len(y), dtype=np.intp), _no_rows()


def stopping_rows(
    y_train: NDArray[np.generic], spec: DataSpec, fold: int | None
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Indices ``(fit_idx, stop_idx, val_idx)`` of a run with early stopping: it trains on
    ``fit_idx``, stops on the loss of ``stop_idx`` and reports (is chosen on) ``val_idx``.
    Sorted, pairwise disjoint, together all rows.

    - With a validation split (``spec.validation > 0`` or ``spec.folds >= 2``): ``(F, V) =``
      :func:`validation_rows` ``(y_train, spec, fold)``, and the stopping rows are a hold-out of
      :data:`~dropkit.lab.plan.splits.VALIDATION_FRACTION` of ``F``: :func:`holdout_rows`
      ``(y_train[F], 0.2, spec.split_seed, stratify=classification)``, mapped back to rows of
      the training split; ``val_idx = V``. Early stopping never sees the rows that choose the
      winner, and every run of a fold carves the same rows.
    - Without: 20% of the training split, seed 0 (classification:
      :func:`~dropkit.lab.plan.splits.validation_split`; regression: a plain
      :func:`holdout_rows`), and ``val_idx`` is empty.

    Args:
        y_train: ``(n,)`` the training split's targets (class labels or regression values).
        spec: the data spec (``task``, ``validation``, ``folds``, ``split_seed``).
        fold: ``0 .. k − 1`` with folds, None without.

    Raises:
        ValueError: the errors of :func:`validation_rows`; with a validation split, a class
            with fewer than 2 fit rows (one to fit, one to stop on), or fewer than 2 fit rows.
    """
    y = np.asarray(y_train)
    classification = spec.task == "classification"
    fit, val = validation_rows(y, spec, fold)
    if not len(val):
        if classification:
            fit, stop = validation_split(y, VALIDATION_FRACTION, seed=0)
        else:
            fit, stop = holdout_rows(y, VALIDATION_FRACTION, 0, stratify=False)
        return fit, stop, val
    y_fit = y[fit]
    if classification:
        labels, counts = np.unique(y_fit, return_counts=True)
        if counts.min() < 2:
            k = int(np.argmin(counts))
            where = "" if fold is None else f" of fold {fold}"
            raise ValueError(
                f"early stopping holds out {VALIDATION_FRACTION:.0%} of the fit rows of every "
                f"class (never the validation rows), but class {labels[k].item()!r} has "
                f"{counts[k]} fit row{where}: each class needs at least 2 (one to fit, one to "
                "stop on); use fewer folds, a smaller `validation` or more data"
            )
    elif len(y_fit) < 2:
        raise ValueError(
            f"early stopping holds out {VALIDATION_FRACTION:.0%} of the fit rows (never the "
            f"validation rows), which needs at least 2 fit rows, got {len(y_fit)}"
        )
    kept, held = holdout_rows(y_fit, VALIDATION_FRACTION, spec.split_seed, stratify=classification)
    return fit[kept], fit[held], val
