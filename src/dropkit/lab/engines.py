"""Where batches of runs execute. The driver (:mod:`dropkit.lab.runner`) alone writes the store.

Two engines train the same batches with the same function,
:func:`dropkit.lab.train.train_configs`, so a run's result does not depend on where it ran:

* :class:`InProcessEngine` (the default) trains one batch after another in this process.
* :class:`RayEngine` ships every batch to a Ray cluster at once, one Ray task per batch (a
  local Ray instance, or an existing cluster given its address). Results come back to the
  driver as each batch finishes. A worker that dies mid-batch has written nothing: Ray
  retries its task (``max_retries``); a batch whose retries are spent comes back as a
  :class:`BatchFailure` and its runs stay pending for the next invocation.

Ray is an optional dependency (``pip install "dropkit[ray]"``), imported only when a
:class:`RayEngine` starts.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from dropkit._validation import check_nonnegative, check_positive, check_positive_int
from dropkit.lab.config import RunConfig
from dropkit.lab.data import Dataset
from dropkit.lab.train import train_configs
from dropkit.lab.training import BatchResult

__all__ = [
    "BatchFailure",
    "BatchJob",
    "Engine",
    "EngineError",
    "InProcessEngine",
    "RayEngine",
]

RAY_HINT = 'the Ray engine needs Ray: pip install "dropkit[ray]"'


class EngineError(RuntimeError):
    """An engine that cannot start (Ray missing, cluster unreachable), with a one-line reason."""


@dataclass(frozen=True)
class BatchJob:
    """One unit of work: runs of one shape key (see :meth:`RunConfig.shape_key`) and their data."""

    data: Dataset
    configs: tuple[RunConfig, ...]


@dataclass(frozen=True)
class BatchFailure:
    """A batch that did not finish (its retries spent); its runs stay pending."""

    reason: str


class Engine(Protocol):
    """Trains batches of runs and hands each result back as soon as it exists.

    ``slots`` is how many batches the engine trains at once; the runner splits each group of
    runs into about that many batches so that every slot gets work.
    """

    @property
    def slots(self) -> int: ...

    def run_batches(
        self,
        jobs: Sequence[BatchJob],
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[BatchJob, BatchResult | BatchFailure]]:
        """Yield ``(job, result)`` per job in completion order; ``on_progress(n)`` reports
        ``n`` more finished run-epochs."""
        ...


class InProcessEngine:
    """Train in this process, one batch after another.

    Args:
        compile: fuse the training step with ``torch.compile`` (None: when a C++ compiler
            is available).
        threads: torch's intra-op threads while a batch trains (restored afterwards); None
            leaves torch's setting alone. The default is 1: the lab's models are small, and
            torch's threads wait on each other whenever another process wants a core. On 2
            cores beside one busy process, the 90-run case-study grid took 60 s with 1 thread
            and 420 s with 2 (docs/performance.md).
    """

    slots = 1

    def __init__(self, *, compile: bool | None = None, threads: int | None = 1) -> None:
        self.compile = compile
        self.threads = None if threads is None else check_positive_int(threads, "threads")

    def run_batch(
        self,
        data: Dataset,
        configs: Sequence[RunConfig],
        on_epoch: Callable[[int], None] | None = None,
    ) -> BatchResult:
        """Train one batch; ``on_epoch`` is called with the number of finished epochs."""
        with _torch_threads(self.threads):
            return train_configs(data, configs, compile=self.compile, on_epoch=on_epoch)

    def run_batches(
        self,
        jobs: Sequence[BatchJob],
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[BatchJob, BatchResult | BatchFailure]]:
        """Train the jobs in order; progress moves every epoch. Errors propagate."""
        for job in jobs:
            on_epoch = None
            if on_progress is not None:
                size = len(job.configs)

                def on_epoch(_epoch: int, size: int = size) -> None:
                    on_progress(size)

            yield job, self.run_batch(job.data, job.configs, on_epoch)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` intra-op threads, then restore torch's setting."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- Ray ---------------------------------------------------------------------------------------


def _train_on_worker(
    data: Dataset,
    configs: Sequence[RunConfig],
    compile: bool | None,
    threads: int,
    progress: Any = None,
    job: int = 0,
) -> BatchResult:
    """The body of a Ray task: :func:`train_configs` with the driver's arguments.

    ``progress`` (a handle of a :func:`_progress_board` actor) hears the number of finished epochs
    at most about once a second.
    """
    import torch

    torch.set_num_threads(threads)
    on_epoch = None
    if progress is not None:
        last = [time.monotonic()]

        def on_epoch(epoch: int) -> None:
            now = time.monotonic()
            if now - last[0] >= _PROGRESS_EVERY_S:
                last[0] = now
                progress.report.remote(job, epoch)

    return train_configs(data, configs, compile=compile, on_epoch=on_epoch)


_PROGRESS_EVERY_S = 1.0


def _progress_board() -> type:
    """The class of a Ray actor that keeps the latest epoch each running batch reported.

    Defined in a function so that Ray ships the class itself: the actor's process then
    imports neither dropkit nor torch.
    """

    class ProgressBoard:
        def __init__(self) -> None:
            self.epochs: dict[int, int] = {}

        def report(self, job: int, epoch: int) -> None:
            self.epochs[job] = max(epoch, self.epochs.get(job, 0))

        def read(self) -> dict[int, int]:
            return dict(self.epochs)

    return ProgressBoard


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` nothing listens at (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", or an address form Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise EngineError(f"cannot reach Ray at {address}: {error}") from None


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise EngineError(RAY_HINT) from None


class RayEngine:
    """Train batches as Ray tasks, all in flight at once; the driver collects the results.

    Use as a context manager (or call :meth:`start` and :meth:`close`). Without ``address``
    a local Ray instance is started and shut down again on close; with an address (such as
    ``"HEAD:6379"`` or ``"auto"``) the engine joins that cluster and leaves it running. When
    Ray is already initialized in this process, that instance is used as it is.

    Every task reserves ``cpus_per_batch`` CPUs (and ``gpus_per_batch`` GPUs) and sets torch
    to that many threads, so a cluster of ``C`` CPUs trains ``C / cpus_per_batch`` batches at
    once (:attr:`slots`). A task whose worker dies is retried up to ``max_retries`` times;
    errors raised by training itself are not retried.

    Args:
        address: the cluster to join; None starts a local instance.
        num_cpus: CPUs of a local instance (None: all of this machine's).
        compile: passed to :func:`dropkit.lab.train.train_configs` on the workers.
        cpus_per_batch, gpus_per_batch: resources each batch reserves. The stacked trainer
            runs on the CPU, so GPUs are not requested unless asked for.
        max_retries: retries of a batch whose worker died.
        live_progress: let running batches report finished epochs (through a small Ray
            actor) so that a progress bar moves before the first batch finishes.

    Raises:
        EngineError: on :meth:`start`, when Ray is not installed or the cluster cannot be
            reached.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        compile: bool | None = None,
        cpus_per_batch: float = 1.0,
        gpus_per_batch: float = 0.0,
        max_retries: int = 3,
        live_progress: bool = True,
    ) -> None:
        if num_cpus is not None and address is not None:
            raise ValueError("`num_cpus` sizes a local Ray instance; leave it out with `address`")
        if num_cpus is not None:
            check_positive(num_cpus, "num_cpus")
        self.address = address
        self.num_cpus = num_cpus
        self.compile = compile
        self.cpus_per_batch = check_positive(cpus_per_batch, "cpus_per_batch")
        self.gpus_per_batch = check_nonnegative(gpus_per_batch, "gpus_per_batch")
        self.max_retries = int(check_nonnegative(max_retries, "max_retries"))
        self.live_progress = live_progress
        self._ray: Any = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Import Ray and start or join the cluster (a second call does nothing)."""
        if self._ray is not None:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
            }
            if self.address is None:
                # A local instance reports no usage statistics unless the user asked for them.
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                options["num_cpus"] = self.num_cpus
            else:
                _check_reachable(self.address)
                options["address"] = self.address
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = "start a local Ray instance" if self.address is None else self.address
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise EngineError(f"cannot reach Ray ({where}): {first}") from None
            self._started = True
        self._ray = ray

    def close(self) -> None:
        """Shut down the local Ray instance this engine started; a joined cluster keeps running."""
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def __enter__(self) -> RayEngine:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # -- work ----------------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        """Batches the cluster trains at once: its CPUs (and GPUs) over what one batch takes."""
        self.start()
        resources = self._ray.cluster_resources()
        slots = float(resources.get("CPU", 1.0)) / self.cpus_per_batch
        if self.gpus_per_batch > 0:
            slots = min(slots, float(resources.get("GPU", 0.0)) / self.gpus_per_batch)
        return max(1, math.floor(slots))

    def run_batches(
        self,
        jobs: Sequence[BatchJob],
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[BatchJob, BatchResult | BatchFailure]]:
        """Submit every job, then yield results in completion order.

        Stopping early (an exception in the caller, Ctrl-C) cancels the tasks still running.
        """
        self.start()
        ray = self._ray
        if not jobs:
            return
        task = ray.remote(_train_on_worker).options(
            num_cpus=self.cpus_per_batch,
            num_gpus=self.gpus_per_batch,
            max_retries=self.max_retries,
            retry_exceptions=False,
            name="dropkit.train_batch",
        )
        board: Any = None
        if on_progress is not None and self.live_progress:
            board = ray.remote(_progress_board()).options(num_cpus=0).remote()
        shared: dict[int, Any] = {}  # one copy of each data set in the object store
        threads = max(1, math.floor(self.cpus_per_batch))
        pending: dict[Any, int] = {}
        for number, job in enumerate(jobs):
            if id(job.data) not in shared:
                shared[id(job.data)] = ray.put(job.data)
            ref = task.remote(
                shared[id(job.data)], job.configs, self.compile, threads, board, number
            )
            pending[ref] = number
        shown = dict.fromkeys(range(len(jobs)), 0)  # run-epochs reported per job

        def advance(number: int, epochs: int) -> None:
            size = len(jobs[number].configs)
            epochs = min(epochs, jobs[number].configs[0].train.epochs)
            if on_progress is not None and epochs * size > shown[number]:
                on_progress(epochs * size - shown[number])
                shown[number] = epochs * size

        reading = None if board is None else board.read.remote()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_PROGRESS_EVERY_S)
                if reading is not None and ray.wait([reading], timeout=0)[0]:
                    try:
                        for number, epochs in ray.get(reading).items():
                            advance(number, epochs)
                        reading = board.read.remote()
                    except ray.exceptions.RayError:  # progress is a nicety: do without
                        reading = None
                for ref in ready:
                    number = pending.pop(ref)
                    job = jobs[number]
                    try:
                        result: BatchResult | BatchFailure = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        result = BatchFailure(_reason(error))
                    else:
                        advance(number, job.configs[0].train.epochs)
                    yield job, result
        finally:  # Ctrl-C may have reached a local instance too: clean up what is left
            with contextlib.suppress(Exception):
                for ref in pending:
                    ray.cancel(ref, force=True)
                if board is not None:
                    ray.kill(board)


def _reason(error: BaseException) -> str:
    """One line about a failed Ray task: the training error itself, or why the worker died."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
