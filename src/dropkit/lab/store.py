"""The results store: one SQLite file (stdlib ``sqlite3``) that holds every finished run.

Schema (version 3):

* ``meta(key, value)``: ``schema_version`` guards upgrades.
* ``runs``: one row per run, keyed by :meth:`RunConfig.key` (a hash of the full config), with
  the config as JSON, its searchable fields, final and best metrics, duration, the
  versions of dropkit and torch that produced it and ``info``: JSON of scalar facts of its
  training (e.g. ``stop_epoch`` of early stopping; NULL for runs stored by version 1).
* ``curves``: one row per (run, epoch) with the per-epoch metrics.
* ``states``: the final weights of runs of small models (at most
  :data:`MAX_STATE_PARAMETERS` values), a ``torch.save``-d ``state_dict`` of the module
  :func:`dropkit.lab.plan.models.build_model` builds for the run's config.
* ``notes`` and ``run_notes``: the sentences a sweep reported about how its runs were trained
  (why runs trained one by one, the task inferred, how the data was read), each text stored
  once and linked to every run it concerns.

Older stores (version 1: no ``info``, no ``states``; version 2: no notes) are upgraded in place
when opened for writing, in one transaction; their runs read back with empty ``info``, no
weights and no notes.

A store opened read-only (``read_only=True``, or a file or folder this process cannot write)
is never changed: SQLite opens it with ``mode=ro`` while a write-ahead log exists (a writer may
be at work), else as ``immutable`` (no ``-wal``/``-shm`` file is made, so a read-only folder
works); an older schema is read as it is. A SQLite file that is not a dropkit store is refused,
never given tables.

A run is written only when it has finished, run row, curve rows and weights in ONE
transaction: a process killed at any moment (SIGINT or SIGKILL) leaves either the whole run or
nothing.
The file is in WAL mode; writers take the lock up front (``BEGIN IMMEDIATE``) and wait up to
``timeout`` seconds for another writer, and ``INSERT OR IGNORE`` on the key means that two
sweeps writing the same runs at once store each run once.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from dropkit.lab.plan.config import RunConfig
from dropkit.lab.plan.records import CURVE_METRICS, MAX_STATE_PARAMETERS, RunRecord

__all__ = [
    "CURVE_METRICS",
    "MAX_STATE_PARAMETERS",
    "SCHEMA_VERSION",
    "ResultsStore",
    "RunRecord",
    "StoreError",
    "StoredRun",
]

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
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
    finished_at TEXT NOT NULL,
    info TEXT
);
CREATE TABLE IF NOT EXISTS curves (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_acc REAL,
    test_acc REAL,
    train_loss REAL,
    test_loss REAL,
    PRIMARY KEY (run_key, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states (
    run_key TEXT PRIMARY KEY REFERENCES runs(key) ON DELETE CASCADE,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS run_notes (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    note INTEGER NOT NULL REFERENCES notes(id),
    PRIMARY KEY (run_key, note)
) WITHOUT ROWID;
"""

# Upgrades, run in the transaction that opens the store: from version N to N + 1. New tables
# (`states` in version 2, `notes` and `run_notes` in version 3) come from _SCHEMA.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE runs ADD COLUMN info TEXT",),
    2: (),
}
_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


class StoreError(RuntimeError):
    """The store cannot be opened or written, with a one-line reason."""


@dataclass(frozen=True)
class StoredRun:
    """A run as read back from the store."""

    key: str
    config: RunConfig
    train_acc: float
    test_acc: float
    train_loss: float
    test_loss: float
    best_test_acc: float
    best_epoch: int
    seconds: float
    info: dict[str, float] = field(default_factory=dict)

    @property
    def arm(self) -> str:
        return self.config.arm

    @property
    def gap(self) -> float:
        """Train-test accuracy gap at the last epoch."""
        return self.train_acc - self.test_acc


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class ResultsStore:
    """An open results store; use as a context manager or call :meth:`close`.

    Args:
        path: the SQLite file, created with its folder if missing (not when read-only).
        timeout: seconds a writer waits for another writer's lock.
        read_only: True: read without changing the file in any way (nothing written, no
            upgrade, no ``-wal``/``-shm`` file made where no writer is at work); False: open
            for writing; None: read-only when the file exists and this process cannot write
            it or its folder, else for writing.

    Attributes:
        read_only: whether the store is open read-only (writes raise :class:`StoreError`).

    Raises:
        StoreError: the path cannot be created, read or written (``permission denied``, with
            the path), is not a SQLite file or not a dropkit store (a SQLite file with other
            tables is refused, never given new ones), or was written by a newer schema
            version.
    """

    def __init__(
        self, path: str | Path, *, timeout: float = 60.0, read_only: bool | None = None
    ) -> None:
        if read_only is not None and not isinstance(read_only, bool):
            raise TypeError(f"`read_only` must be True, False or None, got {read_only!r}")
        self.path = Path(path)
        self.read_only = (
            read_only if read_only is not None else self.path.is_file() and not _writable(self.path)
        )
        try:
            if self.read_only:
                self._open_read_only(timeout)
            else:
                self._open(timeout)
        except BaseException as error:
            opened: sqlite3.Connection | None = getattr(self, "_db", None)
            if opened is not None:
                opened.close()
            if isinstance(error, sqlite3.DatabaseError):
                raise StoreError(self._failure(error)) from None
            if isinstance(error, PermissionError):
                raise StoreError(
                    f"permission denied: cannot create the results store {self.path}"
                ) from None
            if isinstance(error, OSError):
                raise StoreError(f"cannot create the results store {self.path}: {error}") from None
            raise

    def _open(self, timeout: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._stored_version()  # refuse a foreign file before WAL mode changes it
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        with self._transaction():
            version = self._stored_version()
            if version == SCHEMA_VERSION:
                return
            for statement in _statements():
                self._db.execute(statement)
            if version is None:
                self._db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                return
            for old in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[old]:
                    self._db.execute(statement)
            self._db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    def _open_read_only(self, timeout: float) -> None:
        """``mode=ro`` while a write-ahead log exists (a writer may be at work, and the log may
        hold runs), else ``immutable=1``: nothing is created, so a read-only folder works."""
        if not self.path.is_file():
            raise StoreError(f"no results store at {self.path}")
        wal = self.path.with_name(self.path.name + "-wal")
        query = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        uri = f"{self.path.resolve().as_uri()}?{query}"
        self._db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        try:
            self._stored_version()
        except sqlite3.OperationalError:
            if wal.exists() and not os.access(self.path.parent, os.W_OK | os.X_OK):
                raise StoreError(
                    f"permission denied: {self.path} has a write-ahead log ({wal.name}) that "
                    "SQLite reads only with write access to its folder; open the store once "
                    "where it can be written (that merges the log), or copy its folder"
                ) from None
            raise
        self._stand_ins()

    def _stand_ins(self) -> None:
        """Empty temporary tables (this connection's alone) for those an empty or older store
        lacks, and ``info`` as NULL for a version 1 store: it reads as the current version,
        and the file is not changed."""
        tables = self._tables()
        for statement in _statements():
            match = _TABLE.search(statement)
            if match is not None and match.group(1) not in tables:
                self._db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
        columns = {row[1] for row in self._db.execute("PRAGMA main.table_info(runs)")}
        if columns and "info" not in columns:
            self._db.execute(
                "CREATE TEMP VIEW runs AS SELECT rowid AS rowid, *, NULL AS info FROM main.runs"
            )

    def _tables(self) -> set[str]:
        return {
            row[0]
            for row in self._db.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%'"
            )
        }

    def _stored_version(self) -> int | None:
        """The file's schema version; None for a database without tables (a new store).

        Raises:
            StoreError: a SQLite file with tables but no dropkit schema version (not a
                results store), or a version this dropkit cannot read.
        """
        tables = self._tables()
        if not tables:
            return None
        row = None
        if "meta" in tables:
            row = self._db.execute(
                "SELECT value FROM main.meta WHERE key = 'schema_version'"
            ).fetchone()
        if row is None:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(
                f"{self.path} is a SQLite database but not a dropkit results store (its tables: "
                f"{shown}; no schema version); pass a new file or an existing results store"
            )
        text = str(row[0])
        if not text.isdigit() or not 1 <= int(text) <= SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {text}; this dropkit reads version "
                f"{SCHEMA_VERSION}. Use a new store file or a matching dropkit."
            )
        return int(text)

    def _failure(self, error: sqlite3.DatabaseError) -> str:
        """A one-line reason for an error of SQLite while opening the store."""
        if self.path.exists() and not os.access(self.path, os.R_OK):
            return f"permission denied: cannot read the results store {self.path}"
        if not self.read_only and self.path.exists() and not _writable(self.path):
            return (
                f"permission denied: cannot write the results store {self.path} (the file or "
                "its folder is read-only); read it with read_only=True (lab.load does)"
            )
        return f"cannot use {self.path} as a results store: {error}"

    # -- plumbing ------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def add_runs(self, records: Iterable[RunRecord], notes: Sequence[str] = ()) -> int:
        """Store finished runs, each with its curves, in one transaction; return how many were new.

        A run already in the store (same key) is left as it is. ``notes``: sentences about how
        the runs were trained (why they trained one by one, the task inferred), stored with
        each new run in the same transaction.
        """
        from dropkit import __version__

        if self.read_only:
            raise StoreError(
                f"permission denied: the results store {self.path} is open read-only; nothing "
                "was written"
            )
        added = 0
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        note_ids: list[int] | None = None
        try:
            with self._transaction():
                for record in records:
                    if not self._insert(record, now, __version__):
                        continue
                    added += 1
                    if note_ids is None:
                        note_ids = [self._note_id(text) for text in dict.fromkeys(notes)]
                    key = record.config.key()
                    self._db.executemany(
                        "INSERT OR IGNORE INTO run_notes VALUES (?, ?)",
                        ((key, note) for note in note_ids),
                    )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot write to {self.path}: {error}") from None
        return added

    def _note_id(self, text: str) -> int:
        self._db.execute("INSERT OR IGNORE INTO notes (text) VALUES (?)", (str(text),))
        return int(
            self._db.execute("SELECT id FROM notes WHERE text = ?", (str(text),)).fetchone()[0]
        )

    def _insert(self, record: RunRecord, now: str, version: str) -> int:
        config, curves = record.config, record.curves
        test_acc = curves["test_acc"]
        finite = np.where(np.isfinite(test_acc), test_acc, -np.inf)
        best_epoch = int(np.argmax(finite)) + 1
        key = config.key()
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO runs VALUES "
            "(?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                json.dumps(config.to_dict(), sort_keys=True),
                config.data.name,
                config.arm,
                config.p,
                config.input_p,
                config.max_norm,
                config.seed,
                len(test_acc),
                *(_finite_or_none(curves[m][-1]) for m in CURVE_METRICS),
                _finite_or_none(test_acc[best_epoch - 1]),
                best_epoch,
                record.seconds,
                version,
                torch.__version__,
                now,
                None if record.info is None else _info_json(record.info),
            ),
        )
        if cursor.rowcount == 0:
            return 0
        if record.state is not None and _size(record.state) <= MAX_STATE_PARAMETERS:
            self._db.execute("INSERT INTO states VALUES (?, ?)", (key, _state_bytes(record.state)))
        columns = np.stack([curves[m] for m in CURVE_METRICS], axis=1)
        self._db.executemany(
            "INSERT INTO curves VALUES (?, ?, ?, ?, ?, ?)",
            (
                (key, epoch, *(_finite_or_none(v) for v in row))
                for epoch, row in enumerate(columns.tolist(), start=1)
            ),
        )
        return 1

    # -- reading -------------------------------------------------------------------------------

    def _select_in(self, query: str, keys: Sequence[str], column: str = "key") -> list[Any]:
        """Rows of ``query`` (which ends in a WHERE clause) whose run key (``column``) is in
        ``keys``."""
        rows: list[Any] = []
        for start in range(0, len(keys), 500):  # SQLite limits the parameters of one query
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(f"{query} AND {column} IN ({marks})", chunk)
        return rows

    def done_keys(self, keys: Sequence[str]) -> set[str]:
        """The subset of ``keys`` whose runs are finished and stored."""
        return {
            row[0] for row in self._select_in("SELECT key FROM runs WHERE status = 'done'", keys)
        }

    def runs(self, keys: Sequence[str] | None = None) -> list[StoredRun]:
        """Stored runs (all, or those with the given keys), ordered by arm, rate and seed."""
        query = (
            "SELECT key, config, train_acc, test_acc, train_loss, test_loss, best_test_acc, "
            "best_epoch, seconds, info FROM runs WHERE status = 'done'"
        )
        rows = self._db.execute(query).fetchall() if keys is None else self._select_in(query, keys)

        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        result = [
            StoredRun(
                key=row[0],
                config=RunConfig.from_dict(json.loads(row[1])),
                train_acc=number(row[2]),
                test_acc=number(row[3]),
                train_loss=number(row[4]),
                test_loss=number(row[5]),
                best_test_acc=number(row[6]),
                best_epoch=int(row[7]),
                seconds=number(row[8]),
                info=_info_from_json(row[9]),
            )
            for row in rows
        ]
        return sorted(result, key=lambda r: (r.arm, r.config.p, r.config.input_p, r.config.seed))

    def curves(self, key: str) -> dict[str, NDArray[np.float64]]:
        """Per-epoch metrics of one run: ``{metric: (epochs,) array}`` (NaN where missing)."""
        rows = self._db.execute(
            "SELECT train_acc, test_acc, train_loss, test_loss FROM curves "
            "WHERE run_key = ? ORDER BY epoch",
            (key,),
        ).fetchall()
        values = np.array(rows, dtype=np.float64).reshape(-1, len(CURVE_METRICS))
        return {name: values[:, i] for i, name in enumerate(CURVE_METRICS)}

    def state_dict(self, key: str) -> dict[str, Tensor] | None:
        """The final weights of run ``key`` as a ``state_dict`` of the module
        :func:`dropkit.lab.plan.models.build_model` builds for its config; None when not stored
        (a large model, a run stored by schema version 1, or an unknown key)."""
        row = self._db.execute("SELECT state FROM states WHERE run_key = ?", (key,)).fetchone()
        if row is None:
            return None
        state = torch.load(io.BytesIO(row[0]), map_location="cpu", weights_only=True)
        return dict(state)

    def notes(self, keys: Sequence[str] | None = None) -> list[str]:
        """The notes stored with runs (all, or those with the given keys), each once, in the
        order they were first stored."""
        query = (
            "SELECT DISTINCT n.id, n.text FROM notes n JOIN run_notes r ON r.note = n.id WHERE 1"
        )
        rows = (
            self._db.execute(query).fetchall()
            if keys is None
            else self._select_in(query, keys, column="r.run_key")
        )
        return [text for _, text in sorted(set(rows))]

    def finished(self, keys: Sequence[str]) -> tuple[tuple[str, int], tuple[str, int]]:
        """When the first and the last of these runs were stored: ``(finished_at, row)`` each,
        the time (ISO 8601, UTC, in seconds) and the row number, which orders runs stored in
        the same second; ``("", 0)`` twice when none of them is stored."""
        rows = [
            (str(row[0]), int(row[1]))
            for row in self._select_in(
                "SELECT finished_at, rowid FROM runs WHERE status = 'done'", keys
            )
        ]
        return (min(rows), max(rows)) if rows else (("", 0), ("", 0))

    def shapes(self) -> list[RunConfig]:
        """One config per experiment of the store: per distinct data, model and training of
        its runs (with ``p = 0``, seed 0 and, with folds, fold 0), in the order first stored."""
        seen: dict[str, RunConfig] = {}
        for (text,) in self._db.execute(
            "SELECT config FROM runs WHERE status = 'done' ORDER BY rowid"
        ):
            data = json.loads(text)
            parts = {name: data[name] for name in ("data", "model", "train")}
            shape = json.dumps(parts, sort_keys=True)
            if shape not in seen:
                folds = parts["data"].get("folds", 0)
                seen[shape] = RunConfig.from_dict(
                    {**parts, "p": 0.0, "input_p": 0.0, "max_norm": None, "seed": 0}
                    | ({"fold": 0} if folds else {})
                )
        return list(seen.values())

    def count(self) -> int:
        return int(
            self._db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
        )


def _statements() -> list[str]:
    """The statements of :data:`_SCHEMA`, one each."""
    return [statement for statement in _SCHEMA.split(";") if statement.strip()]


def _writable(path: Path) -> bool:
    """Whether this process may write ``path`` and make files next to it (SQLite's ``-wal``
    and ``-shm``). Root may write everything but a read-only file system."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _size(state: dict[str, Tensor]) -> int:
    return sum(value.numel() for value in state.values())


def _state_bytes(state: dict[str, Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _info_json(info: dict[str, float]) -> str:
    """JSON of scalar facts; non-finite numbers become null (read back as NaN)."""
    return json.dumps({k: _finite_or_none(float(v)) for k, v in sorted(info.items())})


def _info_from_json(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    return {k: math.nan if v is None else float(v) for k, v in json.loads(text).items()}


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception (KeyboardInterrupt too)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")  # never leave the connection inside a transaction
                raise
        else:
            self._db.execute("ROLLBACK")
