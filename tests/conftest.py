"""Shared fixtures: every test starts from the same seeds; lab modules share one-thread and
dataset fixtures."""

from __future__ import annotations

import random
import signal
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from dropkit.lab.plan.config import DataSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from helpers import Spawn


@pytest.fixture(autouse=True)
def _seeds_fixed() -> None:
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (code under test may use the legacy global RNG)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of small lab models (``pytest.mark.usefixtures``): they
    train several times faster on one thread than on two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def circles() -> Dataset:
    return load_dataset(DataSpec("circles"))


@pytest.fixture(scope="module")
def moons() -> Dataset:
    return load_dataset(DataSpec("moons"))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a command with text pipes; after the test it is killed if still running and reaped,
    whatever the test did, so no process outlives its test."""
    started: list[subprocess.Popen[str]] = []

    def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        # SIGINT back to its default in the child: a test runner started as a background job of
        # a non-interactive shell ignores SIGINT, the child would inherit that, and Python then
        # installs no KeyboardInterrupt handler (a Ctrl-C test would see the signal ignored).
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_default_sigint,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()
