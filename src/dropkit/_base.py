"""Bases shared by dropkit's modules: a validated drop rate, and the dropout-layer base class.

Also the two accessors the tools use to read and set the rate of any dropout module, dropkit's
or torch's (torch's modules declare no type for ``p``).
"""

from __future__ import annotations

import torch
from torch import nn

from dropkit._validation import check_generator, check_probability

__all__ = ["DropoutLayer", "Rated", "module_rate", "set_module_rate"]


class Rated:
    """Mixin: a drop probability ``p`` validated on every assignment, and an optional generator.

    Shared by every dropkit module that has a rate (layers here, weight-level modules in
    :mod:`dropkit.weights`), so ``module.p = 30`` fails the same way everywhere.
    """

    _p: float
    generator: torch.Generator | None

    def _init_rate(self, p: float, generator: torch.Generator | None) -> None:
        self.p = p
        check_generator(generator)
        self.generator = generator

    @property
    def p(self) -> float:
        """Drop probability: the probability of an element to be zeroed (not the keep one)."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_probability(value)


class DropoutLayer(Rated, nn.Module):
    """Base of every dropkit dropout layer: a validated ``p``, a generator and ``extra_repr``."""

    def __init__(self, p: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self._init_rate(p, generator)

    def _extra_repr_items(self) -> list[str]:
        return []

    def extra_repr(self) -> str:
        return ", ".join([f"p={self.p}", *self._extra_repr_items()])


def module_rate(module: nn.Module) -> float:
    """A dropout module's ``p`` (torch's modules declare no type for it)."""
    return float(getattr(module, "p"))  # noqa: B009


def set_module_rate(module: nn.Module, p: float) -> None:
    """Set a dropout module's ``p`` (validated by dropkit's layers, plain for torch's)."""
    setattr(module, "p", p)  # noqa: B010
