"""Where batches of runs execute: in this process or on Ray; only the runner writes the store.

The driver (:mod:`dropkit.lab.execute.runner`) alone writes the store.

Two engines train the same batches with the same function,
:func:`dropkit.lab.train.dispatch.train_configs`, so a run's result does not depend on where it ran:

* :class:`InProcessEngine` (the default) trains one batch after another in this process.
* :class:`RayEngine` ships every batch to a Ray cluster at once, one Ray task per batch (a
  local Ray instance, or an existing cluster given its address). Results come back to the
  driver as each batch finishes. A worker that dies mid-batch has written nothing: Ray
  retries its task (``max_retries``); a batch whose retries are spent comes back as a
  :class:`BatchFailure` and its runs stay pending for the next invocation.

Both engines train on a ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``; see
:func:`dropkit.lab.train.dispatch.resolve_device`) and carry a batch's ``model`` (the model source
of a user's own model, :class:`BatchJob`) to :func:`~dropkit.lab.train.dispatch.train_configs`. On
Ray the device is resolved on the worker: the driver needs no GPU to send batches to GPU workers.

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
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, cast

import torch

from dropkit._validation import check_nonnegative, check_positive, check_positive_int
from dropkit.lab.plan.config import RunConfig
from dropkit.lab.plan.data import Dataset
from dropkit.lab.train.contract import BatchResult
from dropkit.lab.train.dispatch import parse_device, resolve_device, train_configs

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
    """One unit of work: runs of one shape key (see :meth:`RunConfig.shape_key`) and their data.

    ``model``: for runs of a user's own model (``ModelSpec.kind == "custom"``) the model source
    that builds them (an object with ``build(p, seed)``, e.g.
    :class:`dropkit.lab.plan.user_model.ModelSource`); None for the built-in models. On Ray it is
    pickled with cloudpickle, so a factory defined in ``__main__`` or a notebook travels by
    value.
    """

    data: Dataset
    configs: tuple[RunConfig, ...]
    model: Any = None


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
        threads: torch's intra-op threads while a batch trains (restored afterwards): an int,
            None (torch's setting as it is) or ``"auto"`` (the default): the built-in trainers
            train with 1 thread (the lab's models are small, and torch's threads wait on each
            other whenever another process wants a core: on 2 cores beside one busy process,
            the 90-run case-study grid took 60 s with 1 thread and 420 s with 2,
            docs/performance.md), and a user's model's batched runs time their epochs with 1
            and with torch's setting, and keep the faster, checked again while they train
            (:class:`dropkit.lab.train.threads.ThreadChooser`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``, resolved here
            (:func:`dropkit.lab.train.dispatch.resolve_device`).
        batched, max_batch_memory, eval_every: passed to
            :func:`dropkit.lab.train.dispatch.train_configs` for batches of a user's own model.
        log: called with one-line messages of training (why a user's model trains one run
            after another, how a batch was split to fit its memory budget).

    Raises:
        ValueError: an unknown ``device``, or a CUDA one on a machine without CUDA.
    """

    slots = 1

    def __init__(
        self,
        *,
        compile: bool | None = None,
        threads: int | str | None = "auto",
        device: str | torch.device = "cpu",
        batched: bool | None = None,
        max_batch_memory: int | None = None,
        log: Callable[[str], None] | None = None,
        eval_every: int | None = None,
    ) -> None:
        self.compile = compile
        if threads is None or threads == "auto":
            self.threads: int | str | None = threads
        elif isinstance(threads, str):
            raise ValueError(f"`threads` must be an int >= 1, None or 'auto', got {threads!r}")
        else:
            self.threads = check_positive_int(threads, "threads")
        self.device = resolve_device(device)
        self.batched = batched
        self.max_batch_memory = max_batch_memory
        self.log = log
        self.eval_every = eval_every

    def run_batch(
        self,
        data: Dataset,
        configs: Sequence[RunConfig],
        on_epoch: Callable[[int], None] | None = None,
        model: Any = None,
    ) -> BatchResult:
        """Train one batch; ``on_epoch`` is called with the number of finished epochs."""
        most = torch.get_num_threads() if self.threads == "auto" else None
        fixed = 1 if self.threads == "auto" else self.threads
        with _torch_threads(cast(int | None, fixed)):
            return train_configs(
                data,
                configs,
                compile=self.compile,
                on_epoch=on_epoch,
                device=self.device,
                model=model,
                batched=self.batched,
                max_batch_memory=self.max_batch_memory,
                log=self.log,
                threads=most,
                eval_every=self.eval_every,
            )

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

            yield job, self.run_batch(job.data, job.configs, on_epoch, job.model)


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
    device: str = "cpu",
    model: Any = None,
    batched: bool | None = None,
    max_batch_memory: int | None = None,
    eval_every: int | None = None,
) -> BatchResult:
    """The body of a Ray task: :func:`train_configs` with the driver's arguments.

    ``progress`` (a handle of a :func:`_progress_board` actor) hears the number of finished epochs
    at most about once a second. ``device`` is resolved here, on the worker (a ``"cuda"`` task
    sees the GPU Ray assigned it as ``cuda:0``).
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

    return train_configs(
        data,
        configs,
        compile=compile,
        on_epoch=on_epoch,
        device=device,
        model=model,
        batched=batched,
        max_batch_memory=max_batch_memory,
        eval_every=eval_every,
    )


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


# Ray's token authentication (recent releases): a cluster started by `ray start` on a machine
# with a token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) accepts only clients
# that present it. ray.init(address=...) presents it only when RAY_AUTH_MODE=token, which Ray
# reads into its cached config (ray._raylet.Config) and which it sets by itself only for a local
# instance or address="auto".
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
_TOKEN_HELP = (
    "copy the head node's ~/.ray/auth_token to ~/.ray/auth_token on this machine (or set "
    "RAY_AUTH_TOKEN to the token, or RAY_AUTH_TOKEN_PATH to its file)"
)


def ray_token_source() -> str | None:
    """Where this machine's Ray authentication token is, in Ray's order: the ``RAY_AUTH_TOKEN``
    variable, the file ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``; None: no token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "the RAY_AUTH_TOKEN environment variable"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if named:
        return named if Path(named).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _reload_ray_config() -> None:
    """Make Ray's cached config read the environment again (what Ray does itself when it turns
    token authentication on); nothing on a Ray without that config."""
    try:
        raylet = importlib.import_module("ray._raylet")
    except ImportError:
        return
    initialize = getattr(getattr(raylet, "Config", None), "initialize", None)
    if callable(initialize):
        initialize("")


@contextlib.contextmanager
def _token_mode() -> Iterator[str | None]:
    """Around ``ray.init(address=...)``: present this machine's token when one exists and the
    user did not set ``RAY_AUTH_MODE``. Yields where the token came from (None: not presented).

    ``RAY_AUTH_MODE=token`` is set for the body only; Ray's config keeps the mode it read for
    as long as the connection lasts (:meth:`RayEngine.close` reloads it after disconnecting).
    On an error the config is reloaded at once.
    """
    source = None if AUTH_MODE_VARIABLE in os.environ else ray_token_source()
    if source is None:
        yield None
        return
    os.environ[AUTH_MODE_VARIABLE] = "token"
    _reload_ray_config()
    ok = False
    try:
        yield source
        ok = True
    finally:
        os.environ.pop(AUTH_MODE_VARIABLE, None)
        if not ok:
            _reload_ray_config()


def _join_failure(address: str, error: BaseException, token: str | None) -> str:
    """The message of a failed ``ray.init(address=...)``: Ray's reason and what to check."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    mode = os.environ.get(AUTH_MODE_VARIABLE)
    if token is not None:
        hint = (
            f"this driver presented the Ray token from {token}; if the cluster uses another "
            f"token, {_TOKEN_HELP}"
        )
    elif mode is not None and mode.lower() != "token":
        hint = (
            f"{AUTH_MODE_VARIABLE} is {mode!r} here, so no token was presented; if the cluster "
            f"uses token authentication, unset {AUTH_MODE_VARIABLE} (or set it to 'token') and "
            f"{_TOKEN_HELP}"
        )
    elif mode is not None:
        hint = f"{AUTH_MODE_VARIABLE} is 'token'; if the token does not match, {_TOKEN_HELP}"
    else:
        hint = (
            "this machine has no Ray token to present; if the cluster uses token "
            "authentication (`ray start` turns it on when the head node has a token, such as "
            f"one `ray get-auth-token` generated or a local `ray.init()` wrote), {_TOKEN_HELP}"
        )
    return f"cannot reach Ray at {address}: {first}; {hint}"


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

    Devices: with ``device="cuda"`` every task asks Ray for ``gpus_per_batch`` GPUs (default
    1: a whole GPU per batch; a fraction such as 0.25 lets 4 batches share one GPU, each
    within its own memory) and trains on the GPU Ray assigns it. ``"auto"`` becomes ``"cuda"``
    when the cluster has GPUs (``cluster_resources()``), else ``"cpu"``. The driver itself
    needs no CUDA: the workers resolve the device.

    Joining a cluster that uses Ray's token authentication: when this machine has a token
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and
    ``RAY_AUTH_MODE`` is not set, the engine presents it (``RAY_AUTH_MODE=token`` for the
    ``ray.init`` call); a failure to join says whether a token was presented and how to
    provide the cluster's.

    Args:
        address: the cluster to join; None starts a local instance.
        num_cpus: CPUs of a local instance (None: all of this machine's).
        compile: passed to :func:`dropkit.lab.train.dispatch.train_configs` on the workers.
        cpus_per_batch, gpus_per_batch: resources each batch reserves. ``gpus_per_batch``
            None: 1 on a CUDA device, 0 on the CPU (a value > 0 with ``device="cpu"``
            reserves GPUs without using them).
        max_retries: retries of a batch whose worker died.
        live_progress: let running batches report finished epochs (through a small Ray
            actor) so that a progress bar moves before the first batch finishes.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (not ``"cuda:N"``: Ray assigns each task
            its GPU).
        batched, max_batch_memory, eval_every: passed to
            :func:`dropkit.lab.train.dispatch.train_configs` for
            batches of a user's own model.

    Raises:
        ValueError: an unknown ``device``, ``"cuda:N"``, or ``gpus_per_batch=0`` with
            ``device="cuda"``.
        EngineError: on :meth:`start`, when Ray is not installed or the cluster cannot be
            reached; when batches need GPUs the cluster does not have.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        compile: bool | None = None,
        cpus_per_batch: float = 1.0,
        gpus_per_batch: float | None = None,
        max_retries: int = 3,
        live_progress: bool = True,
        device: str | torch.device = "cpu",
        batched: bool | None = None,
        max_batch_memory: int | None = None,
        eval_every: int | None = None,
    ) -> None:
        if num_cpus is not None and address is not None:
            raise ValueError("`num_cpus` sizes a local Ray instance; leave it out with `address`")
        if num_cpus is not None:
            check_positive(num_cpus, "num_cpus")
        parsed = parse_device(device)
        if parsed is not None and parsed.index is not None and parsed.type == "cuda":
            raise ValueError(
                f"`device` {str(device)!r} names a GPU of this machine, but Ray assigns each "
                "batch its GPU: use 'cuda' (or 'auto')"
            )
        self.device = "auto" if parsed is None else parsed.type
        if gpus_per_batch is not None:
            check_nonnegative(gpus_per_batch, "gpus_per_batch")
            if self.device == "cuda" and gpus_per_batch == 0:
                raise ValueError(
                    "`gpus_per_batch` must be > 0 with `device` 'cuda' (each batch trains on "
                    "a GPU share Ray reserves for it), got 0"
                )
        self.address = address
        self.num_cpus = num_cpus
        self.compile = compile
        self.cpus_per_batch = check_positive(cpus_per_batch, "cpus_per_batch")
        self.gpus_per_batch = gpus_per_batch
        self.max_retries = int(check_nonnegative(max_retries, "max_retries"))
        self.live_progress = live_progress
        self.batched = batched
        self.max_batch_memory = max_batch_memory
        self.eval_every = eval_every
        self._ray: Any = None
        self._started = False
        self._token_mode = False

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
            failures: tuple[type[BaseException], ...] = (ConnectionError, RuntimeError, ValueError)
            failures += (ray.exceptions.RayError,)
            if self.address is None:
                # A local instance reports no usage statistics unless the user asked for them.
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                options["num_cpus"] = self.num_cpus
                try:
                    ray.init(**options)
                except failures as error:
                    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    raise EngineError(
                        f"cannot reach Ray (start a local Ray instance): {first}"
                    ) from None
            else:
                _check_reachable(self.address)
                options["address"] = self.address
                with _token_mode() as token:
                    try:
                        ray.init(**options)
                    except failures as error:
                        raise EngineError(_join_failure(self.address, error, token)) from None
                self._token_mode = token is not None
            self._started = True
        self._ray = ray

    def close(self) -> None:
        """Shut down the local Ray instance this engine started; a joined cluster keeps running
        (this process only disconnects from it)."""
        if self._ray is not None and self._started:
            self._ray.shutdown()
            if self._token_mode:  # the token mode was for that connection only
                _reload_ray_config()
        self._ray, self._started, self._token_mode = None, False, False

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

    def _placement(self) -> tuple[str, float]:
        """The device the workers train on and the GPUs each batch reserves, for this cluster.

        Raises:
            EngineError: batches that need GPUs on a cluster without any.
        """
        self.start()
        gpus = float(self._ray.cluster_resources().get("GPU", 0.0))
        device = self.device
        if device == "auto":
            device = "cuda" if gpus > 0 else "cpu"
        share = self.gpus_per_batch
        if share is None:
            share = 1.0 if device == "cuda" else 0.0
        if share > 0 and gpus < share:
            raise EngineError(
                f"each batch asks Ray for {share:g} GPU (`device` {self.device!r}), but the "
                f"cluster has {gpus:g}; start its nodes with GPUs, or use device 'cpu' or 'auto'"
            )
        return device, share

    @property
    def slots(self) -> int:
        """Batches the cluster trains at once: its CPUs (and GPUs) over what one batch takes."""
        _, gpus_per_batch = self._placement()
        resources = self._ray.cluster_resources()
        slots = float(resources.get("CPU", 1.0)) / self.cpus_per_batch
        if gpus_per_batch > 0:
            slots = min(slots, float(resources.get("GPU", 0.0)) / gpus_per_batch)
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
        device, gpus_per_batch = self._placement()
        task = ray.remote(_train_on_worker).options(
            num_cpus=self.cpus_per_batch,
            num_gpus=gpus_per_batch,
            max_retries=self.max_retries,
            retry_exceptions=False,
            name="dropkit.train_batch",
        )
        board: Any = None
        if on_progress is not None and self.live_progress:
            board = ray.remote(_progress_board()).options(num_cpus=0).remote()
        shared: dict[int, Any] = {}  # one copy of each data set and model in the object store
        threads = max(1, math.floor(self.cpus_per_batch))
        pending: dict[Any, int] = {}

        def put(value: Any) -> Any:
            if value is None:
                return None
            if id(value) not in shared:
                shared[id(value)] = ray.put(value)
            return shared[id(value)]

        for number, job in enumerate(jobs):
            ref = task.remote(
                put(job.data),
                job.configs,
                self.compile,
                threads,
                board,
                number,
                device,
                put(job.model),
                self.batched,
                self.max_batch_memory,
                self.eval_every,
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
