"""What a run's regularizer entries do, as one value every trainer reads: :class:`RunEffects`.

Each arm of the registry (:mod:`dropkit.lab.plan.arms`) declares its effect once, as the
:class:`RunEffects` fields its ``RunConfig.regularizers`` entry sets (``Regularizer.effect``;
the target transforms as ``Regularizer.targets``). :func:`run_effects` applies the effects of a
run's entries; the trainers (:mod:`dropkit.lab.train.dispatch`, :mod:`~dropkit.lab.train.contract`,
:mod:`~dropkit.lab.train.module_loop`, :mod:`~dropkit.lab.train.vmapped`) and the model builder
(:mod:`dropkit.lab.plan.models`) read its fields instead of looking entries up by name, so an
arm means the same thing in every trainer. The dropout rates ``p`` and ``input_p`` and the
``max_norm`` bound are fields of the run config itself and are read there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dropkit.lab.plan.arms import entry_regularizer, target_transforms
from dropkit.lab.plan.config import RunConfig

__all__ = ["BATCHNORM_PLACES", "DROPOUT_LAYERS", "RunEffects", "run_effects"]

BATCHNORM_PLACES = ("after_layer", "after_dropout")
"""Where a built-in model's hidden blocks put BatchNorm: right after the Linear/Conv (before the
ReLU and the dropout: ``batchnorm``, ``bn_dropout``) or after the dropout (``dropout_bn``)."""

DROPOUT_LAYERS = ("dropout", "spatial_dropout", "dropblock", "locked_dropout", "recurrent_dropout")
"""The layers that apply the hidden rate ``p`` in a built-in model: plain dropout, or whole
channels, square blocks (CNN), one mask per sequence on the LSTM's inputs and outputs, or on its
recurrent state (RNN)."""


@dataclass(frozen=True)
class RunEffects:
    """The effects of a run's regularizer entries (None or zero: the run has no such entry).

    Attributes:
        l1: λ of the L1 penalty ``λ·Σ|w|`` on the weights (0: none).
        l2: λ of the L2 penalty ``λ·Σw²`` on the weights (0: none).
        targets: the ``(transform, strength)`` pairs applied in order to the training targets
            (:func:`dropkit.lab.plan.arms.target_transforms`; empty: the labels).
        patience: early stopping's epochs without improvement, an int >= 1 (None: no early
            stopping).
        dropout_window: the 0-based epochs ``[start, stop)`` in which the hidden dropout acts
            (None: every epoch).
        augment: the strength of each training batch's perturbation (None: none).
        noise: σ of the Gaussian noise on hidden activations (None: none).
        batchnorm: where BatchNorm goes in each hidden block, one of :data:`BATCHNORM_PLACES`
            (None: no BatchNorm).
        dropout_layer: the layer that applies the hidden rate ``p``, one of
            :data:`DROPOUT_LAYERS`.
        block_size: the block edge of ``dropblock`` (None without it).
        concrete: the dropout-regularizer weight of concrete dropout, whose learned rates
            replace the hidden dropout (None: no concrete dropout).
    """

    l1: float = 0.0
    l2: float = 0.0
    targets: tuple[tuple[Callable[[Tensor, float, int], Tensor], float], ...] = ()
    patience: int | None = None
    dropout_window: tuple[int, int] | None = None
    augment: float | None = None
    noise: float | None = None
    batchnorm: str | None = None
    dropout_layer: str = "dropout"
    block_size: int | None = None
    concrete: float | None = None

    def __post_init__(self) -> None:
        if self.batchnorm is not None and self.batchnorm not in BATCHNORM_PLACES:
            raise ValueError(
                f"`batchnorm` must be None or one of {', '.join(BATCHNORM_PLACES)}, "
                f"got {self.batchnorm!r}"
            )
        if self.dropout_layer not in DROPOUT_LAYERS:
            raise ValueError(
                f"`dropout_layer` must be one of {', '.join(DROPOUT_LAYERS)}, "
                f"got {self.dropout_layer!r}"
            )


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunEffects)) - {"targets"}


def run_effects(config: RunConfig) -> RunEffects:
    """The :class:`RunEffects` of ``config``: the declared effect of each of its entries.

    Entries are applied in the config's (sorted) order; where two entries set the same field,
    the first decides (entries that exclude each other, e.g. ``early_dropout`` and
    ``late_dropout``, are refused when arms are parsed, and by the model builder for those
    that change the model).

    Raises:
        ValueError: an entry no regularizer defines, or an effect naming no field.
    """
    fields: dict[str, Any] = {}
    epochs = config.train.epochs
    for name, strength in config.regularizers:
        effect = entry_regularizer(name).effect
        if effect is None:
            continue
        for field, value in effect(strength, epochs).items():
            if field not in _FIELDS:
                raise ValueError(f"regularizer {name!r}: its effect sets no field {field!r}")
            fields.setdefault(field, value)
    return RunEffects(targets=tuple(target_transforms(config.regularizers)), **fields)
