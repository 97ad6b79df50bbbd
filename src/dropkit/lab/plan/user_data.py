"""The user's own data in the lab: arrays, tensors or torch Datasets as a :class:`Dataset`.

:func:`from_user_data` takes what a user passes as ``data=`` and returns the data spec (whose
``content_hash`` puts the data's content into every run's key) and the data, checked up front:
a malformed input is refused with a :class:`~dropkit.lab.plan.data.DataError` that names the
argument and the offending value before anything trains.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from dropkit.lab.plan.config import TASKS, DataSpec
from dropkit.lab.plan.data import MAX_CLASSES, DataError, Dataset, imbalance_note
from dropkit.lab.plan.splits import validation_rows

__all__ = ["HASH_CHUNK", "content_hash", "from_user_data", "is_user_data", "train_and_test"]

HASH_CHUNK = 16 << 20
"""Bytes hashed at a time: a big array is hashed through views, never copied whole."""

_FORMS = (
    "(X, y) arrays or tensors, ((X_train, y_train), (X_test, y_test)), "
    '{"train": dataset, "test": dataset} or (train_dataset, test_dataset) of '
    "torch.utils.data.Dataset"
)
_SHOWN = 5  # labels listed in a message or note before "and N more"


def is_user_data(data: object) -> bool:
    """Whether ``data`` is in-memory data for :func:`from_user_data`: a tuple or list (of
    arrays, tensors or datasets) or a dict of datasets; not a name or path."""
    return isinstance(data, (tuple, list, dict))


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_dataset(value: object) -> bool:
    """A map-style dataset: a torch ``Dataset``, or any object with ``__len__`` and
    ``__getitem__`` that is not an array (no ``__array__``), sequence, string or mapping."""
    if isinstance(value, torch.utils.data.Dataset):
        return True
    if isinstance(value, (np.ndarray, torch.Tensor, list, tuple, str, bytes, Mapping)):
        return False
    return (
        hasattr(value, "__len__")
        and hasattr(value, "__getitem__")
        and not hasattr(value, "__array__")
    )


def _ndim(value: object) -> int:
    try:
        return int(np.ndim(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # ragged nested lists
        return -1


def _is_split(value: object) -> bool:
    """``(X, y)`` as one split of ``((X_train, y_train), (X_test, y_test))``: a tuple of two
    arrays of at least one axis (so a tuple of two rows of numbers is not taken for one)."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and not any(_is_dataset(part) for part in value)
        and all(_ndim(part) >= 1 for part in value)
    )


def _array(value: object, role: str) -> NDArray[Any]:
    """``value`` as a NumPy array (a tensor is detached and moved to the CPU)."""
    if value is None:
        raise DataError(f"`data`: {role} is None; pass an array or tensor")
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex():
            raise DataError(f"`data`: {role} must be real numbers, got a {tensor.dtype} tensor")
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        return tensor.cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"`data`: {role} is not an array ({type(value).__name__}: {error}); rows of "
            "different lengths?"
        ) from None


def _materialize(dataset: object, role: str) -> tuple[NDArray[Any], NDArray[Any]]:
    """``(X, y)`` of a map-style dataset: its items ``dataset[i] = (x, y)`` stacked once."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise DataError(
            f"`data`: the {role} dataset is an IterableDataset ({type(dataset).__name__}), which "
            "has no length or indexing; collect it into (X, y) tensors, or pass a map-style "
            "Dataset (with __len__ and __getitem__)"
        )
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) == 2:
        x_all, y_all = dataset.tensors
        return _array(x_all, f"the {role} dataset's x"), _array(y_all, f"the {role} dataset's y")
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            f"`data`: the {role} dataset ({type(dataset).__name__}) has no length; pass a "
            "map-style Dataset (with __len__ and __getitem__)"
        ) from None
    if n == 0:
        raise DataError(f"`data`: the {role} dataset is empty")
    xs: list[NDArray[Any]] = []
    ys: list[NDArray[Any]] = []
    for i in range(n):
        item = dataset[i]  # type: ignore[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(
                f"`data`: item {i} of the {role} dataset must be an (x, y) pair, got "
                f"{type(item).__name__} {_describe(item)}"
            )
        x, y = (_array(part, f"item {i} of the {role} dataset") for part in item)
        if xs and (x.shape != xs[0].shape or y.shape != ys[0].shape):
            raise DataError(
                f"`data`: item {i} of the {role} dataset has x of shape {x.shape} and y of "
                f"shape {y.shape}, item 0 {xs[0].shape} and {ys[0].shape}: every sample must "
                "have one shape"
            )
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


def _unpack(data: object) -> tuple[str, list[tuple[NDArray[Any], NDArray[Any], str, str]]]:
    """The form's default name and the splits as given: ``[(X, y, X's role, y's role)]``, one
    split (to be cut into train and test) or two (train, test)."""
    if isinstance(data, Mapping):
        keys = sorted(map(str, data))
        if keys != ["test", "train"]:
            raise DataError(
                f"`data`: a dict must have the keys 'train' and 'test' (torch Datasets), got {keys}"
            )
        pair: tuple[object, ...] = (data["train"], data["test"])
        if not all(_is_dataset(part) for part in pair):
            raise DataError(
                '`data`: {"train": ..., "test": ...} must hold torch Datasets, got '
                f"{type(pair[0]).__name__} and {type(pair[1]).__name__}; for arrays pass "
                "((X_train, y_train), (X_test, y_test))"
            )
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        pair = tuple(data)
    else:
        length = f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise DataError(f"`data` must be one of: {_FORMS}; got {type(data).__name__}{length}")
    first, second = pair
    if _is_dataset(first) or _is_dataset(second):
        if not (_is_dataset(first) and _is_dataset(second)):
            raise DataError(
                "`data`: a pair of datasets needs a torch Dataset for both train and test, got "
                f"{type(first).__name__} and {type(second).__name__}"
            )
        parts = [
            (*_materialize(dataset, role), f"X_{role}", f"y_{role}")
            for dataset, role in ((first, "train"), (second, "test"))
        ]
        return "datasets", parts
    if _is_split(first) and _is_split(second):
        train: tuple[object, object] = first  # type: ignore[assignment]
        test: tuple[object, object] = second  # type: ignore[assignment]
        name = "tensors" if isinstance(train[0], torch.Tensor) else "arrays"
        return name, [
            (_array(train[0], "X_train"), _array(train[1], "y_train"), "X_train", "y_train"),
            (_array(test[0], "X_test"), _array(test[1], "y_test"), "X_test", "y_test"),
        ]
    name = "tensors" if isinstance(first, torch.Tensor) else "arrays"
    return name, [(_array(first, "X"), _array(second, "y"), "X", "y")]


def train_and_test(train: object, test: object) -> tuple[object, object]:
    """``data`` for :func:`from_user_data` of a training and a test part given apart (the
    ``train=`` and ``test=`` of :func:`dropkit.lab.sweep`): each a map-style Dataset of
    ``(x, y)`` items or an ``(X, y)`` pair, both of one kind. ``(train, test)`` is then the
    same data as ``{"train": train, "test": test}`` or ``(train, test)``: the same content
    hash.

    Raises:
        ValueError: one part without the other.
        TypeError: a part that is neither a Dataset nor an ``(X, y)`` pair, or parts of two
            kinds.
    """
    if train is None or test is None:
        given, missing = ("train", "test") if test is None else ("test", "train")
        raise ValueError(
            f"`{given}` and `{missing}` go together: pass `{missing}=` too, or pass all the rows "
            "as `data=(X, y)` to split a test part off"
        )
    kinds = []
    for part, name in ((train, "train"), (test, "test")):
        if _is_dataset(part):
            kinds.append("a Dataset")
        elif isinstance(part, (tuple, list)) and len(part) == 2 and _is_split(tuple(part)):
            kinds.append("an (X, y) pair")
        else:
            raise TypeError(
                f"`{name}` must be a torch Dataset of (x, y) items or an (X, y) pair of arrays "
                f"or tensors, got {type(part).__name__} {_describe(part)}"
            )
    if kinds[0] != kinds[1]:
        raise TypeError(f"`train` and `test` must be of one kind, got {kinds[0]} and {kinds[1]}")
    if kinds[0] == "a Dataset":
        return (train, test)
    return (tuple(train), tuple(test))  # type: ignore[arg-type]


def _rows(mask: NDArray[np.bool_]) -> str:
    """``"row 7"`` or ``"3 rows (first: row 7)"`` for the True rows of ``mask``."""
    rows = np.flatnonzero(mask)
    return f"row {rows[0]}" if len(rows) == 1 else f"{len(rows)} rows (first: row {rows[0]})"


def _features(x: NDArray[Any], role: str) -> NDArray[np.float32]:
    """``X`` checked (numeric, rows of one or more features, finite) and as float32."""
    if x.dtype.kind not in "biuf":
        kind = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers"}
        raise DataError(
            f"`data`: {role} must be numeric, got dtype {x.dtype} "
            f"({kind.get(x.dtype.kind, x.dtype.kind)}); encode it as numbers first"
        )
    if x.ndim < 2:
        raise DataError(
            f"`data`: {role} must be one sample per row, shape (n, features) or "
            f"(n, *sample_shape), got shape {x.shape}"
            + ("; for a single feature use X.reshape(-1, 1)" if x.ndim == 1 else "")
        )
    if not len(x):
        raise DataError(f"`data`: {role} is empty (shape {x.shape}); it needs rows")
    if not math.prod(x.shape[1:]):
        raise DataError(f"`data`: {role} has no features (shape {x.shape})")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values: refused below
        converted = np.ascontiguousarray(x, dtype=np.float32)
    bad: NDArray[np.bool_] = np.logical_not(np.isfinite(converted.reshape(len(x), -1)).all(axis=1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        if x.dtype.kind == "f" and not np.isfinite(x[first]).all():
            what = "NaN or infinite values"
        else:
            what = "values beyond float32's range (|x| > 3.4e38)"
        raise DataError(f"`data`: {role} has {what} in {_rows(bad)}; drop or fill them")
    return converted


_EXACT_INTEGERS = 2**24
"""float32 holds every integer of magnitude below this exactly."""


def _exact_integers(x: NDArray[Any]) -> bool:
    """Whether ``X`` has an integer dtype and every value is exact in float32 (token ids,
    indices): a user's model then receives it as int64."""
    if x.dtype.kind not in "iu" or not x.size:
        return False
    return bool(x.min() > -_EXACT_INTEGERS and x.max() < _EXACT_INTEGERS)


def _targets(y: NDArray[Any], n: int, role: str, x_role: str) -> NDArray[Any]:
    """``y`` checked (one value per row, numbers or strings, finite) as a 1-d array."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        hint = "; for one-hot labels pass y.argmax(axis=1)" if y.ndim == 2 else ""
        raise DataError(
            f"`data`: {role} must be one target per row, shape (n,) or (n, 1), got shape "
            f"{y.shape}{hint}"
        )
    if len(y) != n:
        raise DataError(f"`data`: {x_role} has {n} rows but {role} has {len(y)}; they must match")
    if y.dtype.kind == "O":
        if all(isinstance(v, str) for v in y):
            y = y.astype(str)
        else:
            try:
                y = y.astype(np.float64)
            except (TypeError, ValueError):
                raise DataError(
                    f"`data`: {role} must hold numbers or strings, got Python objects such as "
                    f"{_describe(y[0])}"
                ) from None
    if y.dtype.kind not in "biufUS":
        raise DataError(f"`data`: {role} must hold numbers or strings, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            raise DataError(
                f"`data`: {role} has NaN or infinite values in {_rows(bad)}; drop those rows"
            )
    return y


def _integral(values: NDArray[Any]) -> bool:
    return values.dtype.kind in "biu" or bool(np.all(values == np.round(values)))


def _task(y: NDArray[Any], task: str | None, role: str) -> tuple[str, list[str]]:
    """The task (given, or inferred from ``y``) and the note on an inference."""
    kind = y.dtype.kind
    distinct = np.unique(y)
    if task is None:
        if kind in "US":
            task, why = "classification", f"y holds strings ({len(distinct)} distinct values)"
        elif kind == "b":
            task, why = "classification", "y is bool"
        elif not _integral(distinct):
            task = "regression"
            why = f"y is {y.dtype} with {len(distinct)} distinct values, not all integers"
        elif len(distinct) > MAX_CLASSES:
            task = "regression"
            why = (
                f"y is {y.dtype} with {len(distinct)} distinct integer values (more than "
                f"{MAX_CLASSES} are not read as classes)"
            )
        else:
            task = "classification"
            why = f"y is {y.dtype} with {len(distinct)} distinct integer values"
        return task, [f"task inferred as {task}: {why}; pass task= to override"]
    if task == "classification" and kind == "f" and not _integral(distinct):
        rows = np.flatnonzero(y != np.round(y))
        raise DataError(
            f"`task` 'classification' needs class labels, but {role} holds non-integer "
            f"values ({float(y[rows[0]])!r} at row {rows[0]}, {len(rows)} rows); pass "
            "task='regression' for a numeric target"
        )
    if task == "regression" and kind in "US":
        raise DataError(
            f"`task` 'regression' needs a numeric target, but {role} holds strings such as "
            f"{_describe(y[0].item())}; pass task='classification' for class labels"
        )
    return task, []


def _classes(
    ys: list[NDArray[Any]], roles: list[str]
) -> tuple[list[NDArray[np.int64]], tuple[str, ...], list[str]]:
    """Class codes ``0 .. k-1`` in sorted label order for each split, the class names and a
    note when the labels were not already ``0 .. k-1``."""
    kind = ys[0].dtype.kind
    if kind not in "US":
        for y, role in zip(ys, roles, strict=True):
            negative = y < 0
            if negative.any():
                raise DataError(
                    f"`data`: {role} has negative class labels ({y[negative][0].item()!r} in "
                    f"{_rows(negative)}); class labels are ints >= 0 (a negative label often "
                    "marks an unlabeled row): drop those rows or map the labels to 0 .. k-1"
                )
        ys = [y.astype(np.int64) for y in ys]
    labels, codes = np.unique(np.concatenate(ys), return_inverse=True)
    names = tuple(str(label.item()) for label in labels)
    if len(labels) < 2:
        raise DataError(
            f"`data`: {' and '.join(roles)} hold a single class ({names[0]!r}); nothing to classify"
        )
    bounds = np.cumsum([len(y) for y in ys])[:-1]
    split_codes = [part.astype(np.int64) for part in np.split(codes.reshape(-1), bounds)]
    notes = []
    if kind in "US" or not np.array_equal(labels, np.arange(len(labels))):
        what = "string" if kind in "US" else "bool" if kind == "b" else "integer"
        pairs = [f"{name}={code}" for code, name in enumerate(names)]
        shown = ", ".join(pairs[:10]) + (f" and {len(pairs) - 10} more" if len(pairs) > 10 else "")
        notes.append(f"{what} target y: {len(labels)} classes encoded in sorted order as {shown}")
    return split_codes, names, notes


def content_hash(arrays: Sequence[NDArray[Any]]) -> str:
    """16 hex digits of SHA-256 over each array's dtype, shape and bytes (C order), in order.

    Arrays are hashed :data:`HASH_CHUNK` bytes at a time through views (a contiguous array is
    not copied).
    """
    digest = hashlib.sha256(b"dropkit user data 1\0")
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape};".encode())
        flat = contiguous.reshape(-1).view(np.uint8)
        for start in range(0, len(flat), HASH_CHUNK):
            digest.update(flat[start : start + HASH_CHUNK].data)
    return digest.hexdigest()[:16]


def _fraction(value: object, name: str, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a fraction, got {_describe(value)}")
    number = float(value)
    ok = 0.0 < number < 1.0 if low_open else 0.0 <= number < 1.0
    if not ok:
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise DataError(f"`{name}` must be in {interval}, got {value!r}")
    return number


def _settings(
    task: object,
    test_size: object,
    split_seed: object,
    validation: object,
    folds: object,
    name: object,
    data_id: object,
) -> tuple[str | None, float, int, float, int]:
    if task is not None and task not in TASKS:
        raise DataError(
            f"`task` must be None (inferred) or one of {', '.join(TASKS)}, got {task!r}"
        )
    chosen = None if task is None else str(task)
    test = _fraction(test_size, "test_size", low_open=True)
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
        raise TypeError(f"`split_seed` must be an int, got {_describe(split_seed)}")
    held = _fraction(validation, "validation", low_open=False)
    if (
        isinstance(folds, bool)
        or not isinstance(folds, (int, np.integer))
        or folds in (1,)
        or folds < 0
    ):
        raise DataError(f"`folds` must be 0 (none) or an int >= 2, got {folds!r}")
    if folds and held:
        raise DataError(
            f"`validation` ({held}) and `folds` ({folds}) both hold out validation rows: give "
            "one (validation=0 with folds=k runs k-fold cross-validation over the training split)"
        )
    for value, label in ((name, "name"), (data_id, "data_id")):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DataError(f"`{label}` must be a non-empty str or None, got {_describe(value)}")
    return chosen, test, int(split_seed), held, int(folds)


def from_user_data(
    data: object,
    *,
    task: str | None = None,
    test_size: float = 0.3,
    split_seed: int = 0,
    validation: float = 0.2,
    folds: int = 0,
    name: str | None = None,
    data_id: str | None = None,
) -> tuple[DataSpec, Dataset]:
    """The spec and the data of a user's own arrays, tensors or torch Datasets.

    Forms of ``data``:

    - ``(X, y)``: NumPy arrays, torch tensors or nested lists; ``X`` of shape
      ``(n, *sample_shape)`` (tables ``(n, d)``, images ``(n, C, H, W)``, sequences
      ``(n, T, F)``), ``y`` of shape ``(n,)`` (or ``(n, 1)``). Split into train and test by
      scikit-learn's ``train_test_split(test_size=test_size, random_state=split_seed)``,
      stratified by class for classification.
    - ``((X_train, y_train), (X_test, y_test))``: the split as given (tuples).
    - ``{"train": ds, "test": ds}`` or ``(train_ds, test_ds)``: map-style
      ``torch.utils.data.Dataset`` objects (``__len__``, and ``__getitem__`` giving
      ``(x, y)``), materialized once into arrays (a two-tensor ``TensorDataset`` without
      indexing item by item). An ``IterableDataset`` is refused.

    The data is used as given: **no standardization** or other scaling (scale it first if the
    model needs it). Rows become float32 ``(n, d)`` in C order with ``input_shape`` the sample
    shape when it has more than one axis (None for tables); features are named ``x0, x1, ..``.
    Integer ``X`` (token ids, indices; every value below ``2**24`` in magnitude, so exact in
    float32) is marked ``integer_inputs``: a model of your own receives it as int64.

    Task: ``task`` or, when None, inferred from ``y`` and stated in ``Dataset.notes``: floats
    that are not all integers, or integers with more than 100 distinct values, are a regression
    target; integers, bools and strings otherwise class labels. Class labels that are not
    ``0 .. k-1`` (other integers, strings) are encoded in sorted order, with a note; regression
    targets become float32 and ``n_classes = 0``.

    Identity: ``DataSpec.content_hash`` is 16 hex digits of SHA-256 over the dtype, shape and
    bytes of the train and test ``X`` and ``y`` as used (after conversion and splitting;
    :func:`content_hash`), so one changed value is new data, and the same numbers as NumPy
    arrays or torch tensors are the same data. With ``data_id`` the hash is of that id instead
    and the data is not hashed (meant for big Datasets): the user then owns the id, and must
    change it whenever the data changes, or runs of old data are taken for runs of new.

    Args:
        data: one of the forms above.
        task: ``"classification"``, ``"regression"`` or None (inferred).
        test_size: the test fraction, in (0, 1), for the ``(X, y)`` form.
        split_seed: seed of the train/test split and of the validation rows
            (:func:`dropkit.lab.plan.splits.validation_rows`).
        validation: fraction of the training split held out to choose the best rate or arm,
            in [0, 1) (0: none).
        folds: 0, or ``k >= 2`` for k-fold cross-validation over the training split (then
            ``validation`` must be 0).
        name: the data's name in reports (default ``"arrays"``, ``"tensors"`` or
            ``"datasets"``).
        data_id: the user's identity of the data, hashed instead of its content.

    Returns:
        ``(DataSpec(name, content_hash, task, test_size, split_seed, validation, folds),
        Dataset)``. For the pre-split forms ``test_size`` is the actual test fraction.

    Raises:
        DataError: an unaccepted form (the message lists the accepted ones), ``X`` and ``y`` of
            different lengths, empty data, non-numeric ``X``, NaN or infinite values (the first
            row and the count), ``y`` with more than one column, negative class labels, a task
            that contradicts ``y``, a single class, a class with one sample, a test class the
            training split lacks, train and test samples of different shapes, a split too small
            for every class (or, for regression, under 2 rows on a side), validation rows or
            folds the training split cannot hold, and bad ``test_size``, ``validation``,
            ``folds``, ``task``, ``name`` or ``data_id``.
        TypeError: ``split_seed`` not an int, a fraction not a number.
    """
    chosen, test_fraction, seed, held, k = _settings(
        task, test_size, split_seed, validation, folds, name, data_id
    )
    default_name, parts = _unpack(data)
    xs = [_features(x, x_role) for x, _, x_role, _ in parts]
    integer_inputs = all(_exact_integers(x) for x, *_ in parts)
    ys = [
        _targets(y, len(x), y_role, x_role)
        for x, (_, y, x_role, y_role) in zip(xs, parts, strict=True)
    ]
    y_roles = [part[3] for part in parts]
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(
            f"`data`: train and test samples differ in shape: X_train is {xs[0].shape} and "
            f"X_test {xs[1].shape} (one sample each: {xs[0].shape[1:]} and {xs[1].shape[1:]})"
        )
    if len(ys) == 2 and (ys[0].dtype.kind in "US") != (ys[1].dtype.kind in "US"):
        raise DataError(
            f"`data`: y_train and y_test must both be strings or both numbers, got dtypes "
            f"{ys[0].dtype} and {ys[1].dtype}"
        )
    everything = np.concatenate(ys) if len(ys) == 2 else ys[0]
    task_name, notes = _task(everything, chosen, " and ".join(y_roles))
    regression = task_name == "regression"
    if regression:
        targets: list[NDArray[Any]] = [y.astype(np.float32) for y in ys]
        if np.unique(np.concatenate(targets)).size < 2:
            raise DataError(
                f"`data`: {' and '.join(y_roles)} hold one value ({targets[0][0].item():g}) in "
                "every row; nothing to predict"
            )
        class_names: tuple[str, ...] = ()
    else:
        codes, class_names, encoded = _classes(ys, y_roles)
        notes += encoded
        targets = list(codes)
    if len(xs) == 1:
        x_train, y_train, x_test, y_test = _split(
            xs[0], targets[0], test_fraction, seed, class_names
        )
    else:
        (x_train, x_test), (y_train, y_test) = xs, targets
        # the arrays as given may be the user's own memory (float32 input, torch tensors)
        x_train, x_test = (
            x.copy() if np.may_share_memory(x, part[0]) else x
            for x, part in zip(xs, parts, strict=True)
        )
        if not regression:
            _check_given_classes(y_train, y_test, class_names)
        for y, role in ((y_train, "y_train"), (y_test, "y_test")):
            if regression and len(y) < 2:
                raise DataError(
                    f"`data`: {role} has {len(y)} row; a regression's R² needs at least 2"
                )
        test_fraction = len(y_test) / (len(y_train) + len(y_test))
    if not regression:
        note = imbalance_note(np.bincount(y_train, minlength=len(class_names)), class_names)
        if note:
            notes.append(note)
    sample = tuple(int(s) for s in x_train.shape[1:])
    digest = (
        hashlib.sha256(f"dropkit data_id\0{data_id}".encode()).hexdigest()[:16]
        if data_id is not None
        else content_hash([x_train, y_train, x_test, y_test])
    )
    spec = DataSpec(
        name=name if name is not None else default_name,
        content_hash=digest,
        task=task_name,
        test_size=test_fraction,
        split_seed=seed,
        validation=held,
        folds=k,
    )
    try:
        validation_rows(y_train, spec, 0 if k else None)
    except ValueError as error:
        raise DataError(f"`data`: {error}") from None
    d = math.prod(sample)
    dataset = Dataset(
        name=spec.name,
        x_train=x_train.reshape(len(x_train), d),
        y_train=y_train,
        x_test=x_test.reshape(len(x_test), d),
        y_test=y_test,
        n_classes=len(class_names),
        feature_names=tuple(f"x{i}" for i in range(d)),
        input_shape=sample if len(sample) > 1 else None,
        notes=tuple(notes),
        task=task_name,
        integer_inputs=integer_inputs,
    )
    return spec, dataset


def _split(
    x: NDArray[np.float32],
    y: NDArray[Any],
    test_size: float,
    seed: int,
    class_names: tuple[str, ...],
) -> tuple[NDArray[np.float32], NDArray[Any], NDArray[np.float32], NDArray[Any]]:
    """``(x_train, y_train, x_test, y_test)``: scikit-learn's seeded ``train_test_split``,
    stratified by class (every class then needs a row on each side)."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_test = math.ceil(test_size * n)  # scikit-learn's count of test rows
    if class_names:
        counts = np.bincount(y, minlength=len(class_names))
        rare = np.flatnonzero(counts < 2)
        if len(rare):
            row = int(np.flatnonzero(y == rare[0])[0])
            more = f" ({len(rare)} classes have one)" if len(rare) > 1 else ""
            raise DataError(
                f"`data`: class {class_names[rare[0]]!r} of y has a single sample (row {row})"
                f"{more}; every class needs at least 2 so that the stratified train and test "
                "splits can both hold it: add rows or drop the class"
            )
        if min(n_test, n - n_test) < len(class_names):
            raise DataError(
                f"`data`: {n} rows split by `test_size` {test_size} into {n - n_test} train and "
                f"{n_test} test rows cannot hold each of the {len(class_names)} classes on both "
                "sides; add rows or change `test_size`"
            )
    elif min(n_test, n - n_test) < 2:
        raise DataError(
            f"`data`: {n} rows split by `test_size` {test_size} into {n - n_test} train and "
            f"{n_test} test rows; a regression's R² needs at least 2 rows on each side: add "
            "rows or change `test_size`"
        )
    train, test = train_test_split(
        np.arange(n),
        test_size=test_size,
        random_state=seed,
        stratify=y if class_names else None,
    )
    return x[train], y[train], x[test], y[test]


def _check_given_classes(
    y_train: NDArray[np.int64], y_test: NDArray[np.int64], names: tuple[str, ...]
) -> None:
    """A class of the test split must be in the training split (else it cannot be learned)."""
    unseen = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if len(unseen):  # (a single class in all is refused before, so y_train holds two or more)
        shown = ", ".join(repr(names[k]) for k in unseen[:_SHOWN])
        more = f" and {len(unseen) - _SHOWN} more" if len(unseen) > _SHOWN else ""
        raise DataError(
            f"`data`: class {shown}{more} of y_test is not in y_train: a model cannot learn "
            "a class it never sees; move some of its rows to the training split"
        )
