"""The comparison arms: each a documented change to the model, the optimizer or the loop.

``dropkit compare --arms none,dropout,l2,dropout+l2`` trains every arm with the same seeds,
data and architecture; an arm is one regularizer or several joined by ``+``. Each regularizer
maps onto the fields of a :class:`~dropkit.lab.config.RunConfig`: the dropout rates ``p`` and
``input_p``, the ``max_norm`` bound, or a named entry of ``regularizers`` with its strength.

=================  ======================================================================
arm                what changes (strength option, default)
=================  ======================================================================
none               nothing: the baseline every arm is tested against
dropout            inverted dropout after every hidden layer (``--p 0.5``)
input_dropout      inverted dropout on the inputs (``--input-p 0.2``)
l1                 ``λ·Σ|w|`` added to the loss over weights, not biases (``--l1 1e-5``)
l2                 ``λ·Σw²`` added to the loss over weights, not biases (``--l2 1e-4``)
max_norm           each hidden unit's incoming weights rescaled to norm <= c after every step
                   (``--max-norm 3``)
batchnorm          BatchNorm in every hidden block (Linear → BN → ReLU), no dropout
bn_dropout         BatchNorm, then dropout after it: Linear → BN → ReLU → Dropout (``--p``)
dropout_bn         dropout before BatchNorm: Linear → ReLU → Dropout → BN (``--p``)
early_stopping     hold out 20% of the training set (never the test set) for validation;
                   stop when its loss has not improved for ``--patience`` epochs, restore
                   the best weights
augment            tables: Gaussian jitter of the inputs, σ = ``--augment`` × each feature's
                   standard deviation; images: random shifts of up to ``--augment`` pixels
gaussian_noise     additive Gaussian noise N(0, σ²) on hidden activations (``--noise 0.1``)
concrete           concrete dropout: learned drop rates (``--concrete``: dropout-regularizer
                   weight, default the paper's 2/N)
early_dropout      dropout ``--p`` for the first ``--switch 0.25`` of the epochs, none after
late_dropout       no dropout for the first ``--switch`` of the epochs, dropout ``--p`` after
spatial_dropout    cnn: dropout of whole channels after convolutions (``--p``)
dropblock          cnn: DropBlock of ``--block-size 3`` squares after convolutions (``--p``)
variational        rnn: locked dropout, one mask per sequence on inputs and outputs (``--p``)
recurrent_dropout  rnn: dropout on the recurrent state h_{t−1} (``--p``)
=================  ======================================================================

See :data:`REGULARIZERS` for the reference paper of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from dropkit._validation import (
    check_positive,
    check_positive_int,
    check_probability,
)
from dropkit.lab.config import (
    DROPOUT_ENTRIES,
    MODEL_KINDS,
    DataSpec,
    ModelSpec,
    RunConfig,
    TrainSpec,
)

__all__ = [
    "ARM_NAMES",
    "BATCHED_REGULARIZERS",
    "REGULARIZERS",
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
    """An arm list that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class Regularizer:
    """One arm of the comparison.

    Attributes:
        name: the arm's name on the command line.
        change: one line: what it changes in the model, the optimizer or the loop.
        reference: the paper it comes from ("" when it has none).
        kinds: the model kinds it applies to.
        sets_p: it uses the hidden dropout rate ``--p``.
        sets_input_p: it uses the input dropout rate ``--input-p``.
        sets_max_norm: it uses the max-norm bound ``--max-norm``.
        entry: the name of its ``RunConfig.regularizers`` entry (None: it has none).
        strength: the :class:`Strengths` field that is the entry's strength (None: 1.0).
    """

    name: str
    change: str
    reference: str = ""
    kinds: tuple[str, ...] = MODEL_KINDS
    sets_p: bool = False
    sets_input_p: bool = False
    sets_max_norm: bool = False
    entry: str | None = None
    strength: str | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """The :class:`Strengths` fields this arm reads."""
        names = ["p"] if self.sets_p else []
        names += ["input_p"] if self.sets_input_p else []
        names += ["max_norm"] if self.sets_max_norm else []
        names += [self.strength] if self.strength else []
        return tuple(names)


_MLP_CNN = ("mlp", "cnn")
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
        Regularizer("none", "nothing: the baseline every other arm is tested against"),
        Regularizer(
            "dropout",
            "inverted dropout (rate --p) after every hidden layer's activation",
            _SRIVASTAVA,
            sets_p=True,
        ),
        Regularizer(
            "input_dropout",
            "inverted dropout (rate --input-p) on the inputs",
            _SRIVASTAVA,
            sets_input_p=True,
        ),
        Regularizer(
            "l1",
            "loss + λ·Σ|w| over the weights of every layer (not the biases), λ = --l1",
            "Tibshirani, Regression shrinkage and selection via the lasso, JRSS-B 1996",
            entry="l1",
            strength="l1",
        ),
        Regularizer(
            "l2",
            "loss + λ·Σw² over the weights of every layer (not the biases; Keras' kernel "
            "regularizer), λ = --l2",
            "Krogh & Hertz, A simple weight decay can improve generalization, NeurIPS 1991",
            entry="l2",
            strength="l2",
        ),
        Regularizer(
            "max_norm",
            "after every optimizer step each hidden unit's incoming weight vector is rescaled "
            "to norm <= c (--max-norm; the paper used c = 3 to 4)",
            _SRIVASTAVA,
            kinds=_MLP_CNN,
            sets_max_norm=True,
        ),
        Regularizer(
            "batchnorm",
            "BatchNorm in every hidden block: Linear → BN → ReLU, no dropout",
            _IOFFE,
            kinds=_MLP_CNN,
            entry="batchnorm",
        ),
        Regularizer(
            "bn_dropout",
            "BatchNorm then dropout: Linear → BN → ReLU → Dropout(--p), the recommended order",
            _LI,
            kinds=_MLP_CNN,
            sets_p=True,
            entry="batchnorm",
        ),
        Regularizer(
            "dropout_bn",
            "dropout before BatchNorm: Linear → ReLU → Dropout(--p) → BN, the order whose "
            "variance shift hurts",
            _LI,
            kinds=_MLP_CNN,
            sets_p=True,
            entry="dropout_bn",
        ),
        Regularizer(
            "early_stopping",
            "the loop holds out 20% of the training set for validation, stops when its loss has "
            "not improved for --patience epochs and restores the best weights",
            "Prechelt, Early stopping - but when?, Neural Networks: Tricks of the Trade 1998",
            entry="early_stopping",
            strength="patience",
        ),
        Regularizer(
            "augment",
            "the loop perturbs each training batch: tables get Gaussian jitter of σ = --augment "
            "times each feature's standard deviation, images shifts of up to --augment pixels",
            "Simard, Steinkraus & Platt, Best practices for convolutional neural networks, "
            "ICDAR 2003",
            entry="augment",
            strength="augment",
        ),
        Regularizer(
            "gaussian_noise",
            "additive Gaussian noise N(0, σ²), σ = --noise, on every hidden layer's output in "
            "training (after its dropout)",
            _SRIVASTAVA + " (section 10)",
            entry="gaussian_noise",
            strength="noise",
        ),
        Regularizer(
            "concrete",
            "concrete dropout: per-layer drop rates learned with a relaxed Bernoulli mask, "
            "--concrete the weight of the dropout regularizer",
            "Gal, Hron & Kendall, Concrete dropout, NeurIPS 2017",
            kinds=("mlp",),
            entry="concrete",
            strength="concrete",
        ),
        Regularizer(
            "early_dropout",
            "dropout --p only during the first --switch fraction of the epochs, none after",
            _LIU,
            sets_p=True,
            entry="early_dropout",
            strength="switch",
        ),
        Regularizer(
            "late_dropout",
            "no dropout during the first --switch fraction of the epochs, dropout --p after",
            _LIU,
            sets_p=True,
            entry="late_dropout",
            strength="switch",
        ),
        Regularizer(
            "spatial_dropout",
            "after every convolution, dropout (--p) of whole channels",
            "Tompson, Goroshin, Jain, LeCun & Bregler, Efficient object localization using "
            "convolutional networks, CVPR 2015",
            kinds=("cnn",),
            sets_p=True,
            entry="spatial_dropout",
        ),
        Regularizer(
            "dropblock",
            "after every convolution, DropBlock: square blocks of edge --block-size dropped "
            "at rate --p",
            "Ghiasi, Lin & Le, DropBlock, NeurIPS 2018",
            kinds=("cnn",),
            sets_p=True,
            entry="dropblock",
            strength="block_size",
        ),
        Regularizer(
            "variational",
            "locked dropout (--p): one mask per sequence, shared over time, on the LSTM's "
            "inputs and outputs",
            _GAL,
            kinds=("rnn",),
            sets_p=True,
            entry="variational",
        ),
        Regularizer(
            "recurrent_dropout",
            "dropout (--p) on the recurrent state h_{t−1}, one mask per sequence",
            _GAL,
            kinds=("rnn",),
            sets_p=True,
            entry="recurrent_dropout",
        ),
    )
}

ARM_NAMES: tuple[str, ...] = tuple(REGULARIZERS)

BATCHED_REGULARIZERS = frozenset(
    {"l1", "l2", "early_stopping", "augment", "gaussian_noise", "early_dropout", "late_dropout"}
)
"""The ``RunConfig.regularizers`` entries the stacked MLP trainer (:mod:`dropkit.lab.batched`)
can express; MLP runs with other entries train in :mod:`dropkit.lab.loop`."""


@dataclass(frozen=True)
class Strengths:
    """The strength of every arm: one command-line option each.

    ``None`` defaults depend on the run: ``patience`` is a tenth of the epochs (at least 10),
    ``augment`` 0.1 standard deviations for tables and 1 pixel for images, ``concrete`` the
    paper's ``2/N`` for ``N`` training samples (precision τ = 1).
    """

    p: float = 0.5
    input_p: float = 0.2
    l1: float = 1e-5
    l2: float = 1e-4
    max_norm: float = 3.0
    patience: int | None = None
    noise: float = 0.1
    augment: float | None = None
    switch: float = 0.25
    concrete: float | None = None
    block_size: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", check_probability(self.p, "p"))
        object.__setattr__(self, "input_p", check_probability(self.input_p, "input_p"))
        object.__setattr__(
            self,
            "switch",
            check_probability(
                self.switch, "switch", description="the fraction of the epochs before the switch"
            ),
        )
        for name in ("l1", "l2", "max_norm", "noise"):
            object.__setattr__(self, name, check_positive(getattr(self, name), name))
        for name in ("augment", "concrete"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_positive(getattr(self, name), name))
        object.__setattr__(
            self, "patience", check_positive_int(self.patience, "patience", optional=True)
        )
        object.__setattr__(self, "block_size", check_positive_int(self.block_size, "block_size"))

    def resolved(self, *, epochs: int, kind: str, n_train: int | None) -> Strengths:
        """Every ``None`` replaced by its default for runs of ``epochs`` epochs on ``kind``."""
        return replace(
            self,
            patience=self.patience if self.patience is not None else max(10, epochs // 10),
            augment=self.augment if self.augment is not None else (1.0 if kind == "cnn" else 0.1),
            concrete=self.concrete
            if self.concrete is not None
            else 2.0 / n_train
            if n_train
            else 0.01,
        )

    def value(self, name: str) -> float:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"strength {name!r} is not resolved; call `resolved` first")
        return float(value)


STRENGTH_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Strengths))


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
        return tuple(k for k in MODEL_KINDS if all(k in r.kinds for r in self.parts))

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
        raise ArmError(f"--arms: no arm in {text!r}; valid arms: {_valid()}")
    for item in items:
        names = [name.strip() for name in item.split("+")]
        unknown = [name for name in names if name not in REGULARIZERS]
        if unknown:
            raise ArmError(
                f"--arms: unknown arm {unknown[0]!r} in {item!r}; valid arms: {_valid()}"
            )
        if len(set(names)) != len(names):
            raise ArmError(f"--arms: {item!r} names a regularizer twice")
        if "none" in names and len(names) > 1:
            raise ArmError(f"--arms: {item!r} combines 'none' with other regularizers")
        arm = Arm(tuple(REGULARIZERS[name] for name in names))
        entries = [r.entry for r in arm.parts if r.entry is not None]
        if len(set(entries)) != len(entries):
            raise ArmError(f"--arms: {item!r} sets the same regularizer twice")
        # Entries that say how the rate p is applied: two of them in one arm conflict.
        conflict = [n for n in names if n in DROPOUT_ENTRIES or n == "bn_dropout"]
        if len({"batchnorm" if n == "bn_dropout" else n for n in conflict}) > 1:
            raise ArmError(
                f"--arms: {item!r} combines {' and '.join(map(repr, conflict))}, which exclude "
                "each other"
            )
        if len(names) > 1 and not arm.kinds:
            raise ArmError(f"--arms: the parts of {item!r} apply to no common model kind")
        label = arm.name
        if label in labels:
            raise ArmError(f"--arms: {labels[label]!r} and {item!r} are the same arm ({label})")
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
                f"arm {arm.spec!r} does not apply to --model {kind} (it applies to: {fits})"
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
    it) shows only after 2000–4000 epochs: compare with ``--epochs 4000`` to reproduce
    ``dropkit demo``'s setting (BatchNorm and concrete arms train one run at a time and make
    that several minutes).
    """
    return _DEFAULT_EPOCHS.get((data_name, kind), _FALLBACK_EPOCHS.get(kind, 200))
