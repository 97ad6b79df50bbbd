"""Experiment configs: frozen dataclasses, plain data, with a stable hash.

A *run* is (data, model, training settings, dropout rates, seed). Its identity in the results
store is :meth:`RunConfig.key`: a hash of its full config, so the same command finds the runs
it already finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropkit._validation import check_probability
from dropkit.lab.plan.arms import CUSTOM_KIND, MODEL_KINDS, RATE_ENTRIES

__all__ = [
    "CUSTOM_MODEL",
    "DEMO_SEEDS",
    "EVALUATIONS",
    "MC_SAMPLES",
    "TASKS",
    "DataSpec",
    "ModelSpec",
    "RunConfig",
    "SweepSpec",
    "TrainSpec",
    "arm_name",
    "config_key",
]


TASKS = ("classification", "regression")
"""What a lab run learns: class labels or a numeric target."""

EVALUATIONS = ("deterministic", "mc", "both")
"""What a run measures after training besides its curves (``TrainSpec.evaluate``): the
deterministic network's calibration (dropout off), Monte Carlo dropout's (the mean of
``mc_samples`` stochastic passes), or both."""

MC_SAMPLES = 30
"""Stochastic passes of Monte Carlo dropout by default (uncertainty-baselines' 30)."""

DEMO_SEEDS = 30
"""Seeds of the reference case study (``dropkit demo``): its "repeated evaluation" of 30 runs
per setting (10 is the minimum for its claim)."""


@dataclass(frozen=True)
class DataSpec:
    """Which data set, and how it is split.

    Args:
        name: a built-in data set (``circles``, ``moons``, ``digits``, ``breast_cancer``,
            ``wine``, ``mnist``, ``sequence``) or the path of a CSV file.
        target: the CSV column to predict (CSV only).
        test_size: fraction of samples held out for testing (built-ins other than ``circles``,
            and CSV). ``circles`` is the case study's data: the first 30 of 100 samples train.
        split_seed: seed of the train/test split, fixed for all runs of a sweep.
        content_hash: for a CSV file, a hash of its bytes (see :meth:`resolve`).
        impute: ``"mean"`` or ``"median"``: fill missing CSV features with the training split's
            column statistic (None: missing features are an error). It changes the data, so it
            is part of every run's identity.
        task: ``"classification"`` (class labels; accuracy and cross-entropy) or
            ``"regression"`` (a numeric target; R² and mean squared error).
        validation: fraction of the training split held out as a validation split that chooses
            the best rate or arm (0: none; the test set alone measures, as in the case study).
        folds: ``k >= 2``: k-fold cross-validation over the training split instead of one
            validation split; each run then names its ``fold`` (0: no folds).

    Fields added after the first release (``task``, ``validation``, ``folds``) are left out of
    a run's key at their defaults, so runs stored before them keep their keys.
    """

    name: str = "circles"
    target: str | None = None
    test_size: float = 0.3
    split_seed: int = 0
    content_hash: str | None = None
    impute: str | None = None
    task: str = "classification"
    validation: float = 0.0
    folds: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0.0 <= self.validation < 1.0:
            raise ValueError(f"`validation` must be in [0, 1), got {self.validation!r}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 0:
            raise ValueError(f"`folds` must be 0 (none) or an int >= 2, got {self.folds!r}")
        if self.folds == 1:
            raise ValueError("`folds` must be 0 (none) or an int >= 2, got 1")

    @classmethod
    def resolve(
        cls,
        name: str,
        target: str | None = None,
        impute: str | None = None,
        task: str = "classification",
    ) -> DataSpec:
        """The spec of a built-in name, or of a CSV file by absolute path and content hash.

        The hash makes the file's contents part of every run's identity: an edited CSV is new
        data, and ``data.csv`` and ``./data.csv`` are the same data. (A CSV target's task is
        inferred by :func:`dropkit.lab.plan.data.infer_csv_task`.)
        """
        path = Path(name)
        if name.lower().endswith(".csv") and path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
            return cls(
                name=str(path.resolve()),
                target=target,
                content_hash=digest.hexdigest()[:16],
                impute=impute,
                task=task,
            )
        return cls(name=name, target=target, impute=impute, task=task)


CUSTOM_MODEL = CUSTOM_KIND
"""``ModelSpec.kind`` of a user's own model (a factory or an ``nn.Module``)."""


@dataclass(frozen=True)
class ModelSpec:
    """The architecture of a run's network.

    Args:
        hidden: layer widths. ``mlp``: hidden widths, ReLU, dropout after each hidden layer.
            ``cnn``: convolution channels. ``rnn``: LSTM hidden sizes (one per layer).
            ``custom``: empty.
        kind: ``mlp``, ``cnn`` or ``rnn`` (see :mod:`dropkit.lab.plan.models`), or ``custom``: a
            user's model (:mod:`dropkit.lab.plan.user_model`).
        name: a custom model's name (its factory's or class's qualified name).
        fingerprint: a custom model's identity: a hash of its architecture (the printed module,
            parameter names, shapes and dtypes, and the source of its classes) or the user's
            ``model_id``.
    """

    hidden: tuple[int, ...] = (500,)
    kind: str = "mlp"
    name: str | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.kind == CUSTOM_MODEL:
            if self.hidden or not self.fingerprint:
                raise ValueError("a custom model has no `hidden` widths and needs a fingerprint")
            return
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"`hidden` must be one or more widths >= 1, got {self.hidden!r}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"`kind` must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")


@dataclass(frozen=True)
class TrainSpec:
    """Training settings shared by every run of a sweep.

    The defaults are the case study's Keras settings: Adam with Keras' defaults
    (``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-7``), Glorot-uniform weights and zero biases,
    batch size 32, 4000 epochs.

    What a run measures once trained, besides its curves (:mod:`dropkit.lab.train.predictive`):

    Args:
        evaluate: None (the curves only: accuracy or R² and the loss), ``"deterministic"``
            (also the calibration of the network with dropout off: NLL, Brier score, ECE and
            its reliability bins; for regression the Gaussian NLL and interval coverage),
            ``"mc"`` (the same of Monte Carlo dropout: the mean of ``mc_samples`` stochastic
            passes, Gal & Ghahramani 2016) or ``"both"``.
        mc_samples: stochastic passes ``T`` of Monte Carlo dropout (``>= 2``).
        mc_consistent: the same ``T`` masks for every test row (baal's ``ConsistentDropout``)
            instead of fresh masks per row.

    The evaluation fields are left out of a run's key at their defaults (the keys of runs
    stored before them do not change), and the Monte Carlo ones whenever ``evaluate`` has no
    Monte Carlo part.
    """

    epochs: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    evaluate: str | None = None
    mc_samples: int = MC_SAMPLES
    mc_consistent: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}")
        if self.evaluate is not None and self.evaluate not in EVALUATIONS:
            raise ValueError(
                f"`evaluate` must be None or one of {', '.join(EVALUATIONS)}, got {self.evaluate!r}"
            )
        samples = self.mc_samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise ValueError(f"`mc_samples` must be an int >= 2, got {samples!r}")
        if not isinstance(self.mc_consistent, bool):
            raise TypeError(f"`mc_consistent` must be True or False, got {self.mc_consistent!r}")
        if not self.monte_carlo and (samples != MC_SAMPLES or self.mc_consistent):
            raise ValueError(
                "`mc_samples` and `mc_consistent` set Monte Carlo dropout: they need "
                f"evaluate='mc' or 'both', got evaluate={self.evaluate!r}"
            )

    @property
    def monte_carlo(self) -> bool:
        """Whether runs are measured with Monte Carlo dropout (``evaluate`` "mc" or "both")."""
        return self.evaluate in ("mc", "both")

    @property
    def deterministic(self) -> bool:
        """Whether the deterministic network's calibration is measured ("deterministic" or
        "both")."""
        return self.evaluate in ("deterministic", "both")


def arm_name(
    p: float,
    input_p: float,
    max_norm: float | None,
    regularizers: Sequence[tuple[str, float]] = (),
) -> str:
    """A label for a run's regularization: ``none``, ``dropout``, ``dropout+max_norm+l2``, ...

    The labels are the arm names of :mod:`dropkit.lab.plan.arms`: a regularizer that says
    how the dropout rate ``p`` is applied (``early_dropout``, ``spatial_dropout``, ...) stands
    for the dropout, and BatchNorm with dropout is ``bn_dropout``.
    """
    names = [name for name, _ in regularizers]
    dropout_arm = p > 0 and any(name in RATE_ENTRIES for name in names)
    parts = [
        name
        for name, on in (
            ("dropout", p > 0 and not dropout_arm),
            ("input_dropout", input_p > 0),
            ("max_norm", max_norm is not None),
        )
        if on
    ]
    parts += ["bn_dropout" if name == "batchnorm" and p > 0 else name for name in names]
    return "+".join(parts) or "none"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def config_key(config: dict[str, Any]) -> str:
    """A stable 16-hex-digit hash of a config dict (key order does not matter)."""
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunConfig:
    """One training run: everything that decides its result.

    Args:
        p: drop probability after each hidden layer (0 = no dropout).
        input_p: drop probability on the inputs.
        max_norm: max-norm constraint ``c`` on each hidden unit's incoming weights, or None.
        seed: seeds the weights, the data order and the dropout masks of this run.
        regularizers: the run's other regularizers as ``(name, strength)`` pairs, sorted by
            name, each name at most once (see :mod:`dropkit.lab.plan.comparison`).
        fold: with ``data.folds = k``, the fold ``0 .. k-1`` that validates this run (None:
            no folds).
    """

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    p: float = 0.0
    input_p: float = 0.0
    max_norm: float | None = None
    seed: int = 0
    regularizers: tuple[tuple[str, float], ...] = ()
    fold: int | None = None

    def __post_init__(self) -> None:
        folds = self.data.folds
        if (self.fold is None) != (folds == 0) or (
            self.fold is not None and not 0 <= self.fold < folds
        ):
            raise ValueError(
                f"`fold` must be in [0, {folds}) with {folds} folds and None without, "
                f"got {self.fold!r}"
            )
        pairs = tuple(sorted((str(name), float(value)) for name, value in self.regularizers))
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"`regularizers` names each regularizer once, got {names!r}")
        object.__setattr__(self, "regularizers", pairs)
        object.__setattr__(self, "p", check_probability(self.p, "p"))
        object.__setattr__(self, "input_p", check_probability(self.input_p, "input_p"))
        if self.max_norm is not None and not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"`max_norm` must be a finite number > 0, got {self.max_norm!r}")

    @property
    def arm(self) -> str:
        return arm_name(self.p, self.input_p, self.max_norm, self.regularizers)

    def strength(self, name: str, default: float | None = None) -> float | None:
        """The strength of regularizer ``name``, or ``default`` when the run does not use it."""
        return dict(self.regularizers).get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """Plain data. Fields added after the first release are left out at their defaults,
        so the keys of runs stored before them do not change."""
        data = dataclasses.asdict(self)
        if not self.regularizers:
            del data["regularizers"]
        else:
            data["regularizers"] = [list(pair) for pair in self.regularizers]
        if self.model.kind == "mlp":
            del data["model"]["kind"]
        for name in ("name", "fingerprint"):
            if data["model"][name] is None:
                del data["model"][name]
        defaults = DataSpec()
        for name in ("impute", "task", "validation", "folds"):
            if data["data"][name] == getattr(defaults, name):
                del data["data"][name]
        if self.fold is None:
            del data["fold"]
        train = data["train"]
        if self.train.evaluate is None:
            del train["evaluate"]
        if not self.train.monte_carlo:
            del train["mc_samples"], train["mc_consistent"]
        elif not self.train.mc_consistent:
            del train["mc_consistent"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(
            data=DataSpec(**data["data"]),
            model=ModelSpec(
                hidden=tuple(data["model"]["hidden"]),
                kind=data["model"].get("kind", "mlp"),
                name=data["model"].get("name"),
                fingerprint=data["model"].get("fingerprint"),
            ),
            train=TrainSpec(**{**data["train"], "betas": tuple(data["train"]["betas"])}),
            p=data["p"],
            input_p=data["input_p"],
            max_norm=data["max_norm"],
            seed=data["seed"],
            regularizers=tuple((name, value) for name, value in data.get("regularizers", ())),
            fold=data.get("fold"),
        )

    def key(self) -> str:
        """The run's identity in the store: a hash of its full config."""
        return config_key(self.to_dict())

    def shape_key(self) -> tuple[Any, ...]:
        """Runs with equal shape keys share data and architecture and can train stacked."""
        return (self.data, self.model, self.train)


@dataclass(frozen=True)
class SweepSpec:
    """A grid: every rate in ``rates`` times ``seeds`` seeds, on shared data/model/training."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    rates: Sequence[float] = (0.0, 0.4)
    seeds: int = 10
    input_p: float = 0.0
    max_norm: float | None = None
    first_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"`seeds` must be an int >= 1, got {self.seeds!r}")
        if not self.rates:
            raise ValueError("`rates` must name at least one drop probability")
        rates = tuple(check_probability(r, "rates") for r in self.rates)
        object.__setattr__(self, "rates", tuple(dict.fromkeys(rates)))

    def runs(self) -> Iterator[RunConfig]:
        for p in self.rates:
            for seed in range(self.first_seed, self.first_seed + self.seeds):
                yield RunConfig(
                    self.data,
                    self.model,
                    self.train,
                    p=p,
                    input_p=self.input_p,
                    max_norm=self.max_norm,
                    seed=seed,
                )
