"""Concrete dropout (Gal, Hron & Kendall 2017): the relaxed mask, the learned rate, the regularizer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dropkit.concrete import ConcreteDropout, concrete_regularization


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def test_init_p_is_the_starting_rate() -> None:
    layer = ConcreteDropout(nn.Linear(4, 2), init_p=0.25)
    assert isinstance(layer.p, float)
    assert layer.p == pytest.approx(0.25, abs=1e-6)
    assert isinstance(layer.p_logit, nn.Parameter)
    assert "p=0.25" in repr(layer)


def test_eval_is_the_wrapped_layer_exactly() -> None:
    inner = nn.Linear(6, 3)
    layer = ConcreteDropout(inner, init_p=0.4).eval()
    x = torch.randn(10, 6)
    assert torch.equal(layer(x), inner(x))


@pytest.mark.parametrize(
    ("inner", "shape", "out_shape", "k"),
    [
        (nn.Linear(6, 3), (10, 6), (10, 3), 6),
        (nn.Linear(6, 3), (2, 5, 6), (2, 5, 3), 6),
        (nn.Conv2d(4, 2, 3, padding=1), (2, 4, 5, 5), (2, 2, 5, 5), 4),
        (nn.Conv1d(3, 2, 1), (3, 7), (2, 7), 3),  # unbatched (C, L)
    ],
)
def test_training_output_shape_and_input_dim(
    inner: nn.Module, shape: tuple[int, ...], out_shape: tuple[int, ...], k: int
) -> None:
    layer = ConcreteDropout(inner).train()
    y = layer(torch.randn(shape))
    assert y.shape == out_shape
    assert torch.isfinite(y).all()
    assert layer.input_dim == k


def test_input_dim_recorded_on_forward_for_other_layers() -> None:
    layer = ConcreteDropout(nn.Identity())
    assert layer.input_dim is None
    with pytest.raises(RuntimeError, match="forward pass"):
        layer.regularization()
    layer(torch.randn(3, 9))
    assert layer.input_dim == 9
    assert torch.isfinite(layer.regularization())


def test_training_mask_matches_the_formula(generator: torch.Generator) -> None:
    p, t = 0.3, 0.1
    layer = ConcreteDropout(nn.Identity(), init_p=p, temperature=t, generator=generator)
    x = torch.randn(4, 8)
    y = layer(x)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(1234))
    eps = 1e-7
    pt = torch.tensor(layer.p)
    logits = (
        torch.log(pt + eps) - torch.log(1 - pt + eps) + torch.log(u + eps) - torch.log(1 - u + eps)
    )
    z = torch.sigmoid(logits / t)
    torch.testing.assert_close(y, x * (1 - z) / (1 - pt))


def test_same_generator_seed_same_output() -> None:
    x = torch.randn(5, 7)
    outs = [
        ConcreteDropout(nn.Identity(), generator=torch.Generator().manual_seed(7))(x)
        for _ in range(2)
    ]
    assert torch.equal(outs[0], outs[1])
    other = ConcreteDropout(nn.Identity(), generator=torch.Generator().manual_seed(8))(x)
    assert not torch.equal(outs[0], other)


def test_gradients_flow_into_p_logit_and_weights() -> None:
    layer = ConcreteDropout(nn.Linear(5, 2), init_p=0.3)
    loss = layer(torch.randn(16, 5)).pow(2).mean()
    loss.backward()
    grad = layer.p_logit.grad
    assert grad is not None and torch.isfinite(grad) and grad != 0
    assert layer.layer.weight.grad is not None

    # The regularizer alone also pulls on the rate (towards 0.5 through the entropy term).
    layer.zero_grad()
    layer.regularization().backward()
    assert layer.p_logit.grad is not None and layer.p_logit.grad != 0


def test_half_precision_input_keeps_its_dtype() -> None:
    layer = ConcreteDropout(nn.Identity(), init_p=0.2)
    y = layer(torch.randn(8, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_rate_stays_finite_in_open_interval_under_a_huge_learning_rate(direction: float) -> None:
    # direction=+1 minimises the output's energy (pushes p one way), -1 maximises it (the
    # other way); SGD with lr=1e3 throws p_logit far into the saturated sigmoid either way.
    layer = ConcreteDropout(nn.Linear(4, 1), init_p=0.5, dropout_regularizer=1e-2)
    opt = torch.optim.SGD([layer.p_logit], lr=1e3)
    x = torch.randn(32, 4)
    for _ in range(20):
        opt.zero_grad()
        loss = direction * layer(x).pow(2).mean() + layer.regularization()
        loss.backward()
        opt.step()
        assert math.isfinite(layer.p) and 0.0 < layer.p < 1.0
        assert torch.isfinite(layer.p_logit)
    assert torch.isfinite(layer(x)).all() and torch.isfinite(layer.regularization())


@pytest.mark.parametrize("logit", [1e30, -1e30, math.inf, -math.inf])
def test_saturated_logit_is_clamped(logit: float) -> None:
    layer = ConcreteDropout(nn.Linear(3, 2))
    with torch.no_grad():
        layer.p_logit.fill_(logit)
    assert 0.0 < layer.p < 1.0
    x = torch.randn(4, 3)
    assert torch.isfinite(layer(x)).all()
    assert torch.isfinite(layer.regularization())


def test_regularization_formula_recomputed() -> None:
    inner = nn.Linear(5, 3)
    w_reg, d_reg = 0.01, 0.02
    layer = ConcreteDropout(
        inner, init_p=0.37, weight_regularizer=w_reg, dropout_regularizer=d_reg
    ).double()
    p = layer.p  # the float32 logit of 0.37, widened to float64
    sum_sq = float((inner.weight.pow(2).sum() + inner.bias.pow(2).sum()).detach())  # bias included
    k = 5
    expected = w_reg * sum_sq / (1 - p) + d_reg * k * (p * math.log(p) + (1 - p) * math.log(1 - p))
    got = layer.regularization()
    assert got.ndim == 0
    assert float(got.detach()) == pytest.approx(expected, rel=1e-12)


def test_regularizers_helper_is_the_papers() -> None:
    w_reg, d_reg = ConcreteDropout.regularizers(100, length_scale=1e-2, precision=2.0)
    assert w_reg == pytest.approx(1e-4 / 200)
    assert d_reg == pytest.approx(2 / 200)
    assert ConcreteDropout.regularizers(10) == pytest.approx((1e-8 / 10, 0.2))


def test_concrete_regularization_sums_modules() -> None:
    a = ConcreteDropout(nn.Linear(4, 8), init_p=0.2, dropout_regularizer=1e-3)
    b = ConcreteDropout(nn.Linear(8, 1), init_p=0.4, weight_regularizer=1e-3)
    model = nn.Sequential(a, nn.ReLU(), b)
    torch.testing.assert_close(
        concrete_regularization(model), a.regularization() + b.regularization()
    )
    torch.testing.assert_close(concrete_regularization(a), a.regularization())

    none = concrete_regularization(nn.Sequential(nn.Linear(2, 2)))
    assert none.ndim == 0 and float(none) == 0.0


def test_small_temperature_gives_near_binary_mask_with_rate_p() -> None:
    p, n = 0.3, 100_000
    layer = ConcreteDropout(
        nn.Identity(), init_p=p, temperature=1e-3, generator=torch.Generator().manual_seed(3)
    )
    keep = layer(torch.ones(n)).detach() * (1 - layer.p)  # = 1 - z, the relaxed keep indicator
    z = 1 - keep
    # z lands in (0.01, 0.99) only when the logistic logit is within 4.6·t of 0: probability
    # about 2·4.6e-3·p(1-p) ≈ 0.002 here; allow 0.01.
    assert float(((z > 0.01) & (z < 0.99)).float().mean()) < 0.01
    # Drop fraction: binomial standard error sqrt(p(1-p)/n) = 0.00145; allow 5 SE.
    se = math.sqrt(p * (1 - p) / n)
    assert float((z > 0.5).float().mean()) == pytest.approx(p, abs=5 * se)
    assert float(z.mean()) == pytest.approx(p, abs=5 * se + 0.002)


def _learned_rates(n: int, seed: int, steps: int = 150, hidden: int = 16) -> list[float]:
    """Fit y = sin(x) + noise with an MLP of two ConcreteDropout layers; return the learned p."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    y = torch.sin(x) + 0.1 * torch.randn(n, 1, generator=g)
    torch.manual_seed(seed)
    w_reg, d_reg = ConcreteDropout.regularizers(n, length_scale=1e-2, precision=1.0)
    model = nn.Sequential(
        nn.Linear(1, hidden),
        nn.ReLU(),
        ConcreteDropout(
            nn.Linear(hidden, hidden), weight_regularizer=w_reg, dropout_regularizer=d_reg
        ),
        nn.ReLU(),
        ConcreteDropout(nn.Linear(hidden, 1), weight_regularizer=w_reg, dropout_regularizer=d_reg),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y) + concrete_regularization(model)
        loss.backward()
        opt.step()
    return [m.p for m in model.modules() if isinstance(m, ConcreteDropout)]


def test_learned_rate_falls_with_more_data() -> None:
    # The paper's central claim: with w_reg = l²/(τN), d_reg = 2/(τN) the entropy term that
    # holds p up weakens as N grows, so the learned rate is lower with more data.
    # Seen (torch 2.x, CPU, 150 Adam steps, hidden width 16, init_p=0.1), learned p per layer:
    #   N=20:   seed 0 [0.323, 0.323], seed 1 [0.325, 0.325]
    #   N=1000: seed 0 [0.036, 0.039], seed 1 [0.042, 0.038]
    # The gap is wide, so the test asserts the direction with a margin, averaged over 2 seeds.
    # Runs on one thread: with torch's default intra-op pool this test took 35 s on a loaded
    # 2-core machine instead of 3 s.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is several times faster than the default
    try:
        small = [p for seed in (0, 1) for p in _learned_rates(20, seed)]
        large = [p for seed in (0, 1) for p in _learned_rates(1000, seed)]
    finally:
        torch.set_num_threads(threads)
    mean_small, mean_large = sum(small) / len(small), sum(large) / len(large)
    assert mean_small > mean_large + 0.1, (small, large)
    assert min(small) > max(large), (small, large)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"init_p": 0.0}, ValueError, r"`init_p` must be in \(0, 1\)"),
        ({"init_p": 1.0}, ValueError, r"`init_p` must be in \(0, 1\)"),
        ({"init_p": 30}, ValueError, "percentage"),
        ({"init_p": float("nan")}, ValueError, "NaN"),
        ({"init_p": "0.1"}, TypeError, "`init_p`"),
        ({"temperature": 0.0}, ValueError, "`temperature` must be a finite number > 0"),
        ({"temperature": -1.0}, ValueError, "`temperature`"),
        (
            {"weight_regularizer": -1e-6},
            ValueError,
            "`weight_regularizer` must be a finite number >= 0",
        ),
        ({"dropout_regularizer": float("inf")}, ValueError, "`dropout_regularizer`"),
        ({"dropout_regularizer": None}, TypeError, "`dropout_regularizer`"),
        ({"generator": 3}, TypeError, "`generator`"),
    ],
)
def test_validation(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ConcreteDropout(nn.Linear(2, 2), **kwargs)  # type: ignore[arg-type]


def test_validation_of_layer_and_helpers() -> None:
    with pytest.raises(TypeError, match="`layer` must be a torch.nn.Module"):
        ConcreteDropout(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`n_samples`"):
        ConcreteDropout.regularizers(0)
    with pytest.raises(ValueError, match="`length_scale`"):
        ConcreteDropout.regularizers(10, length_scale=0.0)
    with pytest.raises(TypeError, match="`model`"):
        concrete_regularization("net")  # type: ignore[arg-type]
