"""Exact invariants of the functional ops: support, mask shapes, edges, dtypes, layouts, grads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import dropkit.functional as DF
from dropkit.functional import SELU_ALPHA_PRIME

# Every op with an input shape it accepts.
OPS: list[tuple[Callable[..., torch.Tensor], tuple[int, ...]]] = [
    (DF.dropout, (6, 5, 4)),
    (DF.spatial_dropout, (6, 5, 4, 3)),
    (DF.locked_dropout, (6, 5, 4)),
    (DF.gaussian_dropout, (6, 5, 4)),
    (DF.alpha_dropout, (6, 5, 4)),
    (DF.feature_alpha_dropout, (6, 5, 4, 3)),
    (DF.drop_path, (6, 5, 4)),
    (DF.drop_block, (6, 5, 8, 8)),
]
OP_IDS = [op.__name__ for op, _ in OPS]
# Ops whose output is x times a random factor, so that the gradient is that factor.
MULTIPLICATIVE = [
    (op, shape) for op, shape in OPS if op not in (DF.alpha_dropout, DF.feature_alpha_dropout)
]


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("op", "shape"), OPS, ids=OP_IDS)
class TestEveryOp:
    def test_eval_and_p0_return_the_input(self, op, shape) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn(shape)
        assert op(x, 0.3, training=False) is x
        assert op(x, 0.0) is x

    def test_p1_exact_zeros_and_zero_grads_even_for_inf(self, op, shape) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn(shape)
        x[0, 0] = float("inf")
        x[-1, -1] = float("nan")
        x.requires_grad_(True)
        y = op(x, 1.0)
        assert torch.equal(y, torch.zeros(shape))
        y.sum().backward()
        assert torch.equal(x.grad, torch.zeros(shape))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    def test_dtype_kept(self, op, shape, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
        y = op(torch.randn(shape, dtype=dtype), 0.4)
        assert y.dtype == dtype and y.shape == shape
        assert torch.isfinite(y).all()

    def test_generator_reproducible(self, op, shape) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn(shape)
        assert torch.equal(op(x, 0.5, generator=_seeded(3)), op(x, 0.5, generator=_seeded(3)))
        assert not torch.equal(op(x, 0.5, generator=_seeded(3)), op(x, 0.5, generator=_seeded(4)))

    def test_generator_leaves_global_rng_alone(self, op, shape) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn(shape)
        state = torch.get_rng_state()
        op(x, 0.5, generator=_seeded())
        assert torch.equal(torch.get_rng_state(), state)

    def test_empty_input(self, op, shape) -> None:  # type: ignore[no-untyped-def]
        x = torch.randn((0, *shape[1:]))
        assert op(x, 0.5).shape == x.shape

    def test_non_contiguous_input(self, op, shape) -> None:  # type: ignore[no-untyped-def]
        base = torch.randn((*shape[:-1], 2 * shape[-1]))
        x = base[..., ::2]
        assert not x.is_contiguous()
        expected = op(x.contiguous(), 0.5, generator=_seeded(5))
        assert torch.equal(op(x, 0.5, generator=_seeded(5)), expected)


@pytest.mark.parametrize(
    ("op", "shape"), MULTIPLICATIVE, ids=[o.__name__ for o, _ in MULTIPLICATIVE]
)
def test_gradient_is_the_mask_factor(op, shape) -> None:  # type: ignore[no-untyped-def]
    """y = x·factor, so dy/dx = factor: zero for dropped units, the scale for kept ones."""
    x = (torch.rand(shape) + 0.5).requires_grad_(True)  # nonzero, so factor = y / x
    y = op(x, 0.4, generator=_seeded())
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad * x.detach(), y.detach())
    assert (x.grad[y == 0] == 0).all()


@pytest.mark.parametrize("op", [DF.dropout, DF.spatial_dropout, DF.drop_path, DF.drop_block])
def test_channels_last_kept(op) -> None:  # type: ignore[no-untyped-def]
    x = (torch.rand(16, 6, 8, 8) + 0.5).to(memory_format=torch.channels_last)
    y = op(x, 0.3, generator=_seeded())
    assert y.is_contiguous(memory_format=torch.channels_last)
    # ...and the op still drops: some units are zero, the others x times one common scale.
    kept = y != 0
    assert kept.any() and (~kept).any()
    ratio = y[kept] / x[kept]
    assert float(ratio[0]) > 1
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))


@pytest.mark.parametrize("op", [DF.dropout, DF.gaussian_dropout, DF.alpha_dropout])
def test_zero_dim_input(op) -> None:  # type: ignore[no-untyped-def]
    x = torch.tensor(2.0)
    y = op(x, 0.5, generator=_seeded())
    assert y.shape == () and torch.isfinite(y)


class TestDropout:
    @pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
    def test_support_is_zero_or_scaled(self, p: float) -> None:
        x = torch.randn(1000)
        y = DF.dropout(x, p, generator=_seeded())
        scaled = x * (1.0 / (1.0 - p))
        assert ((y == 0) | (y == scaled)).all()
        assert (y == 0).any() and (y != 0).any()

    def test_classic_scaling(self) -> None:
        x = torch.randn(1000)
        y = DF.dropout(x, 0.25, scaling="classic", generator=_seeded())
        assert ((y == 0) | (y == x)).all()
        assert torch.equal(DF.dropout(x, 0.25, scaling="classic", training=False), x * 0.75)
        assert DF.dropout(x, 0.0, scaling="classic", training=False) is x

    def test_classic_inference_at_p1_is_zeros_not_nan(self) -> None:
        x = torch.tensor([float("inf"), 1.0])
        assert torch.equal(DF.dropout(x, 1.0, scaling="classic", training=False), torch.zeros(2))

    def test_inplace(self) -> None:
        x = torch.ones(100)
        y = DF.dropout(x, 0.5, inplace=True, generator=_seeded())
        assert y is x and set(x.unique().tolist()) == {0.0, 2.0}
        z = torch.ones(3)
        assert DF.dropout(z, 1.0, inplace=True) is z and torch.equal(z, torch.zeros(3))

    def test_same_support_as_torch(self) -> None:
        """Both drop some units and scale the rest by exactly 1 / (1 - p): all zeros, no
        scaling or the wrong scale fail (a subset check alone would pass all zeros)."""
        x = torch.ones(4096)
        for y in (F.dropout(x, 0.5), DF.dropout(x, 0.5)):
            assert set(y.unique().tolist()) == {0.0, 2.0}
        p = 0.25
        for y in (F.dropout(x, p), DF.dropout(x, p)):
            kept = y[y != 0]
            assert torch.equal(kept, torch.full_like(kept, 1 / (1 - p)))
            assert 0 < kept.numel() < x.numel()


class TestSpatialDropout:
    @pytest.mark.parametrize("shape", [(8, 16, 10), (8, 16, 6, 5), (4, 8, 3, 4, 5)])
    def test_whole_channels(self, shape: tuple[int, ...]) -> None:
        x = torch.rand(shape) + 0.5
        y = DF.spatial_dropout(x, 0.5, generator=_seeded())
        kept = (y != 0).flatten(2)
        per_channel = kept.sum(-1)
        channel_numel = kept.shape[-1]
        assert ((per_channel == 0) | (per_channel == channel_numel)).all()
        assert (per_channel == 0).any() and (per_channel == channel_numel).any()
        assert torch.equal(y[y != 0], (x * 2.0)[y != 0])

    def test_refuses_unbatched_rank(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"spatial_dropout expects an input of at least 3 dimensions \(N, C, \*spatial\), got a 2-D input of shape \(4, 5\)",
        ):
            DF.spatial_dropout(torch.ones(4, 5), 0.5)


class TestLockedDropout:
    def test_same_mask_at_every_time_step_batch_first(self) -> None:
        y = DF.locked_dropout(torch.ones(8, 20, 16), 0.5, generator=_seeded())
        assert (y == y[:, :1, :]).all()
        assert (y == 0).any() and (y == 2).any()

    def test_same_mask_at_every_time_step_time_first(self) -> None:
        y = DF.locked_dropout(torch.ones(20, 8, 16), 0.5, batch_first=False, generator=_seeded())
        assert (y == y[:1]).all()
        # The mask differs across sequences (axis 1), not only across features.
        assert not (y[0] == y[0, :1]).all()

    def test_batch_first_layouts_agree(self) -> None:
        x = torch.randn(8, 20, 16)
        a = DF.locked_dropout(x, 0.5, generator=_seeded())
        b = DF.locked_dropout(x.transpose(0, 1), 0.5, batch_first=False, generator=_seeded())
        # Same draws in the same (N, F) order: identical masks.
        assert torch.equal(a, b.transpose(0, 1))

    def test_refuses_2d(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"locked_dropout expects an input of at least 3 dimensions \(T, N, \*features\)",
        ):
            DF.locked_dropout(torch.ones(5, 4), 0.5, batch_first=False)


class TestDropPath:
    def test_whole_samples(self) -> None:
        y = DF.drop_path(torch.ones(64, 3, 4), 0.5, generator=_seeded())
        per_sample = (y != 0).flatten(1).sum(1)
        assert ((per_sample == 0) | (per_sample == 12)).all()
        assert set(y.unique().tolist()) == {0.0, 2.0}

    def test_scale_by_keep_false(self) -> None:
        y = DF.drop_path(torch.ones(64, 3), 0.5, scale_by_keep=False, generator=_seeded())
        assert set(y.unique().tolist()) == {0.0, 1.0}

    def test_refuses_0d(self) -> None:
        with pytest.raises(
            ValueError, match=r"drop_path expects an input of at least 1 dimension \(N, ...\)"
        ):
            DF.drop_path(torch.tensor(1.0), 0.5)


class TestAlphaDropout:
    @pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
    def test_kept_and_dropped_values(self, p: float) -> None:
        a = ((1 - p) * (1 + p * SELU_ALPHA_PRIME**2)) ** -0.5
        b = -a * SELU_ALPHA_PRIME * p
        x = torch.randn(10_000, dtype=torch.float64)
        y = DF.alpha_dropout(x, p, generator=_seeded())
        kept = torch.isclose(y, a * x + b, rtol=0, atol=1e-12)
        dropped = torch.isclose(y, torch.full_like(y, a * SELU_ALPHA_PRIME + b), rtol=0, atol=1e-12)
        assert (kept | dropped).all() and kept.any() and dropped.any()

    def test_gradient_is_a_on_kept_units(self) -> None:
        p = 0.2
        a = ((1 - p) * (1 + p * SELU_ALPHA_PRIME**2)) ** -0.5
        x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
        y = DF.alpha_dropout(x, p, generator=_seeded())
        y.sum().backward()
        assert set(torch.round(x.grad, decimals=12).unique().tolist()) == {0.0, round(a, 12)}

    def test_feature_alpha_drops_whole_channels(self) -> None:
        x = torch.randn(16, 8, 5, 5, dtype=torch.float64)
        y = DF.feature_alpha_dropout(x, 0.5, generator=_seeded())
        flat = y.flatten(2)
        constant = (flat == flat[..., :1]).all(-1)  # a dropped channel is one constant value
        assert constant.any() and (~constant).any()


class TestDropBlock:
    @staticmethod
    def _is_union_of_blocks(dropped: torch.Tensor, block: tuple[int, int]) -> bool:
        """True when every dropped unit lies in a fully dropped block of size ``block``."""
        d = dropped.float()
        full = -F.max_pool2d(-d, kernel_size=block, stride=1)  # 1 where a whole block is dropped
        pad = [block[1] - 1, block[1] - 1, block[0] - 1, block[0] - 1]
        covered = F.max_pool2d(F.pad(full, pad), kernel_size=block, stride=1)
        return torch.equal(covered, d)

    @pytest.mark.parametrize("block", [(3, 3), (4, 4), (7, 7), (2, 5)])
    def test_drops_whole_blocks(self, block: tuple[int, int]) -> None:
        x = torch.rand(16, 4, 14, 14) + 0.5
        y = DF.drop_block(x, 0.2, block_size=block, generator=_seeded())
        dropped = y == 0
        assert dropped.any()
        assert self._is_union_of_blocks(dropped, block)

    def test_kept_units_share_one_scale(self) -> None:
        x = torch.ones(16, 4, 14, 14)
        y = DF.drop_block(x, 0.2, block_size=3, generator=_seeded())
        kept = y[y != 0]
        expected = y.numel() / kept.numel()
        assert torch.allclose(kept, torch.full_like(kept, expected), rtol=1e-6, atol=0)

    def test_block_larger_than_map_drops_whole_maps(self) -> None:
        y = DF.drop_block(torch.ones(64, 4, 5, 6), 0.5, block_size=9, generator=_seeded())
        per_map = (y != 0).flatten(2).sum(-1)
        assert ((per_map == 0) | (per_map == 30)).all()
        assert (per_map == 0).any() and (per_map == 30).any()

    def test_3d_blocks(self) -> None:
        y = DF.drop_block(torch.ones(8, 2, 6, 6, 6), 0.2, block_size=2, generator=_seeded())
        dropped = (y == 0).float()
        full = -F.max_pool3d(-dropped, kernel_size=2, stride=1)
        covered = F.max_pool3d(F.pad(full, [1] * 6), kernel_size=2, stride=1)
        assert dropped.any() and torch.equal(covered, dropped)

    def test_refuses_other_ranks(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"drop_block expects a 4-D or 5-D input \(N, C, H, W\) or \(N, C, D, H, W\), got a 3-D input",
        ):
            DF.drop_block(torch.ones(3, 8, 8), 0.1, block_size=3)

    def test_refuses_bad_block_size(self) -> None:
        with pytest.raises(ValueError, match="`block_size` must be >= 1"):
            DF.drop_block(torch.ones(1, 1, 8, 8), 0.1, block_size=0)
