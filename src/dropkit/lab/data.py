"""Data sets for the lab: built-ins (generated or bundled with scikit-learn) and CSV files.

Nothing is downloaded: ``circles`` and ``moons`` are generated, ``digits``,
``breast_cancer`` and ``wine`` ship inside scikit-learn. Every data set comes back as a
:class:`Dataset` of float32 features and integer class labels, split once with a fixed seed.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.config import DataSpec

__all__ = ["BUILTIN_DATASETS", "DataError", "Dataset", "load_dataset"]


class DataError(ValueError):
    """A data set that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class Dataset:
    """Features ``(n, d)`` float32 and labels ``(n,)`` int64 in ``0 .. n_classes - 1``."""

    name: str
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    n_classes: int
    feature_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def _circles(spec: DataSpec) -> tuple[NDArray[np.float64], NDArray[np.int64], int]:
    """The case study: ``make_circles(100, noise=0.1, random_state=1)``, first 30 train."""
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=100, noise=0.1, random_state=1)
    return x, y, 30


def _moons(spec: DataSpec) -> tuple[NDArray[np.float64], NDArray[np.int64], int]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=200, noise=0.2, random_state=1)
    return x, y, -1


def _bundled(
    loader_name: str,
) -> Callable[[DataSpec], tuple[NDArray[np.float64], NDArray[np.int64], int]]:
    def load(spec: DataSpec) -> tuple[NDArray[np.float64], NDArray[np.int64], int]:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)()
        return bunch.data, bunch.target, -1

    return load


BUILTIN_DATASETS: dict[
    str, Callable[[DataSpec], tuple[NDArray[np.float64], NDArray[np.int64], int]]
] = {
    "circles": _circles,
    "moons": _moons,
    "digits": _bundled("load_digits"),
    "breast_cancer": _bundled("load_breast_cancer"),
    "wine": _bundled("load_wine"),
}
# Built-ins whose features are used as they are (the case study does not scale its inputs).
_UNSCALED = {"circles", "moons"}


def _read_csv(
    path: Path, target: str | None
) -> tuple[NDArray[np.float64], NDArray[np.int64], tuple[str, ...]]:
    """Numeric features and a class target from a CSV file with a header row."""
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    if target is None:
        raise DataError(
            f"--target is required for a CSV file: name the column to predict in {path}"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path} is empty")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if target not in header:
        raise DataError(f"target column {target!r} not in {path}; columns: {', '.join(header)}")
    if not body:
        raise DataError(f"{path} has a header but no data rows")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
    column = header.index(target)
    labels = [row[column].strip() for row in body]
    missing = [i + 2 for i, v in enumerate(labels) if v == "" or v.lower() in {"nan", "na", "null"}]
    if missing:
        raise DataError(
            f"target column {target!r} has missing/NaN values (first at line {missing[0]})"
        )
    features = [h for i, h in enumerate(header) if i != column]
    if not features:
        raise DataError(f"{path} has no feature columns besides the target {target!r}")
    x = np.empty((len(body), len(features)), dtype=np.float64)
    for j, (i, name) in enumerate((i, h) for i, h in enumerate(header) if i != column):
        for r, row in enumerate(body):
            try:
                x[r, j] = float(row[i])
            except ValueError:
                raise DataError(
                    f"feature column {name!r} is not numeric (line {r + 2}: {row[i]!r}); "
                    "encode it as numbers or drop it"
                ) from None
    if not np.isfinite(x).all():
        raise DataError(f"{path} has NaN or infinite feature values; impute or drop them first")
    _, y = np.unique(np.array(labels), return_inverse=True)
    return x, y.astype(np.int64), tuple(features)


def load_dataset(spec: DataSpec) -> Dataset:
    """Load and split the data set that ``spec`` names.

    Built-ins other than ``circles`` and CSV files are split with scikit-learn's
    ``train_test_split`` (stratified, ``spec.test_size``, ``spec.split_seed``) and their
    features standardized with the training set's mean and standard deviation.

    Raises:
        DataError: unknown name, missing or unreadable file, absent target column (the message
            lists the columns), non-numeric features, NaN in the target, too few samples.
    """
    from sklearn.model_selection import train_test_split

    name = spec.name
    if name in BUILTIN_DATASETS:
        x, y, n_train = BUILTIN_DATASETS[name](spec)
        feature_names = tuple(f"x{i}" for i in range(x.shape[1]))
    elif name.lower().endswith(".csv") or Path(name).exists():
        x, y, feature_names = _read_csv(Path(name), spec.target)
        n_train = -1
    else:
        known = ", ".join(BUILTIN_DATASETS)
        raise DataError(f"unknown dataset {name!r}: use one of {known}, or the path of a .csv file")
    if not 0.0 < spec.test_size < 1.0:
        raise DataError(f"`test_size` must be in (0, 1), got {spec.test_size}")
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1
    if n_classes < 2:
        raise DataError(f"{name}: the target has a single class; nothing to classify")
    if n_train > 0:
        x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    else:
        counts = np.bincount(y)
        n_test = math.ceil(spec.test_size * len(y))
        stratify = y if counts.min() >= 2 and n_test >= n_classes else None
        if len(y) < 4:
            raise DataError(f"{name}: {len(y)} samples are too few to split into train and test")
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=spec.test_size, random_state=spec.split_seed, stratify=stratify
        )
    if name not in _UNSCALED:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Dataset(
        name=Path(name).name if name not in BUILTIN_DATASETS else name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        n_classes=n_classes,
        feature_names=feature_names,
    )
