"""The results store: round trips, versions, and real processes killed mid-sweep."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import dropkit
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.store import (
    CURVE_METRICS,
    MAX_STATE_PARAMETERS,
    SCHEMA_VERSION,
    ResultsStore,
    RunRecord,
    StoreError,
)
from helpers import Spawn


def _record(seed: int, p: float = 0.0, epochs: int = 5) -> RunRecord:
    config = RunConfig(
        DataSpec("circles"), ModelSpec((8,)), TrainSpec(epochs=epochs), p=p, seed=seed
    )
    ramp = np.linspace(0.5, 1.0, epochs)
    curves = {
        "train_acc": ramp,
        "test_acc": ramp - 0.1,
        "train_loss": 1 - ramp,
        "test_loss": 1.1 - ramp,
    }
    return RunRecord(config, curves, seconds=0.5)


class TestStore:
    def test_round_trip(self, tmp_path: Path) -> None:
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            assert store.add_runs([_record(0), _record(1, p=0.4)]) == 2
            runs = store.runs()
            assert [(r.arm, r.config.seed) for r in runs] == [("dropout", 1), ("none", 0)]
            assert runs[1].test_acc == pytest.approx(0.9) and runs[1].best_epoch == 5
            curves = store.curves(runs[0].key)
            np.testing.assert_allclose(curves["train_acc"], np.linspace(0.5, 1.0, 5))

    def test_existing_runs_are_not_duplicated(self, tmp_path: Path) -> None:
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            store.add_runs([_record(0)])
            assert store.add_runs([_record(0), _record(2)]) == 1
            assert store.count() == 2
            key = _record(0).config.key()
            assert store.done_keys([key, "missing"]) == {key}

    def test_nan_metrics_read_back_as_nan(self, tmp_path: Path) -> None:
        record = _record(0)
        record.curves["test_loss"][:] = np.nan
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            store.add_runs([record])
            (run,) = store.runs()
            assert np.isnan(run.test_loss)
            assert np.isnan(store.curves(run.key)["test_loss"]).all()

    def test_schema_version_guard(self, tmp_path: Path) -> None:
        path = tmp_path / "runs.sqlite"
        ResultsStore(path).close()
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(StoreError, match="schema version 99"):
            ResultsStore(path)

    def test_wal_mode_and_versions_recorded(self, tmp_path: Path) -> None:
        path = tmp_path / "runs.sqlite"
        with ResultsStore(path) as store:
            store.add_runs([_record(0)])
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            versions = db.execute("SELECT dropkit_version, torch_version FROM runs").fetchone()
        assert versions == (dropkit.__version__, torch.__version__)

    def test_config_key_is_stable_and_complete(self) -> None:
        a, b = _record(0).config, _record(0).config
        assert a.key() == b.key()
        assert a.key() != _record(1).config.key()
        assert a.key() != RunConfig.from_dict({**a.to_dict(), "p": 0.1}).key()
        assert RunConfig.from_dict(a.to_dict()) == a


# --- schema version 2: info, final weights, migration ---------------------------------------

# The schema of version 1, as dropkit 0.x created it: a store written before `info` and `states`.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('done')),
    config TEXT NOT NULL,
    dataset TEXT NOT NULL,
    arm TEXT NOT NULL,
    p REAL NOT NULL,
    input_p REAL NOT NULL,
    max_norm REAL,
    seed INTEGER NOT NULL,
    epochs INTEGER NOT NULL,
    train_acc REAL,
    test_acc REAL,
    train_loss REAL,
    test_loss REAL,
    best_test_acc REAL,
    best_epoch INTEGER,
    seconds REAL,
    dropkit_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE TABLE curves (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_acc REAL,
    test_acc REAL,
    train_loss REAL,
    test_loss REAL,
    PRIMARY KEY (run_key, epoch)
) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema_version', '1');
"""


def _v1_store(path: Path, record: RunRecord) -> None:
    """A version-1 store holding ``record``, written with plain SQL as version 1 wrote it."""
    import json

    config = record.config
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute(
            "INSERT INTO runs VALUES (?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?)",
            (
                config.key(),
                json.dumps(config.to_dict(), sort_keys=True),
                config.data.name,
                config.arm,
                config.p,
                config.input_p,
                config.max_norm,
                config.seed,
                5,
                *(float(record.curves[m][-1]) for m in CURVE_METRICS),
                float(record.curves["test_acc"].max()),
                5,
                0.5,
                "0.1.0",
                "2.0.0",
                "2026-01-01T00:00:00+00:00",
            ),
        )
        db.executemany(
            "INSERT INTO curves VALUES (?, ?, ?, ?, ?, ?)",
            [
                (config.key(), epoch + 1, *(float(record.curves[m][epoch]) for m in CURVE_METRICS))
                for epoch in range(5)
            ],
        )
    db.close()


def _state(width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(width)
    return {
        "0.weight": torch.randn(width, 2, generator=g),
        "0.bias": torch.randn(width, generator=g),
    }


class TestSchemaV2:
    def test_v1_store_is_migrated_in_place(self, tmp_path: Path) -> None:
        path = tmp_path / "old.sqlite"
        old = _record(0, p=0.4)
        _v1_store(path, old)
        with ResultsStore(path) as store:
            (run,) = store.runs()
            assert run.key == old.config.key() and run.arm == "dropout"
            assert run.test_acc == pytest.approx(0.9) and run.info == {}
            assert store.state_dict(run.key) is None
            np.testing.assert_allclose(store.curves(run.key)["train_acc"], old.curves["train_acc"])
            new = RunRecord(
                _record(1).config, _record(1).curves, 0.5, {"stop_epoch": 3.0}, _state(4)
            )
            assert store.add_runs([new, old]) == 1  # the old run is recognized, not re-added
            assert store.runs([new.config.key()])[0].info == {"stop_epoch": 3.0}
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION) == "3"
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        with ResultsStore(path) as store:  # opening a migrated store again changes nothing
            assert store.count() == 2

    def test_info_and_weights_round_trip(self, tmp_path: Path) -> None:
        state = _state(8)
        info = {"stop_epoch": 12.0, "best_epoch": 7.0, "concrete_p0": float("nan")}
        record = RunRecord(_record(0).config, _record(0).curves, 0.5, info, state)
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            store.add_runs([record, _record(1)])
            stored = {r.config.seed: r for r in store.runs()}
            assert stored[0].info["stop_epoch"] == 12.0 and stored[0].info["best_epoch"] == 7.0
            assert np.isnan(stored[0].info["concrete_p0"])
            assert stored[1].info == {}
            loaded = store.state_dict(stored[0].key)
            assert loaded is not None and loaded.keys() == state.keys()
            for name, value in state.items():
                assert torch.equal(loaded[name], value)
            assert store.state_dict(stored[1].key) is None
            assert store.state_dict("missing") is None

    def test_weights_of_large_models_are_not_stored(self, tmp_path: Path) -> None:
        big = {"w": torch.zeros(MAX_STATE_PARAMETERS + 1)}
        record = RunRecord(_record(0).config, _record(0).curves, 0.5, None, big)
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            store.add_runs([record])
            assert store.count() == 1 and store.state_dict(record.config.key()) is None

    def test_a_failing_batch_writes_nothing(self, tmp_path: Path) -> None:
        """Runs, curves and weights of a batch go in one transaction: an error half-way leaves
        the store as it was."""
        good = RunRecord(_record(0).config, _record(0).curves, 0.5, {"stop_epoch": 1.0}, _state(3))
        broken = RunRecord(_record(1).config, {"test_acc": np.ones(5)}, 0.5)  # curves missing
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            with pytest.raises(KeyError):
                store.add_runs([good, broken])
            assert store.count() == 0 and store.state_dict(good.config.key()) is None
            assert store.add_runs([good]) == 1


# --- real processes, real signals -----------------------------------------------------------

SWEEP = ["--data", "circles", "--rates", "0:0.5:0.1", "--seeds", "2", "--hidden", "64"]
SWEEP += ["--runs-per-batch", "2", "--no-compile", "--quiet"]
N_RUNS = 12


def _command(tmp_path: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "dropkit", "sweep", *SWEEP, "--epochs", str(epochs)] + [
        "--store",
        str(tmp_path / "runs.sqlite"),
        "--out",
        str(tmp_path / "out"),
    ]


# One thread per sweep process: two 2-thread processes on a 2-core machine thrash.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(spawn: Spawn, tmp_path: Path, epochs: int) -> subprocess.Popen[str]:
    return spawn(_command(tmp_path, epochs), ENV)


def _run(tmp_path: Path, epochs: int) -> subprocess.CompletedProcess[str]:
    command = _command(tmp_path, epochs)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=ENV, check=False
    )


def _stored(path: Path) -> tuple[int, list[int]]:
    """Number of stored runs and, per run, its number of curve rows (read-only, concurrent)."""
    if not path.exists():
        return 0, []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        try:
            rows = db.execute(
                "SELECT r.key, COUNT(c.epoch) FROM runs r LEFT JOIN curves c ON c.run_key = r.key "
                "GROUP BY r.key"
            ).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return 0, []
    return len(rows), [n for _, n in rows]


def _wait_for_runs(process: subprocess.Popen[str], path: Path, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _stored(path)[0] >= at_least:
            return
        if process.poll() is not None:
            raise AssertionError(f"sweep ended early: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("no run was stored within 120 s")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_killed_sweep_loses_nothing_and_resumes(
    how: signal.Signals, tmp_path: Path, spawn: Spawn
) -> None:
    # Long enough that the five batches after the first take seconds, not a fraction of one:
    # the kill must land mid-sweep even when this process is descheduled for a while.
    epochs = 800
    path = tmp_path / "runs.sqlite"
    process = _start(spawn, tmp_path, epochs)
    _wait_for_runs(process, path, at_least=2)
    assert process.poll() is None, "the sweep finished before the kill could land"
    os.kill(process.pid, how)
    _, stderr = process.communicate(timeout=60)
    if how == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert "interrupted" in stderr and "Run the same command again to resume" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    count, rows = _stored(path)
    assert 2 <= count < N_RUNS, "the kill should land mid-sweep"
    assert rows == [epochs] * count, "every stored run is complete, none half-written"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    resumed = _run(tmp_path, epochs)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{count}/{N_RUNS} runs already complete; training the rest" in resumed.stdout
    assert _stored(path) == (N_RUNS, [epochs] * N_RUNS)

    again = _run(tmp_path, epochs)
    assert f"{N_RUNS}/{N_RUNS} runs already complete" in again.stdout


@pytest.mark.slow
def test_two_sweeps_on_one_store(tmp_path: Path, spawn: Spawn) -> None:
    epochs = 200
    path = tmp_path / "runs.sqlite"
    processes = [_start(spawn, tmp_path, epochs) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    assert _stored(path) == (N_RUNS, [epochs] * N_RUNS)


# --- notes, foreign files, read-only stores -------------------------------------------------


def _v2_store(path: Path, records: list[RunRecord]) -> None:
    """A version-2 store holding ``records``: today's file without the notes tables."""
    with ResultsStore(path) as store:
        store.add_runs(records)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE run_notes")
        db.execute("DROP TABLE notes")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _neighbours(path: Path) -> set[str]:
    """The files next to ``path`` that SQLite makes (``-wal``, ``-shm``, ``-journal``)."""
    return {p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-")}


class TestNotes:
    def test_notes_are_stored_with_the_new_runs(self, tmp_path: Path) -> None:
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            first, second, third = _record(0), _record(1), _record(2)
            assert store.add_runs([first, second], notes=["task inferred", "run by run"]) == 2
            assert store.notes() == ["task inferred", "run by run"]
            # a run already stored keeps its notes; only the new run gets these
            assert store.add_runs([first, third], notes=["run by run", "budget"]) == 1
            assert store.notes() == ["task inferred", "run by run", "budget"]
            assert store.notes([first.config.key()]) == ["task inferred", "run by run"]
            assert store.notes([third.config.key()]) == ["run by run", "budget"]
            assert store.notes(["missing"]) == []
            assert (
                store.add_runs([_record(3)]) == 1 and store.notes([_record(3).config.key()]) == []
            )

    def test_v2_store_is_migrated_to_v3(self, tmp_path: Path) -> None:
        path = tmp_path / "v2.sqlite"
        _v2_store(path, [_record(0), _record(1)])
        with ResultsStore(path) as store:
            assert store.count() == 2 and store.notes() == []
            assert store.add_runs([_record(2)], notes=["a note"]) == 1
            assert store.notes() == ["a note"]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()

    def test_first_and_last_stored(self, tmp_path: Path) -> None:
        with ResultsStore(tmp_path / "runs.sqlite") as store:
            store.add_runs([_record(0)])
            store.add_runs([_record(1)])
            keys = [_record(0).config.key(), _record(1).config.key()]
            first, last = store.finished(keys)
            assert first[0] <= last[0] and first[1] < last[1]
            assert store.finished(keys[:1]) == (first, first)
            assert store.finished(["missing"]) == (("", 0), ("", 0))
            assert len(store.shapes()) == 1


class TestForeignFiles:
    def test_a_sqlite_file_of_another_program_is_refused_and_left_alone(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "app.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (name TEXT)")
            db.execute("INSERT INTO users VALUES ('ada')")
        db.close()
        before = _digest(path)
        for read_only in (None, False, True):
            with pytest.raises(StoreError, match="not a dropkit results store.*users"):
                ResultsStore(path, read_only=read_only)
        assert _digest(path) == before
        with sqlite3.connect(path) as db:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            assert tables == [("users",)]
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        db.close()

    def test_a_file_that_is_not_sqlite(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.sqlite"
        path.write_text("hello, this is not a database\n" * 100)
        with pytest.raises(StoreError, match="cannot use .* as a results store"):
            ResultsStore(path)
        assert path.read_text().startswith("hello")

    def test_read_only_must_be_a_bool(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="`read_only` must be True, False or None"):
            ResultsStore(tmp_path / "runs.sqlite", read_only="yes")  # type: ignore[arg-type]


class TestReadOnly:
    def test_read_only_reads_everything_and_changes_nothing(self, tmp_path: Path) -> None:
        path = tmp_path / "runs.sqlite"
        record = RunRecord(
            _record(0).config, _record(0).curves, 0.5, {"stop_epoch": 3.0}, _state(4)
        )
        with ResultsStore(path) as store:
            store.add_runs([record, _record(1, p=0.4)], notes=["a note"])
        assert _neighbours(path) == set()  # the writer merged its log on closing
        before = _digest(path)
        with ResultsStore(path, read_only=True) as store:
            assert store.read_only
            assert store.count() == 2 and store.notes() == ["a note"]
            (run,) = store.runs([record.config.key()])
            assert run.info == {"stop_epoch": 3.0}
            assert store.state_dict(run.key) is not None
            np.testing.assert_allclose(
                store.curves(run.key)["train_acc"], record.curves["train_acc"]
            )
            with pytest.raises(StoreError, match=f"permission denied: .*{path.name}.*read-only"):
                store.add_runs([_record(2)])
        assert _digest(path) == before and _neighbours(path) == set()

    def test_older_versions_are_read_as_they_are(self, tmp_path: Path) -> None:
        v1, v2 = tmp_path / "v1.sqlite", tmp_path / "v2.sqlite"
        _v1_store(v1, _record(0, p=0.4))
        _v2_store(v2, [_record(0), _record(1)])
        for path, count in ((v1, 1), (v2, 2)):
            before = _digest(path)
            with ResultsStore(path, read_only=True) as store:
                assert store.count() == count and store.notes() == []
                assert all(r.info == {} for r in store.runs())
                assert store.state_dict(store.runs()[0].key) is None
                assert store.finished([r.key for r in store.runs()])[1][1] == count
            assert _digest(path) == before

    def test_an_empty_or_missing_file(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty.sqlite"
        empty.touch()
        with ResultsStore(empty, read_only=True) as store:
            assert store.count() == 0 and store.runs() == [] and store.notes() == []
        assert empty.stat().st_size == 0
        with pytest.raises(StoreError, match="no results store at"):
            ResultsStore(tmp_path / "missing.sqlite", read_only=True)
        assert not (tmp_path / "missing.sqlite").exists()

    def test_a_store_being_written_is_read_with_its_log(self, tmp_path: Path) -> None:
        """While a writer holds the store, its write-ahead log holds the newest runs: a
        read-only reader opens with ``mode=ro`` and sees them."""
        path = tmp_path / "runs.sqlite"
        with ResultsStore(path) as writer:
            writer.add_runs([_record(0), _record(1)], notes=["a note"])
            assert (tmp_path / "runs.sqlite-wal").stat().st_size > 0
            with ResultsStore(path, read_only=True) as reader:
                assert reader.count() == 2 and reader.notes() == ["a note"]

    def test_a_store_it_cannot_write_opens_read_only(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``read_only=None`` reads a store this process may not write, and writing it says
        permission denied (``_writable`` stands in for a read-only file: root writes all)."""
        path = tmp_path / "runs.sqlite"
        with ResultsStore(path) as store:
            store.add_runs([_record(0)])
        monkeypatch.setattr("dropkit.lab.store._writable", lambda path: False)
        with ResultsStore(path) as store:
            assert store.read_only and store.count() == 1
            with pytest.raises(StoreError, match="permission denied"):
                store.add_runs([_record(1)])
        with ResultsStore(tmp_path / "new.sqlite") as store:  # a new file is created as always
            assert not store.read_only


def _root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(_root(), reason="root reads and writes files whatever their permissions")
class TestPermissions:
    """Real read-only files and folders (the tests above cover the logic as root too)."""

    @pytest.fixture
    def locked(self, tmp_path: Path) -> Iterator[Path]:
        folder = tmp_path / "shared"
        path = folder / "runs.sqlite"
        with ResultsStore(path) as store:
            store.add_runs([_record(0), _record(1, p=0.4)], notes=["a note"])
        path.chmod(0o444)
        folder.chmod(0o555)
        yield path
        folder.chmod(0o755)
        path.chmod(0o644)

    def test_a_read_only_folder_and_file(self, locked: Path) -> None:
        with ResultsStore(locked) as store:
            assert store.read_only and store.count() == 2 and store.notes() == ["a note"]
            with pytest.raises(StoreError, match=f"permission denied: .*{locked}"):
                store.add_runs([_record(2)])
        with pytest.raises(StoreError, match=f"permission denied: cannot write .*{locked}"):
            ResultsStore(locked, read_only=False)
        assert _neighbours(locked) == set()

    def test_an_unreadable_file(self, tmp_path: Path) -> None:
        path = tmp_path / "runs.sqlite"
        ResultsStore(path).close()
        path.chmod(0)
        try:
            with pytest.raises(StoreError, match=f"permission denied: cannot read .*{path}"):
                ResultsStore(path)
        finally:
            path.chmod(0o644)

    def test_a_folder_it_cannot_create(self, tmp_path: Path) -> None:
        tmp_path.chmod(0o555)
        try:
            with pytest.raises(StoreError, match="permission denied: cannot create"):
                ResultsStore(tmp_path / "sub" / "runs.sqlite")
        finally:
            tmp_path.chmod(0o755)
