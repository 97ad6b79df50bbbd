"""The Ray engine on a local two-CPU Ray instance: equal results, a killed worker, a killed driver.

One Ray instance serves the whole module (starting one takes seconds). Faults are real: a
worker process is found by the title Ray gives a process while it runs a task and killed
with SIGKILL; a driver is a ``dropkit sweep`` subprocess killed the same way.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dropkit.lab.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.engines import InProcessEngine, RayEngine
from dropkit.lab.runner import IncompleteSweep, plan_batches, run_configs
from dropkit.lab.store import ResultsStore
from helpers import Spawn

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

TASK_TITLE = b"ray::dropkit.train_batch"  # the process title of a worker running a batch


def _configs(epochs: int, seeds: int = 3, hidden: int = 8) -> list[RunConfig]:
    return [
        RunConfig(DataSpec("circles"), ModelSpec((hidden,)), TrainSpec(epochs=epochs), p=p, seed=s)
        for p in (0.0, 0.5)
        for s in range(seeds)
    ]


@pytest.fixture(scope="module")
def engine() -> Iterator[RayEngine]:
    """A local Ray instance of 2 CPUs, started (and shut down) by the engine itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process side trains like a worker: one thread
    with RayEngine(num_cpus=2, compile=False, max_retries=2) as started:
        yield started
    torch.set_num_threads(threads)
    assert not ray.is_initialized(), "the engine shuts down the instance it started"


def _stored(store: ResultsStore) -> dict[str, dict[str, np.ndarray]]:
    return {run.key: store.curves(run.key) for run in store.runs()}


def _in_process(configs: list[RunConfig], path: Path, max_batch: int) -> dict[str, dict]:
    with ResultsStore(path) as store:
        run_configs(configs, store, engine=InProcessEngine(compile=False), max_batch=max_batch)
        return _stored(store)


def _worker_pids() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as file:
                    if file.read().startswith(TASK_TITLE):
                        pids.append(int(name))
            except OSError:  # the process ended while we looked
                continue
    return pids


class _WorkerKiller(threading.Thread):
    """Kill (SIGKILL) the first worker process seen running a batch."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.killed = pids[0]
                return
            time.sleep(0.01)


class _Counter:
    """Progress that adds up what it is told."""

    def __init__(self) -> None:
        self.total = self.seen = 0

    def begin(self, total: int, description: str) -> None:
        self.total = total

    def advance(self, amount: int) -> None:
        assert amount > 0
        self.seen += amount

    def end(self) -> None:
        pass


def test_batches_fill_every_slot(engine: RayEngine) -> None:
    assert engine.slots == 2
    configs = _configs(epochs=5, seeds=5)  # 10 runs of one shape key
    assert [len(b) for b in plan_batches(configs, 128, engine.slots)] == [5, 5]
    assert [len(b) for b in plan_batches(configs, 4, engine.slots)] == [4, 4, 2]
    assert [len(b) for b in plan_batches(configs, 128)] == [10]


def test_ray_results_equal_in_process(engine: RayEngine, tmp_path: Path) -> None:
    configs = _configs(epochs=20)
    with ResultsStore(tmp_path / "ray.sqlite") as store:
        outcome = run_configs(configs, store, engine=engine)
        on_ray = _stored(store)
    assert outcome.trained == 6
    # Same split (2 batches of 3): the same computation in another process, bit for bit.
    same = _in_process(configs, tmp_path / "same.sqlite", max_batch=3)
    assert same.keys() == on_ray.keys()
    for key, curves in on_ray.items():
        for name, values in curves.items():
            assert np.array_equal(values, same[key][name]), (key, name)
    # One batch of 6: a batched GEMM may sum in another order, so float32 losses may differ
    # in the last bits (a few ulp of values near 1); accuracies are counts and agree.
    whole = _in_process(configs, tmp_path / "whole.sqlite", max_batch=128)
    for key, curves in on_ray.items():
        for name, values in curves.items():
            assert np.allclose(values, whole[key][name], rtol=1e-5, atol=1e-6), (key, name)


def _run_with_killed_worker(
    engine: RayEngine, store: ResultsStore, configs: list[RunConfig], progress: _Counter
) -> int:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("finding a worker by its process title needs /proc")
    killer = _WorkerKiller()
    killer.start()
    try:
        run_configs(configs, store, engine=engine, progress=progress)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no worker was seen running a batch"
    return killer.killed


def test_killed_worker_is_retried(engine: RayEngine, tmp_path: Path) -> None:
    configs = _configs(epochs=150)
    progress = _Counter()
    with ResultsStore(tmp_path / "ray.sqlite") as store:
        _run_with_killed_worker(engine, store, configs, progress)
        on_ray = _stored(store)
    # Every run once, complete, and equal to a clean run with the same split.
    assert progress.seen == progress.total == 6 * 150
    clean = _in_process(configs, tmp_path / "clean.sqlite", max_batch=3)
    assert on_ray.keys() == clean.keys()
    for key, curves in on_ray.items():
        for name, values in curves.items():
            assert np.array_equal(values, clean[key][name]), (key, name)


def test_spent_retries_leave_runs_pending(engine: RayEngine, tmp_path: Path) -> None:
    configs = _configs(epochs=150)
    no_retries = RayEngine(compile=False, max_retries=0)  # joins the running instance
    with ResultsStore(tmp_path / "ray.sqlite") as store:
        with pytest.raises(IncompleteSweep, match="3 runs stayed pending") as failure:
            _run_with_killed_worker(no_retries, store, configs, _Counter())
        pending = set(failure.value.pending)
        assert "WorkerCrashedError" in failure.value.reasons[0]
        # The other batch is stored whole; the killed one left nothing behind.
        keys = {c.key() for c in configs}
        assert store.done_keys(list(keys)) == keys - pending
        with sqlite3.connect(store.path) as db:
            rows = db.execute("SELECT COUNT(*) FROM curves").fetchone()[0]
        assert rows == 3 * 150
        # The next invocation trains only the pending runs (on any engine).
        outcome = run_configs(configs, store, engine=InProcessEngine(compile=False))
        assert (outcome.already_done, outcome.trained) == (3, 3)
        assert store.done_keys(list(keys)) == keys
    assert ray.is_initialized(), "an engine that joined leaves the instance running"


_SWEEP = ["sweep", "--rates", "0,0.5", "--seeds", "3", "--epochs", "300", "--hidden", "8"]
_SWEEP += ["--no-compile", "--quiet", "--runs-per-batch", "1", "--engine", "ray"]


def _sweep(spawn: Spawn, tmp_path: Path, address: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "dropkit", *_SWEEP, "--address", address]
    command += ["--out", str(tmp_path / "out")]
    # The driver trains nothing: one thread. It inherits the Ray settings of this process
    # (ray.init sets the cluster's authentication mode in the environment).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return spawn(command, env)


def test_killed_driver_resumes_from_the_store(
    engine: RayEngine, tmp_path: Path, spawn: Spawn
) -> None:
    address = ray.get_runtime_context().gcs_address
    path = tmp_path / "out" / "runs.sqlite"
    driver = _sweep(spawn, tmp_path, address)  # joins this process's Ray instance
    deadline = time.monotonic() + 120
    stored = 0
    while stored < 2:
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "no run was stored within 120 s"
        time.sleep(0.05)
        if path.exists():
            with ResultsStore(path) as store:
                stored = store.count()
    driver.kill()
    driver.communicate(timeout=60)
    with ResultsStore(path) as store:
        stored = store.count()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM curves").fetchone()[0] == stored * 300
    assert 2 <= stored < 6, "the kill should land mid-sweep"

    # Rerunning the same runs trains only the rest. Resuming is the store's business, whatever
    # the engine: here the in-process one, which needs no fresh Ray worker processes.
    configs = _configs(epochs=300, seeds=3, hidden=8)
    with ResultsStore(path) as store:
        assert store.done_keys([c.key() for c in configs]) == {r.key for r in store.runs()}
        outcome = run_configs(configs, store, engine=InProcessEngine(compile=False))
        assert (outcome.already_done, outcome.trained) == (stored, 6 - stored)
        assert store.count() == 6
