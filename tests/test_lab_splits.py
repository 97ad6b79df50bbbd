"""Validation rows: hold-out and k-fold cuts of the training split, sorted, disjoint, covering,
stratified for classes and the same on every call."""

from __future__ import annotations

import numpy as np
import pytest

from dropkit.lab.plan.config import DataSpec
from dropkit.lab.plan.splits import holdout_rows, stopping_rows, validation_rows, validation_split


def _labels(n: int = 90, classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _check_partition(fit: np.ndarray, val: np.ndarray, n: int) -> None:
    assert fit.dtype == np.intp and val.dtype == np.intp
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(val) > 0), "sorted, no repeats"
    assert not np.intersect1d(fit, val).size, "disjoint"
    np.testing.assert_array_equal(np.union1d(fit, val), np.arange(n))


class TestNone:
    def test_no_validation_is_all_rows(self) -> None:
        fit, val = validation_rows(_labels(), DataSpec(), None)
        np.testing.assert_array_equal(fit, np.arange(90))
        assert val.shape == (0,) and val.dtype == np.intp

    def test_fold_without_folds_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"`fold` must be None .* got 0"):
            validation_rows(_labels(), DataSpec(), 0)


class TestHoldout:
    def test_stratified_partition_and_class_presence(self) -> None:
        y = np.array([0] * 50 + [1] * 30 + [2] * 4)
        fit, val = validation_rows(y, DataSpec(validation=0.2, split_seed=3), None)
        _check_partition(fit, val, len(y))
        # round(0.2 * n_c) per class: 10, 6 and 1
        assert np.bincount(y[val]).tolist() == [10, 6, 1]
        assert set(y[fit]) == {0, 1, 2}

    def test_same_rows_as_early_stoppings_split(self) -> None:
        y = _labels(200, 4)
        fit, val = validation_rows(y, DataSpec(validation=0.2, split_seed=7), None)
        old_fit, old_val = validation_split(y, 0.2, seed=7)
        np.testing.assert_array_equal(fit, old_fit)
        np.testing.assert_array_equal(val, old_val)

    def test_deterministic_and_seeded(self) -> None:
        y = _labels()
        spec = DataSpec(validation=0.3, split_seed=1)
        first = validation_rows(y, spec, None)
        again = validation_rows(y.copy(), spec, None)
        np.testing.assert_array_equal(first[1], again[1])
        other = validation_rows(y, DataSpec(validation=0.3, split_seed=2), None)
        assert not np.array_equal(first[1], other[1])

    def test_every_class_on_both_sides(self) -> None:
        y = np.array([0, 0, 1, 1, 1, 2, 2] * 1)
        for fraction in (0.01, 0.5, 0.95):
            fit, val = validation_rows(y, DataSpec(validation=fraction), None)
            _check_partition(fit, val, len(y))
            assert set(y[fit]) == set(y[val]) == {0, 1, 2}, fraction

    def test_class_with_one_row_is_refused(self) -> None:
        y = np.array([0, 0, 0, 1, 1, 5])
        with pytest.raises(ValueError, match=r"class 5 has 1 training row.*at least 2"):
            validation_rows(y, DataSpec(validation=0.2), None)

    def test_regression_holdout(self) -> None:
        y = np.random.default_rng(0).normal(size=101).astype(np.float32)
        spec = DataSpec(task="regression", validation=0.25, split_seed=4)
        fit, val = validation_rows(y, spec, None)
        _check_partition(fit, val, 101)
        assert len(val) == round(0.25 * 101)
        np.testing.assert_array_equal(val, validation_rows(y, spec, None)[1])
        # float targets: no class rule, even though every value is distinct
        assert len(holdout_rows(y[:2], 0.9, 0, stratify=False)[0]) == 1

    def test_regression_needs_two_rows(self) -> None:
        with pytest.raises(ValueError, match=r"at least 2 training rows .* got 1"):
            validation_rows(np.zeros(1), DataSpec(task="regression", validation=0.5), None)


class TestFolds:
    def test_folds_partition_and_cover(self) -> None:
        y = _labels(103, 3)
        spec = DataSpec(folds=5, split_seed=2)
        parts = []
        for fold in range(5):
            fit, val = validation_rows(y, spec, fold)
            _check_partition(fit, val, len(y))
            parts.append(val)
        joined = np.concatenate(parts)
        np.testing.assert_array_equal(np.sort(joined), np.arange(103))  # disjoint, cover
        assert max(map(len, parts)) - min(map(len, parts)) <= 1

    def test_stratified_folds_hold_every_class_in_proportion(self) -> None:
        y = np.array([0] * 60 + [1] * 30 + [2] * 10)
        for fold in range(5):
            _, val = validation_rows(y, DataSpec(folds=5), fold)
            # StratifiedKFold: each class's count in a fold is its total / 5, give or take one
            assert np.all(np.abs(np.bincount(y[val], minlength=3) - [12, 6, 2]) <= 1), fold

    def test_folds_deterministic_and_seeded(self) -> None:
        y = _labels()
        a = validation_rows(y, DataSpec(folds=3, split_seed=0), 1)[1]
        np.testing.assert_array_equal(a, validation_rows(y, DataSpec(folds=3, split_seed=0), 1)[1])
        assert not np.array_equal(a, validation_rows(y, DataSpec(folds=3, split_seed=1), 1)[1])

    def test_regression_folds(self) -> None:
        y = np.linspace(0.0, 1.0, 23)
        spec = DataSpec(task="regression", folds=4)
        parts = [validation_rows(y, spec, fold)[1] for fold in range(4)]
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(23))

    def test_fold_out_of_range(self) -> None:
        for fold in (-1, 3, None, True, 1.0):
            with pytest.raises(ValueError, match=r"`fold` must be an int in \[0, 3\) .* got"):
                validation_rows(_labels(), DataSpec(folds=3), fold)  # type: ignore[arg-type]

    def test_class_smaller_than_folds_is_named(self) -> None:
        y = np.array([0] * 20 + [1] * 20 + [2] * 3)
        with pytest.raises(ValueError, match=r"`folds` \(5\).*class 2 has 3; use fewer folds"):
            validation_rows(y, DataSpec(folds=5), 0)

    def test_regression_fewer_rows_than_folds(self) -> None:
        with pytest.raises(ValueError, match=r"`folds` \(5\) needs at least 5 .* got 4"):
            validation_rows(np.zeros(4), DataSpec(task="regression", folds=5), 0)

    def test_two_dimensional_targets_are_refused(self) -> None:
        with pytest.raises(ValueError, match=r"`y_train` .* shape \(n,\), got \(4, 2\)"):
            validation_rows(np.zeros((4, 2)), DataSpec(), None)


class TestStopping:
    """Early stopping's rows: carved from the fit rows, never the validation rows."""

    @pytest.mark.parametrize(
        ("spec", "folds"),
        [
            (DataSpec(validation=0.3, split_seed=5), [None]),
            (DataSpec(folds=4, split_seed=1), [0, 1, 2, 3]),
            (DataSpec(task="regression", validation=0.25), [None]),
            (DataSpec(task="regression", folds=3), [0, 1, 2]),
        ],
        ids=["holdout", "folds", "regression-holdout", "regression-folds"],
    )
    def test_carved_from_the_fit_rows_apart_from_the_validation_rows(
        self, spec: DataSpec, folds: list[int | None]
    ) -> None:
        y = _labels(120, 3, seed=4)
        if spec.task == "regression":
            y = np.random.default_rng(4).normal(size=120).astype(np.float32)
        for fold in folds:
            fit, stop, val = stopping_rows(y, spec, fold)
            chooser_fit, chooser_val = validation_rows(y, spec, fold)
            np.testing.assert_array_equal(val, chooser_val)  # the same choosing rows
            assert fit.dtype == stop.dtype == np.intp
            assert np.all(np.diff(fit) > 0) and np.all(np.diff(stop) > 0), "sorted, no repeats"
            assert len(stop) and not np.intersect1d(fit, stop).size
            np.testing.assert_array_equal(np.union1d(fit, stop), chooser_fit)  # the fit rows
            assert not np.intersect1d(stop, val).size and not np.intersect1d(fit, val).size
            if spec.task == "classification":  # stratified: round(0.2 · n_c) of each class
                per_class = np.bincount(y[chooser_fit], minlength=3)
                expected = [min(max(1, round(0.2 * c)), c - 1) for c in per_class]
                assert np.bincount(y[stop], minlength=3).tolist() == expected
            else:
                assert len(stop) == round(0.2 * len(chooser_fit))
            again = stopping_rows(y.copy(), spec, fold)
            for first, second in zip((fit, stop, val), again, strict=True):
                np.testing.assert_array_equal(first, second)  # every run of a fold: same rows

    def test_seeded_with_the_split_seed(self) -> None:
        y = _labels(150, 2)
        a = stopping_rows(y, DataSpec(validation=0.2, split_seed=0), None)[1]
        b = stopping_rows(y, DataSpec(validation=0.2, split_seed=1), None)[1]
        assert not np.array_equal(a, b)

    def test_without_a_validation_split_it_is_a_fifth_of_the_training_split(self) -> None:
        y = _labels(90, 3)
        fit, stop, val = stopping_rows(y, DataSpec(), None)
        old_fit, old_stop = validation_split(y)
        np.testing.assert_array_equal(fit, old_fit)
        np.testing.assert_array_equal(stop, old_stop)
        assert val.shape == (0,) and val.dtype == np.intp
        values = np.random.default_rng(1).normal(size=50)
        fit, stop, val = stopping_rows(values, DataSpec(task="regression"), None)
        plain_fit, plain_stop = holdout_rows(values, 0.2, 0, stratify=False)
        np.testing.assert_array_equal(fit, plain_fit)
        np.testing.assert_array_equal(stop, plain_stop)
        assert not len(val)

    def test_a_class_with_one_fit_row_is_refused(self) -> None:
        y = np.array([0] * 10 + [1] * 10 + [2] * 2)  # class 2: one row validates, one fits
        with pytest.raises(ValueError, match=r"early stopping .* class 2 has 1 fit row: .*2"):
            stopping_rows(y, DataSpec(validation=0.3), None)
        with pytest.raises(ValueError, match=r"class 2 has 1 fit row of fold 0"):
            stopping_rows(y, DataSpec(folds=2), 0)

    def test_regression_needs_two_fit_rows(self) -> None:
        with pytest.raises(ValueError, match=r"early stopping .* at least 2 fit rows, got 1"):
            stopping_rows(np.zeros(2), DataSpec(task="regression", validation=0.5), None)
