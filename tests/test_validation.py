"""The argument checks: types, ranges, and messages that name argument, range and value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dropkit
import dropkit.functional as DF
from dropkit._validation import check_block_size, check_generator, check_probability


class TestCheckProbability:
    @pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0, np.float32(0.25), torch.tensor(0.5)])
    def test_accepts_reals_in_range(self, value: object) -> None:
        assert check_probability(value) == pytest.approx(float(value))  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5], 1j, torch.tensor(True)])
    def test_refuses_non_reals(self, value: object) -> None:
        with pytest.raises(TypeError, match=r"`p` must be a real number in \[0, 1\]"):
            check_probability(value)

    @pytest.mark.parametrize("value", [-0.1, 1.0001, math.inf, -math.inf, 150])
    def test_refuses_out_of_range(self, value: float) -> None:
        with pytest.raises(
            ValueError, match=r"`p` must be in \[0, 1\] \(the drop probability\), got"
        ):
            check_probability(value)

    def test_refuses_nan(self) -> None:
        with pytest.raises(ValueError, match="NaN is not a probability"):
            check_probability(float("nan"))

    def test_percentage_hint(self) -> None:
        with pytest.raises(ValueError, match=r"got 30\. Did you pass a percentage\? Use p=0\.3\."):
            check_probability(30)

    def test_names_the_argument_and_meaning(self) -> None:
        with pytest.raises(ValueError, match=r"`q` must be in \[0, 1\] \(the keep probability\)"):
            check_probability(2, "q", meaning="keep")


class TestOtherChecks:
    def test_block_size(self) -> None:
        assert check_block_size(3, 2) == (3, 3)
        assert check_block_size((2, 5), 2) == (2, 5)
        with pytest.raises(ValueError, match="`block_size` must be >= 1"):
            check_block_size(0, 2)
        with pytest.raises(TypeError, match="tuple of 3 positive ints"):
            check_block_size((2, 2), 3)
        with pytest.raises(TypeError, match="`block_size`"):
            check_block_size(2.5, 2)

    def test_generator_type(self) -> None:
        with pytest.raises(
            TypeError, match="`generator` must be a torch.Generator or None, got int"
        ):
            check_generator(3)

    def test_generator_device(self) -> None:
        with pytest.raises(
            ValueError, match="`generator` is on device 'cpu' but the input is on 'meta'"
        ):
            check_generator(torch.Generator(), torch.ones(2, device="meta"))


OPS = [
    DF.dropout,
    DF.spatial_dropout,
    DF.locked_dropout,
    DF.gaussian_dropout,
    DF.alpha_dropout,
    DF.feature_alpha_dropout,
    DF.drop_path,
    DF.drop_block,
]
LAYERS = [
    dropkit.Dropout,
    dropkit.SpatialDropout1d,
    dropkit.SpatialDropout2d,
    dropkit.SpatialDropout3d,
    dropkit.LockedDropout,
    dropkit.GaussianDropout,
    dropkit.AlphaDropout,
    dropkit.FeatureAlphaDropout,
    dropkit.DropPath,
    dropkit.DropBlock2d,
    dropkit.DropBlock3d,
]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("p", [float("nan"), -0.5, 50, True, "0.1"])
def test_every_op_refuses_bad_p(op, p: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError), match="`p` must be"):
        op(torch.ones(2, 3, 4, 4), p)


@pytest.mark.parametrize("layer", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("p", [float("nan"), -0.5, 50, True, "0.1"])
def test_every_layer_refuses_bad_p(layer, p: object) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError), match="`p` must be"):
        layer(p)


def test_scaling_must_be_known() -> None:
    with pytest.raises(
        ValueError, match="`scaling` must be one of 'inverted', 'classic', got 'keras'"
    ):
        dropkit.Dropout(0.5, scaling="keras")
    with pytest.raises(ValueError, match="`scaling`"):
        DF.dropout(torch.ones(3), 0.5, scaling="Inverted")


def test_from_keep_prob_validates_q() -> None:
    with pytest.raises(ValueError, match=r"`q` must be in \[0, 1\] \(the keep probability\)"):
        dropkit.Dropout.from_keep_prob(80)


def test_layer_refuses_non_generator() -> None:
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        dropkit.Dropout(0.5, generator=42)  # type: ignore[arg-type]
