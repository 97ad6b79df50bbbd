"""Shared fixtures: every test starts from the same seeds, on the CPU, with one thread."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeds_fixed() -> None:
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002  (code under test may use the legacy global RNG)
    torch.manual_seed(0)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
