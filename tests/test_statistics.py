"""Statistical properties of the masks, with tolerances derived from the sampling spread.

Every tolerance is ``Z`` standard errors of the estimate, ``Z = 5``: under a correct
implementation a seeded test fails with probability ~6e-7 per check, while any error larger
than 5 standard errors is caught. The standard error is written next to each check:
a fraction of ``n`` independent Bernoulli(p) draws has ``sqrt(p(1 - p) / n)``; a mean of ``n``
independent values with variance ``v`` has ``sqrt(v / n)``; a sample variance has
``sqrt((m4 - v²) / n)`` with ``m4`` the fourth central moment.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dropkit.functional as DF
from dropkit.functional import SELU_ALPHA_PRIME, _drop_block_seed_rate

Z = 5.0
N = 1_000_000  # elements per element-wise check


def _generator(seed: int = 2024) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.4, 0.5, 0.9])
class TestDropout:
    def test_drop_fraction(self, p: float) -> None:
        y = DF.dropout(torch.ones(N), p, generator=_generator())
        fraction = (y == 0).double().mean().item()
        assert abs(fraction - p) < Z * _binomial_se(p, N), f"dropped {fraction:.5f}, p={p}"

    def test_mean_is_kept(self, p: float) -> None:
        # y = m / (1 - p) has variance p / (1 - p) per element.
        y = DF.dropout(torch.ones(N, dtype=torch.float64), p, generator=_generator())
        se = math.sqrt(p / (1.0 - p) / N)
        assert abs(y.mean().item() - 1.0) < Z * se

    def test_classic_training_mean_is_keep_probability(self, p: float) -> None:
        y = DF.dropout(torch.ones(N), p, scaling="classic", generator=_generator())
        assert abs(y.double().mean().item() - (1.0 - p)) < Z * _binomial_se(p, N)


def test_neighbours_are_independent() -> None:
    """Correlation of adjacent mask entries: about N(0, 1/n) when independent."""
    keep = (
        DF.dropout(torch.ones(N, dtype=torch.float64), 0.3, generator=_generator()) != 0
    ).double()
    a, b = keep[:-1], keep[1:]
    correlation = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(correlation) < Z / math.sqrt(N - 1)


def test_successive_calls_are_independent() -> None:
    generator = _generator()
    first = (DF.dropout(torch.ones(N, dtype=torch.float64), 0.3, generator=generator) != 0).double()
    second = (
        DF.dropout(torch.ones(N, dtype=torch.float64), 0.3, generator=generator) != 0
    ).double()
    correlation = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    assert abs(correlation) < Z / math.sqrt(N)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_fine_rates(dtype: torch.dtype) -> None:
    """p = 0.001 is resolved exactly in float16 too: uniforms are drawn in float32."""
    p = 0.001
    y = DF.dropout(torch.ones(N, dtype=dtype), p, generator=_generator())
    fraction = (y == 0).double().mean().item()
    assert abs(fraction - p) < Z * _binomial_se(p, N)


@pytest.mark.parametrize(
    ("name", "op", "shape", "units"),
    [
        # units: how many independent draws the mask holds (its shape without broadcast axes)
        ("spatial", DF.spatial_dropout, (1000, 100, 4, 4), 1000 * 100),
        ("locked", DF.locked_dropout, (1000, 10, 100), 1000 * 100),
        ("drop_path", DF.drop_path, (100_000, 4), 100_000),
    ],
)
def test_mask_variants_drop_fraction(name: str, op, shape, units: int) -> None:  # type: ignore[no-untyped-def]
    p = 0.3
    y = op(torch.ones(shape), p, generator=_generator())
    fraction = (y == 0).double().mean().item()  # each draw covers equally many elements
    assert abs(fraction - p) < Z * _binomial_se(p, units), f"{name}: dropped {fraction:.5f}"


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_gaussian_noise_moments(p: float) -> None:
    y = DF.gaussian_dropout(torch.ones(N, dtype=torch.float64), p, generator=_generator())
    variance = p / (1.0 - p)
    # Mean of N normals: se sqrt(v / N); sample variance of normals: se v·sqrt(2 / (N - 1)).
    assert abs(y.mean().item() - 1.0) < Z * math.sqrt(variance / N)
    assert abs(y.var().item() - variance) < Z * variance * math.sqrt(2.0 / (N - 1))
    assert (y != 0).all()


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5])
def test_alpha_dropout_keeps_zero_mean_unit_variance(p: float) -> None:
    x = torch.randn(N, dtype=torch.float64, generator=_generator(1))
    y = DF.alpha_dropout(x, p, generator=_generator(2))
    mean, var = y.mean().item(), y.var().item()
    m4 = ((y - mean) ** 4).mean().item()
    # The output has variance 1, so its mean has se sqrt(1 / N); the variance se comes from
    # the sample's fourth moment (the output is a mixture, not normal). Both estimates include
    # the input's own sampling noise, which is part of the same spread.
    assert abs(mean) < Z * math.sqrt(1.0 / N), f"mean {mean}"
    assert abs(var - 1.0) < Z * math.sqrt((m4 - var**2) / N), f"variance {var}"
    # The sign of alpha' matters: the dropped value is a·α' + b, below the kept mean.
    a = ((1 - p) * (1 + p * SELU_ALPHA_PRIME**2)) ** -0.5
    dropped_value = a * SELU_ALPHA_PRIME + a * -SELU_ALPHA_PRIME * p
    assert dropped_value < 0
    assert abs(
        (torch.isclose(y, torch.tensor(dropped_value, dtype=torch.float64))).double().mean().item()
        - p
    ) < Z * _binomial_se(p, N)


def test_feature_alpha_dropout_keeps_moments() -> None:
    p = 0.2
    x = torch.randn(20_000, 16, 8, dtype=torch.float64, generator=_generator(1))
    y = DF.feature_alpha_dropout(x, p, generator=_generator(2))
    # Units of one channel share a draw, so use per-(sample, channel) means and second moments
    # as the independent observations (320,000 of them) and their spread as the error.
    channel_mean = y.mean(-1).flatten()
    channel_sq = (y**2).mean(-1).flatten()
    n = channel_mean.numel()
    assert abs(channel_mean.mean().item()) < Z * channel_mean.std().item() / math.sqrt(n)
    second_moment = channel_sq.mean().item()
    assert abs(second_moment - 1.0) < Z * channel_sq.std().item() / math.sqrt(n)


class TestDropBlockRealizedFraction:
    """The realized fraction of dropped units equals p (published versions: 0.07 to 0.22).

    The maps are independent, so the mean of the per-map dropped fractions has standard error
    std(per-map fraction) / sqrt(maps); a fraction in [0, 1] has variance at most p(1 - p), so
    this is at most the binomial se over maps, and much smaller for small blocks.
    """

    @pytest.mark.parametrize(
        ("size", "block", "p"),
        [
            ((14, 14), 7, 0.1),
            ((14, 14), 3, 0.1),
            ((14, 14), 4, 0.3),
            ((28, 28), 7, 0.2),
            ((7, 7), 7, 0.1),
            ((9, 12), 5, 0.5),
            ((5, 5), 9, 0.25),
        ],
    )
    def test_2d(self, size: tuple[int, int], block: int, p: float) -> None:
        maps = 40_000 if size[0] <= 14 else 10_000
        y = DF.drop_block(torch.ones(maps, 1, *size), p, block_size=block, generator=_generator())
        per_map = (y == 0).flatten(1).double().mean(1)
        se = per_map.std().item() / math.sqrt(maps)
        assert abs(per_map.mean().item() - p) < Z * se, f"dropped {per_map.mean().item():.4f}"

    def test_3d(self) -> None:
        maps, p = 20_000, 0.15
        y = DF.drop_block(torch.ones(maps, 1, 6, 6, 6), p, block_size=3, generator=_generator())
        per_map = (y == 0).flatten(1).double().mean(1)
        se = per_map.std().item() / math.sqrt(maps)
        assert abs(per_map.mean().item() - p) < Z * se

    def test_paper_gamma_would_under_drop(self) -> None:
        """Why calibration is needed: the paper's γ is measurably below dropkit's."""
        p, size, block = 0.1, 14, 7
        paper = p / block**2 * size**2 / (size - block + 1) ** 2
        calibrated = _drop_block_seed_rate(p, (size, size), (block, block))
        maps = 40_000
        seeds = (
            torch.rand(maps, 1, size - block + 1, size - block + 1, generator=_generator()) < paper
        )
        grown = F.max_pool2d(F.pad(seeds.float(), [block - 1] * 4), block, stride=1)
        per_map = grown.flatten(1).double().mean(1)
        se = per_map.std().item() / math.sqrt(maps)
        assert calibrated > paper
        assert per_map.mean().item() < p - Z * se  # the uncalibrated rate misses p
