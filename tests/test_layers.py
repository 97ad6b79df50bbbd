"""The layers: the shared contract (tests/helpers.py) plus each layer's own options."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import dropkit
from helpers import check_dropout_layer

LAYER_CASES: list[tuple[type[nn.Module], tuple[int, ...], dict[str, Any]]] = [
    (dropkit.Dropout, (6, 5, 4), {}),
    (dropkit.Dropout, (6, 5, 4), {"scaling": "inverted", "inplace": False}),
    (dropkit.SpatialDropout1d, (6, 5, 4), {}),
    (dropkit.SpatialDropout2d, (6, 5, 4, 3), {}),
    (dropkit.SpatialDropout3d, (3, 5, 4, 3, 2), {}),
    (dropkit.LockedDropout, (6, 5, 4), {}),
    (dropkit.LockedDropout, (6, 5, 4), {"batch_first": False}),
    (dropkit.GaussianDropout, (6, 5, 4), {}),
    (dropkit.AlphaDropout, (6, 5, 4), {}),
    (dropkit.FeatureAlphaDropout, (6, 5, 4, 3), {}),
    (dropkit.DropPath, (6, 5, 4), {}),
    (dropkit.DropBlock2d, (6, 5, 8, 8), {"block_size": 3}),
    (dropkit.DropBlock3d, (3, 5, 4, 6, 6), {"block_size": 2}),
]


@pytest.mark.parametrize(
    ("cls", "shape", "kwargs"),
    LAYER_CASES,
    ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(LAYER_CASES)],
)
def test_layer_contract(
    cls: type[nn.Module], shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    check_dropout_layer(cls, shape, kwargs=kwargs)


def test_follows_train_and_eval_inside_a_model() -> None:
    model = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), dropkit.Dropout(0.5), nn.Linear(50, 1))
    x = torch.randn(32, 10)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_from_keep_prob_gives_the_exact_decimal_rate() -> None:
    """1 - 0.8 is 0.19999999999999996 in floating point; the docs promise p == 0.2."""
    layer = dropkit.Dropout.from_keep_prob(0.8, scaling="classic")
    assert layer.p == 0.2 and layer.scaling == "classic"
    assert 1 - 0.8 != 0.2  # what a plain subtraction would give
    for q, p in [
        (0.9, 0.1),
        (0.7, 0.3),
        (0.6, 0.4),
        (0.5, 0.5),
        (0.95, 0.05),
        (1.0, 0.0),
        (0.0, 1.0),
    ]:
        assert dropkit.Dropout.from_keep_prob(q).p == p, q


def test_classic_dropout_layer_scales_at_inference() -> None:
    layer = dropkit.Dropout(0.25, scaling="classic").eval()
    assert torch.equal(layer(torch.ones(3)), torch.full((3,), 0.75))
    assert "scaling='classic'" in repr(layer)


@pytest.mark.parametrize(
    ("cls", "good", "bad"),
    [
        (dropkit.SpatialDropout1d, (2, 3, 4), (3, 4)),
        (dropkit.SpatialDropout2d, (2, 3, 4, 4), (3, 4, 4)),
        (dropkit.SpatialDropout3d, (2, 3, 4, 4, 4), (3, 4, 4, 4)),
        (dropkit.DropBlock2d, (2, 3, 4, 4), (3, 4, 4)),
        (dropkit.DropBlock3d, (2, 3, 4, 4, 4), (2, 3, 4, 4)),
    ],
)
def test_rank_is_exact_no_guessing(
    cls: type[nn.Module], good: tuple[int, ...], bad: tuple[int, ...]
) -> None:
    layer = cls(0.5)
    assert layer(torch.ones(good)).shape == good
    with pytest.raises(
        ValueError,
        match=rf"{cls.__name__} expects a {len(good)}-D input .* got a {len(bad)}-D input",
    ):
        layer(torch.ones(bad))


def test_spatial_rank_message_explains_itself() -> None:
    with pytest.raises(ValueError, match="does not guess which axis is the channel.*unsqueeze"):
        dropkit.SpatialDropout2d(0.2)(torch.ones(3, 8, 8))


def test_repr_shows_options() -> None:
    assert repr(dropkit.DropBlock2d(0.1, 7)) == "DropBlock2d(p=0.1, block_size=7)"
    assert repr(dropkit.DropBlock2d(0.1, (3, 5))) == "DropBlock2d(p=0.1, block_size=(3, 5))"
    assert (
        repr(dropkit.LockedDropout(0.3, batch_first=False))
        == "LockedDropout(p=0.3, batch_first=False)"
    )
    assert (
        repr(dropkit.DropPath(0.2, scale_by_keep=False)) == "DropPath(p=0.2, scale_by_keep=False)"
    )
    assert repr(dropkit.Dropout(0.5, inplace=True)) == "Dropout(p=0.5, inplace=True)"


def test_defaults_follow_the_usual_rates() -> None:
    assert dropkit.Dropout().p == 0.5
    assert dropkit.SpatialDropout2d().p == 0.2
    assert dropkit.AlphaDropout().p == 0.1
    assert dropkit.DropPath().p == 0.1
    block = dropkit.DropBlock2d()
    assert (block.p, block.block_size) == (0.1, (7, 7))


def test_layer_generator_drives_the_masks() -> None:
    a = dropkit.Dropout(0.5, generator=torch.Generator().manual_seed(9))
    b = dropkit.Dropout(0.5, generator=torch.Generator().manual_seed(9))
    x = torch.ones(100)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), b(x))  # also the second call


def test_inplace_layer_modifies_input() -> None:
    x = torch.ones(50)
    y = dropkit.Dropout(0.5, inplace=True)(x)
    assert y is x and (x == 0).any() and (x == 2).any()


# The public API contract (DESIGN.md): outside code is written against these names.
CONTRACT_NAMES = {
    "Dropout", "SpatialDropout1d", "SpatialDropout2d", "SpatialDropout3d", "LockedDropout",
    "GaussianDropout", "AlphaDropout", "FeatureAlphaDropout", "DropPath", "DropBlock2d",
    "DropBlock3d", "EmbeddingDropout", "DropConnect", "DropConnectLinear", "WeightDrop",
    "ConcreteDropout", "LSTM", "GRU", "insert_dropout", "set_dropout", "find_dropout",
    "max_norm_", "MaxNorm", "mc_dropout", "mc_predict", "MCPrediction", "check_model",
    "Finding", "functional",
}  # fmt: skip
CONTRACT_OPS = {
    "dropout", "spatial_dropout", "locked_dropout", "gaussian_dropout", "alpha_dropout",
    "feature_alpha_dropout", "drop_path", "drop_block", "drop_connect",
}  # fmt: skip


def test_top_level_exports() -> None:
    """Every contract name is exported (in ``__all__`` and importable); ``__all__`` names only
    what exists; the functional ops are the functions the layers call."""
    missing = CONTRACT_NAMES - set(dropkit.__all__)
    assert not missing, f"contract names missing from dropkit.__all__: {sorted(missing)}"
    for name in dropkit.__all__:
        assert hasattr(dropkit, name), name
    missing_ops = CONTRACT_OPS - set(dropkit.functional.__all__)
    assert not missing_ops, f"missing from dropkit.functional.__all__: {sorted(missing_ops)}"
    for name in CONTRACT_OPS:
        assert callable(getattr(dropkit.functional, name)), name
    x = torch.ones(64)
    y = dropkit.functional.dropout(x, 0.5, generator=torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) == {0.0, 2.0}
