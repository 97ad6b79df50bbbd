"""The user's own data: every accepted form of ``data=``, every refusal (naming the argument and
the value), the content hash, task inference, and CSV files read as regression."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset, TensorDataset

from dropkit.lab.plan import user_data
from dropkit.lab.plan.config import DataSpec
from dropkit.lab.plan.data import DataError, infer_csv_task, load_dataset
from dropkit.lab.plan.user_data import content_hash, from_user_data, is_user_data


def _table(n: int = 60, d: int = 3, classes: int = 3, seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), np.arange(n) % classes


def _refused(data: object, *fragments: str, **kwargs: Any) -> str:
    with pytest.raises(DataError) as caught:
        from_user_data(data, **kwargs)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


class Items(TorchDataset[tuple[torch.Tensor, int]]):
    """A map-style dataset that indexes item by item (not a TensorDataset)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


class Duck:
    """Not a torch Dataset: only ``__len__`` and ``__getitem__``."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        return self.x[i], self.y[i]


class TestForms:
    def test_arrays_are_split_like_train_test_split(self) -> None:
        x, y = _table()
        spec, data = from_user_data((x, y), test_size=0.25, split_seed=5)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=5, stratify=y)
        np.testing.assert_array_equal(data.x_train, x_tr.astype(np.float32))  # not scaled
        np.testing.assert_array_equal(data.x_test, x_te.astype(np.float32))
        np.testing.assert_array_equal(data.y_train, y_tr)
        np.testing.assert_array_equal(data.y_test, y_te)
        assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
        assert data.feature_names == ("x0", "x1", "x2") and data.input_shape is None
        assert (data.task, data.n_classes, data.n_outputs) == ("classification", 3, 3)
        assert spec.name == data.name == "arrays"
        assert (spec.test_size, spec.split_seed, spec.task) == (0.25, 5, "classification")
        assert len(spec.content_hash or "") == 16
        # stratified: 15 test rows of 3 balanced classes hold 5 of each
        assert np.bincount(data.y_test).tolist() == [5, 5, 5]

    def test_tensors_and_lists(self) -> None:
        x, y = _table()
        spec, data = from_user_data((torch.from_numpy(x), torch.from_numpy(y)))
        assert spec.name == "tensors"
        listed = from_user_data((x.tolist(), y.tolist()))[1]
        np.testing.assert_array_equal(data.x_train, listed.x_train)

    def test_split_given(self) -> None:
        x, y = _table(50)
        spec, data = from_user_data(((x[:40], y[:40]), (x[40:], y[40:])))
        np.testing.assert_array_equal(data.x_train, x[:40].astype(np.float32))  # order kept
        np.testing.assert_array_equal(data.y_test, y[40:])
        assert spec.test_size == pytest.approx(0.2)  # the actual test fraction
        # a list around the two splits is accepted too
        assert from_user_data([(x[:40], y[:40]), (x[40:], y[40:])])[0] == spec

    def test_images_and_sequences_keep_their_sample_shape(self) -> None:
        rng = np.random.default_rng(1)
        images = rng.normal(size=(30, 2, 3, 4)).astype(np.float32)
        labels = np.arange(30) % 2
        data = from_user_data(((images[:20], labels[:20]), (images[20:], labels[20:])))[1]
        assert data.input_shape == (2, 3, 4) and data.sample_shape == (2, 3, 4)
        assert data.x_train.shape == (20, 24) and data.feature_names[-1] == "x23"
        np.testing.assert_array_equal(data.x_train.reshape(20, 2, 3, 4), images[:20])  # C order
        sequences = rng.normal(size=(30, 5, 2))
        assert from_user_data((sequences, labels))[1].input_shape == (5, 2)

    def test_torch_datasets(self) -> None:
        x, y = _table(50)
        x = x.astype(np.float32)
        arrays_spec, arrays = from_user_data(((x[:40], y[:40]), (x[40:], y[40:])))
        for given in (
            {"train": Items(x[:40], y[:40]), "test": Items(x[40:], y[40:])},
            (Items(x[:40], y[:40]), Items(x[40:], y[40:])),
            (
                TensorDataset(torch.from_numpy(x[:40]), torch.from_numpy(y[:40])),
                TensorDataset(torch.from_numpy(x[40:]), torch.from_numpy(y[40:])),
            ),
            (Duck(x[:40], y[:40]), Duck(x[40:], y[40:])),
        ):
            spec, data = from_user_data(given)
            assert spec.name == "datasets"
            np.testing.assert_array_equal(data.x_train, arrays.x_train)
            np.testing.assert_array_equal(data.y_test, arrays.y_test)
            assert spec.content_hash == arrays_spec.content_hash  # same content, same hash

    def test_regression_targets(self) -> None:
        x, _ = _table(40)
        y = x @ np.array([1.0, -2.0, 0.5])
        spec, data = from_user_data((x, y.reshape(-1, 1)), task="regression")
        assert (spec.task, data.task, data.n_classes, data.n_outputs) == (
            "regression",
            "regression",
            0,
            1,
        )
        assert data.y_train.dtype == np.float32 and data.y_train.shape == (28,)
        assert data.notes == ()  # given, not inferred
        assert sorted(np.concatenate([data.y_train, data.y_test])) == pytest.approx(
            sorted(y.astype(np.float32))
        )

    def test_one_column_class_labels(self) -> None:
        x, y = _table()
        data = from_user_data((x, y.reshape(-1, 1)))[1]
        assert data.y_train.shape == (42,)

    def test_is_user_data(self) -> None:
        assert not is_user_data("moons") and not is_user_data(Path("data.csv"))
        assert is_user_data(_table()) and is_user_data({"train": None})


class TestTaskAndLabels:
    @pytest.mark.parametrize(
        ("y", "task", "why"),
        [
            (np.linspace(0, 1, 60), "regression", "y is float64 with 60 distinct values"),
            (np.arange(60) % 4, "classification", "y is int64 with 4 distinct integer values"),
            (np.arange(60) % 4 * 1.0, "classification", "float64 with 4 distinct integer"),
            (np.arange(60) % 2 == 0, "classification", "y is bool"),
            (np.array(["a", "b"] * 30), "classification", "y holds strings (2 distinct"),
        ],
    )
    def test_inference_is_noted(self, y: np.ndarray, task: str, why: str) -> None:
        spec, data = from_user_data((_table()[0], y))
        assert spec.task == data.task == task
        assert data.notes[0].startswith(f"task inferred as {task}: ")
        assert why in data.notes[0] and data.notes[0].endswith("; pass task= to override")

    def test_many_integers_are_regression(self) -> None:
        x = np.random.default_rng(0).normal(size=(300, 2))
        y = np.arange(300) * 7  # 300 distinct integers
        spec, _ = from_user_data((x, y))
        assert spec.task == "regression"
        x = np.random.default_rng(0).normal(size=(700, 2))
        few = np.arange(700) % 100  # 100 distinct: still classes
        assert from_user_data((x, few))[0].task == "classification"

    def test_labels_encoded_in_sorted_order(self) -> None:
        x, y = _table()
        data = from_user_data((x, y * 5 + 1))[1]  # 1, 6, 11
        assert data.notes[-1] == "integer target y: 3 classes encoded in sorted order as " + (
            "1=0, 6=1, 11=2"
        )
        strings = np.array(["dog", "ant", "cat"])[y]
        data = from_user_data((x, strings))[1]
        assert "string target y: 3 classes encoded in sorted order as ant=0, cat=1, dog=2" in (
            data.notes
        )
        assert not any("encoded" in n for n in from_user_data((x, y))[1].notes)

    def test_explicit_task_contradicting_y(self) -> None:
        x, _ = _table()
        floats = np.linspace(0, 1, 60)
        _refused(
            (x, floats),
            "`task` 'classification' needs class labels",
            "non-integer values (0.01694915254237288 at row 1, 58 rows)",
            task="classification",
        )
        _refused(
            (x, np.array(["a", "b"] * 30)),
            "`task` 'regression' needs a numeric target",
            "'a'",
            task="regression",
        )

    def test_imbalance_is_noted(self) -> None:
        x = np.random.default_rng(0).normal(size=(100, 2))
        y = (np.arange(100) % 10 == 0).astype(int)
        assert any(
            n.startswith("imbalanced classes (0: 63, 1: 7;")
            for n in (from_user_data((x, y))[1].notes)
        )


class TestRefusals:
    def test_wrong_forms_list_the_accepted_ones(self) -> None:
        x, y = _table()
        for data in (x, (x, y, y), 3, None):
            _refused(data, "`data` must be one of: (X, y) arrays or tensors", "torch.utils.data")
        _refused({"fit": 1, "test": 2}, "must have the keys 'train' and 'test'", "['fit', 'test']")
        _refused({"train": (x, y), "test": (x, y)}, "must hold torch Datasets, got tuple")
        _refused((Items(x, y), x), "needs a torch Dataset for both train and test", "ndarray")

    def test_iterable_dataset(self) -> None:
        class Stream(IterableDataset[tuple[torch.Tensor, int]]):
            def __iter__(self) -> Any:
                return iter([])

        _refused((Stream(), Stream()), "train dataset is an IterableDataset (Stream)")

    def test_bad_items(self) -> None:
        x, y = _table()
        bad = Duck(x, y)
        bad.__class__ = type("Triple", (Duck,), {"__getitem__": lambda self, i: (1, 2, 3)})
        _refused((bad, Items(x, y)), "item 0 of the train dataset must be an (x, y) pair")
        ragged = [np.zeros(3)] * 5 + [np.zeros(4)]
        _refused((Duck(ragged, np.zeros(6)), Items(x, y)), "item 5 of the train dataset has x of")
        _refused((Items(x[:0], y[:0]), Items(x, y)), "the train dataset is empty")

    def test_length_mismatch(self) -> None:
        x, y = _table()
        _refused((x, y[:-1]), "X has 60 rows but y has 59")
        _refused(((x, y), (x, y[:3])), "X_test has 60 rows but y_test has 3")

    def test_empty_and_shapeless(self) -> None:
        _refused((np.zeros((0, 3)), np.zeros(0)), "X is empty (shape (0, 3))")
        _refused((np.zeros(10), np.zeros(10)), "X must be one sample per row", "reshape(-1, 1)")
        _refused((np.zeros((10, 0)), np.zeros(10)), "X has no features (shape (10, 0))")

    def test_non_numeric_x(self) -> None:
        _refused((np.array([["a", "b"]] * 6), np.arange(6) % 2), "X must be numeric, got dtype <U1")
        objects = np.array([[object()]] * 6)
        _refused((objects, np.arange(6) % 2), "(Python objects)")
        _refused(([[1, 2], [3]], [0, 1]), "X is not an array", "rows of different lengths")

    def test_dtypes(self) -> None:
        x, y = _table()
        half = from_user_data((torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(y)))[1]
        assert half.x_train.dtype == np.float32
        _refused((torch.ones(6, 2, dtype=torch.complex64), y[:6]), "X must be real numbers")
        mixed = np.array([1, 2.5, 3] * 20, dtype=object)  # Python numbers: read as floats
        assert from_user_data((x, mixed))[0].task == "regression"
        missing = np.array([None, 1] * 30, dtype=object)  # None is read as NaN: missing
        _refused((x, missing), "y has NaN or infinite values in 30 rows (first: row 0)")
        _refused((x, np.array([{}, 1] * 30, dtype=object)), "y must hold numbers or strings")
        dates = np.arange(60).astype("datetime64[D]")
        _refused((x, dates), "y must hold numbers or strings, got dtype datetime64[D]")
        _refused((x, None), "y is None")

    def test_dataset_without_length(self) -> None:
        class Endless(TorchDataset[int]):
            def __getitem__(self, i: int) -> int:
                return i

        _refused((Endless(), Endless()), "the train dataset (Endless) has no length")

    def test_non_finite_values_name_the_first_row_and_count(self) -> None:
        x, y = _table()
        x[[7, 9, 30], 1] = [np.nan, np.inf, np.nan]
        _refused((x, y), "X has NaN or infinite values in 3 rows (first: row 7)")
        x, y = _table()
        x[4, 0] = 1e300  # finite in float64, infinite in float32
        _refused((x, y), "values beyond float32's range", "row 4")
        reg = np.linspace(0, 1, 60)
        reg[11] = np.nan
        _refused((_table()[0], reg), "y has NaN or infinite values in row 11")

    def test_label_checks(self) -> None:
        x, y = _table()
        _refused((x, y - 1), "y has negative class labels (-1 in 20 rows (first: row 0))")
        _refused((x, np.zeros(60, dtype=int)), "y hold a single class ('0')")
        one = y.copy()
        one[17] = 9
        _refused((x, one), "class '9' of y has a single sample (row 17)", "at least 2")
        _refused((x, np.stack([y, y], axis=1)), "shape (n,) or (n, 1), got shape (60, 2)", "argmax")

    def test_split_too_small_for_the_classes(self) -> None:
        x, y = _table(20, classes=5)
        _refused(
            (x, y),
            "20 rows split by `test_size` 0.1 into 18 train and 2 test rows cannot hold each of "
            "the 5 classes",
            test_size=0.1,
        )

    def test_given_splits(self) -> None:
        x, y = _table()
        _refused(((x, y), (x[:, :2], y)), "train and test samples differ in shape", "(60, 2)")
        test_only = y.copy()
        test_only[:5] = 7
        _refused(((x, y), (x, test_only)), "class '7' of y_test is not in y_train")
        _refused(((x, y % 1), (x, y % 1)), "y_train and y_test hold a single class ('0')")
        _refused(((x, y), (x, np.array(["a"] * 60))), "must both be strings or both numbers")

    def test_regression_checks(self) -> None:
        x, _ = _table(10)
        _refused((x, np.full(10, 2.5)), "hold one value (2.5) in every row", task="regression")
        _refused(
            (x[:5], np.linspace(0, 1, 5)), "R² needs at least 2 rows on each side", test_size=0.1
        )
        _refused(((x, np.linspace(0, 1, 10)), (x[:1], [0.5])), "y_test has 1 row")

    def test_settings(self) -> None:
        data = _table()
        _refused(data, "`validation` must be in [0, 1), got 1.0", validation=1.0)
        _refused(data, "`folds` must be 0 (none) or an int >= 2, got 1", folds=1, validation=0)
        _refused(data, "`validation` (0.2) and `folds` (3) both hold out", folds=3)
        _refused(data, "`test_size` must be in (0, 1), got 0", test_size=0)
        _refused(data, "`task` must be None (inferred) or one of", "'ranking'", task="ranking")
        _refused(data, "`name` must be a non-empty str", name="")
        _refused(data, "`data_id` must be a non-empty str", data_id=3)
        with pytest.raises(TypeError, match=r"`split_seed` must be an int, got 1.5"):
            from_user_data(data, split_seed=1.5)  # type: ignore[arg-type]

    def test_validation_rows_must_fit(self) -> None:
        x, y = _table(30)  # 21 training rows, 7 per class
        _refused(
            (x, y), "`data`: `folds` (8) needs at least 8 training rows", folds=8, validation=0
        )
        assert from_user_data((x, y), folds=7, validation=0)[0].folds == 7


class TestContentHash:
    def test_one_value_changes_the_hash(self) -> None:
        x, y = _table(200)
        first = from_user_data((x, y))[0].content_hash
        assert from_user_data((x.copy(), y.copy()))[0].content_hash == first  # stable
        for row, column in ((0, 0), (113, 2), (199, 1)):
            changed = x.copy()
            changed[row, column] += 1e-3
            assert from_user_data((changed, y))[0].content_hash != first, (row, column)
        other = y.copy()
        other[[0, 1]] = other[[1, 0]]
        assert from_user_data((x, other))[0].content_hash != first

    def test_numpy_and_torch_hash_alike(self) -> None:
        x, y = _table()
        given = ((x[:40], y[:40]), (x[40:], y[40:]))
        as_tensors = tuple((torch.from_numpy(a), torch.from_numpy(b)) for a, b in given)
        assert from_user_data(given)[0].content_hash == (from_user_data(as_tensors)[0].content_hash)
        assert from_user_data((x, y))[0].content_hash == (
            from_user_data((torch.from_numpy(x), torch.from_numpy(y)))[0].content_hash
        )

    def test_the_split_and_the_sample_shape_are_hashed(self) -> None:
        x, y = _table()
        assert from_user_data((x, y), split_seed=0)[0].content_hash != (
            from_user_data((x, y), split_seed=1)[0].content_hash
        )
        images = x.reshape(60, 1, 3, 1)
        assert from_user_data((images, y))[0].content_hash != from_user_data((x, y))[0].content_hash

    def test_chunks_hash_the_whole_stream(self, monkeypatch: pytest.MonkeyPatch) -> None:
        arrays = [np.arange(1000, dtype=np.float32).reshape(10, 100), np.arange(10)]
        whole = content_hash(arrays)
        monkeypatch.setattr(user_data, "HASH_CHUNK", 7)
        assert content_hash(arrays) == whole
        digest = hashlib.sha256(b"dropkit user data 1\0")
        for a in arrays:
            digest.update(f"{a.dtype.str}{a.shape};".encode() + a.tobytes())
        assert whole == digest.hexdigest()[:16]

    def test_data_id_replaces_the_content(self) -> None:
        x, y = _table()
        spec = from_user_data((x, y), data_id="survey-2024")[0]
        assert (
            spec.content_hash == from_user_data((x + 1, y), data_id="survey-2024")[0].content_hash
        )
        assert spec.content_hash != from_user_data((x, y), data_id="survey-2025")[0].content_hash
        assert spec.content_hash != from_user_data((x, y))[0].content_hash

    def test_the_users_arrays_are_copied(self) -> None:
        x, y = _table()
        x = x.astype(np.float32)
        data = from_user_data(((x[:40], y[:40]), (x[40:], y[40:])))[1]
        x[:] = 0  # changing the caller's array later does not change the data (or its hash)
        assert data.x_train.any() and data.x_test.any()


def _csv(tmp_path: Path, rows: int, target: Any, name: str = "data.csv") -> Path:
    path = tmp_path / name
    lines = ["a,b,y"] + [f"{i},{i * i % 7},{target(i)}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class TestCsvRegression:
    def test_end_to_end(self, tmp_path: Path) -> None:
        path = _csv(tmp_path, 40, lambda i: f"{i * 0.37:.2f}")
        assert infer_csv_task(path, "y") == "regression"
        data = load_dataset(DataSpec(str(path), target="y", task="regression"))
        assert (data.task, data.n_classes, data.n_outputs) == ("regression", 0, 1)
        assert data.y_train.dtype == np.float32 and len(data.y_train) + len(data.y_test) == 40
        # features standardized with the training split's statistics, the target used as is
        assert np.abs(data.x_train.mean(axis=0)).max() < 1e-5
        values = sorted(np.concatenate([data.y_train, data.y_test]).tolist())
        assert values == pytest.approx([i * 0.37 for i in range(40)], abs=1e-5)
        assert data.notes == (
            "numeric target 'y' read for regression: 40 distinct values from 0 to 14.43; the "
            "score is R² and the loss the mean squared error",
        )

    def test_split_is_seeded_and_unstratified(self, tmp_path: Path) -> None:
        path = _csv(tmp_path, 40, lambda i: i)
        spec = DataSpec(str(path), target="y", task="regression", split_seed=3)
        first, again = load_dataset(spec), load_dataset(spec)
        np.testing.assert_array_equal(first.y_test, again.y_test)
        _, expected = train_test_split(np.arange(40), test_size=0.3, random_state=3)
        np.testing.assert_array_equal(first.y_test, expected.astype(np.float32))

    def test_inference(self, tmp_path: Path) -> None:
        assert infer_csv_task(_csv(tmp_path, 40, lambda i: i % 3), "y") == "classification"
        assert infer_csv_task(_csv(tmp_path, 30, lambda i: "ab"[i % 2], "t.csv"), "y") == (
            "classification"
        )
        many = _csv(tmp_path, 120, lambda i: i * 2 if i != 5 else "", "m.csv")
        assert infer_csv_task(many, "y") == "regression"  # 119 integers; the hole is skipped
        floats = _csv(tmp_path, 11, lambda i: i + 0.5, "f.csv")
        assert infer_csv_task(floats, "y") == "regression"  # 11 non-integers: over 10
        assert infer_csv_task(_csv(tmp_path, 10, lambda i: i + 0.5, "g.csv"), "y") == (
            "classification"
        )
        with pytest.raises(DataError, match="target column 'z' not in"):
            infer_csv_task(many, "z")
        with pytest.raises(DataError, match="`target` is required"):
            infer_csv_task(many, None)

    def test_regression_refusals_name_the_line(self, tmp_path: Path) -> None:
        def refused(target: Any, *fragments: str, rows: int = 20) -> None:
            path = _csv(tmp_path, rows, target)
            with pytest.raises(DataError) as caught:
                load_dataset(DataSpec(str(path), target="y", task="regression"))
            for fragment in (str(path), *fragments):
                assert fragment in str(caught.value), str(caught.value)

        refused(
            lambda i: "NA" if i == 4 else i, "target column 'y' has missing/NaN values at line 6"
        )
        refused(lambda i: "big" if i == 2 else i, "line 4: target column 'y' is not numeric: 'big'")
        refused(lambda i: "inf" if i == 3 else i, "line 5: target column 'y' is not a finite")
        refused(lambda i: 1.5, "has the same value (1.5) in every row")
        refused(lambda i: i, "R² needs at least 2 rows on each side", rows=3)

    def test_builtins_stay_classification(self) -> None:
        with pytest.raises(DataError, match="built-in data set 'moons' is a classification task"):
            load_dataset(DataSpec("moons", task="regression"))
        assert load_dataset(DataSpec("moons")).task == "classification"


def test_integer_features_are_marked_when_float32_holds_them_exactly() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    ids = rng.integers(0, 50, size=(40, 4))
    for x, marked in (
        (ids, True),
        (ids.astype(np.int32), True),
        (ids.astype(np.float64), False),  # floats stay floats, whatever their values
        (ids + 2**24, False),  # not exact in float32: as before, floats
        (ids > 3, False),  # booleans are features, not ids
    ):
        _, data = from_user_data((x, y), validation=0.0)
        assert data.integer_inputs is marked, x.dtype
        assert data.x_train.dtype == np.float32
