"""One training contract: the stacked trainer and the generic loop against each other.

Every arm both trainers run is trained with each (``train_configs(..., trainer="loop")``
forces the loop for MLP configs) and the results are compared: to float tolerance where the
two compute the same numbers (no randomness after the initial weights and the data order,
which both draw from the run's generator in the same order), exactly where a schedule decides
(the epoch a window switches), and statistically over seeds where the two draw their masks and
noise from different streams. The shared steps of :mod:`dropkit.lab.train.contract` are tested
here too.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

import dropkit
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.plan.models import build_model
from dropkit.lab.plan.splits import stopping_rows, validation_rows, validation_split
from dropkit.lab.train.contract import (
    BatchResult,
    EarlyStopping,
    bound_unit_norms_,
    dropout_on,
    dropout_window,
    make_adam,
    part_means,
    sample_scores,
)
from dropkit.lab.train.dispatch import batched_settings, is_batched, train_configs

# Tolerance of two computations of the same numbers in float32 (different kernels sum in
# different orders): a few epochs of Adam keep them within ~1e-6; 2e-5 leaves room.
ATOL = 2e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_dataset(DataSpec("wine"))


def _config(
    data: str = "circles",
    *,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 1e-2,
    hidden: tuple[int, ...] = (16,),
    **fields: object,
) -> RunConfig:
    return RunConfig(
        DataSpec(data),
        ModelSpec(hidden),
        TrainSpec(epochs=epochs, batch_size=batch_size, lr=lr),
        **fields,  # type: ignore[arg-type]
    )


def _both(data: Dataset, configs: list[RunConfig]) -> tuple[BatchResult, BatchResult]:
    assert all(is_batched(c) for c in configs)
    stacked = train_configs(data, configs, compile=False, trainer="stacked")
    looped = train_configs(data, configs, compile=False, trainer="loop")
    return stacked, looped


def _assert_same_runs(stacked: BatchResult, looped: BatchResult, configs: list[RunConfig]) -> None:
    for name in stacked.curves:
        for run, config in enumerate(configs):
            np.testing.assert_allclose(
                stacked.curves[name][run],
                looped.curves[name][run],
                rtol=0,
                atol=ATOL,
                err_msg=f"{config.arm}: {name}",
            )
    assert stacked.info == looped.info
    assert stacked.states is not None and looped.states is not None
    for run, config in enumerate(configs):
        mine, theirs = stacked.states[run], looped.states[run]
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(
                mine[key], theirs[key], rtol=0, atol=ATOL, msg=f"{config.arm}: {key}"
            )


# --- deterministic arms: the same numbers -----------------------------------------------------


DETERMINISTIC = [
    {},
    {"regularizers": (("l1", 1e-2),)},
    {"regularizers": (("l2", 1e-2),)},
    {"max_norm": 0.8},
    {"regularizers": (("early_stopping", 3.0),)},
]


def test_deterministic_arms_compute_the_same_curves_and_weights(circles: Dataset) -> None:
    """none, l1, l2, max_norm and early_stopping: both trainers draw the initial weights and
    every epoch's order (4 mini-batches of 8) from the run's generator, so they agree to float
    rounding on every curve point, the final weights and the stopping epochs."""
    configs = [_config(seed=seed, **extra) for extra in DETERMINISTIC for seed in (0, 1)]  # type: ignore[arg-type]
    stacked, looped = _both(circles, configs)
    _assert_same_runs(stacked, looped, configs)
    assert stacked.states is not None and stacked.info is not None
    bounded = [s for s, c in zip(stacked.states, configs, strict=True) if c.max_norm]
    hidden = [next(v for k, v in s.items() if k.endswith("weight")) for s in bounded]
    assert all(float(w.norm(dim=1).max()) <= 0.8 + 1e-6 for w in hidden)
    stops = [i["stop_epoch"] for i in stacked.info if i]
    assert any(stop < 20 for stop in stops), "the patience ran out in no run: a weak test"


def test_multiclass_runs_compute_the_same_numbers(wine: Dataset) -> None:
    """Softmax cross-entropy (3 classes) and early stopping on a stratified 3-class split."""
    configs = [
        _config("wine", epochs=8, batch_size=32, seed=2),
        _config("wine", epochs=8, batch_size=32, seed=2, regularizers=(("early_stopping", 2.0),)),
    ]
    stacked, looped = _both(wine, configs)
    _assert_same_runs(stacked, looped, configs)


# --- early stopping beside a validation split: its own rows, in every trainer ----------------


class _BuiltinSource:
    """A user-model source that builds the built-in MLP with the loop's initial weights (a
    generator seeded with the run's seed), so the vmapped trainer trains the loop's network."""

    def __init__(self, data: Dataset, hidden: tuple[int, ...]) -> None:
        self.data, self.hidden = data, hidden

    def build(self, p: float, seed: int) -> nn.Module:
        config = RunConfig(DataSpec(self.data.name), ModelSpec(self.hidden), p=p, seed=seed)
        return build_model(config, self.data, generator=torch.Generator().manual_seed(seed))


_CUSTOM = ModelSpec(hidden=(), kind="custom", name="mlp16", fingerprint="0123456789abcdef")


@pytest.mark.parametrize(
    ("spec", "folds"),
    [(DataSpec("circles", validation=0.3), (None,)), (DataSpec("circles", folds=3), (0, 1, 2))],
    ids=["holdout", "folds"],
)
def test_early_stopping_beside_a_validation_split_agrees_in_all_three_trainers(
    circles: Dataset, spec: DataSpec, folds: tuple[int | None, ...]
) -> None:
    """With a validation split or folds, the stacked trainer, the loop and the vmapped trainer
    fit and stop on the same rows (:func:`dropkit.lab.plan.splits.stopping_rows`, carved from each
    fold's fit rows) and report the same validation rows. No masks, one batch per epoch (the
    order cannot change the mean gradient): the three compute the same numbers to float
    rounding, the same stopping epochs, and the curves measure the carved fit rows."""
    train = TrainSpec(epochs=15, batch_size=64, lr=0.05)
    stopping = (("early_stopping", 2.0),)
    configs = [
        RunConfig(spec, ModelSpec((16,)), train, seed=seed, fold=fold, regularizers=stopping)
        for fold in folds
        for seed in (0, 1)
    ]
    stacked, looped = _both(circles, configs)
    custom = [dataclasses.replace(c, model=_CUSTOM) for c in configs]
    source = _BuiltinSource(circles, (16,))
    vmapped = train_configs(circles, custom, model=source, compile=False)
    assert stacked.info is not None and stacked.states is not None
    for other in (looped, vmapped):
        assert other.info is not None
        for name in stacked.curves:
            np.testing.assert_allclose(other.curves[name], stacked.curves[name], atol=ATOL, rtol=0)
        for mine, theirs in zip(stacked.info, other.info, strict=True):
            assert (
                mine.keys() == theirs.keys() == {"stop_epoch", "best_epoch", "val_acc", "val_loss"}
            )
            assert mine["stop_epoch"] == theirs["stop_epoch"]
            assert mine["best_epoch"] == theirs["best_epoch"]
            assert mine["val_acc"] == pytest.approx(theirs["val_acc"], abs=1e-6)
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=ATOL)
    assert any(i["stop_epoch"] < 15 for i in stacked.info), "no run stopped: a weak test"
    for result in (stacked, looped, vmapped):  # each measures its restored weights on ...
        assert result.states is not None and result.info is not None
        for run, config in enumerate(configs):
            fit, _, held = stopping_rows(circles.y_train, spec, config.fold)
            model = build_model(config, circles)
            model.load_state_dict(result.states[run])
            model.eval()
            for rows, accuracy in (
                (fit, result.curves["train_acc"][run][-1]),  # ... the rows it fitted
                (held, result.info[run]["val_acc"]),  # ... the choosing rows
            ):
                with torch.no_grad():
                    logits = model(torch.from_numpy(circles.x_train[rows]))
                correct, _ = sample_scores(logits, torch.from_numpy(circles.y_train[rows]))
                assert float(correct.double().mean()) == pytest.approx(accuracy, abs=1e-6)


def _noise(replicate: int, n: int = 40) -> Dataset:
    """``n`` training rows of 5 Gaussian features whose labels are pure noise: a random
    permutation of exactly ``n/2`` zeros and ones, drawn apart from the features."""
    rng = np.random.default_rng(1000 + replicate)
    x = rng.standard_normal((n + 4, 5)).astype(np.float32)
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    names = tuple(f"f{i}" for i in range(5))
    return Dataset("noise", x[:n], y, x[n:], np.array([0, 1, 0, 1]), 2, names)


@pytest.mark.parametrize(
    ("spec", "fold"),
    [(DataSpec("noise", validation=0.5), None), (DataSpec("noise", folds=2), 1)],
    ids=["holdout", "folds"],
)
def test_early_stopping_cannot_win_on_the_choosing_rows(spec: DataSpec, fold: int | None) -> None:
    """Labels that are pure noise: no arm can beat chance on validation rows it never saw.

    ``R`` independent data sets of 40 rows (20 of each class; a stratified half, 10 + 10 rows,
    validates), arms ``l2`` and ``early_stopping+l2`` (the penalty keeps the logits bounded,
    so the loss early stopping watches moves with the accuracy; one full batch at a high rate:
    a network that jumps from epoch to epoch, many distinct candidates). Early stopping that
    watched the validation rows restored the epoch of their lowest loss, the best of 21
    noisy scores: its pooled validation accuracy here was 0.565 (holdout) and 0.557 (folds),
    5 to 6 standard deviations above chance, and it won. On rows of its own it is a fair coin
    (0.496 and 0.498; the ``l2`` arm: 0.507 and 0.494).

    The tolerance, from the binomial spread: a run whose training never read the validation
    labels predicts class 1 with a probability ``q`` independent of them, so its number of
    correct rows among the ``m`` of each class is ``Bin(m, q) + Bin(m, 1 − q)``: mean ``m``
    (accuracy 1/2 exactly, the classes being balanced) and variance ``2m·q(1 − q) <= n_val/4``,
    at most the spread of ``n_val`` fair coins. The data sets are independent, so the pooled
    accuracy of an arm over ``N = R·n_val`` rows has mean 1/2 and standard deviation at most
    ``1/(2√N)``; it must stay below ``1/2 + 3/(2√N)`` (a one-sided false alarm of 0.13%;
    the seeds are fixed, so the test is deterministic).
    """
    replicates = 100
    train = TrainSpec(epochs=20, batch_size=64, lr=1.0)
    arms: tuple[tuple[tuple[str, float], ...], ...] = (
        (("l2", 0.05),),
        (("early_stopping", 1000.0), ("l2", 0.05)),
    )
    correct = dict.fromkeys(arms, 0.0)
    rows = 0
    for replicate in range(replicates):
        data = _noise(replicate)
        configs = [
            RunConfig(spec, ModelSpec((16,)), train, seed=replicate, fold=fold, regularizers=arm)
            for arm in arms
        ]
        result = train_configs(data, configs, compile=False)
        assert result.info is not None
        n_val = len(validation_rows(data.y_train, spec, fold)[1])
        rows += n_val
        for arm, info in zip(arms, result.info, strict=True):
            correct[arm] += info["val_acc"] * n_val
    assert rows == replicates * 20
    bound = 0.5 + 3.0 / (2.0 * math.sqrt(rows))
    for arm, count in correct.items():
        assert count / rows <= bound, (arm, count / rows, bound)


# --- random arms: what can be compared exactly ------------------------------------------------

VANISHING = [
    {"p": 1e-9},
    {"input_p": 1e-9},
    {"regularizers": (("augment", 1e-9),)},
    {"regularizers": (("gaussian_noise", 1e-9),)},
    {"p": 1e-9, "regularizers": (("early_dropout", 0.5),)},
    {"p": 1e-9, "regularizers": (("late_dropout", 0.5),)},
]


def test_random_arms_at_vanishing_strength_are_the_deterministic_run(circles: Dataset) -> None:
    """dropout, input_dropout, augment, gaussian_noise, early/late dropout at strength 1e-9:
    their code runs (masks and noise are drawn) but changes nothing a float32 can hold, so
    both trainers compute the plain run. One batch per epoch: the loop's mask draws move its
    generator, which then shuffles differently, and a full batch's gradient does not depend
    on the order (up to rounding)."""
    configs = [_config(batch_size=32, seed=5, **extra) for extra in [{}, *VANISHING]]  # type: ignore[arg-type]
    stacked, looped = _both(circles, configs)
    _assert_same_runs(stacked, looped, configs)
    for result in (stacked, looped):
        for name, curve in result.curves.items():
            plain = np.broadcast_to(curve[0], curve[1:].shape)
            np.testing.assert_allclose(curve[1:], plain, rtol=0, atol=ATOL, err_msg=name)


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    differ = np.flatnonzero(a != b)
    return int(differ[0]) if len(differ) else len(a)


def test_dropout_windows_switch_in_the_same_epoch(circles: Dataset) -> None:
    """Before late dropout starts a run is exactly the plain run, and until early dropout ends
    exactly the dropout run, in each trainer (the masks of a rate-0 epoch keep every unit with
    scale 1; the loop's Dropout(0) draws nothing): the first epoch whose curve point differs is
    the one :func:`dropout_window` says (point ``e`` is measured after training epoch ``e``)."""
    epochs = 12
    late = _config(epochs=epochs, p=0.5, seed=3, regularizers=(("late_dropout", 0.25),))
    early = _config(epochs=epochs, p=0.5, seed=3, regularizers=(("early_dropout", 0.5),))
    configs = [_config(epochs=epochs, seed=3), late, _config(epochs=epochs, p=0.5, seed=3), early]
    assert dropout_window(late) == (3, 12) and dropout_window(early) == (0, 6)
    assert batched_settings(late).dropout_epochs == dropout_window(late)
    for result in _both(circles, configs):
        loss = result.curves["train_loss"]
        assert _first_difference(loss[0], loss[1]) == 3
        assert _first_difference(loss[2], loss[3]) == 6


# Paired comparison over seeds. For one seed both trainers start from the same weights and,
# with one batch per epoch, see the same batches; they differ only in the random streams of
# the arm. The per-seed difference d_s of a metric then has mean 0 when the two implement the
# same arm. Z = 4 standard errors of mean(d) bound it: a false alarm needs a 4-sigma draw
# (p < 1e-4), and the test is deterministic (fixed seeds). So that it can fail, the arm's own
# effect (against the plain run, in either trainer) must be over 2·Z standard errors of d:
# a trainer that ignored the arm would be off by that effect.
Z = 4.0
SEEDS = tuple(range(12))
RANDOM_ARMS = {
    "dropout": {"p": 0.5},
    "input_dropout": {"input_p": 0.5},
    "augment": {"regularizers": (("augment", 1.0),)},
    "gaussian_noise": {"regularizers": (("gaussian_noise", 1.0),)},
}


def _mean_train_loss(data: Dataset, configs: list[RunConfig], trainer: str) -> np.ndarray:
    """Per run, the train loss averaged over the epochs (the area under its curve)."""
    result = train_configs(data, configs, compile=False, trainer=trainer)
    return np.asarray(result.curves["train_loss"].mean(axis=1))


@pytest.mark.parametrize("arm", list(RANDOM_ARMS))
def test_random_arms_agree_over_seeds(circles: Dataset, arm: str) -> None:
    def runs(**extra: object) -> list[RunConfig]:
        return [_config(epochs=25, batch_size=32, seed=s, **extra) for s in SEEDS]  # type: ignore[arg-type]

    plain = _mean_train_loss(circles, runs(), "stacked")
    stacked = _mean_train_loss(circles, runs(**RANDOM_ARMS[arm]), "stacked")
    looped = _mean_train_loss(circles, runs(**RANDOM_ARMS[arm]), "loop")
    n = len(SEEDS)
    difference = stacked - looped
    se = difference.std(ddof=1) / math.sqrt(n)
    effect = (stacked - plain).mean()
    assert abs(effect) > 2 * Z * se, f"{arm}: effect {effect:.4f}, se of d {se:.4f}: weak test"
    assert abs(difference.mean()) < Z * se, f"{arm}: trainers differ by {difference.mean():.4f}"


# --- the shared steps -------------------------------------------------------------------------


def test_trainer_choice_is_checked(circles: Dataset) -> None:
    bn = _config(regularizers=(("batchnorm", 1.0),))
    with pytest.raises(ValueError, match="`trainer` must be one of auto, stacked, loop"):
        train_configs(circles, [_config()], trainer="fast")
    with pytest.raises(ValueError, match="cannot train arm 'batchnorm'"):
        train_configs(circles, [_config(), bn], trainer="stacked")


@pytest.mark.parametrize("seed", [0, 1])
def test_validation_split_holds_out_a_stratified_fifth(seed: int) -> None:
    y = np.array([0] * 50 + [1] * 8 + [2] * 2 + [3])
    fit, held = validation_split(y, seed=seed)
    assert len(np.intersect1d(fit, held)) == 0
    assert np.array_equal(np.union1d(fit, held), np.arange(len(y)))
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(held) > 0)  # sorted
    # round(0.2·n_c) per class, at least one, and a class of two keeps one to train on
    assert np.bincount(y[held], minlength=4).tolist() == [10, 2, 1, 1]
    assert np.bincount(y[fit], minlength=4).tolist() == [40, 6, 1, 0]
    again = validation_split(y.copy(), seed=seed)
    assert np.array_equal(again[1], held)  # a function of the labels and the seed
    other = validation_split(y, seed=seed + 7)[1]
    assert not np.array_equal(other, held)  # the rows are drawn, not the first of each class
    assert not np.array_equal(held, np.sort(np.r_[0:10, 50:52, 58, 60]))


def test_validation_split_refuses_to_leave_nothing_to_train_on() -> None:
    with pytest.raises(ValueError, match="nothing to train on"):
        validation_split(np.array([0, 1]))


def test_early_stopping_state_machine() -> None:
    """Improved: strictly below the best (NaN never); stop after ``patience`` epochs without;
    a stopped run ignores later losses; epoch 0 (the initial weights) is the fallback best."""
    stopper = EarlyStopping([2, 2, 1], epochs=6)
    losses = [
        [1.0, math.nan, 1.0],
        [0.5, math.nan, 1.0],  # run 2: equal is no improvement -> stops (patience 1)
        [0.5, math.nan, 0.1],  # run 1: never improved -> stops at 2 epochs past epoch 0
        [0.7, 0.0, 0.0],
    ]
    history = []
    for epoch, row in enumerate(losses, start=1):
        improved, newly = stopper.update(epoch, torch.tensor(row, dtype=torch.float64))
        history.append((improved.tolist(), newly.tolist()))
    assert history == [
        ([True, False, True], [False, False, False]),
        ([True, False, False], [False, True, True]),
        ([False, False, False], [False, False, False]),
        ([False, False, False], [True, False, False]),
    ]
    assert stopper.info() == [
        {"stop_epoch": 4.0, "best_epoch": 2.0},
        {"stop_epoch": 2.0, "best_epoch": 0.0},
        {"stop_epoch": 2.0, "best_epoch": 1.0},
    ]
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping([0], epochs=3)


def test_dropout_window_and_switch() -> None:
    early = _config(epochs=10, p=0.5, regularizers=(("early_dropout", 0.3),))
    late = _config(epochs=10, p=0.5, regularizers=(("late_dropout", 0.3),))
    assert [dropout_on(dropout_window(early), e) for e in range(10)] == [True] * 3 + [False] * 7
    assert [dropout_on(dropout_window(late), e) for e in range(10)] == [False] * 3 + [True] * 7
    assert dropout_window(_config(p=0.5)) is None
    assert all(dropout_on(None, e) for e in range(10))


def test_max_norm_kernel_is_the_rule_of_max_norm_() -> None:
    """Bit for bit: rows of a Linear, filters of a Conv2d, and stacked ``(R, in, out)``
    weights with per-run bounds (``inf``: unbounded)."""
    generator = torch.Generator().manual_seed(0)
    for layer in (nn.Linear(6, 5), nn.Conv2d(2, 3, 3)):
        with torch.no_grad():
            layer.weight.normal_(generator=generator)
            layer.weight[0] = 0.0  # a zero unit stays zero
        expected = dropkit.max_norm_(copy.deepcopy(layer), 1.5).weight
        mine = bound_unit_norms_(layer.weight.detach().clone(), 1.5, range(1, layer.weight.ndim))
        assert torch.equal(mine, expected)
    stacked = torch.randn(3, 6, 5, generator=generator)
    bounds = torch.tensor([1.0, math.inf, 2.0]).view(-1, 1, 1)
    mine = bound_unit_norms_(stacked.clone(), bounds, (1,))
    for run, bound in enumerate([1.0, None, 2.0]):
        layer = nn.Linear(6, 5)
        with torch.no_grad():
            layer.weight.copy_(stacked[run].T)
        expected = layer.weight if bound is None else dropkit.max_norm_(layer, bound).weight
        assert torch.equal(mine[run].T, expected.detach())


def test_adam_has_keras_defaults() -> None:
    optimizer = make_adam([torch.zeros(2, requires_grad=True)], TrainSpec())
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.999), 1e-7)


def test_sample_scores_are_the_cross_entropy_and_the_prediction() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, 1, generator=generator) * 3
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    correct, loss = sample_scores(logits, y)
    expected = nn.functional.binary_cross_entropy_with_logits(
        logits.squeeze(-1), y.expand(2, -1).float(), reduction="none"
    )
    torch.testing.assert_close(loss, expected)
    assert torch.equal(correct, ((logits.squeeze(-1) > 0).long() == y).float())
    many = torch.randn(7, 4, generator=generator)
    labels = torch.tensor([3, 0, 1, 2, 2, 0, 1])
    correct, loss = sample_scores(many, labels)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(many, labels, reduction="none"))
    assert torch.equal(correct, (many.argmax(1) == labels).float())
    means = part_means(torch.arange(6.0), [2, 0, 4])
    assert means[0] == 0.5 and math.isnan(means[1]) and means[2] == 3.5
