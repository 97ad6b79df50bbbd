"""The lab's Python API: ``sweep``, ``compare``, ``demo``, ``load``; the CLI is a thin face of it.

Each experiment call runs in two steps, both public:

1. *plan* (:func:`plan_sweep`, :func:`plan_compare`, :func:`plan_demo`): validate every
   argument (errors name the argument, its valid range and the value received), load the data
   (bad data is refused here) and expand the grid into run configs. Nothing is trained or
   written.
2. :func:`run`: open the results store, train the runs it does not hold yet (batched; on the
   chosen engine; with the chosen progress sink), store each batch as soon as it finishes, and
   return the :class:`~dropkit.lab.results.experiment.Experiment`.

``sweep(...)`` is ``run(plan_sweep(...), ...)``, and likewise for ``compare`` and ``demo``. An
interrupted call (Ctrl-C, a killed process) keeps every finished batch in the store; the same
call again trains only what is missing, and a call whose runs are all stored trains nothing.

Threads: the default in-process engine trains with one torch intra-op thread (the lab's
models are small, and more threads wait on each other on a busy machine: see
``docs/performance.md``) and restores the caller's ``torch.get_num_threads()`` afterwards, also
when training fails or is interrupted.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropkit._validation import (
    check_one_of,
    check_positive,
    check_positive_int,
    check_trainable_rate,
)
from dropkit.lab.execute.engines import Engine, InProcessEngine, RayEngine
from dropkit.lab.execute.progress import progress_sink
from dropkit.lab.execute.runner import run_configs
from dropkit.lab.plan.arms import CUSTOM_KIND, MODEL_KINDS, REGULARIZERS, STRENGTHS, Strengths
from dropkit.lab.plan.comparison import Arm, ArmError, build_configs, default_epochs, parse_arms
from dropkit.lab.plan.config import (
    DEMO_SEEDS,
    MC_SAMPLES,
    TASKS,
    DataSpec,
    ModelSpec,
    RunConfig,
    SweepSpec,
    TrainSpec,
)
from dropkit.lab.plan.data import (
    BUILTIN_DATASETS,
    IMPUTE_METHODS,
    Dataset,
    infer_csv_task,
    load_dataset,
)
from dropkit.lab.plan.user_data import from_user_data, is_user_data, train_and_test
from dropkit.lab.plan.user_model import ModelSource, model_source
from dropkit.lab.results.analysis import Analysis, analyze
from dropkit.lab.results.calibration_metrics import check_choose_by
from dropkit.lab.results.experiment import Experiment
from dropkit.lab.store import ResultsStore, StoreError

__all__ = [
    "DEFAULT_HIDDEN",
    "DEFAULT_RATES",
    "ENGINES",
    "RUN_OPTIONS",
    "Plan",
    "RunOptions",
    "compare",
    "demo",
    "load",
    "load_all",
    "plan_compare",
    "plan_demo",
    "plan_sweep",
    "report",
    "run",
    "sweep",
]

DEFAULT_RATES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(9))
"""The case study's grid: 0, 0.1, ..., 0.8."""
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"mlp": (500,), "cnn": (16, 32), "rnn": (32,)}
"""Layer widths of each model kind when ``hidden`` is not given to :func:`compare`."""
ENGINES = ("in-process", "ray")
USER_VALIDATION = 0.2
"""Validation fraction by default for a user's own data or model: the best rate or arm is
chosen on it, and the test set measures the winner once."""


@dataclass(frozen=True)
class Plan:
    """A validated experiment, ready to :func:`run`: its run configs and its loaded data.

    Attributes:
        command: ``"sweep"``, ``"compare"`` or ``"demo"``.
        configs: one per run (rates or arms × seeds), all sharing data, model and training.
        dataset: the loaded data the runs train on.
        settings: what was asked for, for the experiment's ``to_dict`` (plain data).
        model: the user's model (:class:`~dropkit.lab.plan.user_model.ModelSource`) for runs of
            kind ``custom``; None for the built-in models.
        notes: what planning found that the user should know (how the data was read, the task
            inferred, dropout a factory leaves at its own rate), one sentence each.
        choose_by: the metric that chooses the best group (see :func:`sweep`).
    """

    command: str
    configs: tuple[RunConfig, ...]
    dataset: Dataset
    settings: dict[str, Any] = field(default_factory=dict)
    model: ModelSource | None = None
    notes: tuple[str, ...] = ()
    choose_by: str = "score"

    @property
    def keys(self) -> list[str]:
        """The store keys of the runs (hashes of their full configs)."""
        return [c.key() for c in self.configs]

    def stored(self, store: str | Path) -> int:
        """How many of the plan's runs ``store`` holds finished (0 when there is no store)."""
        if not Path(store).is_file():
            return 0
        with ResultsStore(store) as results:
            return len(results.done_keys(self.keys))


# -- argument checks ---------------------------------------------------------------------------


def _ndim(value: Any) -> int:
    """Array rank of ``value`` as NumPy sees it (0 for a scalar, 1 for a flat sequence)."""
    return int(np.ndim(value))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _seeds(seeds: object) -> list[int]:
    """``seeds``: a count ``n`` (seeds ``0 .. n-1``) or an explicit sequence of distinct ints."""
    if _is_int(seeds) or isinstance(seeds, bool):
        return list(range(check_positive_int(seeds, "seeds")))
    if isinstance(seeds, Iterable) and not isinstance(seeds, (str, bytes)) and _ndim(seeds) == 1:
        values = list(seeds)
        if values and all(_is_int(s) and int(s) >= 0 for s in values):
            ints = [int(s) for s in values]
            if len(set(ints)) == len(ints):
                return ints
    raise ValueError(
        f"`seeds` must be a count >= 1 or a non-empty sequence of distinct ints >= 0, got {seeds!r}"
    )


def _hidden(hidden: object) -> tuple[int, ...]:
    """``hidden``: one width or a sequence of widths, each an int >= 1."""
    values = [hidden] if _ndim(hidden) == 0 and not isinstance(hidden, (str, bytes)) else hidden
    if not isinstance(values, Iterable) or isinstance(values, (str, bytes)):
        raise TypeError(f"`hidden` must be a width or a sequence of widths, got {hidden!r}")
    widths = list(values)
    if not widths:
        raise ValueError("`hidden` must hold at least one width, got none")
    return tuple(check_positive_int(w, "hidden") for w in widths)


def _rates(rates: object) -> tuple[float, ...]:
    if isinstance(rates, (str, bytes)) or not (_ndim(rates) == 0 or isinstance(rates, Iterable)):
        raise TypeError(f"`rates` must be a sequence of drop probabilities, got {rates!r}")
    flat = np.asarray(rates, dtype=object).ravel().tolist() if _ndim(rates) <= 1 else None
    if flat is None:
        raise TypeError(f"`rates` must be a flat sequence of drop probabilities, got {rates!r}")
    values = tuple(check_trainable_rate(r, "rates") for r in flat)
    if not values:
        raise ValueError("`rates` must hold at least one drop probability, got none")
    return tuple(dict.fromkeys(values))


def _max_norm(value: object) -> float | None:
    return None if value is None else check_positive(value, "max_norm")


def _training(
    epochs: object,
    batch_size: object,
    lr: object = 1e-3,
    evaluate: object = None,
    mc_samples: object = MC_SAMPLES,
    mc_consistent: object = False,
) -> TrainSpec:
    """The training and evaluation settings, checked (``TrainSpec`` checks the evaluation's
    values and how they go together)."""
    return TrainSpec(
        epochs=check_positive_int(epochs, "epochs"),
        batch_size=check_positive_int(batch_size, "batch_size"),
        lr=check_positive(lr, "lr"),
        evaluate=evaluate,  # type: ignore[arg-type]  # TrainSpec checks it
        mc_samples=check_positive_int(mc_samples, "mc_samples"),
        mc_consistent=mc_consistent,  # type: ignore[arg-type]  # TrainSpec checks it
    )


def _validation(validation: object, folds: object, own: bool) -> tuple[float, int]:
    """``validation`` (None: :data:`USER_VALIDATION` for a user's own data or model, else 0)
    and ``folds`` (0 or >= 2; folds replace the single validation split)."""
    if isinstance(folds, bool) or not isinstance(folds, numbers.Integral) or folds < 0:
        raise ValueError(f"`folds` must be 0 (none) or an int >= 2, got {folds!r}")
    if folds == 1:
        raise ValueError("`folds` must be 0 (none) or an int >= 2, got 1")
    if folds and validation is not None and validation != 0:
        raise ValueError(
            f"`folds` ({folds}) and `validation` ({validation}) both hold out validation "
            "rows: give one (folds=k runs k-fold cross-validation over the training split)"
        )
    if folds:
        return 0.0, int(folds)
    if validation is None:
        return (USER_VALIDATION if own else 0.0), 0
    if isinstance(validation, bool) or not isinstance(validation, numbers.Real):
        raise TypeError(f"`validation` must be a fraction in [0, 1), got {validation!r}")
    if not 0.0 <= float(validation) < 1.0:
        raise ValueError(f"`validation` must be a fraction in [0, 1), got {validation!r}")
    return float(validation), 0


def _task(task: object) -> str | None:
    if task is None:
        return None
    return check_one_of(task, "task", TASKS)


def _given_data(data: object, train: object, test: object) -> object:
    """The data of ``data``, or of ``train`` and ``test`` given apart
    (:func:`~dropkit.lab.plan.user_data.train_and_test`); None for all three: ``"circles"``."""
    if train is None and test is None:
        return "circles" if data is None else data
    if data is not None:
        raise ValueError(
            "`data` and `train`/`test` both give the data: pass `train=` and `test=` alone, or "
            "`data=` alone"
        )
    return train_and_test(train, test)


def _data(
    data: object,
    target: str | None,
    impute: str | None,
    *,
    task: str | None = None,
    validation: object = None,
    folds: object = 0,
    own_model: bool = False,
    data_id: str | None = None,
) -> tuple[DataSpec, Dataset]:
    """The data's spec and the data, loaded now so that bad data is refused before training.

    ``data`` is a built-in name, a CSV path, or a user's arrays, tensors or Datasets
    (:func:`dropkit.lab.plan.user_data.from_user_data`).
    """
    task = _task(task)
    if is_user_data(data):
        if target is not None or impute is not None:
            raise ValueError(
                "`target` and `impute` apply to CSV files; with arrays, tensors or Datasets "
                "pass the target as y"
            )
        fraction, k = _validation(validation, folds, own=True)
        return from_user_data(data, task=task, validation=fraction, folds=k, data_id=data_id)
    if data_id is not None:
        raise ValueError("`data_id` names in-memory data (arrays, tensors, Datasets)")
    if not isinstance(data, (str, Path)):
        raise TypeError(
            f"`data` must be a built-in data set's name, the path of a CSV file, (X, y) arrays "
            f"or tensors, or torch Datasets, got {type(data).__name__}"
        )
    if target is not None and not isinstance(target, str):
        raise TypeError(f"`target` must be a CSV column name (a str), got {target!r}")
    if target is not None and str(data) in BUILTIN_DATASETS:
        raise ValueError(
            f"`target` names the column to predict in a CSV file; the built-in data set "
            f"{str(data)!r} has its own labels, got target={target!r}"
        )
    if impute is not None:
        check_one_of(impute, "impute", IMPUTE_METHODS)
    if str(data) in BUILTIN_DATASETS and task == "regression":
        raise ValueError(
            f"`task`: the built-in data set {str(data)!r} is a classification task, got "
            "task='regression'"
        )
    fraction, k = _validation(validation, folds, own=own_model)
    if task is None:
        csv = str(data).lower().endswith(".csv") and Path(data).is_file()
        task = infer_csv_task(data, target) if csv and target is not None else "classification"
    spec = DataSpec.resolve(str(data), target, impute, task=task)
    spec = dataclasses.replace(spec, validation=fraction, folds=k)
    return spec, load_dataset(spec, impute=impute)


def _model(
    model: object, model_id: str | None, rates: Sequence[float], dataset: Dataset
) -> ModelSource:
    """A user's model, checked, and checked once against the data: one eval-mode forward
    pass on two training rows must give ``(2, n_outputs)`` (or ``(2,)`` for one output)."""
    import torch

    source = model_source(model, model_id=model_id, rates=rates)  # type: ignore[arg-type]
    module = source.build(max(rates, default=0.0), 0).eval()
    floats = torch.from_numpy(dataset.x_train[:2]).reshape(-1, *dataset.sample_shape)
    # integer features reach the model as int64 when it takes them (token ids), else floats
    tried = [floats.long(), floats] if dataset.integer_inputs else [floats]
    failures: list[str] = []
    for rows in tried:
        try:
            with torch.no_grad():
                output = module(rows)
            break
        except Exception as error:
            failures.append(
                f"a batch of shape {tuple(rows.shape)} ({str(rows.dtype).removeprefix('torch.')})"
                f" raised {type(error).__name__}: {error}"
            )
    else:
        raise ValueError(f"`model` {source.name} fails on the data: {failures[0]}") from None
    wanted = dataset.n_outputs
    shape = tuple(getattr(output, "shape", ()))
    allowed = {(2, wanted)} | ({(2,)} if wanted == 1 else set())
    if dataset.task == "classification" and dataset.n_classes == 2:
        allowed.add((2, 2))  # two logits and cross-entropy, as num_labels=2 models give
    if not isinstance(output, torch.Tensor) or shape not in allowed:
        task = (
            "a regression target"
            if dataset.task == "regression"
            else f"{dataset.n_classes} classes"
        )
        widths = "(N, 1) or (N, 2)" if (2, 2) in allowed else f"(N, {wanted})"
        raise ValueError(
            f"`model` {source.name} must return a tensor of shape {widths} for {task}; for a "
            f"batch of shape {tuple(rows.shape)} it returned "
            f"{shape if isinstance(output, torch.Tensor) else type(output).__name__}"
        )
    return source


# -- plans -------------------------------------------------------------------------------------


def _without_folds(spec: DataSpec) -> DataSpec:
    return dataclasses.replace(spec, folds=0)


def _with_folds(configs: Sequence[RunConfig], spec: DataSpec) -> list[RunConfig]:
    """Configs built on :func:`_without_folds` of ``spec``, on ``spec`` itself: each once per
    fold (the folds of a config next to each other), or unchanged without folds."""
    if not spec.folds:
        return list(configs)
    return [dataclasses.replace(c, data=spec, fold=f) for c in configs for f in range(spec.folds)]


def _own_settings(spec: DataSpec, model_name: str | None, train: TrainSpec) -> dict[str, Any]:
    """Settings that only a user's model or data, or a validation split, add."""
    settings: dict[str, Any] = {}
    if model_name is not None:
        settings["model_name"] = model_name
    if spec.task != "classification":
        settings["task"] = spec.task
    if spec.validation:
        settings["validation"] = spec.validation
    if spec.folds:
        settings["folds"] = spec.folds
    if train.lr != TrainSpec().lr:
        settings["lr"] = train.lr
    if train.evaluate is not None:
        settings["evaluate"] = train.evaluate
    if train.monte_carlo:
        settings["mc_samples"] = train.mc_samples
        if train.mc_consistent:
            settings["mc_consistent"] = True
    return settings


def plan_sweep(
    data: object = None,
    *,
    train: object = None,
    test: object = None,
    model: object = None,
    rates: Sequence[float] | float = DEFAULT_RATES,
    seeds: int | Sequence[int] = 10,
    epochs: int = 4000,
    batch_size: int = 32,
    lr: float = 1e-3,
    hidden: int | Sequence[int] = (500,),
    input_p: float = 0.0,
    max_norm: float | None = None,
    target: str | None = None,
    impute: str | None = None,
    task: str | None = None,
    validation: float | None = None,
    folds: int = 0,
    model_id: str | None = None,
    data_id: str | None = None,
    evaluate: str | None = None,
    mc_samples: int = MC_SAMPLES,
    mc_consistent: bool = False,
    choose_by: str = "score",
) -> Plan:
    """Validate a rate sweep and expand it into runs: every rate × every seed (see :func:`sweep`).

    Raises:
        ValueError, TypeError: an unusable argument (the message names it).
        dropkit.lab.plan.data.DataError: data that cannot be used (a ``ValueError``).
    """
    grid = _rates(rates)
    seed_list = _seeds(seeds)
    training = _training(epochs, batch_size, lr, evaluate, mc_samples, mc_consistent)
    own_model = model is not None
    widths = _hidden(hidden)
    if own_model and hidden != (500,):
        raise ValueError("`hidden` sets the built-in MLP's widths; your `model` has its own")
    if model_id is not None and not own_model:
        raise ValueError("`model_id` names your own `model`; none was given")
    input_p = check_trainable_rate(input_p, "input_p")
    bound = _max_norm(max_norm)
    spec, dataset = _data(
        _given_data(data, train, test),
        target,
        impute,
        task=task,
        validation=validation,
        folds=folds,
        own_model=own_model,
        data_id=data_id,
    )
    source = _model(model, model_id, grid, dataset) if own_model else None
    model_spec = source.spec if source is not None else ModelSpec(hidden=widths)
    sweep_spec = SweepSpec(
        data=spec,
        model=model_spec,
        train=training,
        rates=grid,
        seeds=len(seed_list),
        input_p=input_p,
        max_norm=bound,
    )
    base = _without_folds(spec)
    configs = _with_folds(
        [
            RunConfig(base, model_spec, training, p=p, input_p=input_p, max_norm=bound, seed=s)
            for p in sweep_spec.rates
            for s in seed_list
        ],
        spec,
    )
    settings = {
        "dataset": dataset.name,
        "model": model_spec.kind,
        "hidden": list(model_spec.hidden),
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "seeds": len(seed_list),
        "rates": list(sweep_spec.rates),
        "input_p": input_p,
        "max_norm": bound,
        **_own_settings(spec, None if source is None else source.name, training),
    }
    notes = (*dataset.notes, *(source.notes if source is not None else ()))
    return _choosing(
        Plan("sweep", tuple(configs), dataset, settings, model=source, notes=notes), choose_by
    )


def _choosing(plan: Plan, choose_by: object) -> Plan:
    """``plan`` choosing its best group by ``choose_by`` (checked against its task)."""
    name = check_choose_by(choose_by, plan.dataset.task)
    if name == "score":
        return plan
    return dataclasses.replace(plan, choose_by=name, settings={**plan.settings, "choose_by": name})


def plan_demo(
    *, seeds: int | Sequence[int] = DEMO_SEEDS, epochs: int = 4000, p: float = 0.4
) -> Plan:
    """The reference case study as a plan (see :func:`demo`)."""
    p = check_trainable_rate(p, "p")
    plan = plan_sweep(
        "circles", rates=[0.0, p] if p > 0 else [0.0], seeds=seeds, epochs=epochs, hidden=500
    )
    return Plan("demo", plan.configs, plan.dataset, {**plan.settings, "p": p})


def _arms(arms: str | Sequence[str] | None, kind: str) -> list[Arm]:
    if arms is None:
        return [Arm((r,)) for r in REGULARIZERS.values() if kind in r.kinds]
    if isinstance(arms, str):
        return parse_arms(arms)
    if isinstance(arms, Iterable):
        items = list(arms)
        if not all(isinstance(a, str) for a in items):
            raise TypeError(f"`arms` must be arm names such as 'dropout+l2', got {arms!r}")
        if any("," in a for a in items):
            raise ArmError(
                f"`arms`: give a sequence of arms or one comma-separated string: {arms!r}"
            )
        return parse_arms(",".join(items))
    raise TypeError(f"`arms` must be a string or a sequence of arm names, got {arms!r}")


_COMPARE_ARGUMENTS = (
    "data",
    "train",
    "test",
    "arms",
    "model",
    "hidden",
    "seeds",
    "epochs",
    "batch_size",
    "lr",
    "target",
    "impute",
    "task",
    "validation",
    "folds",
    "model_id",
    "data_id",
    "device",
    "batched",
    "max_batch_memory",
    "eval_every",
    "store",
    "engine",
    "address",
    "progress",
    "runs_per_batch",
    "compile",
)


def _check_strength_names(strengths: dict[str, Any]) -> None:
    """Keyword arguments of ``compare`` that are neither an argument nor a strength: a typo."""
    for name in strengths:
        if name not in STRENGTHS:
            close = difflib.get_close_matches(name, [*_COMPARE_ARGUMENTS, *STRENGTHS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"compare() got an unexpected keyword argument {name!r}{hint}; the arms' "
                f"strengths are: {', '.join(STRENGTHS)}"
            )


def plan_compare(
    data: object = None,
    *,
    train: object = None,
    test: object = None,
    arms: str | Sequence[str] | None = None,
    model: object = "mlp",
    hidden: int | Sequence[int] | None = None,
    seeds: int | Sequence[int] = 10,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    target: str | None = None,
    impute: str | None = None,
    task: str | None = None,
    validation: float | None = None,
    folds: int = 0,
    model_id: str | None = None,
    data_id: str | None = None,
    evaluate: str | None = None,
    mc_samples: int = MC_SAMPLES,
    mc_consistent: bool = False,
    choose_by: str = "score",
    **strengths: Any,
) -> Plan:
    """Validate a comparison of arms and expand it into runs: every arm × every seed.

    See :func:`compare` for the arguments.

    Raises:
        ValueError, TypeError: an unusable argument (the message names it).
        dropkit.lab.plan.comparison.ArmError: an unknown or inapplicable arm (a ``ValueError``).
        dropkit.lab.plan.data.DataError: data that cannot be used (a ``ValueError``).
    """
    own_model = not isinstance(model, str)
    kind = CUSTOM_KIND if own_model else check_one_of(model, "model", MODEL_KINDS)
    if own_model and hidden is not None:
        raise ValueError("`hidden` sets a built-in model's widths; your `model` has its own")
    if model_id is not None and not own_model:
        raise ValueError("`model_id` names your own `model`; none was given")
    _check_strength_names(strengths)
    resolved_strengths = Strengths(**strengths)
    seed_list = _seeds(seeds)
    if epochs is not None:
        check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    checked = _training(1, batch_size, lr, evaluate, mc_samples, mc_consistent)  # epochs: below
    widths = () if own_model else DEFAULT_HIDDEN[kind] if hidden is None else _hidden(hidden)
    chosen = _arms(arms, kind)
    spec, dataset = _data(
        _given_data(data, train, test),
        target,
        impute,
        task=task,
        validation=validation,
        folds=folds,
        own_model=own_model,
        data_id=data_id,
    )
    if dataset.task == "regression":
        for arm in chosen:
            if any(r.targets is not None for r in arm.parts):
                raise ArmError(
                    f"`arms`: arm {arm.name!r} changes class targets and does not apply to a "
                    "regression task"
                )
    training = dataclasses.replace(
        checked, epochs=epochs if epochs is not None else default_epochs(dataset.name, kind)
    )
    rates = [resolved_strengths.value("p")] if any(a.options for a in chosen) else []
    source = _model(model, model_id, rates, dataset) if own_model else None
    model_spec = source.spec if source is not None else ModelSpec(hidden=widths, kind=kind)
    configs = build_configs(
        chosen,
        resolved_strengths,
        seed_list,
        _without_folds(spec),
        model_spec,
        training,
        n_train=len(dataset.y_train),
    )
    if source is None:
        from dropkit.lab.plan.models import build_model

        for config in configs[:: len(seed_list)]:  # each arm's network must build for this data
            try:
                build_model(config, dataset)
            except ValueError as error:
                raise ValueError(f"`model` {kind!r} on {dataset.name}: {error}") from None
    configs = _with_folds(configs, spec)
    settings = {
        "dataset": dataset.name,
        "model": kind,
        "hidden": list(widths),
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "seeds": len(seed_list),
        "arms": [a.name for a in chosen],
        "strengths": {
            name: resolved_strengths[name]
            for name in dict.fromkeys(o for a in chosen for o in a.options)
        },
        **_own_settings(spec, None if source is None else source.name, training),
    }
    notes = (*dataset.notes, *(source.notes if source is not None else ()))
    return _choosing(
        Plan("compare", tuple(configs), dataset, settings, model=source, notes=notes), choose_by
    )


# -- running -----------------------------------------------------------------------------------


def _engine(
    engine: str | Engine | None,
    address: str | None,
    compile: bool | None,
    training: dict[str, Any],
) -> Engine:
    if engine is None or engine == "in-process":
        return InProcessEngine(compile=compile, **training)
    if engine == "ray":
        return RayEngine(address=address, compile=compile, **training)
    if not callable(getattr(engine, "run_batches", None)):
        raise TypeError(
            f"`engine` must be None, 'in-process', 'ray' or an engine object, got {engine!r}"
        )
    if address is not None:
        raise ValueError("`address` is for engine='ray'; an engine object carries its own")
    return engine  # type: ignore[return-value]


def _training_options(
    device: object, batched: object, max_batch_memory: object, eval_every: object = None
) -> dict[str, Any]:
    """The engine's training options, checked: ``device``, ``batched``, ``max_batch_memory``,
    ``eval_every``."""
    from dropkit.lab.train.dispatch import parse_device

    parse_device(device)  # type: ignore[arg-type]  # the engine resolves it (a Ray driver needs no GPU)
    if batched is not None and not isinstance(batched, bool):
        raise TypeError(f"`batched` must be True, False or None, got {batched!r}")
    if max_batch_memory is not None:
        max_batch_memory = check_positive_int(max_batch_memory, "max_batch_memory")
    if eval_every is not None:
        eval_every = check_positive_int(eval_every, "eval_every")
    return {
        "device": device,
        "batched": batched,
        "max_batch_memory": max_batch_memory,
        "eval_every": eval_every,
    }


@dataclass(frozen=True)
class RunOptions:
    """How a plan's runs execute, checked when made (a bad option is a ``TypeError`` or
    ``ValueError`` naming it, before anything trains) and passed whole to :func:`run`.

    Attributes:
        store: the SQLite results store (created if missing). Finished runs are found there
            by their config's hash and not trained again. The notes of the call (the plan's,
            and what training reported: why runs trained one by one, ...) are stored with the
            runs it trains, so :func:`load` gives them back. A store this process cannot write
            serves a call whose runs it holds already.
        engine: ``None`` or ``"in-process"`` (train here, batched), ``"ray"`` (a Ray
            cluster: ``address`` joins one, none starts a local instance, shut down after),
            or an engine object (see :mod:`dropkit.lab.execute.engines`) that the caller manages.
        address: the Ray cluster to join (``"HOST:6379"`` or ``"auto"``).
        compile: fuse the stacked trainer with ``torch.compile`` (None: when a C++ compiler
            is found).
        progress: None (no output), True/``"auto"``/``"tqdm"`` (a ``tqdm.auto`` bar),
            ``"rich"`` or an object with ``begin``/``advance``/``end``
            (:mod:`dropkit.lab.execute.progress`).
        runs_per_batch: most runs trained together as one batch (bounds memory; a killed
            sweep loses at most the batch in flight).
        log: called with one-line messages (how many runs the store already holds); None:
            silent.
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``: where every trainer runs, the built-in models' included.
        batched: for a user's model: None trains runs that differ in rate, seed or fold as one
            vmapped computation where the model allows it and one run after another (with a
            one-line reason) where it does not; True refuses that fallback; False always
            trains one run after another.
        max_batch_memory: bytes a batched group of a user's model may take at its peak
            (None: a safe fraction of the device's free memory); larger groups are split.
        eval_every: for a user's model, the curves' resolution: the fit and test rows are
            measured after every ``eval_every``-th epoch and the last (NaN between). None:
            every epoch while that costs under a tenth of the training time, else as rarely as
            keeps it so (at least 25 points a curve). The final figures are the last epoch's.
    """

    store: str | Path = "runs.sqlite"
    engine: str | Engine | None = None
    address: str | None = None
    compile: bool | None = None
    progress: object = None
    runs_per_batch: int = 128
    log: Callable[[str], None] | None = None
    device: str = "auto"
    batched: bool | None = None
    max_batch_memory: int | None = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "runs_per_batch", check_positive_int(self.runs_per_batch, "runs_per_batch")
        )
        if not isinstance(self.store, (str, Path)):
            raise TypeError(f"`store` must be the path of a SQLite file, got {self.store!r}")
        _training_options(self.device, self.batched, self.max_batch_memory, self.eval_every)
        if self.compile is not None and not isinstance(self.compile, bool):
            raise TypeError(f"`compile` must be True, False or None, got {self.compile!r}")
        address, engine = self.address, self.engine
        if address is not None and not isinstance(address, str):
            raise TypeError(f"`address` must be a Ray address such as 'HOST:6379', got {address!r}")
        if isinstance(engine, str):
            check_one_of(engine, "engine", ENGINES)
        if address is not None and (engine is None or engine == "in-process"):
            raise ValueError("`address` names a Ray cluster; use it with engine='ray'")
        if self.log is not None and not callable(self.log):
            raise TypeError(f"`log` must be a function of one message or None, got {self.log!r}")
        progress_sink(self.progress)  # a bad progress value is refused here


RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunOptions))
"""The keyword arguments of :func:`run` (the fields of :class:`RunOptions`)."""


def run(plan: Plan, options: RunOptions | None = None, **given: Any) -> Experiment:
    """Train the plan's runs that the store does not hold yet; return the experiment.

    Args:
        plan: from :func:`plan_sweep`, :func:`plan_compare` or :func:`plan_demo`.
        options: a :class:`RunOptions` (store, engine, address, compile, progress,
            runs_per_batch, log, device, batched, max_batch_memory: see there); or give them
            as keyword arguments, ``run(plan, store="runs.sqlite", device="cpu")`` (they
            replace those of ``options`` when both are given).

    Returns:
        The :class:`~dropkit.lab.results.experiment.Experiment` of the plan's runs; its ``notes``
        are the plan's, this call's and those stored with the runs by earlier calls.

    Raises:
        dropkit.lab.store.StoreError: the store cannot be opened, or cannot be written and
            lacks runs of the plan (``permission denied``, with the path).
        dropkit.lab.execute.engines.EngineError: Ray is missing or its cluster unreachable.
        dropkit.lab.execute.runner.IncompleteSweep: some batches failed on the engine (every other
            batch is stored; call again to train the rest).
        KeyboardInterrupt: propagated; every finished batch is stored.
    """
    unknown = sorted(set(given) - set(RUN_OPTIONS))
    if unknown:
        raise TypeError(
            f"run() got an unexpected keyword argument {unknown[0]!r}; its options are "
            + ", ".join(RUN_OPTIONS)
        )
    if options is not None and not isinstance(options, RunOptions):
        raise TypeError(f"`options` must be a RunOptions or None, got {options!r}")
    chosen_options = dataclasses.replace(options or RunOptions(), **given)
    return _run(plan, chosen_options)


def _run(plan: Plan, o: RunOptions) -> Experiment:
    store, engine, address, compile = o.store, o.engine, o.address, o.compile
    progress, runs_per_batch, log = o.progress, o.runs_per_batch, o.log
    device, batched, max_batch_memory = o.device, o.batched, o.max_batch_memory
    sink = progress_sink(progress)
    options = _training_options(device, batched, max_batch_memory, o.eval_every)
    messages: list[str] = []  # what training says (fallbacks, splits): kept as notes

    def heard(message: str) -> None:
        if message not in messages:
            messages.append(message)
            if log is not None:
                log(message)

    if engine is None or engine == "in-process":
        options["log"] = heard
    chosen = _engine(engine, address, compile, options)
    owned = isinstance(engine, str) and engine == "ray"
    start = getattr(chosen, "start", None)
    if owned and start is not None:
        start()
    path = Path(store)
    planned = tuple(plan.notes or plan.dataset.notes)
    try:
        with ResultsStore(path) as results:
            keys = plan.keys
            done = len(results.done_keys(keys))
            total = len(set(keys))
            if results.read_only and done < total:
                raise StoreError(
                    f"permission denied: cannot write the results store {path} (the file or "
                    f"its folder is read-only), and {total - done} of the {total} runs are not "
                    "in it; pass a store in a writable folder"
                )
            if log is not None and done:
                log(
                    f"{done}/{total} runs already complete in {path}"
                    if done == total
                    else f"{done}/{total} runs already complete; training the rest"
                )
            outcome = run_configs(
                list(plan.configs),
                results,
                engine=chosen,
                progress=sink,
                max_batch=runs_per_batch,
                datasets={plan.configs[0].data: plan.dataset},
                model=plan.model,
                notes=lambda: (*planned, *messages),
            )
            analyses = analyze(results, list(outcome.keys), choose_by=plan.choose_by)
            stored_notes = results.notes(list(outcome.keys))
    finally:
        close = getattr(chosen, "close", None)
        if owned and close is not None:
            close()
    if len(analyses) != 1:  # pragma: no cover - a plan's runs share one shape
        raise RuntimeError(f"expected one experiment, found {len(analyses)}")
    return Experiment(
        path,
        analyses[0],
        command=plan.command,
        settings=plan.settings,
        notes=tuple(dict.fromkeys((*planned, *messages, *stored_notes))),
        trained=outcome.trained,
        already_done=outcome.already_done,
    )


def _split_call(
    arguments: dict[str, Any], planner: Callable[..., Plan]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A user call's arguments (its ``locals()``) split into the planner's and the
    :class:`RunOptions`': the keyword arguments of :func:`sweep`, :func:`compare` and
    :func:`demo` are written once, in their signatures. A ``**name`` of the planner
    (``compare``'s ``**strengths``) is passed on as keywords."""
    parameters = inspect.signature(planner).parameters
    spread = {n for n, p in parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD}
    unknown = set(arguments) - set(parameters) - set(RUN_OPTIONS)
    if unknown:  # pragma: no cover - a signature that names neither (a programming error)
        raise AssertionError(f"arguments neither planned nor run options: {sorted(unknown)}")
    planned = {k: v for k, v in arguments.items() if k in parameters and k not in spread}
    for name in spread:
        planned.update(arguments.get(name, {}))
    return planned, {k: v for k, v in arguments.items() if k in RUN_OPTIONS}


# -- the calls users make ----------------------------------------------------------------------


def sweep(
    data: object = None,
    *,
    train: object = None,
    test: object = None,
    model: object = None,
    rates: Sequence[float] | float = DEFAULT_RATES,
    seeds: int | Sequence[int] = 10,
    epochs: int = 4000,
    batch_size: int = 32,
    lr: float = 1e-3,
    hidden: int | Sequence[int] = (500,),
    input_p: float = 0.0,
    max_norm: float | None = None,
    target: str | None = None,
    impute: str | None = None,
    task: str | None = None,
    validation: float | None = None,
    folds: int = 0,
    model_id: str | None = None,
    data_id: str | None = None,
    evaluate: str | None = None,
    mc_samples: int = MC_SAMPLES,
    mc_consistent: bool = False,
    choose_by: str = "score",
    store: str | Path = "runs.sqlite",
    engine: str | Engine | None = None,
    address: str | None = None,
    progress: object = None,
    runs_per_batch: int = 128,
    compile: bool | None = None,
    device: str = "auto",
    batched: bool | None = None,
    max_batch_memory: int | None = None,
    eval_every: int | None = None,
) -> Experiment:
    """Grid-search the dropout rate of a model: every rate × every seed, batched, stored.

    CLI: ``dropkit sweep --data DATA --rates 0:0.8:0.1 --seeds 10 ...``.

    Args:
        data: a built-in data set (``circles``, ``moons``, ``digits``, ``breast_cancer``,
            ``wine``, ``mnist``, ``sequence``), the path of a CSV file (with ``target``), or
            your own data: ``(X, y)`` arrays or tensors (split with a stratified 30% test
            part), ``((X_train, y_train), (X_test, y_test))``, or torch Datasets
            ``{"train": ds, "test": ds}`` (see :func:`dropkit.lab.plan.user_data.from_user_data`).
            A content hash of the data is part of every run's key: changed data trains again.
            None: ``circles``, or the data of ``train`` and ``test``.
        train, test: your training and test parts given apart, instead of ``data``: torch
            Datasets of ``(x, y)`` items, or ``(X, y)`` arrays or tensors; both or neither.
            ``train=ds_a, test=ds_b`` is the same data (the same run keys) as
            ``data={"train": ds_a, "test": ds_b}``.
        model: your own model: a factory ``f(p) -> nn.Module`` (called once per run under
            the run's seed) or an ``nn.Module`` (deep-copied, re-rated with
            :func:`dropkit.set_dropout` and re-initialized per seed); None: the built-in MLP
            of widths ``hidden``.
        rates: the hidden drop probabilities to try (default 0, 0.1, ..., 0.8).
        seeds: a count ``n`` (seeds 0 .. n-1) or a sequence of seeds; every rate uses the same
            seeds, so rates pair by seed.
        epochs, batch_size, lr: training length, mini-batch size and Adam's learning rate
            (Adam with Keras' defaults otherwise).
        hidden: hidden layer widths of the built-in MLP (``500`` or ``(256, 128)``).
        input_p: drop probability on the inputs (0: none).
        max_norm: max-norm bound ``c`` on each hidden unit's incoming weights (None: none).
        target, impute: the CSV column to predict; ``"mean"``/``"median"`` to fill missing
            CSV feature values from the training split.
        task: ``"classification"`` or ``"regression"`` (None: inferred from the target, and
            the inference stated in the experiment's notes). Regression trains with mean
            squared error and reports R², RMSE and MAE.
        validation: fraction of the training split held out to choose the best rate (None:
            0.2 for your own data or model, 0 for the built-in data and CSV files, whose
            test set doubles as validation as in the case study).
        folds: ``k >= 2``: k-fold cross-validation over the training split instead of one
            validation split (every run trained once per fold).
        model_id, data_id: your own identity for the model or the data in run keys instead
            of the computed fingerprint and content hash (change it when they change).
        evaluate: what each run measures once trained besides accuracy (or R²) and loss:
            None (nothing more), ``"deterministic"`` (the calibration of the network with
            dropout off: NLL, Brier score, ECE with its reliability bins; regression: Gaussian
            NLL and 90% interval coverage), ``"mc"`` (the same of Monte Carlo dropout, the
            mean of ``mc_samples`` stochastic passes, batched over samples and runs) or
            ``"both"`` (and their paired comparison). Stored per run; a run's key includes it
            when set. See docs/report.md for the metrics.
        mc_samples: Monte Carlo passes ``T`` (default 30).
        mc_consistent: the same ``T`` masks for every test row (baal's ``ConsistentDropout``).
        choose_by: the metric that chooses the best group: ``"score"`` (accuracy or R², the
            default), ``"nll"``, ``"brier"``, ``"ece"`` (regression: ``"nll"``, ``"rmse"``;
            lower is better), optionally ``"det_"``/``"mc_"`` before it to name the mode (by
            default Monte Carlo's when measured); on the validation split when there is one.
        store, engine, address, progress, runs_per_batch, compile, device, batched,
            max_batch_memory, eval_every: see :func:`run`.

    Returns:
        The :class:`~dropkit.lab.results.experiment.Experiment`: ``.summary``, ``.best``,
        ``.findings``, ``.plot_rates()``, ``.report(path)``, ...

    Example:
        >>> from dropkit import lab
        >>> e = lab.sweep(rates=[0, 0.4], seeds=3, epochs=200, store="runs.sqlite")
        >>> [row["p"] for row in e.summary]
        [0.0, 0.4]
    """
    planned, options = _split_call(locals(), plan_sweep)
    return run(plan_sweep(**planned), RunOptions(**options))


def compare(
    data: object = None,
    *,
    train: object = None,
    test: object = None,
    arms: str | Sequence[str] | None = None,
    model: object = "mlp",
    hidden: int | Sequence[int] | None = None,
    seeds: int | Sequence[int] = 10,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    target: str | None = None,
    impute: str | None = None,
    task: str | None = None,
    validation: float | None = None,
    folds: int = 0,
    model_id: str | None = None,
    data_id: str | None = None,
    evaluate: str | None = None,
    mc_samples: int = MC_SAMPLES,
    mc_consistent: bool = False,
    choose_by: str = "score",
    store: str | Path = "runs.sqlite",
    engine: str | Engine | None = None,
    address: str | None = None,
    progress: object = None,
    runs_per_batch: int = 256,
    compile: bool | None = None,
    device: str = "auto",
    batched: bool | None = None,
    max_batch_memory: int | None = None,
    eval_every: int | None = None,
    **strengths: Any,
) -> Experiment:
    """Compare regularizers: every arm trained with the same seeds, tested against ``none``.

    CLI: ``dropkit compare --arms none,dropout,l2 --p 0.4 --seeds 10 ...``.

    Args:
        data, train, test: as in :func:`sweep`.
        arms: arm names (``["none", "dropout", "dropout+l2"]`` or ``"none,dropout"``); one
            regularizer of :data:`dropkit.lab.plan.arms.REGULARIZERS` or several joined by ``+``.
            None: every arm that applies to ``model``.
        model: ``"mlp"``, ``"cnn"`` (image data) or ``"rnn"`` (sequences), or your own
            model as in :func:`sweep` (a factory ``f(p)`` or an ``nn.Module``): then the arms
            that act on the loss, the optimizer step, the loop or the data apply, and the rate
            ``p`` of its dropout; arms that change a built-in model's structure are refused.
        hidden: layer widths: MLP hidden units, CNN channels or LSTM sizes (None: mlp 500,
            cnn 16,32, rnn 32).
        seeds: as in :func:`sweep`.
        epochs: training epochs (None: chosen per data set and model kind).
        batch_size, lr, target, impute, task, validation, folds, model_id, data_id, evaluate,
            mc_samples, mc_consistent, choose_by: as in :func:`sweep`.
        store, engine, address, progress, runs_per_batch, compile, device, batched,
            max_batch_memory, eval_every: see :func:`run`.
        **strengths: the arms' strengths by name, e.g. ``p=0.4``, ``l2=1e-3``,
            ``max_norm=3``, ``patience=50`` (every name of
            :data:`dropkit.lab.plan.arms.STRENGTHS`, with its default and range).

    Returns:
        The :class:`~dropkit.lab.results.experiment.Experiment`; ``.comparisons`` holds each arm's
        paired t-test against ``none`` (Holm-adjusted).

    Example:
        >>> from dropkit import lab
        >>> e = lab.compare(arms=["none", "dropout", "l2"], seeds=3, epochs=300)
        >>> [row["arm"] for row in e.summary]   # the baseline first, then by rates
        ['none', 'l2', 'dropout']
    """
    planned, options = _split_call(locals(), plan_compare)
    return run(plan_compare(**planned), RunOptions(**options))


def demo(
    *,
    seeds: int | Sequence[int] = DEMO_SEEDS,
    epochs: int = 4000,
    p: float = 0.4,
    store: str | Path = "runs.sqlite",
    engine: str | Engine | None = None,
    address: str | None = None,
    progress: object = None,
    runs_per_batch: int = 128,
    compile: bool | None = None,
    device: str = "auto",
) -> Experiment:
    """The reference case study: does ``Dropout(p)`` help a 500-unit MLP on 30 points?

    CLI: ``dropkit demo``. ``make_circles(100, noise=0.1, random_state=1)``: the first 30
    samples train, the other 70 test (and serve as the validation set, as in the published
    tutorial). ``Dense(500, ReLU) → [Dropout(p)] → Dense(1, sigmoid)``, binary cross-entropy,
    Adam, batch 32, 4000 epochs, with and without dropout over ``seeds`` seeds (30 by
    default: the case study's repeated evaluation). ``device``: see :func:`run`.
    """
    planned, options = _split_call(locals(), plan_demo)
    return run(plan_demo(**planned), RunOptions(**options))


def load_all(store: str | Path, *, choose_by: str = "score") -> list[Experiment]:
    """Every experiment of a results store (runs sharing data, model and training), no training.

    The experiments come in the order they were first stored (an experiment added later comes
    last), each titled apart from the others
    (:func:`dropkit.lab.results.analysis.experiment_titles`) and with the notes stored with its
    runs. A store this process cannot write (a read-only file or folder) is read without a change.
    ``choose_by``: the metric that chooses each experiment's best group (see :func:`sweep`).

    Raises:
        FileNotFoundError: no store at ``store``.
        ValueError: a ``choose_by`` an experiment's task does not take.
        dropkit.lab.store.StoreError: the file is not a readable results store
            (``permission denied``, not a dropkit store, a newer schema version).
    """
    return [experiment for experiment, _ in _load_all(store, choose_by)]


def _load_all(
    store: str | Path, choose_by: str = "score"
) -> list[tuple[Experiment, tuple[str, int]]]:
    """:func:`load_all`'s experiments, each with when its last run was stored
    (:meth:`~dropkit.lab.store.ResultsStore.finished`)."""
    path = Path(store)
    if not path.is_file():
        raise FileNotFoundError(f"`store`: no results store at {path}")
    with ResultsStore(path) as results:
        analyses: list[Analysis] = analyze(results, choose_by=choose_by)
        loaded = []
        for analysis in analyses:
            keys = [r.key for r in analysis.runs]
            first, last = results.finished(keys)
            experiment = _loaded(path, analysis, results.notes(keys), choose_by)
            loaded.append((first, last, experiment))
    loaded.sort(key=lambda entry: entry[0])
    return [(experiment, last) for _, last, experiment in loaded]


def _loaded(
    path: Path, analysis: Analysis, notes: Sequence[str] = (), choose_by: str = "score"
) -> Experiment:
    config = analysis.runs[0].config
    data, train = config.data, config.train
    settings: dict[str, Any] = {
        "dataset": Path(data.name).name,
        "model": config.model.kind,
        "hidden": list(config.model.hidden),
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "seeds": len({r.config.seed for r in analysis.runs}),
    }
    settings.update(_own_settings(data, config.model.name, train))
    if choose_by != "score":
        settings["choose_by"] = choose_by
    return Experiment(path, analysis, command="load", settings=settings, notes=notes)


def report(
    store: str | Path,
    out: str | Path = "report.html",
    *,
    title: str | None = None,
    experiments: Sequence[Experiment] | None = None,
    choose_by: str = "score",
) -> Path:
    """Write ONE self-contained HTML report of every experiment of a results store.

    CLI: ``dropkit report --store STORE --out OUT``. ``experiments``: those of
    :func:`load_all` when the caller has them already (else they are loaded). A store this
    process cannot write is read without a change. ``choose_by``: the metric that chooses each
    experiment's best group (see :func:`sweep`). Returns the report's path.

    Raises:
        FileNotFoundError: no store at ``store``.
        dropkit.lab.store.StoreError: the file is not a readable results store.
        OSError: the report cannot be written.
    """
    from dropkit.lab.results.report import write_report

    loaded = list(experiments) if experiments is not None else load_all(store, choose_by=choose_by)
    with ResultsStore(Path(store)) as results:
        return write_report(results, out, title=title, analyses=[e.analysis for e in loaded])


def load(
    store: str | Path, *, experiment: int | None = None, choose_by: str = "score"
) -> Experiment:
    """The runs of a results store as an :class:`~dropkit.lab.results.experiment.Experiment`, no
    training.

    CLI: ``dropkit report --store STORE``. The experiment's ``notes`` are those stored with its
    runs (why runs trained one by one, the task inferred, how the data was read). A store this
    process cannot write (a read-only file or folder) is read without a change.

    Args:
        store: the SQLite results store.
        experiment: which experiment, when the store holds several (runs of different data,
            models or training settings): an index into :func:`load_all`'s list, which is in
            the order the experiments were first stored. None: the latest (the one whose last
            run finished last); its ``notes`` then name the others and how to pick them.
        choose_by: the metric that chooses the best group (see :func:`sweep`).

    Raises:
        FileNotFoundError: no store at ``store``.
        ValueError: the store holds no finished run, or ``experiment`` is out of range.
        TypeError: ``experiment`` is not an int.
        dropkit.lab.store.StoreError: the file is not a readable results store.
    """
    if experiment is not None and (isinstance(experiment, bool) or not isinstance(experiment, int)):
        raise TypeError(f"`experiment` must be an int index or None, got {experiment!r}")
    loaded = _load_all(store, choose_by)
    if not loaded:
        raise ValueError(f"`store`: no finished runs in {store}")
    if experiment is not None:
        if not -len(loaded) <= experiment < len(loaded):
            raise ValueError(f"`experiment` must be in [0, {len(loaded) - 1}], got {experiment}")
        return loaded[experiment][0]
    if len(loaded) == 1:
        return loaded[0][0]
    latest = max(range(len(loaded)), key=lambda i: loaded[i][1])
    chosen = loaded[latest][0]
    others = "; ".join(f"{i}: {e.title}" for i, (e, _) in enumerate(loaded) if i != latest)
    chosen.notes = (
        f"the store holds {len(loaded)} experiments; this is the latest ({latest}: "
        f"{chosen.title}, last run finished {loaded[latest][1][0]}); the others: {others}. Pick "
        "one with lab.load(store, experiment=INDEX), or every one with lab.load_all(store)",
        *chosen.notes,
    )
    return chosen
