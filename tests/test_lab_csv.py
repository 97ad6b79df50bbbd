"""CSV input: every malformed file is refused with a message naming file, line, column and value;
categorical targets, imbalance and imputation are stated in the data set's notes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from dropkit.cli import app
from dropkit.lab.plan.config import DataSpec
from dropkit.lab.plan.data import DataError, Dataset, load_dataset


def _write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _load(path: Path, target: str = "y", impute: str | None = None) -> Dataset:
    return load_dataset(DataSpec(str(path), target=target), impute=impute)


def _refused(path: Path, *fragments: str, target: str = "y", impute: str | None = None) -> str:
    """Load ``path`` expecting a DataError that names the file and every fragment."""
    with pytest.raises(DataError) as caught:
        _load(path, target, impute)
    message = str(caught.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message, "one line"
    return message


def _rows(n: int, label: Callable[[int], object] = lambda i: i % 2) -> str:
    """``n`` rows of two numeric features (row id, row id squared mod 7) and a label."""
    return "\n".join(f"{i},{i * i % 7},{label(i)}" for i in range(n))


def _row_ids(data: Dataset) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Original row ids of the train and test rows, from feature 0 (the id, standardized with
    one mean and scale for both splits, so its order is the ids' order)."""
    ids = np.concatenate([data.x_train[:, 0], data.x_test[:, 0]]).argsort().argsort()
    return ids[: len(data.y_train)], ids[len(data.y_train) :]


class TestFileShape:
    def test_bom_and_crlf(self, tmp_path: Path) -> None:
        body = "\r\n".join(["a,b,y", _rows(20).replace("\n", "\r\n"), ""])
        data = _load(_write(tmp_path, "\ufeff" + body))
        assert data.feature_names == ("a", "b")  # no BOM glued to the first name
        assert len(data.y_train) + len(data.y_test) == 20 and data.n_classes == 2
        assert data.notes == ()  # labels 0/1 are already classes 0/1

    def test_empty_file(self, tmp_path: Path) -> None:
        _refused(_write(tmp_path, ""), "is empty")
        _refused(_write(tmp_path, "\n  \n\r\n", "blank.csv"), "is empty")

    def test_header_only(self, tmp_path: Path) -> None:
        _refused(_write(tmp_path, "a,b,y\n\n"), "has a header but no data rows")

    def test_duplicate_columns(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "a,b,a,y,b\n1,2,3,0,4\n")
        _refused(
            path, "line 1", "duplicate column names", "'a' (columns 1, 3)", "'b' (columns 2, 5)"
        )

    def test_unnamed_column(self, tmp_path: Path) -> None:
        _refused(_write(tmp_path, ",a,y\n0,1,0\n"), "line 1", "column 1 of the header has no name")

    def test_ragged_row_counts_editor_lines(self, tmp_path: Path) -> None:
        # line 1 header, 2 a row, 3 blank, 4-5 one quoted value over two lines, 6 the short row
        path = _write(tmp_path, 'a,b,y\n1,2,0\n\n3,"4\n",1\n5,6\n')
        _refused(path, "line 6: 2 fields, the header has 3")
        _refused(_write(tmp_path, "a,b,y\n1,2,0,9\n", "long.csv"), "line 2: 4 fields")

    def test_not_utf8_names_the_line(self, tmp_path: Path) -> None:
        path = _write(tmp_path, b"a,y\n1,0\n2,1\n3,caf\xe9\n")
        _refused(path, "line 4", "not UTF-8")

    def test_other_separator_is_explained(self, tmp_path: Path) -> None:
        _refused(_write(tmp_path, "a;b;y\n1;2;0\n"), "separated by commas")


class TestFeatures:
    def test_non_numeric_cell(self, tmp_path: Path) -> None:
        long_value = "word " * 100
        path = _write(tmp_path, f"a,b,y\n1,2,0\n3,{long_value},1\n")
        message = _refused(path, "line 3, column 2", "feature column 'b' is not numeric", "'word")
        assert len(message) < len(str(path)) + 200, "the value is cut short"

    def test_infinite_cell(self, tmp_path: Path) -> None:
        _refused(_write(tmp_path, "a,y\n1,0\n2,1\n-inf,0\n4,1\n"), "line 4, column 1", "inf")

    def test_missing_features_name_column_and_lines(self, tmp_path: Path) -> None:
        # every spelling of "missing": empty, NaN, nan, NA (lines 3, 5, 7, 9)
        rows = ["1,1,0", "2,,1", "3,3,0", "4,NaN,1", "5,5,0", "6,nan,1", "7,7,0", "8,NA,0"]
        rows += ["9,9,1", "10,10,1", "11,,0"]
        path = _write(tmp_path, "a,b,y\n" + "\n".join(rows) + "\n")
        _refused(path, "'b' (column 2) has 5 missing values", "lines 3, 5, 7, 9, 12", "`impute`")

    def test_column_without_values(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "a,b,y\n" + "\n".join(f"{i},,{i % 2}" for i in range(8)))
        _refused(path, "'b' (column 2) has no values", impute="mean")

    @pytest.mark.parametrize("method", ["mean", "median"])
    def test_impute_uses_the_training_split_only(self, tmp_path: Path, method: str) -> None:
        n = 40
        b = [float(i**2) for i in range(n)]  # skewed, so mean != median
        holes = set(range(3, n, 5))  # 8 missing cells
        lines = [f"{i},{'' if i in holes else b[i]},{i % 2}" for i in range(n)]
        data = _load(_write(tmp_path, "a,b,y\n" + "\n".join(lines) + "\n"), impute=method)
        train_ids, test_ids = _row_ids(data)
        observed_train = [b[i] for i in train_ids if i not in holes]
        fill = np.mean(observed_train) if method == "mean" else np.median(observed_train)
        everything = [b[i] for i in range(n) if i not in holes]
        leaky = np.mean(everything) if method == "mean" else np.median(everything)
        assert abs(fill - leaky) > 1.0, "the test below tells the two apart"
        # Undo the standardization of b with two observed rows, then read the filled cells.
        x = np.concatenate([data.x_train[:, 1], data.x_test[:, 1]]).astype(np.float64)
        ids = np.concatenate([train_ids, test_ids])
        known = [k for k, i in enumerate(ids) if i not in holes]
        (k0, k1) = known[0], known[-1]
        scale = (b[ids[k1]] - b[ids[k0]]) / (x[k1] - x[k0])
        raw = b[ids[k0]] + (x - x[k0]) * scale
        filled = raw[[k for k, i in enumerate(ids) if i in holes]]
        # float32 storage: about 7 significant digits of values up to ~1.5e3
        np.testing.assert_allclose(filled, fill, rtol=1e-4)
        n_test_holes = len(holes & set(test_ids.tolist()))
        assert n_test_holes > 0, "some test rows are filled too"
        (note,) = data.notes
        assert f"`impute` {method!r} filled 8 missing cells" in note
        assert f"({8 - n_test_holes} in training rows, {n_test_holes} in test rows)" in note

    def test_impute_is_csv_only(self) -> None:
        with pytest.raises(DataError, match="`impute` applies to CSV files"):
            load_dataset(DataSpec("wine"), impute="mean")
        with pytest.raises(ValueError, match="`impute` must be one of"):
            load_dataset(DataSpec("wine"), impute="mode")


class TestTarget:
    def test_target_column_missing_lists_columns(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "alpha,Label\n1,0\n")
        _refused(
            path,
            "target column 'label' not in",
            "columns: alpha, Label",
            "'Label'?",
            target="label",
        )

    def test_categorical_target_sorted_and_noted(self, tmp_path: Path) -> None:
        # feature a is a code of the class, so the encoding can be read back from the features
        code = {"dog": 7.0, "ant": 1.0, "cat": 4.0}
        kinds = ["dog", "ant", "cat"] * 10
        path = _write(tmp_path, "a,y\n" + "\n".join(f"{code[k]},{k}" for k in kinds) + "\n")
        data = _load(path)
        assert data.n_classes == 3
        for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
            rank = np.searchsorted(np.unique(data.x_train[:, 0]), x[:, 0])  # ant < cat < dog
            np.testing.assert_array_equal(y, rank)
        assert data.notes == (
            "categorical target 'y': 3 classes encoded in sorted order as ant=0, cat=1, dog=2",
        )

    def test_numeric_target_few_values_are_classes(self, tmp_path: Path) -> None:
        data = _load(_write(tmp_path, "a,b,y\n" + _rows(30, lambda i: [3, 1, 2][i % 3])))
        assert data.n_classes == 3
        assert data.notes == (
            "numeric target 'y': 3 classes encoded in sorted order as 1=0, 2=1, 3=2",
        )
        # "1" and "1.0" are the same class; 0.5/1.5 are few values, so classes too
        data = _load(_write(tmp_path, "a,b,y\n" + _rows(30, lambda i: ["1", "1.0", "0.5"][i % 3])))
        assert data.n_classes == 2 and "0.5=0, 1.0=1" in data.notes[0]

    def test_float_target_with_many_values(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "a,b,y\n" + _rows(40, lambda i: f"{i * 0.37:.2f}"))
        # classification (the spec's default task) refuses it and points at task='regression'
        _refused(path, "40 distinct non-integer values", "set `task` to 'regression'")

    def test_target_with_missing_values_names_lines(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "a,b,y\n" + _rows(10, lambda i: "NA" if i in (2, 5) else i % 2))
        _refused(path, "target column 'y' has missing/NaN values at lines 4, 7")

    def test_single_class(self, tmp_path: Path) -> None:
        _refused(_write(tmp_path, "a,b,y\n" + _rows(10, lambda i: "spam")), "single class ('spam')")

    def test_imbalance_is_noted(self, tmp_path: Path) -> None:
        path = _write(
            tmp_path, "a,b,y\n" + _rows(100, lambda i: "rare" if i % 10 == 0 else "common")
        )
        note = _load(path).notes[-1]
        assert note.startswith(
            "imbalanced classes (common: 90, rare: 10; largest to smallest 9.0:1)"
        )
        assert "always answering 'common' scores 0.90 accuracy" in note
        balanced = _write(tmp_path, "a,b,y\n" + _rows(100, lambda i: i % 10 < 3), "ok.csv")
        assert not any("imbalanced" in n for n in _load(balanced).notes)  # 70:30 is 2.3:1

    def test_class_with_one_sample(self, tmp_path: Path) -> None:
        path = _write(tmp_path, "a,b,y\n" + _rows(12, lambda i: "odd" if i == 7 else "even"))
        _refused(path, "class 'odd' of the target has only 1 sample (line 9)", "at least 2")

    def test_split_too_small_for_the_classes(self, tmp_path: Path) -> None:
        # 10 rows, 5 classes of 2: the 30% test split has 3 rows for 5 classes
        path = _write(tmp_path, "a,b,y\n" + _rows(10, lambda i: i % 5))
        _refused(path, "7 train and 3 test rows cannot hold each of the 5 classes")


runner = CliRunner()
FAST = ["--epochs", "2", "--seeds", "1", "--rates", "0", "--hidden", "4", "--no-compile", "-q"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("a,b,y\n1,2,0\n1,oops,1\n", "line 3, column 2: feature column 'b' is not numeric: 'oops'"),
        ("a,b,a,y\n1,2,3,0\n", "duplicate column names: 'a' (columns 1, 3)"),
        ("a,b,y\n1,2,0\n3,,1\n", "feature column 'b' (column 2) has 1 missing value"),
    ],
)
def test_cli_refuses_bad_files(content: str, fragment: str, tmp_path: Path) -> None:
    path = _write(tmp_path, content)
    store = tmp_path / "out" / "runs.sqlite"
    args = ["sweep", "--data", str(path), "--target", "y", *FAST, "--store", str(store)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert re.fullmatch(r"dropkit: error: .*\n", result.stderr), result.stderr
    assert str(path) in result.stderr and fragment in result.stderr
    assert not store.exists()


def test_cli_impute_and_notes(tmp_path: Path) -> None:
    lines = [f"{i},{'' if i % 6 == 0 else i % 5},{'yes' if i % 3 else 'no'}" for i in range(30)]
    path = _write(tmp_path, "a,b,y\n" + "\n".join(lines) + "\n")
    blocker = _write(tmp_path, "", "not_a_folder")
    args = ["sweep", "--data", str(path), "--target", "y", *FAST, "--out", str(blocker)]
    bad = runner.invoke(app, [*args, "--impute", "mode"])
    assert (
        bad.exit_code == 2 and "--impute must be one of 'mean', 'median', got 'mode'" in bad.stderr
    )
    # The notes come right after the data loads; an unusable --out then stops the command
    # before training (training on CSV data is covered in test_cli.py).
    result = runner.invoke(app, [*args, "--impute", "median", "--json"])
    assert "cannot create the output folder" in result.stderr, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("dropkit: note: ")]
    assert len(notes) == 2, result.stderr
    assert "no=0, yes=1" in notes[0] and "--impute 'median' filled 5 missing cells" in notes[1]
    assert result.stdout == "", "--json keeps stdout for the JSON object"
