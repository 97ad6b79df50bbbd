"""The lab's predictive evaluation: deterministic and Monte Carlo dropout metrics of trained runs.

The metrics are checked against :mod:`dropkit.calibration` (itself tested against
scikit-learn, torchmetrics and loops from the definitions) on the same predictions to 1e-6;
the Monte Carlo passes against one run measured alone, against the module itself, and for the
properties that make them Monte Carlo dropout (samples differ, rate 0 gives the deterministic
network, BatchNorm evaluates, consistent masks are shared by the rows).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dropkit import calibration
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset
from dropkit.lab.train.predictive import (
    CHUNK_ROWS,
    RELIABILITY_BINS,
    Evaluation,
    Predictor,
    Split,
    measure,
)
from dropkit.lab.train.vmapped import measure_modules

# --- the metrics, on fixed predictions ----------------------------------------------------------


class _Fixed:
    """A predictor whose outputs are fixed random logits ``(R, T, N, k)`` (sample ``t`` is the
    step's position), for checking the metrics alone."""

    def __init__(self, det: Tensor, mc: Tensor) -> None:
        self.det, self.mc = det, mc
        self.runs = det.shape[0]
        self.first: dict[int, int] = {}

    def outputs(self, x: Tensor, shared: bool) -> Tensor:
        rows = x[:, 0].long()
        return self.det[:, rows]

    def samples(self, x: Tensor, shared: bool, steps: Tensor, consistent: bool) -> Tensor:
        rows = x[:, 0].long()
        return self.mc[:, : len(steps)][:, :, rows]

    def part(self, start: int, stop: int) -> Predictor:
        return _Fixed(self.det[start:stop], self.mc[start:stop])


def _fixed(runs: int, samples: int, rows: int, width: int, seed: int = 0) -> _Fixed:
    g = torch.Generator().manual_seed(seed)
    det = 2 * torch.randn(runs, rows, width, generator=g)
    mc = det.unsqueeze(1) + torch.randn(runs, samples, rows, width, generator=g)
    return _Fixed(det, mc)


def _probs(logits: Tensor) -> Tensor:
    z = logits.double()
    if z.shape[-1] == 1:
        return torch.sigmoid(z[..., 0])  # the binary (N,) form of dropkit.calibration
    return z.softmax(-1)


@pytest.mark.parametrize(("width", "classes"), [(1, 2), (3, 3), (2, 2)])
def test_metrics_equal_dropkit_calibration(width: int, classes: int) -> None:
    runs, samples, n = 3, 5, 2 * CHUNK_ROWS + 17  # three chunks, the last one short
    fixed = _fixed(runs, samples, n, width)
    y = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1))
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    evaluation = Evaluation(True, True, samples)
    infos = measure(fixed, evaluation, [Split(x, y, True, "", bins=True)], classes=classes)
    for r, info in enumerate(infos):
        det = _probs(fixed.det[r])
        if width == 2 and classes == 2:
            det = det[:, 1]
        mc_all = fixed.mc[r].double()
        if width == 1:
            mc = torch.sigmoid(mc_all[..., 0]).mean(0)
        else:
            mc = mc_all.softmax(-1).mean(0)
            if classes == 2:
                mc = mc[:, 1]
        for mode, probs in (("det", det), ("mc", mc)):
            assert info[f"{mode}_nll"] == pytest.approx(calibration.nll(probs, y), abs=1e-6)
            brier = calibration.brier_score(probs, y)
            assert info[f"{mode}_brier"] == pytest.approx(brier, abs=1e-6)
            assert info[f"{mode}_ece"] == pytest.approx(calibration.ece(probs, y), abs=1e-6)
            bins = calibration.reliability_bins(probs, y, RELIABILITY_BINS)
            counts = [info[f"{mode}_bin{b:02d}_n"] for b in range(RELIABILITY_BINS)]
            assert counts == bins.counts.tolist()
            for b in range(RELIABILITY_BINS):
                if counts[b]:
                    conf = info[f"{mode}_bin{b:02d}_conf"] / counts[b]
                    hit = info[f"{mode}_bin{b:02d}_hit"] / counts[b]
                    assert conf == pytest.approx(float(bins.confidence[b]), abs=1e-9)
                    assert hit == pytest.approx(float(bins.accuracy[b]), abs=1e-9)
            rows = torch.stack([1 - probs, probs], 1) if probs.ndim == 1 else probs
            accuracy = float((rows.argmax(1) == y).double().mean())
            assert info[f"{mode}_acc"] == pytest.approx(accuracy, abs=1e-12)
        # BALD: H[mean p] - mean H[p_t]
        rows_t = (
            torch.stack([1 - torch.sigmoid(mc_all[..., 0]), torch.sigmoid(mc_all[..., 0])], -1)
            if width == 1
            else mc_all.softmax(-1)
        )
        mean = rows_t.mean(0)
        entropy = -(mean * mean.log()).sum(-1)
        expected = -(rows_t * rows_t.log()).sum(-1).mean(0)
        assert info["mc_entropy"] == pytest.approx(float(entropy.mean()), abs=1e-6)
        assert info["mc_mi"] == pytest.approx(float((entropy - expected).mean()), abs=1e-6)


def test_runs_per_pass_does_not_change_the_metrics() -> None:
    fixed = _fixed(5, 4, 40, 3, seed=3)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    x = torch.arange(40, dtype=torch.float32).view(40, 1)
    evaluation = Evaluation(True, True, 4)
    whole = measure(fixed, evaluation, [Split(x, y, True, "")], classes=3)
    parts = measure(fixed, evaluation, [Split(x, y, True, "")], classes=3, runs_per_pass=2)
    assert whole == parts


def test_regression_metrics_equal_dropkit_calibration() -> None:
    runs, samples, n = 2, 6, 150
    fixed = _fixed(runs, samples, n, 1, seed=4)
    g = torch.Generator().manual_seed(5)
    y = torch.randn(n, generator=g)
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    fit_y = torch.randn(n, generator=g)
    evaluation = Evaluation(True, True, samples)
    infos = measure(
        fixed,
        evaluation,
        [Split(x, y, True, "")],
        classes=0,
        fit=Split(x, fit_y, True, ""),
    )
    for r, info in enumerate(infos):
        noise = float((fixed.det[r, :, 0].double() - fit_y.double()).pow(2).mean())
        assert info["noise_sd"] == pytest.approx(math.sqrt(noise), abs=1e-9)
        det = fixed.det[r, :, 0].double()
        values = fixed.mc[r, :, :, 0].double()
        mc_mean, mc_var = values.mean(0), values.var(0, correction=0) + noise
        for mode, mean, var in (
            ("det", det, torch.full_like(det, noise)),
            ("mc", mc_mean, mc_var),
        ):
            sd = var.sqrt()
            assert info[f"{mode}_nll"] == pytest.approx(
                calibration.gaussian_nll(mean, var, y), abs=1e-6
            )
            assert info[f"{mode}_cover90"] == pytest.approx(
                calibration.interval_coverage(mean, sd, y, 0.9), abs=1e-12
            )
            rmse = float((mean - y.double()).pow(2).mean().sqrt())
            assert info[f"{mode}_rmse"] == pytest.approx(rmse, abs=1e-9)
        assert info["mc_sd"] == pytest.approx(float(mc_var.sqrt().mean()), abs=1e-9)


# --- Monte Carlo passes of real modules ---------------------------------------------------------


def _dataset(n_train: int = 64, n_test: int = 50, features: int = 6, classes: int = 3) -> Dataset:
    g = np.random.default_rng(0)
    x = g.normal(size=(n_train + n_test, features)).astype(np.float32)
    y = g.integers(0, classes, n_train + n_test)
    return Dataset(
        name="fake",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        n_classes=classes,
        feature_names=tuple(f"x{i}" for i in range(features)),
    )


def _configs(ps: list[float], train: TrainSpec) -> list[RunConfig]:
    spec = DataSpec("fake")
    model = ModelSpec((), kind="custom", name="net", fingerprint="f")
    return [RunConfig(spec, model, train, p=p, seed=10 + i) for i, p in enumerate(ps)]


def _net(p: float, seed: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 32), nn.ReLU()]
    if bn:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.Dropout(p), nn.Linear(32, 3)]
    net = nn.Sequential(*layers)
    if bn:  # running statistics that differ from a batch's
        with torch.no_grad():
            net[2].running_mean.uniform_(-1, 1)
            net[2].running_var.uniform_(0.5, 2)
    return net


def _measured(ps: list[float], train: TrainSpec, bn: bool = False) -> list[dict[str, float]]:
    configs = _configs(ps, train)
    modules = [_net(c.p, c.seed, bn) for c in configs]
    return measure_modules(modules, _dataset(), configs)


MC = TrainSpec(epochs=1, evaluate="both", mc_samples=8)


def test_deterministic_metrics_are_the_modules_eval_outputs() -> None:
    data = _dataset()
    configs = _configs([0.3, 0.5], MC)
    infos = measure_modules([_net(c.p, c.seed) for c in configs], data, configs)
    y = torch.from_numpy(np.asarray(data.y_test))
    for config, info in zip(configs, infos, strict=True):
        net = _net(config.p, config.seed).eval()
        with torch.no_grad():
            probs = net(torch.from_numpy(data.x_test)).double().softmax(-1)
        assert info["det_nll"] == pytest.approx(calibration.nll(probs, y), abs=1e-6)
        assert info["det_ece"] == pytest.approx(calibration.ece(probs, y), abs=1e-6)


def test_a_run_measures_the_same_alone_and_batched() -> None:
    batched = _measured([0.2, 0.5, 0.5, 0.0], MC)
    train = MC
    for r, p in enumerate([0.2, 0.5, 0.5, 0.0]):
        configs = _configs([0.2, 0.5, 0.5, 0.0], train)[r : r + 1]
        alone = measure_modules([_net(configs[0].p, configs[0].seed)], _dataset(), configs)[0]
        for key, value in batched[r].items():
            assert alone[key] == pytest.approx(value, abs=1e-6), (p, key)


def test_monte_carlo_samples_differ_and_rate_zero_is_deterministic() -> None:
    infos = _measured([0.0, 0.5], MC)
    zero, half = infos
    for metric in ("acc", "nll", "brier", "ece"):
        assert zero[f"mc_{metric}"] == pytest.approx(zero[f"det_{metric}"], abs=1e-6)
    assert zero["mc_mi"] == pytest.approx(0.0, abs=1e-9)
    assert half["mc_mi"] > 1e-3  # the samples differ
    assert half["mc_nll"] != pytest.approx(half["det_nll"], abs=1e-4)


def test_batchnorm_evaluates_during_monte_carlo() -> None:
    # rate 0: every pass is the eval-mode network, running statistics included
    zero = _measured([0.0], MC, bn=True)[0]
    assert zero["mc_nll"] == pytest.approx(zero["det_nll"], abs=1e-6)


def test_consistent_masks_are_shared_by_the_rows() -> None:
    data = _dataset()
    data = dataclasses.replace(data, x_test=np.ones_like(data.x_test))  # identical rows
    train = TrainSpec(epochs=1, evaluate="mc", mc_samples=8, mc_consistent=True)
    configs = _configs([0.5], train)
    info = measure_modules([_net(0.5, configs[0].seed)], data, configs)[0]
    # identical rows with the same masks give identical predictive means: one confidence bin
    counts = [info[f"mc_bin{b:02d}_n"] for b in range(RELIABILITY_BINS)]
    assert sorted(counts)[-1] == len(data.y_test)
    fresh = TrainSpec(epochs=1, evaluate="mc", mc_samples=8)
    configs = _configs([0.5], fresh)
    info = measure_modules([_net(0.5, configs[0].seed)], data, configs)[0]
    counts = [info[f"mc_bin{b:02d}_n"] for b in range(RELIABILITY_BINS)]
    assert sorted(counts)[-1] < len(data.y_test)  # fresh masks per row: the means spread


def test_train_spec_evaluation_fields_keep_old_keys() -> None:
    plain = RunConfig()
    assert "evaluate" not in plain.to_dict()["train"]
    assert "mc_samples" not in plain.to_dict()["train"]
    det = RunConfig(train=TrainSpec(evaluate="deterministic"))
    assert det.key() != plain.key()
    assert "mc_samples" not in det.to_dict()["train"]
    both = RunConfig(train=TrainSpec(evaluate="both", mc_samples=10))
    assert both.to_dict()["train"]["mc_samples"] == 10
    assert RunConfig.from_dict(both.to_dict()) == both
    assert both.key() != RunConfig(train=TrainSpec(evaluate="both")).key()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"evaluate": "sometimes"}, ValueError),
        ({"evaluate": "mc", "mc_samples": 1}, ValueError),
        ({"evaluate": "mc", "mc_samples": True}, ValueError),
        ({"mc_samples": 10}, ValueError),
        ({"evaluate": "deterministic", "mc_consistent": True}, ValueError),
        ({"evaluate": "mc", "mc_consistent": 1}, TypeError),
    ],
)
def test_train_spec_refuses_bad_evaluations(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        TrainSpec(**kwargs)  # type: ignore[arg-type]


# --- through the trainers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "hidden", "regularizers", "task"),
    [
        ("circles", "mlp", (16,), (), "classification"),  # the stacked trainer
        ("circles", "mlp", (16,), (("batchnorm", 1.0),), "classification"),  # the module loop
        ("digits", "cnn", (4, 4), (), "classification"),  # a CNN, ten classes
    ],
)
def test_trainers_add_the_metrics_of_their_final_weights(
    name: str, kind: str, hidden: tuple[int, ...], regularizers: tuple, task: str
) -> None:
    from dropkit.lab.plan.data import load_dataset
    from dropkit.lab.train.dispatch import train_configs

    spec = DataSpec(name, task=task)
    data = load_dataset(spec)
    train = TrainSpec(epochs=3, evaluate="both", mc_samples=4)
    configs = [
        RunConfig(spec, ModelSpec(hidden, kind=kind), train, p=p, seed=s, regularizers=regularizers)
        for p in (0.0, 0.5)
        for s in (0, 1)
    ]
    result = train_configs(data, configs)
    assert result.info is not None
    for r, info in enumerate(result.info):
        if task == "regression":
            assert info["det_rmse"] == pytest.approx(info["test_rmse"], rel=1e-4)
            assert {"mc_nll", "mc_cover90", "noise_sd"} <= set(info)
            assert "classes" not in info
        else:
            assert info["classes"] == data.n_classes  # the Brier score's form, for the results
            assert info["det_acc"] == pytest.approx(result.curves["test_acc"][r, -1], abs=1e-6)
            # the curves' cross-entropy from the logits; here from clamped probabilities
            assert info["det_nll"] == pytest.approx(result.curves["test_loss"][r, -1], rel=1e-4)
            assert 0.0 <= info["mc_ece"] <= 1.0
            total = sum(info[f"mc_bin{b:02d}_n"] for b in range(RELIABILITY_BINS))
            assert total == len(data.y_test)
        if configs[r].p == 0.0:
            assert info["mc_nll"] == pytest.approx(info["det_nll"], abs=1e-5)


def test_regression_of_the_built_in_mlp() -> None:
    from dropkit.lab.api import plan_sweep
    from dropkit.lab.train.dispatch import train_configs

    g = np.random.default_rng(0)
    x = g.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * g.normal(size=120)).astype(np.float32)
    plan = plan_sweep(
        (x, y),
        rates=[0.0, 0.5],
        seeds=2,
        epochs=3,
        hidden=16,
        task="regression",
        evaluate="both",
        mc_samples=4,
    )
    result = train_configs(plan.dataset, list(plan.configs))
    assert result.info is not None
    for config, info in zip(plan.configs, result.info, strict=True):
        assert info["det_rmse"] == pytest.approx(info["test_rmse"], rel=1e-4)
        assert info["val_det_rmse"] == pytest.approx(info["val_rmse"], rel=1e-4)
        assert info["noise_sd"] == pytest.approx(info["train_rmse"], rel=1e-4)
        assert 0.0 <= info["mc_cover90"] <= 1.0
        if config.p == 0.0:
            assert info["mc_nll"] == pytest.approx(info["det_nll"], abs=1e-6)
        else:
            assert info["mc_sd"] > info["noise_sd"]


def test_monte_carlo_draws_at_the_runs_rate_after_early_dropout() -> None:
    """Early dropout ends with the rate at 0; Monte Carlo dropout still draws at the run's
    ``p``, in the vmapped trainer as in the built-in ones."""
    from dropkit.lab.api import plan_compare
    from dropkit.lab.train.dispatch import train_configs

    def factory(p: float) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))

    for model in (factory, "mlp"):
        plan = plan_compare(
            "circles",
            arms="early_dropout",
            model=model,
            seeds=2,
            epochs=4,
            evaluate="mc",
            mc_samples=6,
        )
        result = train_configs(plan.dataset, list(plan.configs), model=plan.model, trainer="auto")
        assert result.info is not None
        assert all(info["mc_mi"] > 0 for info in result.info), model


def test_runs_of_one_structure_are_measured_together() -> None:
    configs = _configs([0.2, 0.5, 0.0], MC)
    said: list[str] = []
    measure_modules([_net(c.p, c.seed) for c in configs], _dataset(), configs, log=said.append)
    assert not [line for line in said if "run by run" in line], said


@pytest.mark.slow
def test_compiled_monte_carlo_passes_equal_the_eager_ones() -> None:
    from dropkit.lab.train.stacked import compiler_available

    if not compiler_available():
        pytest.skip("no C++ compiler for torch.compile")
    configs = _configs([0.3, 0.5], MC)
    eager = measure_modules(
        [_net(c.p, c.seed) for c in configs], _dataset(), configs, compile=False
    )
    said: list[str] = []
    compiled = measure_modules(
        [_net(c.p, c.seed) for c in configs],
        _dataset(),
        configs,
        compile=True,
        log=said.append,
    )
    assert not [line for line in said if "failed" in line], said
    for one, other in zip(eager, compiled, strict=True):
        for key, value in one.items():
            assert other[key] == pytest.approx(value, abs=1e-5), key  # float rounding only


def test_validation_metrics_include_the_ece_without_storing_bins() -> None:
    runs, samples, n = 2, 4, 90
    fixed = _fixed(runs, samples, n, 3, seed=6)
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(7))
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    infos = measure(fixed, Evaluation(True, False, samples), [Split(x, y, True, "val_")], classes=3)
    for r, info in enumerate(infos):
        probs = _probs(fixed.det[r])
        assert info["val_det_ece"] == pytest.approx(calibration.ece(probs, y), abs=1e-6)
        assert info["val_det_ece"] > 0
        assert not [key for key in info if "bin" in key]
