"""dropkit.lab as a library: the calls a notebook makes, their errors, and stores of earlier releases."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dropkit import lab
from dropkit.cli import app
from dropkit.lab.execute.engines import InProcessEngine
from dropkit.lab.plan.config import DEMO_SEEDS
from dropkit.lab.plan.data import BUILTIN_DATASETS
from dropkit.lab.store import ResultsStore, StoreError

TINY: dict[str, Any] = {"epochs": 6, "hidden": 8, "compile": False}
RELEASE_STORE = Path(__file__).parent / "data" / "store-0.1.0.sqlite"


class _Recorder:
    """A progress sink that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def begin(self, total: int, description: str) -> None:
        self.calls.append(("begin", total))

    def advance(self, amount: int) -> None:
        self.calls.append(("advance", amount))

    def end(self) -> None:
        self.calls.append(("end", None))


class TestNotebook:
    """The session of a notebook user, cell by cell."""

    def test_sweep_summary_best_curves_figures_report_and_resume(self, tmp_path: Path) -> None:
        store = tmp_path / "runs.sqlite"
        e = lab.sweep(rates=[0.0, 0.4], seeds=3, store=store, **TINY)
        assert isinstance(e, lab.Experiment) and e.trained == 6 and e.already_done == 0
        assert [(r["arm"], r["p"], r["n_seeds"]) for r in e.summary] == [
            ("none", 0.0, 3),
            ("dropout", 0.4, 3),
        ]
        assert e.groups == ["none", "dropout p=0.4"]
        assert e.best is not None and e.best.summary.name in e.groups
        assert [c["group"] for c in e.comparisons] == ["dropout p=0.4"]
        assert e.comparisons[0]["test"] == "paired" and e.comparisons[0]["n"] == 3
        # The summary's mean is the mean of the stored runs' final test accuracy.
        runs = [r for r in e.runs if r.config.p == 0.4]
        assert e.summary[1]["test_acc_mean"] == pytest.approx(np.mean([r.test_acc for r in runs]))
        curves = e.curves("dropout p=0.4")["dropout p=0.4"]
        assert curves["test_acc"].shape == (3, 6)
        by_seed = sorted(runs, key=lambda r: r.config.seed)
        assert curves["test_acc"][:, -1] == pytest.approx([r.test_acc for r in by_seed])
        for figure in (
            e.plot_curves(),
            e.plot_curves(metrics="all"),
            e.plot_rates(),
            e.plot_arms(),
        ):
            assert figure.axes  # a matplotlib figure with content
        page = e.report(tmp_path / "r.html")
        assert page.read_text().startswith("<!DOCTYPE html>")
        data = e.to_dict()
        json.dumps(data, allow_nan=False)  # plain JSON, NaN written as None
        assert data["rates"] == [0.0, 0.4] and data["store"] == str(store)
        html = e._repr_html_()
        assert "<table>" in html and "dropout p=0.4" in html and e.best.evidence[:20] in html
        # The same call again trains nothing and gives the same table.
        again = lab.sweep(rates=[0.0, 0.4], seeds=3, store=store, **TINY)
        assert again.trained == 0 and again.already_done == 6
        assert again.summary == e.summary
        # Reading the store back gives the same experiment without training.
        assert lab.load(store).summary == e.summary

    def test_compare_arms_as_a_list_or_a_string(self, tmp_path: Path) -> None:
        store = tmp_path / "c.sqlite"
        e = lab.compare(
            arms=["none", "dropout", "l2"], seeds=2, p=0.3, l2=1e-3, store=store, **TINY
        )
        assert {r["arm"] for r in e.summary} == {"none", "dropout", "l2"}
        assert e.to_dict()["arms"] == ["none", "dropout", "l2"]
        assert e.settings["strengths"] == {"p": 0.3, "l2": 1e-3}
        same = lab.compare(arms="none,dropout,l2", seeds=2, p=0.3, l2=1e-3, store=store, **TINY)
        assert same.trained == 0

    def test_demo_defaults_to_the_case_studys_thirty_seeds(self) -> None:
        plan = lab.plan_demo()
        assert DEMO_SEEDS == 30
        assert len(plan.configs) == 2 * 30 and {c.p for c in plan.configs} == {0.0, 0.4}
        assert plan.dataset.name == "circles" and len(plan.dataset.y_train) == 30

    def test_demo_runs(self, tmp_path: Path) -> None:
        e = lab.demo(seeds=2, epochs=4, store=tmp_path / "d.sqlite", compile=False)
        assert e.command == "demo" and [r["p"] for r in e.summary] == [0.0, 0.4]


def test_numpy_arguments_are_accepted() -> None:
    plan = lab.plan_sweep(rates=np.array([0.0, 0.5]), seeds=np.arange(2), hidden=np.int64(4))
    assert len(plan.configs) == 4 and plan.configs[0].model.hidden == (4,)
    assert [c.p for c in lab.plan_sweep(rates=np.float64(0.3), seeds=1).configs] == [0.3]


def test_unknown_group_names_the_argument(tmp_path: Path) -> None:
    e = lab.sweep(rates=[0.0], seeds=1, store=tmp_path / "s.sqlite", **TINY)
    with pytest.raises(
        ValueError, match="`groups`: no group 'nope' in this experiment; groups: 'none'"
    ):
        e.curves("nope")
    with pytest.raises(TypeError, match="`groups` must be a group label"):
        e.plot_curves(3)  # type: ignore[arg-type]


def test_a_failure_while_training_is_not_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI exits 2 for bad arguments or data (the plan), 1 for a failure in training."""
    import dropkit.lab.execute.engines as engines

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug deep in training")

    monkeypatch.setattr(engines, "train_configs", broken)
    args = ["sweep", "--rates", "0", "--seeds", "1", "--epochs", "2", "--hidden", "4"]
    result = CliRunner().invoke(app, [*args, "--no-compile", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "ValueError: a bug deep in training (rerun with --debug" in result.stderr


class TestProgress:
    def test_none_is_silent(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lab.sweep(rates=[0.0], seeds=1, store=tmp_path / "s.sqlite", **TINY)
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == ""

    def test_a_sink_sees_every_run_epoch(self, tmp_path: Path) -> None:
        sink = _Recorder()
        lab.sweep(rates=[0.0, 0.5], seeds=2, store=tmp_path / "s.sqlite", progress=sink, **TINY)
        assert sink.calls[0] == ("begin", 4 * 6) and sink.calls[-1] == ("end", None)
        assert sum(v for name, v in sink.calls if name == "advance") == 4 * 6

    def test_tqdm_bar(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lab.sweep(rates=[0.0], seeds=1, store=tmp_path / "s.sqlite", progress="tqdm", **TINY)
        assert "run-epoch" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("progress", "error", "message"),
        [
            ("bar", ValueError, "`progress` must be None, True, one of 'auto', 'tqdm', 'rich'"),
            (42, TypeError, "`progress` must be None, True, 'auto', 'tqdm', 'rich' or an object"),
        ],
    )
    def test_bad_progress(self, progress: object, error: type, message: str) -> None:
        plan = lab.plan_sweep(rates=[0.0], seeds=1, epochs=1, hidden=2)
        with pytest.raises(error, match=message):
            lab.run(plan, progress=progress)


def test_thread_count_is_the_callers_after_a_call(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        lab.sweep(rates=[0.0], seeds=1, store=tmp_path / "s.sqlite", **TINY)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("call", "kwargs", "error", "message"),
    [
        (lab.plan_sweep, {"seeds": 0}, ValueError, r"`seeds` must be an int >= 1, got 0"),
        (lab.plan_sweep, {"seeds": [1, 1]}, ValueError, "`seeds` must be a count >= 1 or"),
        (lab.plan_sweep, {"rates": [0.2, 40]}, ValueError, r"`rates` must be in \[0, 1\]"),
        (lab.plan_sweep, {"rates": []}, ValueError, "`rates` must hold at least one"),
        (lab.plan_sweep, {"epochs": 2.5}, TypeError, "`epochs` must be an int >= 1"),
        (lab.plan_sweep, {"hidden": "500"}, TypeError, "`hidden` must be a width or a sequence"),
        (lab.plan_sweep, {"input_p": -0.1}, ValueError, r"`input_p` must be in \[0, 1\]"),
        (lab.plan_sweep, {"max_norm": 0}, ValueError, "`max_norm` must be"),
        (lab.plan_sweep, {"data": "nope"}, ValueError, "unknown dataset 'nope'"),
        (lab.plan_sweep, {"data": 3}, TypeError, "`data` must be a built-in data set's name"),
        (lab.plan_sweep, {"impute": "mode"}, ValueError, "`impute` must be one of 'mean'"),
        (lab.plan_compare, {"arms": ["none", "dropuot"]}, ValueError, "unknown arm 'dropuot'"),
        (lab.plan_compare, {"arms": 3}, TypeError, "`arms` must be a string or a sequence"),
        (lab.plan_compare, {"model": "gru"}, ValueError, "`model` must be one of 'mlp'"),
        (lab.plan_compare, {"l2": -1.0}, ValueError, "`l2` must be a finite number > 0"),
        (lab.plan_compare, {"patience": 0}, ValueError, "`patience` must be an int >= 1"),
        (
            lab.plan_compare,
            {"weight_decay": 1.0},
            TypeError,
            "unexpected keyword argument 'weight_decay'",
        ),
        (lab.plan_compare, {"model": "cnn"}, ValueError, "`model` 'cnn' on circles"),
        (
            lab.plan_compare,
            {"arms": ["spatial_dropout"]},
            ValueError,
            "arm 'spatial_dropout' does not apply to model 'mlp'",
        ),
        (lab.plan_demo, {"p": 1.5}, ValueError, r"`p` must be in \[0, 1\]"),
        (lab.plan_sweep, {"hidden": 8.0}, TypeError, "`hidden` must be an int >= 1"),
        (lab.plan_sweep, {"rates": [[0.1]]}, TypeError, "`rates` must be a flat sequence"),
        (lab.plan_sweep, {"target": "y"}, ValueError, "`target` names the column to predict"),
        (lab.plan_sweep, {"target": 5}, TypeError, "`target` must be a CSV column name"),
        (lab.plan_compare, {"seed": 3}, TypeError, "'seed' \\(did you mean 'seeds'\\?\\)"),
    ],
)
def test_errors_name_the_argument_not_a_flag(
    call: Any, kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        call(**kwargs)
    assert "--" not in str(raised.value)


def test_run_refuses_bad_engine_and_address(tmp_path: Path) -> None:
    plan = lab.plan_sweep(rates=[0.0], seeds=1, epochs=1, hidden=2)
    with pytest.raises(ValueError, match="`engine` must be one of 'in-process', 'ray'"):
        lab.run(plan, engine="spark", store=tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="`address` names a Ray cluster"):
        lab.run(plan, address="host:6379", store=tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="`runs_per_batch` must be an int >= 1"):
        lab.run(plan, runs_per_batch=0, store=tmp_path / "s.sqlite")
    with pytest.raises(TypeError, match="`store` must be the path of a SQLite file"):
        lab.run(plan, store=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`compile` must be True, False or None"):
        lab.run(plan, compile="yes", store=tmp_path / "s.sqlite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="an engine object carries its own"):
        lab.run(plan, engine=InProcessEngine(), address="h:1", store=tmp_path / "s.sqlite")
    assert not (tmp_path / "s.sqlite").exists(), "nothing is written before the arguments pass"


def test_run_options_as_one_value(tmp_path: Path) -> None:
    """RunOptions is checked when made; run takes it whole or as keywords, the same runs."""
    with pytest.raises(ValueError, match="`progress` must be None, True"):
        lab.RunOptions(progress="loud")
    with pytest.raises(ValueError, match="`runs_per_batch` must be an int >= 1"):
        lab.RunOptions(runs_per_batch=0)
    plan = lab.plan_sweep(rates=[0.0, 0.5], seeds=2, epochs=2, hidden=4)
    store = tmp_path / "s.sqlite"
    with pytest.raises(TypeError, match="unexpected keyword argument 'stroe'; its options are"):
        lab.run(plan, stroe=store)
    with pytest.raises(TypeError, match="`options` must be a RunOptions or None"):
        lab.run(plan, {"store": store})  # type: ignore[arg-type]
    assert plan.stored(store) == 0  # no store yet
    first = lab.run(plan, lab.RunOptions(store=store, compile=False))
    assert (first.trained, first.already_done) == (4, 0) and plan.stored(store) == 4
    again = lab.run(plan, lab.RunOptions(store=tmp_path / "other.sqlite"), store=store)
    assert (again.trained, again.already_done) == (0, 4)  # keywords replace the value's fields
    assert again.summary == first.summary


class TestLoad:
    def test_missing_store(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="`store`: no results store"):
            lab.load(tmp_path / "nope.sqlite")

    def test_empty_store(self, tmp_path: Path) -> None:
        ResultsStore(tmp_path / "empty.sqlite").close()
        with pytest.raises(ValueError, match="no finished runs"):
            lab.load(tmp_path / "empty.sqlite")

    def test_several_experiments(self, tmp_path: Path) -> None:
        """The latest experiment, the others named in its notes; load_all in stored order."""
        store = tmp_path / "three.sqlite"
        lab.sweep(rates=[0.0], seeds=1, store=store, **TINY)
        lab.sweep(rates=[0.0], seeds=1, store=store, **{**TINY, "hidden": 4})
        lab.sweep(rates=[0.0], seeds=1, store=store, **{**TINY, "hidden": 6})
        experiments = lab.load_all(store)
        assert [e.runs[0].config.model.hidden for e in experiments] == [(8,), (4,), (6,)]
        lab.sweep(rates=[0.4], seeds=1, store=store, **TINY)  # the first one, again later
        latest = lab.load(store)
        assert latest.runs[0].config.model.hidden == (8,) and len(latest.runs) == 2
        assert latest.notes[0].startswith("the store holds 3 experiments; this is the latest (0: ")
        assert experiments[1].title in latest.notes[0] and "experiment=INDEX" in latest.notes[0]
        assert "load_all" in latest.notes[0]
        assert lab.load(store, experiment=1).runs[0].config.model.hidden == (4,)
        assert lab.load(store, experiment=-1).runs[0].config.model.hidden == (6,)
        with pytest.raises(ValueError, match=r"`experiment` must be in \[0, 2\]"):
            lab.load(store, experiment=3)
        with pytest.raises(TypeError, match="`experiment` must be an int index"):
            lab.load(store, experiment="1")  # type: ignore[arg-type]


def test_titles_name_what_sets_experiments_apart() -> None:
    from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig
    from dropkit.lab.results.analysis import experiment_titles

    def custom(fingerprint: str, **data: Any) -> RunConfig:
        model = ModelSpec((), "custom", "mypkg.nets:Net", fingerprint)
        return RunConfig(DataSpec("arrays", content_hash="ab" * 8, **data), model)

    plain = RunConfig(DataSpec("circles"))
    assert experiment_titles([plain]) == ["circles · mlp 500 · 4000 epochs, batch 32"]
    titles = experiment_titles(
        [custom("0123456789abcdef"), custom("fedcba9876543210"), custom("v2"), plain]
    )
    assert titles == [
        "arrays · Net · 4000 epochs, batch 32 · model 01234567",
        "arrays · Net · 4000 epochs, batch 32 · model fedcba98",
        "arrays · Net (v2) · 4000 epochs, batch 32",  # a model_id is named in every title
        "circles · mlp 500 · 4000 epochs, batch 32",
    ]
    seeds = experiment_titles([custom("v2"), custom("v2", split_seed=1, test_size=0.25)])
    assert seeds == [
        "arrays · Net (v2) · 4000 epochs, batch 32 · test size 0.3, split seed 0",
        "arrays · Net (v2) · 4000 epochs, batch 32 · test size 0.25, split seed 1",
    ]


class TestStoresReadOnly:
    """A store this process cannot write is read (``_writable`` stands in for a read-only file
    or folder: root writes everything; tests/test_lab_store.py has real ones for other users)."""

    @pytest.fixture
    def locked(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        store = tmp_path / "runs.sqlite"
        lab.sweep(rates=[0.0, 0.4], seeds=2, store=store, **TINY)
        monkeypatch.setattr("dropkit.lab.store._writable", lambda path: False)
        return store

    def test_load_report_and_a_finished_sweep(self, locked: Path, tmp_path: Path) -> None:
        before = locked.read_bytes()
        e = lab.load(locked)
        assert len(e.runs) == 4
        assert e.report(tmp_path / "report.html").stat().st_size > 0
        result = CliRunner().invoke(
            app, ["report", "--store", str(locked), "--out", str(tmp_path / "cli.html")]
        )
        assert result.exit_code == 0, result.output
        again = lab.sweep(rates=[0.0, 0.4], seeds=2, store=locked, **TINY)
        assert again.trained == 0 and again.already_done == 4
        assert locked.read_bytes() == before

    def test_a_sweep_with_runs_to_train_is_refused_before_training(self, locked: Path) -> None:
        with pytest.raises(StoreError, match=f"permission denied: .*{locked}.*2 of the 6 runs"):
            lab.sweep(rates=[0.0, 0.4, 0.8], seeds=2, store=locked, **TINY)
        assert len(lab.load(locked).runs) == 4


def test_a_sqlite_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER)")
    db.close()
    with pytest.raises(StoreError, match="not a dropkit results store"):
        lab.load(path)
    with pytest.raises(StoreError, match="not a dropkit results store"):
        lab.sweep(rates=[0.0], seeds=1, store=path, **TINY)
    result = CliRunner().invoke(app, ["report", "--store", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a dropkit results store" in result.output
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("orders",)]
    db.close()


class TestStoreOfTheFirstRelease:
    """``tests/data/store-0.1.0.sqlite`` was written by release 0.1.0's CLI:

    ``dropkit sweep --rates 0,0.4 --seeds 2 --epochs 20 --hidden 16 --no-compile`` and
    ``dropkit compare --arms none,dropout,l2,max_norm,early_stopping --seeds 2 --epochs 20
    --hidden 16 --p 0.4 --no-compile``, into one store.
    """

    SWEEP: ClassVar[dict[str, Any]] = {"rates": [0.0, 0.4], "seeds": 2, "epochs": 20, "hidden": 16}
    COMPARE: ClassVar[dict[str, Any]] = {
        "arms": ["none", "dropout", "l2", "max_norm", "early_stopping"],
        "seeds": 2,
        "epochs": 20,
        "hidden": 16,
        "p": 0.4,
    }

    @pytest.fixture
    def store(self, tmp_path: Path) -> Path:
        path = tmp_path / "release.sqlite"
        shutil.copy(RELEASE_STORE, path)
        return path

    def test_its_runs_are_found_by_todays_keys(self, store: Path) -> None:
        with ResultsStore(store) as results:
            stored = {r.key for r in results.runs()}
        for plan in (lab.plan_sweep(**self.SWEEP), lab.plan_compare(**self.COMPARE)):
            assert set(plan.keys) <= stored
            assert lab.run(plan, store=store, compile=False).trained == 0

    def test_todays_training_reproduces_its_curves(self, store: Path, tmp_path: Path) -> None:
        fresh = tmp_path / "fresh.sqlite"
        lab.compare(store=fresh, compile=False, **self.COMPARE)
        with ResultsStore(store) as old, ResultsStore(fresh) as new:
            keys = [r.key for r in new.runs()]
            assert set(keys) <= {r.key for r in old.runs()}
            for key in keys:
                before, after = old.curves(key), new.curves(key)
                for metric in before:
                    np.testing.assert_allclose(after[metric], before[metric], rtol=0, atol=1e-6)

    def test_report_and_labels(self, store: Path) -> None:
        # The sweep's runs are the compare's none and dropout runs (same keys): one experiment.
        (compare,) = lab.load_all(store)
        assert len(compare.runs) == 10
        assert [r["name"] for r in compare.summary] == [
            "none",
            "early_stopping=10",
            "l2=0.0001",
            "max_norm=3",
            "dropout p=0.4",
        ]
        assert compare.summary[3]["test_acc_mean"] == pytest.approx(0.478571, abs=1e-6)

    def test_read_only_it_is_read_as_it_is(
        self, store: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        before = store.read_bytes()
        monkeypatch.setattr("dropkit.lab.store._writable", lambda path: False)
        loaded = lab.load(store)
        assert len(loaded.runs) == 10 and loaded.notes == ()
        assert store.read_bytes() == before  # its schema version 2, not upgraded


def test_cli_lists_every_built_in_data_set() -> None:
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    for name in BUILTIN_DATASETS:
        assert name in result.output


def test_cli_compare_has_one_option_per_registry_strength() -> None:
    result = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
    for name in lab.STRENGTHS:
        assert f"--{name.replace('_', '-')}" in result.output
    for arm in lab.REGULARIZERS:
        assert arm in result.output
