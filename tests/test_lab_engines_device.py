"""The lab's trainers and engines: devices, regression, validation splits and model sources.

CPU side. The same sweeps on CUDA, compared with these CPU results, are in
``tests/test_cuda.py``; the Ray engine's share (model sources on workers, GPU placement, token
authentication) in ``tests/test_lab_ray.py``.
"""

from __future__ import annotations

import math
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from dropkit.lab.execute import engines
from dropkit.lab.execute.engines import BatchJob, InProcessEngine, RayEngine
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.models import build_model
from dropkit.lab.plan.splits import holdout_rows, stopping_rows, validation_rows
from dropkit.lab.plan.user_model import model_source
from dropkit.lab.train.contract import BatchResult, sample_scores
from dropkit.lab.train.dispatch import is_batched, resolve_device, train_configs
from dropkit.lab.train.vmapped import train_custom

# Two computations of the same float32 numbers (the stacked trainer and the loop; a run alone
# and in a batch): a few epochs of Adam keep them within ~1e-6 (tests/test_lab_trainers.py).
ATOL = 2e-5
# An accuracy k/n the stacked trainer averages in float32 (rounding below 1e-7) against the
# same count in float64: far below one sample's 1/n.
ACC_TOL = 1e-6

NO_CUDA = (
    "`device` 'cuda': no CUDA device is available (torch.cuda.is_available() is False); "
    "use 'cpu' or 'auto'"
)
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


pytestmark = pytest.mark.usefixtures("one_thread")


def _configs(
    spec: DataSpec,
    *,
    seeds: int = 2,
    epochs: int = 6,
    p: float = 0.3,
    hidden: tuple[int, ...] = (16,),
    folds: tuple[int | None, ...] = (None,),
    **fields: Any,
) -> list[RunConfig]:
    return [
        RunConfig(
            spec,
            ModelSpec(hidden),
            TrainSpec(epochs=epochs, batch_size=16, lr=1e-2),
            p=p,
            seed=seed,
            fold=fold,
            **fields,
        )
        for fold in folds
        for seed in range(seeds)
    ]


# --- devices ----------------------------------------------------------------------------------


def test_auto_resolves_to_cuda_only_where_cuda_is_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(" AUTO ") == torch.device(expected)
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@needs_no_cuda
def test_cuda_without_cuda_is_a_clear_error(circles: Dataset) -> None:
    with pytest.raises(ValueError, match="no CUDA device") as error:
        resolve_device("cuda")
    assert str(error.value) == NO_CUDA
    with pytest.raises(ValueError, match=r"`device` 'cuda:0': no CUDA device is available"):
        resolve_device("cuda:0")
    configs = _configs(DataSpec("circles"))
    for trainer in ("auto", "loop"):
        with pytest.raises(ValueError, match=r"no CUDA device is available .*use 'cpu' or 'auto'"):
            train_configs(circles, configs, compile=False, trainer=trainer, device="cuda")
    with pytest.raises(ValueError, match="no CUDA device is available"):
        InProcessEngine(device="cuda")


@pytest.mark.parametrize("name", ["gpu", "tpu", "mps", "cuda:x", "", "cpu:cuda"])
def test_unknown_device_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"`device` must be one of cpu, cuda, cuda:N, auto, got"):
        resolve_device(name)
    with pytest.raises(ValueError, match="`device` must be one of"):
        RayEngine(device=name)


def test_a_device_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="`device` must be a str or torch.device, got int: 0"):
        resolve_device(0)  # type: ignore[arg-type]


@needs_no_cuda
def test_auto_trains_what_cpu_trains_bit_for_bit(moons: Dataset) -> None:
    configs = _configs(DataSpec("moons"), regularizers=(("augment", 0.1),))
    for trainer in ("stacked", "loop"):
        on_cpu = train_configs(moons, configs, compile=False, trainer=trainer, device="cpu")
        on_auto = train_configs(moons, configs, compile=False, trainer=trainer, device="auto")
        for name, values in on_cpu.curves.items():
            assert np.array_equal(values, on_auto.curves[name]), (trainer, name)


def test_results_come_back_as_cpu_arrays_and_tensors(moons: Dataset) -> None:
    configs = _configs(DataSpec("moons"))
    for trainer in ("stacked", "loop"):
        result = train_configs(moons, configs, compile=False, trainer=trainer, device="auto")
        assert all(v.dtype == np.float64 and v.shape == (2, 6) for v in result.curves.values())
        assert result.states is not None
        assert {t.device.type for state in result.states for t in state.values()} == {"cpu"}


def test_the_ray_engine_checks_device_names_without_needing_cuda() -> None:
    # The driver does not resolve the device: a CUDA sweep is sent from a machine without one.
    assert RayEngine(device="cuda").device == "cuda"
    assert RayEngine(device="auto").device == "auto"
    assert RayEngine(device=torch.device("cpu")).device == "cpu"
    assert RayEngine(device="cuda", gpus_per_batch=0.25).gpus_per_batch == 0.25
    with pytest.raises(ValueError, match=r"`device` 'cuda:1' names a GPU of this machine"):
        RayEngine(device="cuda:1")
    with pytest.raises(ValueError, match=r"`gpus_per_batch` must be > 0 with `device` 'cuda'"):
        RayEngine(device="cuda", gpus_per_batch=0)
    with pytest.raises(ValueError, match="`gpus_per_batch` must be"):
        RayEngine(gpus_per_batch=-1)


def test_the_in_process_engine_passes_its_settings_through(
    moons: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    def recording(data: Dataset, configs: Any, **options: Any) -> BatchResult:
        seen.append(options)
        return BatchResult(curves={}, seconds=0.0)

    monkeypatch.setattr(engines, "train_configs", recording)
    source = object()
    engine = InProcessEngine(compile=False, device="auto", batched=False, max_batch_memory=123)
    job = BatchJob(moons, tuple(_configs(DataSpec("moons"))), model=source)
    assert [result for _, result in engine.run_batches([job])] == [BatchResult({}, 0.0)]
    (options,) = seen
    assert options["device"] == resolve_device("auto")
    assert options["model"] is source
    assert (options["batched"], options["max_batch_memory"], options["compile"]) == (
        False,
        123,
        False,
    )


# --- regression ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear() -> Dataset:
    """``y = x·w + 0.1·ε`` on 4 features: 90 training rows, 30 test rows (float32 targets)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4)).astype(np.float32)
    y = (x @ np.array([1.5, -1.0, 0.5, 1.0]) + 0.1 * rng.standard_normal(120)).astype(np.float32)
    return Dataset(
        name="linear",
        x_train=x[:90],
        y_train=y[:90],
        x_test=x[90:],
        y_test=y[90:],
        n_classes=0,
        feature_names=("a", "b", "c", "d"),
        task="regression",
    )


REGRESSION = DataSpec("linear", task="regression")


def _regression_scores(
    state: dict[str, torch.Tensor], config: RunConfig, data: Dataset, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """R², MSE, RMSE and MAE of a trained run's weights on ``(x, y)``, in float64."""
    model = build_model(config, data)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).squeeze(1).double().numpy()
    target = y.astype(np.float64)
    error = predicted - target
    sse = float(np.sum(error**2))
    sst = float(np.sum((target - target.mean()) ** 2))
    mse = sse / len(y)
    return {
        "r2": 1 - sse / sst,
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(np.abs(error).mean()),
    }


def test_regression_trains_with_squared_error_and_reports_r2(linear: Dataset) -> None:
    configs = _configs(REGRESSION, epochs=40, p=0.1)
    assert not any(is_batched(c) for c in configs), "regression goes to the loop"
    result = train_configs(linear, configs, compile=False)
    assert result.states is not None and result.info is not None
    for run, config in enumerate(configs):
        train_r2, test_r2 = result.curves["train_acc"][run], result.curves["test_acc"][run]
        # A linear target with noise variance 0.01 against a signal variance of about 4.1:
        # a 16-unit MLP fits it to R² > 0.9 in 40 epochs (measured about 0.99), from about 0.
        assert train_r2[0] < 0.9 < train_r2[-1] and test_r2[-1] > 0.9
        assert result.curves["train_loss"][run][-1] < result.curves["train_loss"][run][0]
        # The recorded numbers are the final weights' scores (the metrics contract).
        state, info = result.states[run], result.info[run]
        for split, x, y in (
            ("train", linear.x_train, linear.y_train),
            ("test", linear.x_test, linear.y_test),
        ):
            scores = _regression_scores(state, config, linear, x, y)
            assert result.curves[f"{split}_acc"][run][-1] == pytest.approx(scores["r2"], abs=1e-6)
            assert result.curves[f"{split}_loss"][run][-1] == pytest.approx(scores["mse"], rel=1e-5)
            assert info[f"{split}_rmse"] == pytest.approx(scores["rmse"], rel=1e-5)
            assert info[f"{split}_mae"] == pytest.approx(scores["mae"], rel=1e-5)
        assert set(info) == {"train_rmse", "train_mae", "test_rmse", "test_mae"}


def test_regression_refuses_the_stacked_trainer_and_class_target_arms(linear: Dataset) -> None:
    with pytest.raises(ValueError, match="the stacked trainer cannot train regression"):
        train_configs(linear, _configs(REGRESSION), compile=False, trainer="stacked")
    smoothed = _configs(REGRESSION, regularizers=(("label_smoothing", 0.1),))
    with pytest.raises(ValueError, match="'label_smoothing' changes class targets"):
        train_configs(linear, smoothed, compile=False)


def test_regression_early_stopping_holds_out_a_plain_fifth(linear: Dataset) -> None:
    configs = _configs(REGRESSION, epochs=30, p=0.1, regularizers=(("early_stopping", 3.0),))
    result = train_configs(linear, configs, compile=False)
    assert result.states is not None and result.info is not None
    fit, _ = holdout_rows(linear.y_train, 0.2, 0, stratify=False)
    assert len(fit) == 72
    for run, config in enumerate(configs):
        info = result.info[run]
        assert 1 <= info["best_epoch"] <= info["stop_epoch"] <= 30
        # The train curve measures the rows it fitted: the restored weights on the fit rows.
        scores = _regression_scores(
            result.states[run], config, linear, linear.x_train[fit], linear.y_train[fit]
        )
        assert result.curves["train_loss"][run][-1] == pytest.approx(scores["mse"], rel=1e-5)
        assert info["train_rmse"] == pytest.approx(scores["rmse"], rel=1e-5)


def test_regression_with_a_validation_split_reports_val_scores(linear: Dataset) -> None:
    spec = DataSpec("linear", task="regression", validation=0.25)
    configs = _configs(spec, epochs=20)
    result = train_configs(linear, configs, compile=False)
    assert result.states is not None and result.info is not None
    fit, held = validation_rows(linear.y_train, spec, None)
    for run, config in enumerate(configs):
        info = result.info[run]
        held_x, held_y = linear.x_train[held], linear.y_train[held]
        scores = _regression_scores(result.states[run], config, linear, held_x, held_y)
        assert info["val_acc"] == pytest.approx(scores["r2"], abs=1e-6)
        assert info["val_loss"] == pytest.approx(scores["mse"], rel=1e-5)
        assert info["val_rmse"] == pytest.approx(scores["rmse"], rel=1e-5)
        assert info["val_mae"] == pytest.approx(scores["mae"], rel=1e-5)
        fitted = _regression_scores(
            result.states[run], config, linear, linear.x_train[fit], linear.y_train[fit]
        )
        assert result.curves["train_loss"][run][-1] == pytest.approx(fitted["mse"], rel=1e-5)


# --- validation splits ------------------------------------------------------------------------


def _class_scores(
    state: dict[str, torch.Tensor], config: RunConfig, data: Dataset, rows: np.ndarray
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a trained run's weights on training rows ``rows``."""
    model = build_model(config, data)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x_train[rows]))
    correct, loss = sample_scores(logits, torch.from_numpy(data.y_train[rows]))
    return float(correct.double().mean()), float(loss.double().mean())


DETERMINISTIC: list[dict[str, Any]] = [
    {},
    {"regularizers": (("l2", 1e-2),)},
    {"regularizers": (("early_stopping", 2.0),)},
]


def test_both_trainers_fit_the_fit_rows_and_report_the_validation_rows(moons: Dataset) -> None:
    """Early stopping fits on the fit rows it did not carve out to stop on
    (:func:`stopping_rows`); every run reports the same validation rows."""
    spec = DataSpec("moons", validation=0.25)
    fit, held = validation_rows(moons.y_train, spec, None)
    carved_fit, _, carved_held = stopping_rows(moons.y_train, spec, None)
    np.testing.assert_array_equal(carved_held, held)
    configs = [c for fields in DETERMINISTIC for c in _configs(spec, p=0.0, **fields)]
    stacked = train_configs(moons, configs, compile=False, trainer="stacked")
    looped = train_configs(moons, configs, compile=False, trainer="loop")
    # Without masks the two trainers compute the same numbers (to float rounding).
    for name in stacked.curves:
        np.testing.assert_allclose(stacked.curves[name], looped.curves[name], rtol=0, atol=ATOL)
    assert stacked.info is not None and looped.info is not None and stacked.states is not None
    for run, config in enumerate(configs):
        mine, theirs = stacked.info[run], looped.info[run]
        assert mine.keys() == theirs.keys() and {"val_acc", "val_loss"} <= mine.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], abs=ATOL), (config.arm, key)
        val_acc, val_loss = _class_scores(stacked.states[run], config, moons, held)
        assert mine["val_acc"] == pytest.approx(val_acc, abs=ACC_TOL)
        assert mine["val_loss"] == pytest.approx(val_loss, rel=1e-5)
        stops = config.strength("early_stopping") is not None
        rows = carved_fit if stops else fit
        fit_acc, fit_loss = _class_scores(stacked.states[run], config, moons, rows)
        assert stacked.curves["train_acc"][run][-1] == pytest.approx(fit_acc, abs=ACC_TOL)
        assert stacked.curves["train_loss"][run][-1] == pytest.approx(fit_loss, rel=1e-5)


def test_without_a_validation_split_no_val_scores_are_written(moons: Dataset) -> None:
    configs = _configs(DataSpec("moons"), regularizers=(("early_stopping", 2.0),))
    for trainer in ("stacked", "loop"):
        result = train_configs(moons, configs, compile=False, trainer=trainer)
        assert result.info is not None
        assert all(set(info) == {"stop_epoch", "best_epoch"} for info in result.info)


@pytest.mark.parametrize("trainer", ["stacked", "loop"])
def test_early_stopping_watches_its_own_rows_not_the_validation_rows(
    moons: Dataset, trainer: str
) -> None:
    """A run whose patience never runs out restores the epoch of its lowest loss on the rows
    :func:`stopping_rows` carves from the fit rows, never on the validation rows.

    The same run without early stopping on a data set whose training rows are the carved fit
    rows and whose test rows are the stopping rows, trained for e = 1 .. E epochs, gives the
    stopping loss of each epoch (same rows in the same order, masks a function of (seed,
    epoch)): the restored epoch must be their arg-min. ``val_loss`` is the restored weights'
    loss on the validation rows.
    """
    spec = DataSpec("moons", validation=0.3)
    fit, stop, held = stopping_rows(moons.y_train, spec, None)
    x, y = moons.x_train, moons.y_train
    carved = Dataset("moons", x[fit], y[fit], x[stop], y[stop], 2, moons.feature_names)
    epochs = 8
    losses = []
    for e in range(1, epochs + 1):
        (config,) = _configs(DataSpec("moons"), seeds=1, epochs=e, p=0.2)
        result = train_configs(carved, [config], compile=False, trainer=trainer)
        losses.append(float(result.curves["test_loss"][0][-1]))
    (patient,) = _configs(
        spec, seeds=1, epochs=epochs, p=0.2, regularizers=(("early_stopping", 100.0),)
    )
    result = train_configs(moons, [patient], compile=False, trainer=trainer)
    assert result.info is not None and result.states is not None
    info = result.info[0]
    assert info["stop_epoch"] == epochs
    assert info["best_epoch"] == 1 + int(np.argmin(losses))
    assert len(set(losses)) > 1, "the stopping loss moved, so the arg-min means something"
    val_acc, val_loss = _class_scores(result.states[0], patient, moons, held)
    assert info["val_acc"] == pytest.approx(val_acc, abs=ACC_TOL)
    assert info["val_loss"] == pytest.approx(val_loss, rel=1e-5)


def test_folds_train_each_fold_on_its_own_rows(moons: Dataset) -> None:
    spec = DataSpec("moons", folds=3)
    configs = _configs(spec, folds=(0, 1, 2))
    together = train_configs(moons, configs, compile=False, trainer="stacked")
    assert together.info is not None and together.states is not None
    val_losses = set()
    for run, config in enumerate(configs):
        alone = train_configs(moons, [config], compile=False, trainer="stacked")
        assert alone.info is not None
        for name, values in together.curves.items():
            np.testing.assert_allclose(values[run], alone.curves[name][0], rtol=0, atol=ATOL)
        assert together.info[run]["val_loss"] == pytest.approx(alone.info[0]["val_loss"], abs=ATOL)
        fit, held = validation_rows(moons.y_train, spec, config.fold)
        val_acc, _ = _class_scores(together.states[run], config, moons, held)
        assert together.info[run]["val_acc"] == pytest.approx(val_acc, abs=ACC_TOL)
        fit_acc, _ = _class_scores(together.states[run], config, moons, fit)
        assert together.curves["train_acc"][run][-1] == pytest.approx(fit_acc, abs=ACC_TOL)
        val_losses.add(round(together.info[run]["val_loss"], 6))
    assert len(val_losses) == len(configs), "every fold and seed validates on its own terms"
    looped = train_configs(moons, configs[:2], compile=False, trainer="loop")
    assert looped.info is not None
    assert all({"val_acc", "val_loss"} <= info.keys() for info in looped.info)


# --- a user's model ---------------------------------------------------------------------------


def _factory(width: int) -> Any:
    """A factory closure, as a notebook would define one."""

    def build(p: float) -> nn.Module:
        return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Dropout(p), nn.Linear(width, 1))

    return build


def _custom(source: Any, seeds: int = 2) -> list[RunConfig]:
    return [
        RunConfig(DataSpec("circles"), source.spec, TrainSpec(epochs=4), p=0.3, seed=seed)
        for seed in range(seeds)
    ]


def test_custom_configs_need_their_model_source(circles: Dataset) -> None:
    source = model_source(_factory(8))
    with pytest.raises(ValueError, match=r"custom model .* need `model`: the model source"):
        train_configs(circles, _custom(source))
    with pytest.raises(ValueError, match="`model` is for custom-model configs"):
        train_configs(circles, _configs(DataSpec("circles")), model=source)
    with pytest.raises(ValueError, match="the stacked trainer trains built-in MLPs only"):
        train_configs(circles, _custom(source), model=source, trainer="stacked")


def test_custom_configs_train_through_train_custom(circles: Dataset) -> None:
    source = model_source(_factory(8))
    configs = _custom(source)
    direct = train_custom(source, circles, configs)
    via_train = train_configs(circles, configs, model=source, device="cpu")
    (via_engine,) = [
        result
        for _, result in InProcessEngine(compile=False).run_batches(
            [BatchJob(circles, tuple(configs), model=source)]
        )
    ]
    assert isinstance(via_engine, BatchResult)
    for name, values in direct.curves.items():
        assert values.shape == (2, 4)
        assert np.array_equal(values, via_train.curves[name])
        assert np.array_equal(values, via_engine.curves[name])


def test_model_sources_and_jobs_survive_cloudpickle(circles: Dataset) -> None:
    """Ray ships task arguments with cloudpickle: a closure or a lambda travels by value."""
    for source in (
        model_source(_factory(6)),
        model_source(lambda p: nn.Sequential(nn.Linear(2, 5), nn.Dropout(p), nn.Linear(5, 1))),
    ):
        job = BatchJob(circles, tuple(_custom(source)), model=source)
        copied = cloudpickle.loads(cloudpickle.dumps(job))
        assert copied.configs == job.configs
        assert copied.model.fingerprint == source.fingerprint
        mine, theirs = source.build(0.3, 7), copied.model.build(0.3, 7)
        assert str(mine) == str(theirs)
        for (name, a), (_, b) in zip(
            mine.state_dict().items(), theirs.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
