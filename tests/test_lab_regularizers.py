"""Comparison arms: parsing, their run configs, and what each does to training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dropkit.lab.plan.comparison import (
    ARM_NAMES,
    ArmError,
    Strengths,
    build_configs,
    check_arms,
    parse_arms,
)
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, SweepSpec, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.train import stacked as B
from dropkit.lab.train.contract import BatchResult
from dropkit.lab.train.dispatch import batched_settings, is_batched, train_configs

CIRCLES = DataSpec("circles")
SMALL = ModelSpec(hidden=(16,))
BATCHED_ARMS = (
    "none,dropout,input_dropout,l1,l2,max_norm,early_stopping,augment,gaussian_noise,"
    "early_dropout,late_dropout,dropout+l2"
)


def _configs(arms: str, epochs: int, seeds: tuple[int, ...] = (3,), **strengths: float) -> list:  # type: ignore[type-arg]
    return build_configs(
        parse_arms(arms),
        Strengths(**strengths),  # type: ignore[arg-type]
        seeds,
        CIRCLES,
        SMALL,
        TrainSpec(epochs=epochs),
        n_train=30,
    )


# --- parsing ----------------------------------------------------------------------------------


class TestParse:
    def test_every_arm_parses_and_labels_itself(self) -> None:
        arms = parse_arms(",".join(ARM_NAMES))
        assert [a.name for a in arms] == list(ARM_NAMES)

    def test_combined_arms_get_one_canonical_label(self) -> None:
        (arm,) = parse_arms(" l2 + dropout ")
        assert arm.spec == "l2+dropout" and arm.name == "dropout+l2"
        with pytest.raises(ArmError, match="'dropout\\+l2' and 'l2\\+dropout' are the same arm"):
            parse_arms("dropout+l2,l2+dropout")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("none,dropuot", "unknown arm 'dropuot'.*valid arms: none, dropout, input_dropout"),
            ("", "no arm"),
            ("dropout+dropout", "names a regularizer twice"),
            ("none+l2", "combines 'none'"),
            ("early_dropout+late_dropout", "exclude each other"),
            ("batchnorm+dropout_bn", "exclude each other"),
            ("batchnorm+bn_dropout", "sets the same regularizer twice"),
            ("spatial_dropout+variational", "exclude each other"),
        ],
    )
    def test_bad_lists_are_refused_with_a_reason(self, text: str, message: str) -> None:
        with pytest.raises(ArmError, match=message):
            parse_arms(text)

    def test_arm_of_another_model_kind_names_both(self) -> None:
        with pytest.raises(ArmError, match="'spatial_dropout' does not apply to model 'mlp'.*cnn"):
            check_arms(parse_arms("none,spatial_dropout"), "mlp")
        with pytest.raises(ArmError, match="'concrete' does not apply to model 'rnn'"):
            build_configs(
                parse_arms("concrete"),
                Strengths(),
                [0],
                CIRCLES,
                ModelSpec(kind="rnn"),
                TrainSpec(epochs=5),
            )

    @pytest.mark.parametrize(
        ("field", "value", "error"),
        [("p", 1.5, ValueError), ("l2", -1.0, ValueError), ("patience", 2.5, TypeError)],
    )
    def test_strengths_are_checked(self, field: str, value: float, error: type) -> None:
        with pytest.raises(error, match=f"`{field}`"):
            Strengths(**{field: value})  # type: ignore[arg-type]


class TestConfigs:
    def test_each_arm_maps_onto_the_run_config(self) -> None:
        configs = _configs(
            "none,dropout,input_dropout,l2,max_norm,bn_dropout,early_dropout,early_stopping,"
            "concrete,augment",
            epochs=200,
            p=0.3,
            l2=0.01,
        )
        fields = {c.arm: (c.p, c.input_p, c.max_norm, c.regularizers) for c in configs}
        assert fields == {
            "none": (0.0, 0.0, None, ()),
            "dropout": (0.3, 0.0, None, ()),
            "input_dropout": (0.0, 0.2, None, ()),
            "l2": (0.0, 0.0, None, (("l2", 0.01),)),
            "max_norm": (0.0, 0.0, 3.0, ()),
            "bn_dropout": (0.3, 0.0, None, (("batchnorm", 1.0),)),
            "early_dropout": (0.3, 0.0, None, (("early_dropout", 0.25),)),
            # Defaults that depend on the run: a tenth of the epochs, 2/N, 0.1 std for tables.
            "early_stopping": (0.0, 0.0, None, (("early_stopping", 20.0),)),
            "concrete": (0.0, 0.0, None, (("concrete", 2 / 30),)),
            "augment": (0.0, 0.0, None, (("augment", 0.1),)),
        }

    def test_plain_arms_are_the_runs_a_sweep_stores(self) -> None:
        """`none` and `dropout` of a comparison have the keys of a sweep's runs: one store
        serves both commands without training them twice."""
        train = TrainSpec(epochs=50)
        sweep = SweepSpec(CIRCLES, SMALL, train, rates=(0.0, 0.5), seeds=2)
        compare = build_configs(
            parse_arms("none,dropout"), Strengths(), range(2), CIRCLES, SMALL, train
        )
        assert sorted(c.key() for c in compare) == sorted(c.key() for c in sweep.runs())

    def test_dispatch(self) -> None:
        batched = _configs(BATCHED_ARMS, epochs=10)
        assert all(is_batched(c) for c in batched)
        looped = _configs("batchnorm,dropout_bn,concrete", epochs=10)
        assert not any(is_batched(c) for c in looped)
        late = batched_settings(_configs("late_dropout", epochs=10, switch=0.3)[0])
        assert late.dropout_epochs == (3, 10) and late.p == 0.5


# --- what each arm does -----------------------------------------------------------------------


def _run(data: Dataset, configs: list[RunConfig]) -> BatchResult:
    return train_configs(data, configs, compile=False)


def _weights(result: BatchResult, run: int) -> list[torch.Tensor]:
    assert result.states is not None
    return [v for k, v in result.states[run].items() if k.endswith("weight")]


def test_penalty_gradients_are_those_of_the_penalized_loss() -> None:
    """l1·sign(W) + 2·l2·W is the gradient of l1·Σ|W| + l2·ΣW², checked against autograd."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(2, 3, 4, generator=gen), torch.randn(2, 4, 1, generator=gen)]
    biases = [torch.zeros(2, 1, 4), torch.zeros(2, 1, 1)]
    x, y = torch.randn(2, 5, 3, generator=gen), torch.tensor([[0, 1, 1, 0, 1]] * 2)
    l1, l2 = torch.tensor([0.0, 0.3]).view(-1, 1, 1), torch.tensor([0.5, 0.0]).view(-1, 1, 1)
    masks = [None, None]
    plain = B._train_step(weights, biases, x, y, masks, 2, False)
    penalized = B._train_step(weights, biases, x, y, masks, 2, False, None, (l1, l2))
    for layer, weight in enumerate(weights):
        w = weight.clone().requires_grad_(True)
        (l1 * w.abs() + l2 * w**2).sum().backward()
        assert w.grad is not None
        torch.testing.assert_close(penalized[2 * layer] - plain[2 * layer], w.grad)
        torch.testing.assert_close(penalized[2 * layer + 1], plain[2 * layer + 1])  # no bias term


def test_l1_and_l2_shrink_the_weights(circles: Dataset) -> None:
    configs = _configs("none,l1,l2", epochs=60, l1=0.05, l2=0.05)
    result = _run(circles, configs)
    none, l1, l2 = (_weights(result, i) for i in range(3))
    assert sum(w.abs().sum() for w in l1) < sum(w.abs().sum() for w in none)
    assert sum((w**2).sum() for w in l2) < sum((w**2).sum() for w in none)


def test_max_norm_bounds_every_hidden_unit(circles: Dataset) -> None:
    configs = _configs("none,max_norm", epochs=40, max_norm=0.5)
    result = _run(circles, configs)
    free, bounded = _weights(result, 0)[0], _weights(result, 1)[0]  # hidden layer (out, in)
    assert torch.linalg.vector_norm(free, dim=1).max() > 0.5  # the bound is active
    assert torch.linalg.vector_norm(bounded, dim=1).max() <= 0.5 + 1e-6


def test_early_stopping_restores_the_best_weights() -> None:
    """wine with 64 hidden units and Adam at lr 0.01 overfits within ~10 epochs: the validation
    loss bottoms out, the run stops `patience` epochs later, and its last curve point is the
    best epoch's model."""
    data = load_dataset(DataSpec("wine"))
    patience, epochs = 5, 40
    configs = [
        RunConfig(
            DataSpec("wine"),
            ModelSpec((64,)),
            TrainSpec(epochs=epochs, lr=1e-2),
            seed=seed,
            regularizers=(("early_stopping", patience),),
        )
        for seed in (0, 1)
    ]
    result = _run(data, configs)
    assert result.info is not None
    for run, info in enumerate(result.info):
        best, stop = int(info["best_epoch"]), int(info["stop_epoch"])
        assert best >= 1 and stop == best + patience < epochs
        for name, curve in result.curves.items():
            assert curve[run, -1] == pytest.approx(curve[run, best - 1], abs=1e-6), name
            # after stopping every point repeats the restored model
            np.testing.assert_allclose(curve[run, stop:], curve[run, best - 1], atol=1e-6)
        # the epoch that stopped had trained on: its loss is not the restored one
        assert result.curves["train_loss"][run, stop - 1] != result.curves["train_loss"][run, -1]


def test_late_dropout_is_none_before_the_switch_and_early_is_dropout(circles: Dataset) -> None:
    """Masks depend on (seed, epoch, site, unit) only, so before the switch (epoch 20 of 40)
    late dropout computes exactly what no dropout computes, early dropout what dropout does."""
    configs = _configs("none,late_dropout,dropout,early_dropout", epochs=40, switch=0.5)
    result = _run(circles, configs)
    none, late, dropout, early = range(4)
    for curve in result.curves.values():
        np.testing.assert_allclose(curve[late, :20], curve[none, :20], atol=1e-6)
        np.testing.assert_allclose(curve[early, :20], curve[dropout, :20], atol=1e-6)
    loss = result.curves["train_loss"]
    assert not np.allclose(loss[late, 20:], loss[none, 20:], atol=1e-6)
    assert not np.allclose(loss[early, 20:], loss[dropout, 20:], atol=1e-6)


def test_augment_and_noise_change_training_not_shapes(circles: Dataset) -> None:
    configs = _configs("none,augment,gaussian_noise", epochs=20, augment=0.5, noise=0.5)
    result = _run(circles, configs)
    loss = result.curves["train_loss"]
    assert all(c.shape == (3, 20) for c in result.curves.values())
    assert np.isfinite(loss).all()
    assert not np.allclose(loss[1], loss[0]) and not np.allclose(loss[2], loss[0])
    # Evaluation is clean: the first epoch's metrics differ only by one training step.
    assert abs(loss[1, 0] - loss[0, 0]) < 0.05


def test_a_run_is_the_same_alone_and_in_a_mixed_batch(circles: Dataset) -> None:
    """Every batched arm, with a BatchNorm (loop) run in the same batch: each run's curves
    match its run alone to float rounding (a batched GEMM may sum in another order)."""
    configs = _configs(BATCHED_ARMS + ",batchnorm", epochs=15)
    calls: list[int] = []
    together = train_configs(circles, configs, compile=False, on_epoch=calls.append)
    assert calls == list(range(1, 16))  # once per epoch, though the batch trains in parts
    assert together.states is not None and together.info is not None
    for index, config in enumerate(configs):
        alone = train_configs(circles, [config], compile=False)
        assert alone.info is not None and alone.info[0] == together.info[index]
        for name, curve in alone.curves.items():
            np.testing.assert_allclose(
                curve[0], together.curves[name][index], rtol=0, atol=1e-5, err_msg=config.arm
            )


def test_final_weights_load_into_the_built_model(circles: Dataset) -> None:
    """`states` are state dicts of build_model's module: loaded, it scores the final test
    accuracy of the curves (stacked trainer and loop alike)."""
    from dropkit.lab.plan.models import build_model

    configs = _configs("dropout,early_stopping,batchnorm", epochs=30)
    result = _run(circles, configs)
    assert result.states is not None
    x, y = torch.from_numpy(circles.x_test), torch.from_numpy(circles.y_test)
    for index, config in enumerate(configs):
        module = build_model(config, circles)
        module.load_state_dict(result.states[index])
        module.eval()
        with torch.no_grad():
            accuracy = ((module(x)[:, 0] > 0).long() == y).double().mean().item()
        assert accuracy == pytest.approx(result.curves["test_acc"][index, -1], abs=1e-6)


def test_large_models_keep_no_weights(circles: Dataset) -> None:
    config = RunConfig(CIRCLES, ModelSpec((400, 400)), TrainSpec(epochs=1), seed=0)
    assert train_configs(circles, [config], compile=False).states is None
