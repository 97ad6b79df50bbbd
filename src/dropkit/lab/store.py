"""The results store: one SQLite file (stdlib ``sqlite3``) that holds every finished run.

Schema (version 2):

* ``meta(key, value)``: ``schema_version`` guards upgrades.
* ``runs``: one row per run, keyed by :meth:`RunConfig.key` (a hash of the full config), with
  the config as JSON, its searchable fields, final and best metrics, duration, the
  versions of dropkit and torch that produced it and ``info``: JSON of scalar facts of its
  training (e.g. ``stop_epoch`` of early stopping; NULL for runs stored by version 1).
* ``curves``: one row per (run, epoch) with the per-epoch metrics.
* ``states``: the final weights of runs of small models (at most
  :data:`MAX_STATE_PARAMETERS` values), a ``torch.save``-d ``state_dict`` of the module
  :func:`dropkit.lab.models.build_model` builds for the run's config.

Version 1 stores (no ``info``, no ``states``) are upgraded in place when opened, in one
transaction; their runs read back with empty ``info`` and no weights.

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

from dropkit.lab.config import RunConfig

__all__ = [
    "MAX_STATE_PARAMETERS",
    "SCHEMA_VERSION",
    "ResultsStore",
    "RunRecord",
    "StoreError",
    "StoredRun",
]

SCHEMA_VERSION = 2
MAX_STATE_PARAMETERS = 100_000
"""Final weights are stored for models of at most this many values (a few hundred kB each)."""
CURVE_METRICS = ("train_acc", "test_acc", "train_loss", "test_loss")

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
"""

# Upgrades, run in the transaction that opens the store: from version N to N + 1.
_MIGRATIONS = {
    1: ("ALTER TABLE runs ADD COLUMN info TEXT",),  # `states` comes from _SCHEMA
}


class StoreError(RuntimeError):
    """The store cannot be opened or written, with a one-line reason."""


@dataclass(frozen=True)
class RunRecord:
    """A finished run, ready to store: its config, per-epoch curves and training time, and
    optionally scalar facts of its training (``info``) and its final weights (``state``;
    stored when it holds at most :data:`MAX_STATE_PARAMETERS` values)."""

    config: RunConfig
    curves: dict[str, NDArray[np.float64]]
    seconds: float
    info: dict[str, float] | None = None
    state: dict[str, Tensor] | None = None


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
        path: the SQLite file, created with its folder if missing.
        timeout: seconds a writer waits for another writer's lock.

    Raises:
        StoreError: the path cannot be created or written, is not a dropkit store, or was
            written by a newer schema version.
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            with self._transaction():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
                row = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row[0]) in _MIGRATIONS:
                    for version in range(int(row[0]), SCHEMA_VERSION):
                        for statement in _MIGRATIONS[version]:
                            self._db.execute(statement)
                    self._db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                        (str(SCHEMA_VERSION),),
                    )
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {row[0]}; this dropkit reads version "
                        f"{SCHEMA_VERSION}. Use a new store file or a matching dropkit."
                    )
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot use {self.path} as a results store: {error}") from None
        except OSError as error:
            raise StoreError(f"cannot create the results store {self.path}: {error}") from None

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

    def add_runs(self, records: Iterable[RunRecord]) -> int:
        """Store finished runs, each with its curves, in one transaction; return how many were new.

        A run already in the store (same key) is left as it is.
        """
        from dropkit import __version__

        added = 0
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            with self._transaction():
                for record in records:
                    added += self._insert(record, now, __version__)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot write to {self.path}: {error}") from None
        return added

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

    def _select_in(self, query: str, keys: Sequence[str]) -> list[Any]:
        """Rows of ``query`` (which ends in a WHERE clause) whose run key is in ``keys``."""
        rows: list[Any] = []
        for start in range(0, len(keys), 500):  # SQLite limits the parameters of one query
            chunk = list(keys[start : start + 500])
            rows += self._db.execute(f"{query} AND key IN ({','.join('?' * len(chunk))})", chunk)
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
        :func:`dropkit.lab.models.build_model` builds for its config; None when not stored
        (a large model, a run stored by schema version 1, or an unknown key)."""
        row = self._db.execute("SELECT state FROM states WHERE run_key = ?", (key,)).fetchone()
        if row is None:
            return None
        state = torch.load(io.BytesIO(row[0]), map_location="cpu", weights_only=True)
        return dict(state)

    def count(self) -> int:
        return int(
            self._db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]
        )


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
