"""The Ray engine on a local two-CPU Ray instance: equal results, a killed worker, a killed driver.

One Ray instance serves the whole module (starting one takes seconds). Faults are real: a
worker process is found by the title Ray gives a process while it runs a task and killed
with SIGKILL; a driver is a ``dropkit sweep`` subprocess killed the same way. A user's model
source travels to the workers, batches are placed by device, and a cluster started with
``ray start`` under token authentication is joined by a driver that presents its token.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dropkit.lab.execute.engines import BatchJob, EngineError, InProcessEngine, RayEngine
from dropkit.lab.execute.runner import IncompleteSweep, plan_batches, run_configs
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import load_dataset
from dropkit.lab.plan.user_model import model_source
from dropkit.lab.store import ResultsStore
from dropkit.lab.train.contract import BatchResult
from dropkit.lab.train.dispatch import train_configs
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


# --- a user's model, devices ------------------------------------------------------------------


def test_a_model_source_built_from_a_closure_trains_on_the_workers(engine: RayEngine) -> None:
    width = 6  # captured: the factory is a closure, pickled by value for the workers

    def factory(p: float) -> nn.Module:
        return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Dropout(p), nn.Linear(width, 1))

    source = model_source(factory)
    spec = DataSpec("circles")
    data = load_dataset(spec)
    configs = tuple(
        RunConfig(spec, source.spec, TrainSpec(epochs=5), p=p, seed=seed)
        for p in (0.0, 0.5)
        for seed in range(2)
    )
    jobs = [BatchJob(data, configs[:2], model=source), BatchJob(data, configs[2:], model=source)]
    results = {job.configs: result for job, result in engine.run_batches(jobs)}
    for job in jobs:
        result = results[job.configs]
        assert isinstance(result, BatchResult), result
        # The same batch in this process: the same computation, bit for bit.
        here = train_configs(data, job.configs, model=source)
        for name, values in here.curves.items():
            assert np.array_equal(values, result.curves[name]), name


def test_batches_ask_for_gpus_only_on_a_cuda_device(engine: RayEngine) -> None:
    # These engines join the module's instance (2 CPUs, no GPU) and leave it running.
    assert RayEngine(device="auto")._placement() == ("cpu", 0.0)
    assert RayEngine()._placement() == ("cpu", 0.0)
    cuda = RayEngine(device="cuda", compile=False)
    with pytest.raises(EngineError, match=r"asks Ray for 1 GPU .* but the cluster has 0"):
        list(cuda.run_batches([BatchJob(load_dataset(DataSpec("circles")), tuple(_configs(2)))]))
    with pytest.raises(EngineError, match="the cluster has 0"):
        assert RayEngine(device="cuda", gpus_per_batch=0.5).slots
    assert ray.is_initialized()


# --- token authentication ---------------------------------------------------------------------

_RAY_CLI = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"

# A driver in a fresh process: joins the cluster, trains one small batch, prints its final test
# accuracies as JSON (exit 0), or prints the engine's error (exit 3).
_DRIVER = """
import json, sys
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import load_dataset
from dropkit.lab.execute.engines import BatchJob, EngineError, RayEngine
spec = DataSpec("circles")
configs = tuple(
    RunConfig(spec, ModelSpec((8,)), TrainSpec(epochs=5), p=p, seed=0) for p in (0.0, 0.5)
)
try:
    with RayEngine(address=sys.argv[1], compile=False) as engine:
        (result,) = [r for _, r in engine.run_batches([BatchJob(load_dataset(spec), configs)])]
except EngineError as error:
    print(error)
    sys.exit(3)
print(json.dumps(result.curves["test_acc"][:, -1].tolist()))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any Ray authentication or address setting (the
    module's local instance put RAY_AUTH_MODE here), with ``home`` as the home directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    return env


@pytest.fixture
def token_cluster(tmp_path: Path) -> Iterator[str]:
    """A one-CPU Ray head started by ``ray start --head`` in a home directory with a Ray token,
    so the cluster requires that token. ``--block`` keeps the command in the foreground:
    terminating it stops every process of this cluster and no other (``ray stop`` would stop
    every Ray instance of the machine)."""
    home = tmp_path / "head-home"
    home.mkdir()
    env = _clean_env(home)
    subprocess.run(
        [sys.executable, "-c", _RAY_CLI, "get-auth-token", "--generate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (home / ".ray" / "auth_token").is_file()
    port = _free_port()
    # A short temporary directory of its own: Ray's socket paths must stay short, and its
    # session files stay apart from other Ray instances on the machine.
    temp = tempfile.mkdtemp(prefix="ray")
    command = [sys.executable, "-c", _RAY_CLI, "start", "--head", f"--port={port}", "--block"]
    command += ["--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"]
    command += [f"--temp-dir={temp}"]
    head = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not listen within 120 s"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_driver_presents_its_ray_token(token_cluster: str, tmp_path: Path) -> None:
    """``ray start`` under token authentication, then a driver in a new process: with the
    cluster's token in its home directory it joins and trains (no RAY_AUTH_MODE set); without
    one it fails, and the message says what to do."""
    env = _clean_env(tmp_path / "head-home")  # the driver shares the head's home: its token
    joined = subprocess.run(
        [sys.executable, "-c", _DRIVER, token_cluster],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert joined.returncode == 0, joined.stdout + joined.stderr[-3000:]
    accuracies = json.loads(joined.stdout.strip().splitlines()[-1])
    spec = DataSpec("circles")
    configs = [
        RunConfig(spec, ModelSpec((8,)), TrainSpec(epochs=5), p=p, seed=0) for p in (0.0, 0.5)
    ]
    here = train_configs(load_dataset(spec), configs, compile=False)
    assert accuracies == here.curves["test_acc"][:, -1].tolist()

    stranger = tmp_path / "stranger-home"  # a machine without the token
    stranger.mkdir()
    env = _clean_env(stranger)
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's connect window: 20 s by default
    refused = subprocess.run(
        [sys.executable, "-c", _DRIVER, token_cluster],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr[-3000:]
    message = refused.stdout.strip().splitlines()[-1]
    assert message.startswith(f"cannot reach Ray at {token_cluster}: ")
    assert "this machine has no Ray token to present" in message
    assert "copy the head node's ~/.ray/auth_token to ~/.ray/auth_token on this machine" in message
