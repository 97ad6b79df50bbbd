"""The generic training loop: learning, seeding, early stopping and the loop-level arms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import dropkit
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.plan.models import build_model
from dropkit.lab.plan.splits import validation_split
from dropkit.lab.train import module_loop as loop
from dropkit.lab.train.contract import augment_batch, dropout_on, dropout_window
from dropkit.lab.train.module_loop import train_modules
from dropkit.lab.train.stacked import RunSettings, train_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(
    data: str = "moons",
    hidden: tuple[int, ...] = (32,),
    kind: str = "mlp",
    epochs: int = 10,
    lr: float = 1e-2,
    **fields: object,
) -> RunConfig:
    return RunConfig(
        data=DataSpec(data),
        model=ModelSpec(hidden, kind),
        train=TrainSpec(epochs=epochs, lr=lr),
        **fields,  # type: ignore[arg-type]
    )


def test_without_dropout_the_loop_matches_the_stacked_trainer(circles: Dataset) -> None:
    # Same Glorot draws, one full batch per epoch (30 samples < 32): the two trainers compute
    # the same numbers, up to float rounding of different kernels.
    configs = [_config("circles", (16,), epochs=25, lr=1e-2, seed=s) for s in (0, 1)]
    mine = train_modules(circles, configs)
    stacked = train_batch(
        circles, configs[0].model, configs[0].train, [RunSettings(c.seed) for c in configs],
        compile=False,
    )  # fmt: skip
    for name, curve in stacked.curves.items():
        np.testing.assert_allclose(mine.curves[name], curve, atol=1e-5)


def test_a_circles_mlp_learns_and_reports_curves_states_and_info(circles: Dataset) -> None:
    configs = [_config("circles", (64,), epochs=200, lr=3e-2, p=0.2, seed=s) for s in (0, 1)]
    result = train_modules(circles, configs)
    assert set(result.curves) == {"train_acc", "test_acc", "train_loss", "test_loss"}
    assert all(c.shape == (2, 200) for c in result.curves.values())
    # 30 training and 70 test points, the best known test accuracy about 0.79. A model at
    # chance has mean accuracy 0.5 over two runs with sd 0.5/sqrt(2·70) = 0.042 (test) and
    # 0.5/sqrt(2·30) = 0.065 (train): 0.65 and 0.85 are over 3.5 of them above.
    assert result.curves["test_acc"][:, -1].mean() > 0.65
    assert result.curves["train_acc"][:, -1].mean() > 0.85
    assert result.curves["train_loss"][:, -1].max() < result.curves["train_loss"][:, 0].min()
    assert result.info == [{}, {}]
    assert result.states is not None
    model = build_model(configs[0], circles)
    model.load_state_dict(result.states[0])
    model.eval()
    x = torch.from_numpy(circles.x_test)
    accuracy = float(
        ((model(x).squeeze(1) > 0).long() == torch.from_numpy(circles.y_test)).float().mean()
    )
    assert accuracy == pytest.approx(result.curves["test_acc"][0, -1])
    prediction = dropkit.mc_predict(
        model, x, n_samples=10, generator=torch.Generator().manual_seed(0)
    )
    assert prediction.mean.shape == (70, 2)
    assert float(prediction.std.max()) > 0


def test_a_digits_cnn_learns_in_two_epochs() -> None:
    data = load_dataset(DataSpec("digits"))
    config = _config("digits", (8, 16), "cnn", epochs=2, lr=3e-3, p=0.1)
    result = train_modules(data, [config])
    # 540 test digits: chance is 0.1; 0.6 is far above it (binomial sd at 0.6 is 0.02).
    assert result.curves["test_acc"][0, -1] > 0.6


def test_an_lstm_learns_the_sequence_task() -> None:
    data = load_dataset(DataSpec("sequence"))
    config = _config("sequence", (32,), "rnn", epochs=10, lr=1e-2, p=0.1)
    result = train_modules(data, [config])
    # 1,000 test sequences: chance is 0.5 with sd 0.016; 0.65 is 9 of them above.
    assert result.curves["test_acc"][0, -1] > 0.65


def test_seeds_decide_the_curves(moons: Dataset) -> None:
    configs = [
        _config(p=0.5, input_p=0.1, seed=3, regularizers=(("augment", 0.2),)),
        _config(p=0.5, input_p=0.1, seed=3, regularizers=(("augment", 0.2),)),
        _config(p=0.5, input_p=0.1, seed=4, regularizers=(("augment", 0.2),)),
    ]
    result = train_modules(moons, configs)
    again = train_modules(moons, configs[:1])
    for name, curve in result.curves.items():
        assert np.array_equal(curve[0], curve[1]), name  # lockstep with others changes nothing
        assert np.array_equal(curve[0], again.curves[name][0]), name
        assert not np.array_equal(curve[0], curve[2]), name


def test_early_stopping_restores_the_best_weights(moons: Dataset) -> None:
    # A wide net with a large step overfits 140 moons quickly, so the validation loss turns.
    stopping = (("early_stopping", 3.0),)
    config = _config(hidden=(256,), epochs=60, lr=5e-2, seed=1, regularizers=stopping)
    result = train_modules(moons, [config])
    assert result.info is not None
    assert result.states is not None
    info = result.info[0]
    stop, best = int(info["stop_epoch"]), int(info["best_epoch"])
    assert stop < 60
    assert stop == best + 3
    curves = result.curves["test_loss"][0]
    assert np.all(curves[stop:] == curves[stop])  # the restored weights, held to the end
    # The restored weights are the weights after `best` epochs: train only that long (the
    # generator draws the same numbers) with a patience that cannot run out.
    patient = (("early_stopping", 1000.0),)
    short = _config(hidden=(256,), epochs=best, lr=5e-2, seed=1, regularizers=patient)
    replay = train_modules(moons, [short])
    assert replay.states is not None
    assert replay.info == [{"stop_epoch": float(best), "best_epoch": float(best)}]
    for key, value in result.states[0].items():
        assert torch.equal(value, replay.states[0][key]), key
    # ...and the train curve measures them on the 80% the run trained on.
    fit, _ = validation_split(moons.y_train)
    model = build_model(config, moons)
    model.load_state_dict(result.states[0])
    model.eval()
    logits = model(torch.from_numpy(moons.x_train[fit])).squeeze(1)
    correct = (logits > 0).long() == torch.from_numpy(moons.y_train[fit])
    assert float(correct.float().mean()) == pytest.approx(result.curves["train_acc"][0, -1])


def test_early_and_late_dropout_switch_the_modules_at_the_fraction(
    moons: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop sets its hidden dropout modules' rate per epoch from the shared window."""
    early = _config(epochs=10, p=0.5, regularizers=(("early_dropout", 0.3),))
    late = _config(epochs=10, p=0.5, regularizers=(("late_dropout", 0.3),))
    assert [dropout_on(dropout_window(early), e) for e in range(10)] == [True] * 3 + [False] * 7
    assert [dropout_on(dropout_window(late), e) for e in range(10)] == [False] * 3 + [True] * 7
    rates: dict[int, list[float]] = {id(early): [], id(late): []}
    train_epoch = loop._train_epoch

    def spy(run: Any, data: Dataset) -> None:
        rates[id(run.config)].append(run.switched[0].p)
        train_epoch(run, data)

    monkeypatch.setattr(loop, "_train_epoch", spy)
    train_modules(moons, [early, late])
    assert rates[id(early)] == [0.5] * 3 + [0.0] * 7
    assert rates[id(late)] == [0.0] * 3 + [0.5] * 7


def test_late_dropout_that_never_starts_is_no_dropout(moons: Dataset) -> None:
    # Dropout(0) draws nothing, so a run whose dropout never switches on is the p = 0 run.
    never = _config(p=0.5, input_p=0.2, seed=2, regularizers=(("late_dropout", 1.0),))
    result = train_modules(moons, [never, _config(input_p=0.2, seed=2)])
    for name, curve in result.curves.items():
        assert np.array_equal(curve[0], curve[1]), name
    assert result.states is not None
    rebuilt = build_model(never, moons)
    rebuilt.load_state_dict(result.states[0])
    assert [m.p for m in rebuilt if isinstance(m, dropkit.Dropout)] == [0.2, 0.5]


def test_penalties_and_max_norm_constrain_the_weights(moons: Dataset) -> None:
    plain, l2, l1, bounded = (
        _config(hidden=(16,), seed=0, **extra)
        for extra in (
            {},
            {"regularizers": (("l2", 0.05),)},
            {"regularizers": (("l1", 0.03),)},
            {"max_norm": 0.5},
        )
    )
    result = train_modules(moons, [plain, l2, l1, bounded])
    assert result.states is not None
    kernel = [state["0.weight"] for state in result.states]
    assert float(kernel[1].pow(2).sum()) < 0.5 * float(kernel[0].pow(2).sum())
    assert float(kernel[2].abs().sum()) < 0.5 * float(kernel[0].abs().sum())
    assert float(kernel[3].norm(dim=1).max()) <= 0.5 + 1e-6
    assert float(result.states[3]["3.weight"].norm()) > 0.5  # the output layer is free


def test_augmentation_shifts_images_and_jitters_tables() -> None:
    generator = torch.Generator().manual_seed(0)
    # 200 distinct 4x4 images (distinct pixel values, so each shift gives another picture).
    n = 200
    images = torch.arange(n * 16, dtype=torch.float32).view(n, 16) + 1
    shifted = augment_batch(images, 1.0, torch.ones(16), (1, 4, 4), generator)
    seen: list[tuple[int, int]] = []
    for original, moved in zip(images.view(n, 4, 4), shifted.view(n, 4, 4), strict=True):
        padded = nn.functional.pad(original, (1, 1, 1, 1))  # the border filled with 0
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(padded[1 + dy : 5 + dy, 1 + dx : 5 + dx], moved)
        ]
        assert len(matches) == 1, matches  # every image is one of the 9 shifts of itself
        seen.append(matches[0])
    # Shifts are uniform over {-1, 0, 1}²: a shift that never occurs in 200 draws has
    # probability 9·(8/9)^200 ≈ 5e-10; a no-op augmentation (always (0, 0)) fails here.
    assert set(seen) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    rows = torch.zeros(20_000, 2)
    jitter = augment_batch(rows, 0.1, torch.tensor([1.0, 4.0]), None, generator)
    # 20,000 N(0, σ²) draws per column: the sample standard deviation has relative standard
    # error 1/sqrt(2·20,000) = 0.5%, the mean a standard error σ/sqrt(20,000); 5 of each.
    n_rows = rows.shape[0]
    sigma = np.array([0.1, 0.4])
    np.testing.assert_allclose(jitter.std(dim=0).numpy(), sigma, rtol=5 / math.sqrt(2 * n_rows))
    assert (np.abs(jitter.mean(dim=0).numpy()) < 5 * sigma / math.sqrt(n_rows)).all()


def test_concrete_runs_report_their_learned_rates(moons: Dataset) -> None:
    config = _config(hidden=(16, 16), p=0.2, regularizers=(("concrete", 1e-3),))
    result = train_modules(moons, [config])
    assert result.info is not None
    rates = result.info[0]
    assert sorted(rates) == ["concrete_p0", "concrete_p1"]
    assert all(0 < p < 1 and p != pytest.approx(0.2, abs=1e-6) for p in rates.values())


def test_on_epoch_hears_each_epoch_once_per_batch(moons: Dataset) -> None:
    heard: list[int] = []
    configs = [_config(epochs=3, seed=s) for s in range(3)]
    train_modules(moons, configs, on_epoch=heard.append)
    assert heard == [1, 2, 3]
    with pytest.raises(ValueError, match="same number of epochs"):
        train_modules(moons, [configs[0], _config(epochs=4)])
    with pytest.raises(ValueError, match="at least one run"):
        train_modules(moons, [])


def test_image_augmentation_trains_a_cnn() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 36)).astype(np.float32)
    y = (x.reshape(80, 6, 6)[:, :3].sum(axis=(1, 2)) > 0).astype(np.int64)  # top half bright
    images = Dataset("images", x[:60], y[:60], x[60:], y[60:], 2, (), input_shape=(1, 6, 6))
    configs = [
        _config("images", (4,), "cnn", epochs=2, **extra)
        for extra in ({}, {"regularizers": (("augment", 1.0),)})
    ]
    result = train_modules(images, configs)
    assert np.isfinite(result.curves["train_loss"]).all()
    assert not np.array_equal(result.curves["train_loss"][0], result.curves["train_loss"][1])
