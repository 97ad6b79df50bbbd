"""The arm registry: every regularizer the lab compares, each defined once, here.

An *arm* of a comparison is one regularizer (or several joined by ``+``, see
:mod:`dropkit.lab.plan.comparison`). Each :class:`Regularizer` below says, in one place, what
the lab needs to know of it:

- ``name``, ``change`` (one line: what it changes) and ``reference`` (its paper);
- ``strength``: the name of its :class:`Strength` (the number that sets how strong it is, with
  its default, unit and valid range), or None;
- ``kinds``: the model kinds it applies to (``mlp``, ``cnn``, ``rnn``);
- ``acts_on``: where it acts: the ``model`` (a module is added or replaced), the ``loss`` (a
  term or a changed target), the optimizer ``step`` (a constraint after it), the ``loop``
  (which epochs, which weights are kept) or the ``data`` (each training batch perturbed);
- ``trainers``: the trainers that run it (:data:`ARM_TRAINERS`): ``stacked``, the stacked MLP
  trainer (:mod:`dropkit.lab.train.stacked`); ``loop``, the generic loop
  (:mod:`dropkit.lab.train.module_loop`), which every arm of a built-in model lists: runs with an
  arm the stacked trainer cannot run train there; ``vmapped``, the trainer of a user's own
  model (:mod:`dropkit.lab.train.vmapped`), which exactly the arms of kind ``custom`` list.
  :func:`trainer_entries` derives each trainer's entries from this one declaration;
- ``effect``: what its entry does to a run, as the :class:`~dropkit.lab.plan.effects.RunEffects`
  fields it sets: ``effect(strength, epochs)`` returns them (``{"l2": strength}``,
  ``{"dropout_window": (0, round(strength·epochs))}``, ``{"batchnorm": "after_dropout"}``, ...).
  :func:`dropkit.lab.plan.effects.run_effects` applies the effects of a run's entries, and every
  trainer and the model builder read that value, never the entries' names;
- ``targets``: for an arm that acts on the loss through the training targets, the function
  ``targets(soft, strength, n_classes)`` that maps the targets (``(N,)`` floats in {0, 1} for
  two classes, one-hot rows ``(N, K)`` otherwise) to the ones the loss trains on;
- how it maps onto a :class:`~dropkit.lab.plan.config.RunConfig`: the dropout rates ``p`` and
  ``input_p``, the ``max_norm`` bound, or an ``entry`` of ``RunConfig.regularizers`` holding
  its strength (1.0 for an on/off entry). An entry with ``applies_rate`` says how the hidden
  rate ``p`` is applied (BatchNorm orders, spatial dropout, early dropout, ...): two such
  entries exclude each other, and the run's label names the entry instead of ``dropout``.

Config, models, trainers, statistics labels, the CLI's options and help, and argument
validation all read this registry; adding an arm is one definition here plus its tests (and,
for an effect no arm had before, a field of ``RunEffects`` that the trainers apply).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

from dropkit._validation import (
    check_positive,
    check_positive_int,
    check_probability,
    check_trainable_rate,
)

__all__ = [
    "ACTS_ON",
    "ARM_KINDS",
    "ARM_NAMES",
    "ARM_TRAINERS",
    "CUSTOM_KIND",
    "MODEL_KINDS",
    "RATE_ENTRIES",
    "REGULARIZERS",
    "STRENGTHS",
    "Effect",
    "Regularizer",
    "Strength",
    "Strengths",
    "entry_regularizer",
    "module_entries",
    "target_transforms",
    "trainer_entries",
]

MODEL_KINDS = ("mlp", "cnn", "rnn")
CUSTOM_KIND = "custom"
"""The kind of a user's own model (``model=`` a factory or an ``nn.Module``): arms that act
on the loss, the optimizer step, the training loop or the data apply to it, and the rate
``p`` of its own dropout; arms that change a built-in model's structure do not."""
ARM_KINDS = (*MODEL_KINDS, CUSTOM_KIND)
ACTS_ON = ("model", "loss", "step", "loop", "data")
ARM_TRAINERS = ("stacked", "loop", "vmapped")
"""The trainers an arm may declare (``Regularizer.trainers``): the stacked MLP trainer, the
generic loop over built-in models, the vmapped trainer of a user's own model."""

Effect = Callable[[float, int], dict[str, Any]]
"""``effect(strength, epochs)``: the :class:`~dropkit.lab.plan.effects.RunEffects` fields an
entry of that strength sets in a run of ``epochs`` epochs."""


@dataclass(frozen=True)
class Strength:
    """The number that sets how strong an arm is: one keyword argument and one CLI option.

    Attributes:
        name: the keyword of :func:`dropkit.lab.compare` and the field of :class:`Strengths`
            (the CLI option is ``--name`` with dashes).
        help: what the number is, one line.
        default: its default; None: resolved per run by ``resolve``.
        unit: ``""``, ``"epochs"``, ``"pixels"``, ...
        domain: ``"rate"`` (a drop probability the lab trains with: ``[0, 1)``),
            ``"probability"`` (``[0, 1]``), ``"positive"`` (``> 0``, finite) or
            ``"positive_int"`` (an int ``>= 1``).
        resolve: the default of a None value: ``resolve(epochs, kind, n_train)``.
    """

    name: str
    help: str
    default: float | None
    unit: str = ""
    domain: str = "positive"
    resolve: Callable[[int, str, int | None], float] | None = None

    def check(self, value: Any) -> Any:
        """``value`` validated (None allowed when the default is resolved per run).

        Raises:
            TypeError, ValueError: naming the argument, the valid range and the value.
        """
        if value is None and self.resolve is not None:
            return None
        if self.domain == "rate":
            return check_trainable_rate(value, self.name)
        if self.domain == "probability":
            return check_probability(value, self.name)
        if self.domain == "positive_int":
            return check_positive_int(value, self.name)
        return check_positive(value, self.name)


STRENGTHS: dict[str, Strength] = {
    s.name: s
    for s in (
        Strength("p", "hidden drop probability of the dropout arms", 0.5, domain="rate"),
        Strength("input_p", "drop probability of input_dropout", 0.2, domain="rate"),
        Strength("l1", "λ of l1: loss + λ·Σ|w| (weights, not biases)", 1e-5),
        Strength("l2", "λ of l2: loss + λ·Σw² (weights, not biases)", 1e-4),
        Strength("max_norm", "bound c of max_norm on each hidden unit's incoming weights", 3.0),
        Strength(
            "patience",
            "epochs without a better loss on its held-out rows before early_stopping stops "
            "(default: a tenth of the epochs, at least 10)",
            None,
            unit="epochs",
            domain="positive_int",
            resolve=lambda epochs, kind, n_train: max(10, epochs // 10),
        ),
        Strength("noise", "σ of gaussian_noise on hidden activations", 0.1),
        Strength(
            "augment",
            "augment: jitter in feature standard deviations (tables), shift in pixels "
            "(images) (default: 0.1, images 1)",
            None,
            resolve=lambda epochs, kind, n_train: 1.0 if kind == "cnn" else 0.1,
        ),
        Strength(
            "switch",
            "fraction of the epochs before early/late_dropout switch",
            0.25,
            domain="probability",
        ),
        Strength(
            "concrete",
            "dropout-regularizer weight of concrete (default: 2/N, N training samples)",
            None,
            resolve=lambda epochs, kind, n_train: 2.0 / n_train if n_train else 0.01,
        ),
        Strength("block_size", "block edge of dropblock", 3, unit="pixels", domain="positive_int"),
        Strength(
            "smoothing", "ε of label_smoothing: targets (1 − ε)·y + ε/K", 0.1, domain="probability"
        ),
    )
}


def _smooth_targets(soft: Tensor, epsilon: float, n_classes: int) -> Tensor:
    """Label smoothing: ``(1 − ε)·y + ε/K`` for binary targets ``(N,)`` or one-hot ``(N, K)``."""
    return soft * (1.0 - epsilon) + epsilon / n_classes


@dataclass(frozen=True)
class Regularizer:
    """One regularizer of the comparison (see the module docstring for each field)."""

    name: str
    change: str
    reference: str = ""
    kinds: tuple[str, ...] = ARM_KINDS
    acts_on: tuple[str, ...] = ()
    trainers: tuple[str, ...] = ("loop",)
    sets_p: bool = False
    sets_input_p: bool = False
    sets_max_norm: bool = False
    entry: str | None = None
    strength: str | None = None
    applies_rate: bool = False
    targets: Callable[[Tensor, float, int], Tensor] | None = None
    effect: Effect | None = None

    def __post_init__(self) -> None:
        unknown = [a for a in self.acts_on if a not in ACTS_ON]
        if unknown or any(k not in ARM_KINDS for k in self.kinds):
            raise ValueError(f"regularizer {self.name!r}: bad acts_on or kinds")
        if self.strength is not None and self.strength not in STRENGTHS:
            raise ValueError(f"regularizer {self.name!r}: unknown strength {self.strength!r}")
        if any(t not in ARM_TRAINERS for t in self.trainers):
            raise ValueError(f"regularizer {self.name!r}: trainers must be among {ARM_TRAINERS}")
        # A user's model trains in the vmapped trainer only, a built-in one falls back to the
        # loop, and the stacked trainer trains built-in MLPs: the trainers follow the kinds.
        if ("vmapped" in self.trainers) != (CUSTOM_KIND in self.kinds):
            raise ValueError(
                f"regularizer {self.name!r}: the vmapped trainer runs exactly the arms that "
                f"apply to a {CUSTOM_KIND} model"
            )
        if any(k in MODEL_KINDS for k in self.kinds) and "loop" not in self.trainers:
            raise ValueError(f"regularizer {self.name!r}: every built-in model trains in the loop")
        if "stacked" in self.trainers and "mlp" not in self.kinds:
            raise ValueError(f"regularizer {self.name!r}: the stacked trainer trains MLPs only")
        if self.targets is not None and ("stacked" in self.trainers or self.entry is None):
            raise ValueError(
                f"regularizer {self.name!r}: a targets function needs an entry, and the stacked "
                "trainer does not apply one"
            )
        if self.effect is not None and self.entry is None:
            raise ValueError(f"regularizer {self.name!r}: an effect belongs to an entry")

    @property
    def options(self) -> tuple[str, ...]:
        """The :data:`STRENGTHS` this arm reads."""
        names = ["p"] if self.sets_p else []
        names += ["input_p"] if self.sets_input_p else []
        names += ["max_norm"] if self.sets_max_norm else []
        names += [self.strength] if self.strength else []
        return tuple(names)

    @property
    def switch(self) -> bool:
        """An on/off entry (strength 1.0 by convention): labels show no number for it."""
        return self.entry is not None and self.strength is None


_MLP_CNN = ("mlp", "cnn")
_EVERY_TRAINER = ARM_TRAINERS
_LOOP = ("loop",)
_LOOP_VMAPPED = ("loop", "vmapped")


def _window(strength: float, epochs: int, early: bool) -> dict[str, Any]:
    """The hidden dropout acts in epochs ``[0, round(s·E))`` (early) or ``[round(s·E), E)``."""
    switch = round(strength * epochs)
    return {"dropout_window": (0, switch) if early else (switch, epochs)}


def _batchnorm_after_layer(strength: float, epochs: int) -> dict[str, Any]:
    """``Linear/Conv → BN → ReLU → drop``: the effect of the ``batchnorm`` entry."""
    return {"batchnorm": "after_layer"}


_SRIVASTAVA = (
    "Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov, Dropout: a simple way to "
    "prevent neural networks from overfitting, JMLR 2014"
)
_IOFFE = "Ioffe & Szegedy, Batch normalization, ICML 2015"
_LI = (
    "Li, Chen, Hu & Yang, Understanding the disharmony between dropout and batch "
    "normalization by variance shift, CVPR 2019"
)
_LIU = "Liu, Xu, Jin, Shen & Darrell, Dropout reduces underfitting, ICML 2023"
_GAL = (
    "Gal & Ghahramani, A theoretically grounded application of dropout in recurrent neural "
    "networks, NeurIPS 2016"
)

REGULARIZERS: dict[str, Regularizer] = {
    r.name: r
    for r in (
        Regularizer(
            "none",
            "nothing: the baseline every other arm is tested against",
            trainers=_EVERY_TRAINER,
        ),
        Regularizer(
            "dropout",
            "inverted dropout (rate p) after every hidden layer's activation",
            _SRIVASTAVA,
            acts_on=("model",),
            trainers=_EVERY_TRAINER,
            sets_p=True,
        ),
        Regularizer(
            "input_dropout",
            "inverted dropout (rate input_p) on the inputs",
            _SRIVASTAVA,
            acts_on=("model",),
            trainers=_EVERY_TRAINER,
            sets_input_p=True,
        ),
        Regularizer(
            "l1",
            "loss + λ·Σ|w| over the weights of every layer (not the biases), λ = l1",
            "Tibshirani, Regression shrinkage and selection via the lasso, JRSS-B 1996",
            acts_on=("loss",),
            trainers=_EVERY_TRAINER,
            entry="l1",
            strength="l1",
            effect=lambda strength, epochs: {"l1": strength},
        ),
        Regularizer(
            "l2",
            "loss + λ·Σw² over the weights of every layer (not the biases; Keras' kernel "
            "regularizer), λ = l2",
            "Krogh & Hertz, A simple weight decay can improve generalization, NeurIPS 1991",
            acts_on=("loss",),
            trainers=_EVERY_TRAINER,
            entry="l2",
            strength="l2",
            effect=lambda strength, epochs: {"l2": strength},
        ),
        Regularizer(
            "max_norm",
            "after every optimizer step each hidden unit's incoming weight vector is rescaled "
            "to norm <= c (max_norm; the paper used c = 3 to 4)",
            _SRIVASTAVA,
            kinds=(*_MLP_CNN, CUSTOM_KIND),
            acts_on=("step",),
            trainers=_EVERY_TRAINER,
            sets_max_norm=True,
        ),
        Regularizer(
            "batchnorm",
            "BatchNorm in every hidden block: Linear → BN → ReLU, no dropout",
            _IOFFE,
            kinds=_MLP_CNN,
            acts_on=("model",),
            trainers=_LOOP,
            entry="batchnorm",
            applies_rate=True,
            effect=_batchnorm_after_layer,
        ),
        Regularizer(
            "bn_dropout",
            "BatchNorm then dropout: Linear → BN → ReLU → Dropout(p), the recommended order",
            _LI,
            kinds=_MLP_CNN,
            acts_on=("model",),
            trainers=_LOOP,
            sets_p=True,
            entry="batchnorm",
            applies_rate=True,
            effect=_batchnorm_after_layer,
        ),
        Regularizer(
            "dropout_bn",
            "dropout before BatchNorm: Linear → ReLU → Dropout(p) → BN, the order whose "
            "variance shift hurts",
            _LI,
            kinds=_MLP_CNN,
            acts_on=("model",),
            trainers=_LOOP,
            sets_p=True,
            entry="dropout_bn",
            applies_rate=True,
            effect=lambda strength, epochs: {"batchnorm": "after_dropout"},
        ),
        Regularizer(
            "early_stopping",
            "the loop holds out 20% of the fit rows (of the training set without a validation "
            "split; never the validation rows that choose the winner), stops when their loss has "
            "not improved for `patience` epochs and restores the best weights",
            "Prechelt, Early stopping - but when?, Neural Networks: Tricks of the Trade 1998",
            acts_on=("loop",),
            trainers=_EVERY_TRAINER,
            entry="early_stopping",
            strength="patience",
            effect=lambda strength, epochs: {"patience": max(1, round(strength))},
        ),
        Regularizer(
            "augment",
            "the loop perturbs each training batch: tables get Gaussian jitter of σ = augment "
            "times each feature's standard deviation, images shifts of up to augment pixels",
            "Simard, Steinkraus & Platt, Best practices for convolutional neural networks, "
            "ICDAR 2003",
            acts_on=("data",),
            trainers=_EVERY_TRAINER,
            entry="augment",
            strength="augment",
            effect=lambda strength, epochs: {"augment": strength},
        ),
        Regularizer(
            "gaussian_noise",
            "additive Gaussian noise N(0, σ²), σ = noise, on every hidden layer's output in "
            "training (after its dropout)",
            _SRIVASTAVA + " (section 10)",
            kinds=MODEL_KINDS,
            acts_on=("model",),
            trainers=("stacked", "loop"),
            entry="gaussian_noise",
            strength="noise",
            effect=lambda strength, epochs: {"noise": strength},
        ),
        Regularizer(
            "concrete",
            "concrete dropout: per-layer drop rates learned with a relaxed Bernoulli mask, "
            "`concrete` the weight of the dropout regularizer",
            "Gal, Hron & Kendall, Concrete dropout, NeurIPS 2017",
            kinds=("mlp",),
            acts_on=("model", "loss"),
            trainers=_LOOP,
            entry="concrete",
            strength="concrete",
            effect=lambda strength, epochs: {"concrete": strength},
        ),
        Regularizer(
            "early_dropout",
            "dropout p only during the first `switch` fraction of the epochs, none after",
            _LIU,
            acts_on=("loop",),
            trainers=_EVERY_TRAINER,
            sets_p=True,
            entry="early_dropout",
            strength="switch",
            applies_rate=True,
            effect=lambda strength, epochs: _window(strength, epochs, early=True),
        ),
        Regularizer(
            "late_dropout",
            "no dropout during the first `switch` fraction of the epochs, dropout p after",
            _LIU,
            acts_on=("loop",),
            trainers=_EVERY_TRAINER,
            sets_p=True,
            entry="late_dropout",
            strength="switch",
            applies_rate=True,
            effect=lambda strength, epochs: _window(strength, epochs, early=False),
        ),
        Regularizer(
            "spatial_dropout",
            "after every convolution, dropout (p) of whole channels",
            "Tompson, Goroshin, Jain, LeCun & Bregler, Efficient object localization using "
            "convolutional networks, CVPR 2015",
            kinds=("cnn",),
            acts_on=("model",),
            trainers=_LOOP,
            sets_p=True,
            entry="spatial_dropout",
            applies_rate=True,
            effect=lambda strength, epochs: {"dropout_layer": "spatial_dropout"},
        ),
        Regularizer(
            "dropblock",
            "after every convolution, DropBlock: square blocks of edge block_size dropped "
            "at rate p",
            "Ghiasi, Lin & Le, DropBlock, NeurIPS 2018",
            kinds=("cnn",),
            acts_on=("model",),
            trainers=_LOOP,
            sets_p=True,
            entry="dropblock",
            strength="block_size",
            applies_rate=True,
            effect=lambda strength, epochs: {
                "dropout_layer": "dropblock",
                "block_size": max(1, round(strength)),
            },
        ),
        Regularizer(
            "variational",
            "locked dropout (p): one mask per sequence, shared over time, on the LSTM's "
            "inputs and outputs",
            _GAL,
            kinds=("rnn",),
            acts_on=("model",),
            trainers=_LOOP,
            sets_p=True,
            entry="variational",
            applies_rate=True,
            effect=lambda strength, epochs: {"dropout_layer": "locked_dropout"},
        ),
        Regularizer(
            "recurrent_dropout",
            "dropout (p) on the recurrent state h_{t−1}, one mask per sequence",
            _GAL,
            kinds=("rnn",),
            acts_on=("model",),
            trainers=_LOOP,
            sets_p=True,
            entry="recurrent_dropout",
            applies_rate=True,
            effect=lambda strength, epochs: {"dropout_layer": "recurrent_dropout"},
        ),
        Regularizer(
            "label_smoothing",
            "the loss trains on smoothed targets (1 − ε)·y + ε/K instead of the labels, "
            "ε = smoothing",
            "Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, Rethinking the Inception architecture "
            "for computer vision, CVPR 2016",
            acts_on=("loss",),
            trainers=_LOOP_VMAPPED,
            entry="label_smoothing",
            strength="smoothing",
            targets=_smooth_targets,
        ),
    )
}

ARM_NAMES: tuple[str, ...] = tuple(REGULARIZERS)

_BY_ENTRY: dict[str, Regularizer] = {}
for _regularizer in REGULARIZERS.values():
    if _regularizer.entry is not None:
        # ``batchnorm`` and ``bn_dropout`` share an entry; the entry's own arm defines it.
        _BY_ENTRY.setdefault(_regularizer.entry, _regularizer)

RATE_ENTRIES = frozenset(name for name, r in _BY_ENTRY.items() if r.applies_rate)
"""Entries that say how the hidden rate ``p`` is applied (two of them exclude each other)."""


def trainer_entries(trainer: str) -> frozenset[str]:
    """The ``RunConfig.regularizers`` entries whose arm lists ``trainer`` in its ``trainers``.

    Raises:
        ValueError: ``trainer`` is not one of :data:`ARM_TRAINERS`.
    """
    if trainer not in ARM_TRAINERS:
        raise ValueError(f"`trainer` must be one of {', '.join(ARM_TRAINERS)}, got {trainer!r}")
    return frozenset(name for name, r in _BY_ENTRY.items() if trainer in r.trainers)


def entry_regularizer(entry: str) -> Regularizer:
    """The regularizer that defines ``RunConfig.regularizers`` entry ``entry``.

    Raises:
        ValueError: an entry no regularizer defines.
    """
    try:
        return _BY_ENTRY[entry]
    except KeyError:
        raise ValueError(
            f"unknown regularizer {entry!r}; known: {', '.join(sorted(_BY_ENTRY))}"
        ) from None


def target_transforms(
    regularizers: Sequence[tuple[str, float]],
) -> list[tuple[Callable[[Tensor, float, int], Tensor], float]]:
    """The ``(targets, strength)`` pairs of a run's entries that change the training targets."""
    pairs = []
    for name, strength in regularizers:
        transform = entry_regularizer(name).targets
        if transform is not None:
            pairs.append((transform, strength))
    return pairs


def module_entries(kind: str) -> frozenset[str]:
    """The entries that change the module of a ``kind`` model (the others act elsewhere)."""
    return frozenset(
        name for name, r in _BY_ENTRY.items() if "model" in r.acts_on and kind in r.kinds
    )


class Strengths(Mapping[str, Any]):
    """The strength of every arm, by :data:`STRENGTHS` name (a read-only mapping).

    ``Strengths(p=0.4, l2=1e-3)``: every value is validated on construction (the message
    names the argument); names left out take their defaults, and ``None`` defaults are
    resolved per run by :meth:`resolved`. Values are also attributes: ``strengths.p``.
    """

    def __init__(self, **values: Any) -> None:
        unknown = [name for name in values if name not in STRENGTHS]
        if unknown:
            raise TypeError(f"unknown strength {unknown[0]!r}; known: {', '.join(STRENGTHS)}")
        self._values = {
            name: spec.check(values[name]) if name in values else spec.default
            for name, spec in STRENGTHS.items()
        }

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values")
        if values is None or name not in values:
            raise AttributeError(name)
        return values[name]

    def __repr__(self) -> str:
        return f"Strengths({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strengths) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def resolved(self, *, epochs: int, kind: str, n_train: int | None) -> Strengths:
        """Every ``None`` replaced by its default for runs of ``epochs`` epochs on ``kind``."""
        values = dict(self._values)
        for name, spec in STRENGTHS.items():
            if values[name] is None and spec.resolve is not None:
                values[name] = spec.resolve(epochs, kind, n_train)
        return Strengths(**values)

    def value(self, name: str) -> float:
        """The resolved value of ``name`` as a float.

        Raises:
            ValueError: the value is still None (call :meth:`resolved` first).
        """
        value = self._values[name]
        if value is None:
            raise ValueError(f"strength {name!r} is not resolved; call `resolved` first")
        result = float(value)
        if not math.isfinite(result):
            raise ValueError(f"strength {name!r} is not finite: {value!r}")
        return result
