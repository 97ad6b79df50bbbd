"""Shared test helpers: the contract every dropkit dropout layer must keep, and shared types."""

from __future__ import annotations

import copy
import pickle
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

Spawn = Callable[[list[str], dict[str, str]], "subprocess.Popen[str]"]
"""The ``spawn`` fixture (conftest.py): start ``command`` with ``env``; reaped after the test."""

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_dropout_layer(
    make: Callable[..., nn.Module],
    shape: tuple[int, ...],
    *,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Check a layer class (or factory) ``make(p, **kwargs, generator=...)`` on inputs of ``shape``.

    Checks: shape/dtype/device kept for every float dtype; eval mode returns the input itself;
    p=0 returns the input itself; p=1 gives exact zeros and exact zero gradients even for
    inf inputs; the same generator seed gives the same output and a different seed a different
    one; ``extra_repr`` names the rate; no parameters or buffers; deepcopy and pickle work;
    the rate is validated on assignment.
    """
    kwargs = kwargs or {}
    x = torch.randn(shape)

    for dtype in FLOAT_DTYPES:
        layer = make(0.3, **kwargs)
        y = layer(x.to(dtype))
        assert y.shape == x.shape and y.dtype == dtype, f"{dtype}: got {y.shape} {y.dtype}"

    layer = make(0.3, **kwargs).eval()
    assert layer(x) is x, "eval mode must return the input unchanged"

    assert make(0.0, **kwargs)(x) is x, "p=0 must return the input unchanged"

    inf_x = x.clone()
    inf_x.view(-1)[0] = float("inf")
    inf_x.requires_grad_(True)
    y = make(1.0, **kwargs)(inf_x)
    assert torch.equal(y, torch.zeros_like(y)), "p=1 must give exact zeros"
    y.sum().backward()
    assert inf_x.grad is not None and torch.equal(inf_x.grad, torch.zeros_like(x)), (
        "p=1 must give exact zero gradients"
    )

    def run(seed: int) -> torch.Tensor:
        return make(0.5, **kwargs, generator=torch.Generator().manual_seed(seed))(x)

    assert torch.equal(run(7), run(7)), "same generator seed must give the same output"
    assert not torch.equal(run(7), run(8)), "different seeds should give different masks"

    layer = make(0.25, **kwargs)
    assert "p=0.25" in repr(layer), repr(layer)
    assert list(layer.parameters()) == [] and list(layer.buffers()) == []
    assert layer.state_dict() == {}
    copied = copy.deepcopy(layer)
    restored = pickle.loads(pickle.dumps(layer))
    assert copied.p == restored.p == 0.25
    with pytest.raises(ValueError, match="percentage"):
        layer.p = 30
    assert layer.p == 0.25


def stored_runs(store: Path) -> int:
    """How many runs the results store at ``store`` holds (0: no file, or no runs table)."""
    if not store.exists():
        return 0
    with sqlite3.connect(store) as connection:
        try:
            return int(connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
