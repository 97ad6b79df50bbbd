"""Your own model and data through the lab's API, end to end: sweep, compare, resume, report."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropkit import lab
from dropkit.lab.plan.data import DataError
from helpers import stored_runs


def mlp(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 1))


def regressor(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 1))


def _moons(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.25, random_state=0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


class TestNotebookFlow:
    def test_sweep_resume_and_changed_data(self, tmp_path: Path) -> None:
        store = tmp_path / "runs.sqlite"
        x, y = _moons()
        e = lab.sweep(data=(x, y), model=mlp, rates=[0.0, 0.3], seeds=2, epochs=4, store=store)
        assert e.trained == 4 and [row["p"] for row in e.summary] == [0.0, 0.3]
        row = e.summary[1]
        assert row["n_seeds"] == 2 and math.isfinite(row["test_acc_mean"])
        low, high = row["test_acc_ci95"]
        assert low <= row["test_acc_mean"] <= high
        assert e.settings["validation"] == 0.2 and e.settings["model"] == "custom"
        assert e.best is not None and e.best.chosen_on == "validation"
        e.report(tmp_path / "report.html")
        assert (tmp_path / "report.html").stat().st_size > 0

        again = lab.sweep(data=(x, y), model=mlp, rates=[0.0, 0.3], seeds=2, epochs=4, store=store)
        assert again.trained == 0 and again.already_done == 4

        changed = x.clone()
        changed[5, 1] += 0.5  # one value of X
        third = lab.sweep(
            data=(changed, y), model=mlp, rates=[0.0, 0.3], seeds=2, epochs=4, store=store
        )
        assert third.trained == 4 and stored_runs(store) == 8

    def test_an_instance_and_numpy_arrays(self, tmp_path: Path) -> None:
        x, y = _moons()
        e = lab.sweep(
            data=(x.numpy(), y.numpy()),
            model=mlp(0.1),
            rates=[0.0, 0.5],
            seeds=2,
            epochs=2,
            store=tmp_path / "runs.sqlite",
        )
        assert e.trained == 4

    def test_folds(self, tmp_path: Path) -> None:
        x, y = _moons()
        e = lab.sweep(
            data=(x, y),
            model=mlp,
            rates=[0.0, 0.3],
            seeds=2,
            folds=3,
            epochs=2,
            store=tmp_path / "runs.sqlite",
        )
        assert e.trained == 2 * 2 * 3 and e.settings["folds"] == 3
        assert [row["n_seeds"] for row in e.summary] == [2, 2]


class TestRegression:
    def test_diabetes_tensors(self, tmp_path: Path) -> None:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        y = (y - y.mean()) / y.std()
        e = lab.sweep(
            data=(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)),
            model=regressor,
            rates=[0.0, 0.3],
            seeds=2,
            epochs=5,
            store=tmp_path / "runs.sqlite",
        )
        assert e.settings["task"] == "regression"
        assert any("regression" in note for note in e.notes)
        row = e.summary[0]
        assert row["test_rmse_mean"] > 0 and row["test_mae_mean"] > 0
        path = e.report(tmp_path / "report.html")
        html = Path(path if path is not None else tmp_path / "report.html").read_text()
        assert "R²" in html and "RMSE" in html

    def test_csv_numeric_target(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(80, 10))
        target = x @ rng.normal(size=10) + 0.1 * rng.normal(size=80)
        lines = [",".join([*(f"f{i}" for i in range(10)), "y"])]
        lines += [",".join(f"{v:.6f}" for v in [*row, t]) for row, t in zip(x, target, strict=True)]
        csv = tmp_path / "data.csv"
        csv.write_text("\n".join(lines) + "\n")
        e = lab.sweep(
            data=str(csv),
            target="y",
            model=regressor,
            rates=[0.0, 0.2],
            seeds=2,
            epochs=3,
            store=tmp_path / "runs.sqlite",
        )
        assert e.settings["task"] == "regression" and e.trained == 4


class TestCompare:
    def test_arms_on_a_user_model(self, tmp_path: Path) -> None:
        x, y = _moons()
        e = lab.compare(
            data=(x, y),
            model=mlp,
            arms=["none", "dropout", "l2", "max_norm"],
            seeds=2,
            epochs=3,
            store=tmp_path / "runs.sqlite",
        )
        assert {row["arm"] for row in e.summary} == {"none", "dropout", "l2", "max_norm"}

    def test_structural_arms_are_refused(self, tmp_path: Path) -> None:
        x, y = _moons()
        with pytest.raises(ValueError, match="batchnorm.*does not apply to model 'custom'"):
            lab.compare(
                data=(x, y),
                model=mlp,
                arms=["none", "batchnorm"],
                seeds=2,
                epochs=2,
                store=tmp_path / "runs.sqlite",
            )
        assert stored_runs(tmp_path / "runs.sqlite") == 0


class TestBadInput:
    """Every refusal happens before training: nothing is written to the store."""

    @pytest.mark.parametrize(
        ("data", "model", "match"),
        [
            ((torch.zeros(10, 2), torch.zeros(9)), mlp, "length|samples|rows"),
            ((torch.full((20, 2), math.nan), torch.arange(20) % 2), mlp, "NaN"),
            ((torch.zeros(20, 2), torch.zeros(20)), mlp, "single class|one class"),
            ((torch.randn(40, 3), torch.arange(40) % 2), mlp, "fails on the data"),
            ((torch.randn(40, 2), torch.arange(40) % 3), mlp, r"shape \(N, 3\)"),
            ((torch.randn(40, 2), torch.arange(40) % 2), lambda p: 3, "must return an nn.Module"),
        ],
    )
    def test_refused_before_training(
        self, tmp_path: Path, data: object, model: object, match: str
    ) -> None:
        store = tmp_path / "runs.sqlite"
        with pytest.raises((ValueError, TypeError, DataError), match=match):
            lab.sweep(data=data, model=model, rates=[0.0, 0.2], seeds=2, epochs=2, store=store)
        assert stored_runs(store) == 0

    def test_arguments_of_your_own_data_and_model(self, tmp_path: Path) -> None:
        x, y = _moons()
        with pytest.raises(ValueError, match="`hidden`"):
            lab.plan_sweep(data=(x, y), model=mlp, hidden=(8,))
        with pytest.raises(ValueError, match="`folds`.*`validation`|`validation`.*`folds`"):
            lab.plan_sweep(data=(x, y), model=mlp, folds=3, validation=0.2)
        with pytest.raises(ValueError, match="`target`"):
            lab.plan_sweep(data=(x, y), model=mlp, target="y")
        with pytest.raises(ValueError, match="`task`"):
            lab.plan_sweep(data=(x, y), model=mlp, task="ranking")
        with pytest.raises(ValueError, match="`lr`"):
            lab.plan_sweep(data=(x, y), model=mlp, lr=0)


class OwnDropout(nn.Module):
    """Dropout at a float rate in the module's own code (``F.dropout(h, self.dropout_p)``):
    no counter-based equivalent, so its runs train one by one."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.dropout_p = p
        self.body = nn.Linear(2, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return self.head(torch.nn.functional.dropout(h, self.dropout_p, self.training))


def test_a_fallback_is_said_in_the_notes(tmp_path: Path) -> None:
    """The notes live in the store: what you load (and its report) is what you ran."""
    x, y = _moons()
    heard: list[str] = []
    store = tmp_path / "runs.sqlite"
    plan = lab.plan_sweep(data=(x, y), model=OwnDropout, rates=[0.0, 0.2], seeds=2, epochs=2)
    e = lab.run(plan, store=store, log=heard.append)
    assert e.trained == 4
    said = [note for note in e.notes if "run by run" in note]
    assert said and said == [line for line in heard if "run by run" in line]
    assert any(note.startswith("task inferred") for note in e.notes)
    again = lab.run(plan, store=store)
    assert again.trained == 0 and again.notes == e.notes
    loaded = lab.load(store)
    assert loaded.notes == e.notes and loaded.to_dict()["data_notes"] == list(e.notes)
    page = loaded.report(tmp_path / "report.html").read_text()
    assert "<h3>Notes</h3>" in page and html.escape(said[0]) in page


def test_train_and_test_keywords(tmp_path: Path) -> None:
    """``train=``/``test=`` are ``data={"train": ..., "test": ...}``: the same run keys."""
    x, y = _moons()
    train, test = TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])
    settings: dict[str, Any] = {"model": mlp, "rates": [0.0, 0.3], "seeds": 2, "epochs": 2}
    apart = lab.plan_sweep(train=train, test=test, **settings)
    assert apart.keys == lab.plan_sweep({"train": train, "test": test}, **settings).keys
    arrays = lab.plan_sweep(train=(x[:80], y[:80]), test=(x[80:], y[80:]), **settings)
    assert arrays.keys == lab.plan_sweep(((x[:80], y[:80]), (x[80:], y[80:])), **settings).keys
    e = lab.sweep(train=train, test=test, store=tmp_path / "runs.sqlite", **settings)
    assert e.trained == 4 and len(e.runs[0].config.data.content_hash or "") == 16
    c = lab.compare(
        train=train, test=test, arms=["none", "l2"], model=mlp, seeds=2, epochs=2, store=e.store
    )
    assert c.trained == 2 and c.already_done == 2  # its `none` runs are the sweep's p = 0
    with pytest.raises(ValueError, match="`train` and `test` go together: pass `test=`"):
        lab.plan_sweep(train=train, **settings)
    with pytest.raises(ValueError, match="`test` and `train` go together"):
        lab.plan_compare(test=test, model=mlp)
    with pytest.raises(ValueError, match="`data` and `train`/`test` both give the data"):
        lab.plan_sweep((x, y), train=train, test=test, **settings)
    with pytest.raises(TypeError, match="`train` and `test` must be of one kind"):
        lab.plan_sweep(train=train, test=(x[80:], y[80:]), **settings)
    with pytest.raises(TypeError, match="`test` must be a torch Dataset .* or an \\(X, y\\) pair"):
        lab.plan_sweep(train=train, test="test.csv", **settings)
    with pytest.raises(TypeError, match="did you mean 'train'"):
        lab.compare(trian=train, test=test, model=mlp)
    assert lab.plan_sweep(rates=[0.0], seeds=1, epochs=1).configs[0].data.name == "circles"


def test_experiments_on_your_data_are_titled_apart(tmp_path: Path) -> None:
    """Experiments whose plain titles would be equal get what sets them apart, among the
    experiments the store holds when the title is made (a sweep's, or a load's)."""
    store = tmp_path / "runs.sqlite"
    x, y = _moons()
    settings: dict[str, Any] = {"model": mlp, "rates": [0.0], "seeds": 1, "epochs": 2}
    first = lab.sweep((x, y), store=store, **settings)
    assert first.title == "tensors · mlp · 2 epochs, batch 32, validation 0.2"  # alone
    changed = x.clone()
    changed[0, 0] += 1.0
    second = lab.sweep((changed, y), store=store, **settings)
    third = lab.sweep((x, y), store=store, lr=0.01, **settings)
    named = lab.sweep((x, y), store=store, model_id="mlp-v2", **settings)
    titles = [e.title for e in lab.load_all(store)]
    assert titles[1:] == [second.title, third.title, named.title] and len(set(titles)) == 4
    hashes = [e.runs[0].config.data.content_hash or "" for e in (first, second)]
    assert titles[0] == f"{first.title} · data {hashes[0][:8]}"
    assert titles[1] == f"{first.title} · data {hashes[1][:8]}"
    assert titles[2] == "tensors · mlp · 2 epochs, batch 32, lr 0.01, validation 0.2"
    assert titles[3] == "tensors · mlp (mlp-v2) · 2 epochs, batch 32, validation 0.2"


def test_curves_measured_every_kth_epoch_are_stored_loaded_and_drawn(tmp_path: Path) -> None:
    x, y = _moons()
    store = tmp_path / "runs.sqlite"
    e = lab.sweep(
        data=(x, y), model=mlp, rates=[0.0, 0.3], seeds=2, epochs=5, eval_every=2, store=store
    )
    curves = e.curves("none")["none"]["test_acc"]  # (seeds, epochs)
    assert np.isnan(curves[:, [0, 2]]).all() and np.isfinite(curves[:, [1, 3, 4]]).all()
    page = lab.load(store).report(tmp_path / "report.html").read_text()
    assert "<img" in page or "<svg" in page
    with pytest.raises(ValueError, match="eval_every"):
        lab.RunOptions(eval_every=0)
