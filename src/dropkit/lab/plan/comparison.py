"""Arms of a comparison: parse them, check them against a model kind, expand them into runs.

An arm is one regularizer of the registry (:mod:`dropkit.lab.plan.arms`) or several joined by ``+``
(``dropout+l2``). Each regularizer maps onto the fields of a
:class:`~dropkit.lab.plan.config.RunConfig`: the dropout rates ``p`` and ``input_p``, the
``max_norm`` bound, or a named entry of ``regularizers`` with its strength. The registry is the
one list of arms; this module only combines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dropkit.lab.plan.arms import (
    ARM_KINDS,
    ARM_NAMES,
    REGULARIZERS,
    STRENGTHS,
    Regularizer,
    Strengths,
    trainer_entries,
)
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec

__all__ = [
    "ARM_NAMES",
    "BATCHED_REGULARIZERS",
    "REGULARIZERS",
    "STRENGTH_NAMES",
    "Arm",
    "ArmError",
    "Regularizer",
    "Strengths",
    "build_configs",
    "check_arms",
    "default_epochs",
    "parse_arms",
]


class ArmError(ValueError):
    """An arm list that cannot be used, with a one-line reason naming the argument."""


BATCHED_REGULARIZERS = trainer_entries("stacked")
"""The ``RunConfig.regularizers`` entries the stacked MLP trainer (:mod:`dropkit.lab.train.stacked`)
can express (derived from the registry: the arms that list ``stacked`` in their ``trainers``);
MLP runs with other entries train in :mod:`dropkit.lab.train.module_loop`."""

STRENGTH_NAMES: tuple[str, ...] = tuple(STRENGTHS)


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: one regularizer or several joined by ``+``.

    Attributes:
        parts: the regularizers, in the order they were named.
    """

    parts: tuple[Regularizer, ...]

    @property
    def spec(self) -> str:
        """The arm as written on the command line, e.g. ``dropout+l2``."""
        return "+".join(r.name for r in self.parts)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The model kinds every part applies to."""
        return tuple(k for k in ARM_KINDS if all(k in r.kinds for r in self.parts))

    @property
    def options(self) -> tuple[str, ...]:
        """The :class:`Strengths` fields the arm reads."""
        return tuple(dict.fromkeys(o for r in self.parts for o in r.options))

    def fields(self, strengths: Strengths) -> dict[str, Any]:
        """The ``RunConfig`` fields of this arm: ``p``, ``input_p``, ``max_norm``, ``regularizers``.

        ``strengths`` must be :meth:`Strengths.resolved`.
        """
        entries: dict[str, float] = {}
        for part in self.parts:
            if part.entry is not None:
                strength = 1.0 if part.strength is None else strengths.value(part.strength)
                entries[part.entry] = strength
        return {
            "p": strengths.p if any(r.sets_p for r in self.parts) else 0.0,
            "input_p": strengths.input_p if any(r.sets_input_p for r in self.parts) else 0.0,
            "max_norm": strengths.max_norm if any(r.sets_max_norm for r in self.parts) else None,
            "regularizers": tuple(sorted(entries.items())),
        }

    @property
    def name(self) -> str:
        """The arm's label, as :attr:`RunConfig.arm` writes it (``l2+dropout`` → ``dropout+l2``)."""
        values = self.fields(Strengths().resolved(epochs=100, kind="mlp", n_train=100))
        return RunConfig(**values).arm


def _valid() -> str:
    return ", ".join(ARM_NAMES)


def parse_arms(text: str) -> list[Arm]:
    """Arms from ``"none,dropout,dropout+l2"``: comma-separated, regularizers joined by ``+``.

    Raises:
        ArmError: an unknown name (the message lists the valid ones), an empty list, a part
            named twice in one arm, parts that exclude each other, or two arms that are the
            same runs.
    """
    arms: list[Arm] = []
    labels: dict[str, str] = {}
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ArmError(f"`arms`: no arm in {text!r}; valid arms: {_valid()}")
    for item in items:
        names = [name.strip() for name in item.split("+")]
        unknown = [name for name in names if name not in REGULARIZERS]
        if unknown:
            raise ArmError(
                f"`arms`: unknown arm {unknown[0]!r} in {item!r}; valid arms: {_valid()}"
            )
        if len(set(names)) != len(names):
            raise ArmError(f"`arms`: {item!r} names a regularizer twice")
        if "none" in names and len(names) > 1:
            raise ArmError(f"`arms`: {item!r} combines 'none' with other regularizers")
        arm = Arm(tuple(REGULARIZERS[name] for name in names))
        entries = [r.entry for r in arm.parts if r.entry is not None]
        if len(set(entries)) != len(entries):
            raise ArmError(f"`arms`: {item!r} sets the same regularizer twice")
        # Entries that say how the rate p is applied: two of them in one arm conflict.
        conflict = [n for n in names if REGULARIZERS[n].applies_rate]
        if len({REGULARIZERS[n].entry for n in conflict}) > 1:
            raise ArmError(
                f"`arms`: {item!r} combines {' and '.join(map(repr, conflict))}, which exclude "
                "each other"
            )
        if len(names) > 1 and not arm.kinds:
            raise ArmError(f"`arms`: the parts of {item!r} apply to no common model kind")
        label = arm.name
        if label in labels:
            raise ArmError(f"`arms`: {labels[label]!r} and {item!r} are the same arm ({label})")
        labels[label] = item
        arms.append(arm)
    return arms


def check_arms(arms: Sequence[Arm], kind: str) -> None:
    """Refuse arms that do not apply to the model kind.

    Raises:
        ArmError: naming the arm, the kind and the kinds it applies to.
    """
    for arm in arms:
        if kind not in arm.kinds:
            fits = ", ".join(arm.kinds) or "no single kind"
            raise ArmError(
                f"`arms`: arm {arm.spec!r} does not apply to model {kind!r} (it applies to: {fits})"
            )


def build_configs(
    arms: Sequence[Arm],
    strengths: Strengths,
    seeds: Sequence[int],
    data: DataSpec,
    model: ModelSpec,
    train: TrainSpec,
    *,
    n_train: int | None = None,
) -> list[RunConfig]:
    """Every arm times every seed, as run configs (arm-major order).

    Args:
        arms: from :func:`parse_arms`.
        strengths: the arms' strengths; ``None`` defaults resolve against ``train.epochs``,
            ``model.kind`` and ``n_train``.
        seeds: the seeds of every arm (the same seeds for all arms, so they pair).
        data, model, train: shared by every run.
        n_train: training-set size (for the ``concrete`` default 2/N).

    Raises:
        ArmError: an arm that does not apply to ``model.kind``.
    """
    check_arms(arms, model.kind)
    resolved = strengths.resolved(epochs=train.epochs, kind=model.kind, n_train=n_train)
    return [
        RunConfig(data, model, train, seed=seed, **arm.fields(resolved))
        for arm in arms
        for seed in seeds
    ]


# Epochs per data set for ``dropkit compare`` (see :func:`default_epochs`).
_DEFAULT_EPOCHS = {
    ("circles", "mlp"): 1000,
    ("moons", "mlp"): 500,
    ("digits", "mlp"): 100,
    ("digits", "cnn"): 30,
    ("breast_cancer", "mlp"): 100,
    ("wine", "mlp"): 200,
    ("mnist", "mlp"): 20,
}
_FALLBACK_EPOCHS = {"mlp": 200, "cnn": 30, "rnn": 30}


def default_epochs(data_name: str, kind: str) -> int:
    """Epochs that let ``dropkit compare`` with every arm and 10 seeds finish in minutes.

    Small data sets get many epochs (one epoch of ``circles`` is one mini-batch), larger ones
    few; CSV files get the model kind's fallback. ``circles`` gets 1000: the 500-unit MLP fits
    its 30 training points by then, but the case study's overfitting (and dropout's gain over
    it) shows only after 2000–4000 epochs: compare with ``epochs=4000`` to reproduce
    ``dropkit demo``'s setting (BatchNorm and concrete arms train one run at a time and make
    that several minutes).
    """
    return _DEFAULT_EPOCHS.get((data_name, kind), _FALLBACK_EPOCHS.get(kind, 200))
