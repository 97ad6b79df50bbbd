"""dropkit's layers as drop-ins for torch.nn's: one contract, run over both side by side.

Each pair is (torch's layer, dropkit's layer, an input shape). Every check runs on both
implementations; where dropkit differs on purpose (NaN rates, unbatched spatial input), the
test says so and checks both behaviours.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
import torch
from torch import nn

import dropkit
from dropkit.functional import SELU_ALPHA_PRIME

PAIRS: list[tuple[type[nn.Module], type[nn.Module], tuple[int, ...]]] = [
    (nn.Dropout, dropkit.Dropout, (4, 6, 5)),
    (nn.Dropout1d, dropkit.SpatialDropout1d, (4, 6, 10)),
    (nn.Dropout2d, dropkit.SpatialDropout2d, (4, 6, 5, 7)),
    (nn.Dropout3d, dropkit.SpatialDropout3d, (2, 4, 3, 5, 6)),
    (nn.AlphaDropout, dropkit.AlphaDropout, (4, 6, 5)),
    (nn.FeatureAlphaDropout, dropkit.FeatureAlphaDropout, (4, 6, 5, 7)),
]
IDS = [ours.__name__ for _, ours, _ in PAIRS]
SIDES = ["torch", "dropkit"]


def _make(pair: tuple[type[nn.Module], type[nn.Module], tuple[int, ...]], side: str) -> type:
    return pair[0] if side == "torch" else pair[1]


def _is_alpha(cls: type) -> bool:
    return "Alpha" in cls.__name__


def _check_values(cls: type, x: torch.Tensor, y: torch.Tensor, p: float) -> None:
    """Every output unit is what the layer's math allows for *that* input unit.

    A mask laid out in the wrong memory order would still give the right statistics; this
    pins each output element to its own input element.
    """
    if _is_alpha(cls):
        a = ((1 - p) * (1 + p * SELU_ALPHA_PRIME**2)) ** -0.5
        b = -a * SELU_ALPHA_PRIME * p
        kept = torch.isclose(y, a * x + b, rtol=1e-5, atol=1e-6)
        dropped = torch.isclose(y, torch.full_like(y, a * SELU_ALPHA_PRIME + b), atol=1e-6)
    else:
        kept = torch.isclose(y, x / (1 - p), rtol=1e-6, atol=0)
        dropped = y == 0
    assert (kept | dropped).all()
    assert kept.any() and dropped.any()


def _dense_permutations(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """A tensor of ``shape`` stored in every axis order (dense, non-contiguous but one)."""
    tensors = []
    for order in itertools.permutations(range(len(shape))):
        stored = torch.rand(tuple(shape[d] for d in order)) + 0.5
        tensors.append(stored.permute(tuple(order.index(d) for d in range(len(shape)))))
    return tensors


def _discontiguous(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Views that are not dense: strided slices, sliced channels-last, sliced permutations."""
    wide = torch.rand(*shape[:-1], 2 * shape[-1]) + 0.5
    views = [wide[..., ::2], wide.transpose(0, -1)[::2].transpose(0, -1)[..., : shape[-1]]]
    twice = torch.rand(2 * shape[0], *shape[1:]) + 0.5
    views.append(twice[::2])
    if len(shape) == 4:
        views.append(wide.to(memory_format=torch.channels_last)[..., ::2])
        views.append(wide.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)[..., ::2])
    if len(shape) == 5:
        views.append(wide.to(memory_format=torch.channels_last_3d)[..., ::2])
    return views


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
class TestSameContract:
    @pytest.mark.parametrize("side", SIDES)
    def test_positional_p_and_inplace(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        layer = _make(pair, side)(0.3, True)
        assert layer.p == 0.3 and layer.inplace is True
        keyword = _make(pair, side)(p=0.25, inplace=False)
        assert keyword.p == 0.25 and keyword.inplace is False
        assert "p=0.3" in repr(layer) and "inplace=True" in repr(layer)

    @pytest.mark.parametrize("side", SIDES)
    @pytest.mark.parametrize("bad", [-0.1, 1.5])
    def test_rate_out_of_range_is_value_error(self, pair, side: str, bad: float) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(ValueError, match="0 and 1|\\[0, 1\\]"):
            _make(pair, side)(bad)

    @pytest.mark.parametrize("side", SIDES)
    def test_every_dense_axis_permutation_is_kept(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        cls = _make(pair, side)
        layer = cls(0.4)
        for x in _dense_permutations(pair[2]):
            y = layer(x)
            assert y.stride() == x.stride(), f"{cls.__name__}: {x.stride()} -> {y.stride()}"
            if not pair[1].__name__.startswith(("Spatial", "FeatureAlpha")):
                _check_values(cls, x, y, 0.4)

    def test_discontiguous_inputs_laid_out_like_torch(self, pair) -> None:  # type: ignore[no-untyped-def]
        theirs, ours, shape = pair
        for x in _discontiguous(shape):
            assert not x.is_contiguous()
            expected = theirs(0.4)(x).stride()
            y = ours(0.4)(x)
            assert y.stride() == expected, f"{x.stride()}: torch {expected}, dropkit {y.stride()}"
            if ours in (dropkit.Dropout, dropkit.AlphaDropout):
                _check_values(ours, x, ours(0.4)(x), 0.4)

    @pytest.mark.parametrize("side", SIDES)
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    def test_dtype_kept(self, pair, side: str, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn(pair[2]).to(dtype)
        y = _make(pair, side)(0.3)(x)
        assert y.dtype == dtype and y.shape == x.shape and torch.isfinite(y).all()

    @pytest.mark.parametrize("side", SIDES)
    def test_empty_input(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn((0, *pair[2][1:]))
        assert _make(pair, side)(0.3)(x).shape == x.shape

    @pytest.mark.parametrize("side", SIDES)
    def test_inplace_writes_the_input(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        x = torch.rand(pair[2]) + 0.5
        original = x.clone()
        y = _make(pair, side)(0.5, True)(x)
        if side == "torch" and _is_alpha(pair[0]):
            # torch's alpha_dropout_ on a CPU returns a new tensor and leaves x as it was
            assert torch.equal(x, original)
            return
        assert y.data_ptr() == x.data_ptr() and torch.equal(x, y)
        assert not torch.equal(x, original)

    @pytest.mark.parametrize("side", SIDES)
    def test_inplace_through_autograd(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        leaf = (torch.rand(pair[2]) + 0.5).requires_grad_(True)
        hidden = leaf * 1.0  # in place on a non-leaf is allowed (on a leaf neither allows it)
        y = _make(pair, side)(0.5, True)(hidden)
        y.sum().backward()
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
        if not _is_alpha(_make(pair, side)):
            assert torch.equal(leaf.grad == 0, y.detach() == 0)

    @pytest.mark.parametrize("side", SIDES)
    def test_eval_is_the_identity(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn(pair[2])
        for inplace in (False, True):
            y = _make(pair, side)(0.5, inplace).eval()(x)
            assert torch.equal(y, x) and y.data_ptr() == x.data_ptr()

    @pytest.mark.parametrize("side", SIDES)
    def test_drop_fraction(self, pair, side: str) -> None:  # type: ignore[no-untyped-def]
        """The fraction of dropped units (or channels) is p within 5 standard errors."""
        cls, p = _make(pair, side), 0.3
        shape = (400, *pair[2][1:])
        x = torch.rand(shape) + 0.5
        y = cls(p)(x)
        if _is_alpha(cls):
            a = ((1 - p) * (1 + p * SELU_ALPHA_PRIME**2)) ** -0.5
            dropped = torch.isclose(y, torch.full_like(y, a * SELU_ALPHA_PRIME * (1 - p)))
        else:
            dropped = y == 0
        per_unit = (
            "Feature" in cls.__name__
            or cls
            in (
                nn.Dropout1d,
                nn.Dropout2d,
                nn.Dropout3d,
            )
            or cls.__name__.startswith("Spatial")
        )
        units = dropped.flatten(2).all(-1) if per_unit else dropped
        n = units.numel()
        assert abs(units.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)

    def test_same_gradient_rule(self, pair) -> None:  # type: ignore[no-untyped-def]
        """dL/dx is the factor applied to x: zero where dropped, 1/(1-p) (or a) where kept."""
        for cls in pair[:2]:
            x = (torch.rand(pair[2]) + 0.5).requires_grad_(True)
            y = cls(0.4)(x)
            y.backward(torch.ones_like(y))
            assert x.grad is not None
            if _is_alpha(cls):
                a = ((1 - 0.4) * (1 + 0.4 * SELU_ALPHA_PRIME**2)) ** -0.5
                kept = x.grad != 0
                assert kept.any() and (~kept).any()
                torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], a))
            else:
                assert torch.allclose(x.grad * x.detach(), y.detach())


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("theirs", "ours", "unbatched"),
    [
        (nn.Dropout1d, dropkit.SpatialDropout1d, (6, 10)),
        (nn.Dropout2d, dropkit.SpatialDropout2d, (6, 5, 7)),
        (nn.Dropout3d, dropkit.SpatialDropout3d, (4, 3, 5, 6)),
    ],
)
def test_unbatched_spatial_input_refused_on_purpose(
    theirs: type[nn.Module], ours: type[nn.Module], unbatched: tuple[int, ...]
) -> None:
    """torch accepts one unbatched sample (Dropout2d with a warning, as 1-d data); dropkit
    refuses it, says that torch would accept it, and how to run one sample."""
    x = torch.rand(unbatched) + 0.5
    with (
        pytest.warns(UserWarning, match="dropout2d")
        if theirs is nn.Dropout2d
        else contextlib.nullcontext()
    ):
        assert theirs(0.5)(x).shape == x.shape
    with pytest.raises(
        ValueError,
        match=rf"does not guess which axis is the channel \(torch\.nn\.{theirs.__name__} would read a {len(unbatched)}-D input as one unbatched sample; "
        r"dropkit refuses it on purpose\)\. For one unbatched sample use "
        r"layer\(x\.unsqueeze\(0\)\)\.squeeze\(0\)",
    ):
        ours(0.5)(x)
    layer = ours(0.5, generator=_g())
    assert layer(x.unsqueeze(0)).squeeze(0).shape == x.shape


@pytest.mark.parametrize("ours", [dropkit.Dropout, dropkit.SpatialDropout2d, dropkit.AlphaDropout])
def test_nan_rate_refused_where_torch_accepts_it(ours: type[nn.Module]) -> None:
    """torch's check ``p < 0 or p > 1`` lets NaN through; dropkit refuses it (a deliberate
    difference)."""
    assert math.isnan(nn.Dropout(float("nan")).p)
    with pytest.raises(ValueError, match="NaN is not a probability"):
        ours(float("nan"))


def test_feature_alpha_accepts_2d_like_torch() -> None:
    x = torch.rand(50, 40) + 0.5
    for layer in (nn.FeatureAlphaDropout(0.3), dropkit.FeatureAlphaDropout(0.3)):
        assert layer(x).shape == x.shape


def test_channels_last_discontiguous_stays_channels_last() -> None:
    x = torch.rand(4, 6, 8, 20).to(memory_format=torch.channels_last)[..., ::2]
    assert not x.is_contiguous(memory_format=torch.channels_last)
    for layer in (dropkit.Dropout(0.3), dropkit.AlphaDropout(0.3), dropkit.SpatialDropout2d(0.3)):
        assert layer(x).is_contiguous(memory_format=torch.channels_last)
