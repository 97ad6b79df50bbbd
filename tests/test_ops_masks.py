"""The integer mask source (16-bit fields of random words) and the memory-lean backward.

Statistical tolerances are ``Z = 5`` standard errors, as in test_statistics.py: a fraction of
``n`` independent Bernoulli(p) draws has standard error ``sqrt(p(1 - p) / n)``, and the sample
correlation of ``n`` pairs of independent variables is about N(0, 1/n), so its standard error is
``1 / sqrt(n)``. A correct implementation fails a seeded check with probability ~6e-7.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import dropkit
import dropkit.functional as DF
from dropkit.functional import _field_threshold

Z = 5.0
N = 1_000_000


def _generator(seed: int = 11) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / n)


def _dropped(p: float, n: int = N, seed: int = 11) -> torch.Tensor:
    """The drop mask (True = dropped) of one call, as float64 for the statistics."""
    return (DF.dropout(torch.ones(n), p, generator=_generator(seed)) == 0).double()


class TestQuantization:
    @pytest.mark.parametrize(
        "p", [1e-9, 1e-4, 0.001, 2.0**-8, 0.1, 0.3, 1 / 3, 0.5, 0.77777, 1 - 2.0**-8, 0.9999]
    )
    def test_effective_rate_is_within_the_documented_bound(self, p: float) -> None:
        bits, threshold = _field_threshold(p)
        p_eff = (threshold + 2 ** (bits - 1)) / 2**bits
        assert bits == (16 if 2.0**-8 <= p <= 1 - 2.0**-8 else 32)
        assert abs(p_eff - p) <= 2.0 ** -(bits + 1)
        if min(p, 1 - p) >= 2.0**-24:  # relative to the rarer of drop and keep: below 2**-9
            assert abs(p_eff - p) <= 2.0**-9 * min(p, 1 - p)

    @pytest.mark.parametrize("p", [0.3, 0.5])
    def test_mask_is_the_documented_comparison(self, p: float) -> None:
        """Dropped exactly where the unsigned 16-bit field is below round(p · 2**16)."""
        n = 4096
        y = DF.dropout(torch.ones(n), p, generator=_generator(5))
        words = torch.empty(n // 4, dtype=torch.int64).random_(
            -(2**63), None, generator=_generator(5)
        )
        unsigned = words.view(torch.int16).to(torch.int32) + 2**15
        assert torch.equal(y == 0, unsigned < round(p * 2**16))

    @pytest.mark.parametrize("p", [0.002, 0.3, 0.999])
    def test_drop_fraction_on_both_field_widths(self, p: float) -> None:
        fraction = _dropped(p).mean().item()
        assert abs(fraction - p) < Z * _binomial_se(p, N), f"dropped {fraction:.6f}, p={p}"


class TestIndependence:
    def test_every_field_of_a_word_has_the_rate(self) -> None:
        """Each of the 4 fields of a 64-bit word drops at rate p (the top bit is random too)."""
        p, dropped = 0.5, _dropped(0.5)
        for position in range(4):
            fraction = dropped[position::4].mean().item()
            assert abs(fraction - p) < Z * _binomial_se(p, N // 4), f"field {position}"

    @pytest.mark.parametrize("lag", [1, 2, 3, 4, 5])
    def test_neighbours_within_and_across_words(self, lag: int) -> None:
        dropped = _dropped(0.3)
        a, b = dropped[:-lag], dropped[lag:]
        correlation = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(correlation) < Z / math.sqrt(N - lag)

    def test_successive_calls_and_seeds(self) -> None:
        generator = _generator()
        first = (DF.dropout(torch.ones(N), 0.3, generator=generator) == 0).double()
        second = (DF.dropout(torch.ones(N), 0.3, generator=generator) == 0).double()
        other_seed = _dropped(0.3, seed=12)
        for other in (second, other_seed):
            correlation = torch.corrcoef(torch.stack([first, other]))[0, 1].item()
            assert abs(correlation) < Z / math.sqrt(N)


def _x(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.rand(shape, generator=_generator(1)) + 0.5).to(dtype).requires_grad_(True)


def _forward_backward(
    x: torch.Tensor, seed: int | None, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and input gradient of dropout(x) with a seeded generator or the seeded global RNG."""
    x.grad = None
    if seed is None:
        torch.manual_seed(123)
        y = DF.dropout(x, 0.4, **kwargs)  # type: ignore[arg-type]
    else:
        y = DF.dropout(x, 0.4, generator=_generator(seed), **kwargs)  # type: ignore[arg-type]
    y.backward(torch.arange(1, y.numel() + 1, dtype=y.dtype).reshape(y.shape))
    assert x.grad is not None
    return y.detach(), x.grad


class TestSaveMaskFalse:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
    @pytest.mark.parametrize("seed", [None, 7], ids=["global-rng", "generator"])
    @pytest.mark.parametrize("shape", [(64, 33), (10, 10)], ids=["fields", "few-draws"])
    def test_same_output_and_gradient_as_saving_the_mask(
        self, dtype: torch.dtype, seed: int | None, shape: tuple[int, int]
    ) -> None:
        x = _x(shape, dtype)
        y_saved, g_saved = _forward_backward(x, seed)
        y_lean, g_lean = _forward_backward(x, seed, save_mask=False)
        assert torch.equal(y_lean, y_saved) and torch.equal(g_lean, g_saved)
        assert (g_lean[y_lean == 0] == 0).all() and (y_lean == 0).any()

    @pytest.mark.parametrize(
        "make",
        [
            lambda: _x((4, 6, 5, 3)).detach().to(memory_format=torch.channels_last),
            lambda: _x((6, 10)).detach()[:, ::2],
            lambda: _x((6, 10)).detach().t(),
        ],
        ids=["channels_last", "strided", "transposed"],
    )
    def test_layouts(self, make: Callable[[], torch.Tensor]) -> None:
        x = make().requires_grad_(True)
        y_saved, g_saved = _forward_backward(x, 3)
        y_lean, g_lean = _forward_backward(x, 3, save_mask=False)
        assert torch.equal(y_lean, y_saved) and torch.equal(g_lean, g_saved)
        assert torch.equal(g_lean == 0, y_lean == 0)  # the gradient has the output's mask

    def test_backward_leaves_the_generators_alone(self) -> None:
        """The re-draw uses a copy of the saved state, not the generator itself."""
        x, generator = _x((1000,)), _generator()
        y = DF.dropout(x, 0.5, generator=generator, save_mask=False)
        after_forward, global_state = generator.get_state(), torch.get_rng_state()
        y.sum().backward()
        assert torch.equal(generator.get_state(), after_forward)
        assert torch.equal(torch.get_rng_state(), global_state)

    def test_saves_no_activation_memory(self) -> None:
        """Bytes of tensors saved for backward, counted by saved_tensors_hooks."""
        x = _x((256, 64))

        def saved_bytes(**kwargs: object) -> int:
            sizes: list[int] = []

            def pack(t: torch.Tensor) -> torch.Tensor:
                sizes.append(t.numel() * t.element_size())
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                DF.dropout(x, 0.3, **kwargs)  # type: ignore[arg-type]
            return sum(sizes)

        assert saved_bytes(save_mask=False) == 0
        assert saved_bytes() == x.numel()  # one bool per element

    @pytest.mark.parametrize("seed", [None, 7], ids=["global-rng", "generator"])
    def test_exact_under_checkpoint(self, seed: int | None) -> None:
        """Checkpointing recomputes the forward; the gradient must still use the forward's mask.

        With an explicit generator the recomputation draws a different mask (checkpoint restores
        only the global RNG); the lean backward replays the original draw regardless.
        """
        torch.manual_seed(0)
        layer = torch.nn.Linear(32, 32)
        x = torch.randn(16, 32, requires_grad=True)

        def run(checkpointed: bool) -> tuple[torch.Tensor, torch.Tensor]:
            generator = None if seed is None else _generator(seed)

            def block(h: torch.Tensor) -> torch.Tensor:
                h = DF.dropout(torch.relu(layer(h)), 0.4, generator=generator, save_mask=False)
                return layer(h)

            torch.manual_seed(5)
            x.grad = None
            y = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
            y.square().sum().backward()
            assert x.grad is not None
            return y.detach(), x.grad.clone()

        y_plain, g_plain = run(False)
        y_ckpt, g_ckpt = run(True)
        assert torch.equal(y_ckpt, y_plain) and torch.equal(g_ckpt, g_plain)

    @pytest.mark.parametrize("shape", [(100, 7), (100, 70)], ids=["few-draws", "fields"])
    def test_every_path_draws_the_same_mask(self, shape: tuple[int, int]) -> None:
        """No gradient, gradient with and without the saved mask, in place: one mask per seed."""
        x = _x(shape)
        with torch.no_grad():
            plain = DF.dropout(x, 0.3, generator=_generator())
            inplace = DF.dropout(x.detach().clone(), 0.3, generator=_generator(), inplace=True)
        assert torch.equal(inplace, plain)
        for save_mask in (True, False):
            y = DF.dropout(x, 0.3, generator=_generator(), save_mask=save_mask)
            assert torch.equal(y.detach(), plain)

    @pytest.mark.parametrize("save_mask", [True, False])
    def test_double_backward(self, save_mask: bool) -> None:
        """create_graph=True (a gradient penalty) differentiates through the backward too."""
        x = _x((64, 40))
        y = DF.dropout(x, 0.3, generator=_generator(), save_mask=save_mask)
        (grad,) = torch.autograd.grad((y * x).sum(), x, create_graph=True)
        factor = y.detach() / x.detach()  # m / (1 - p)
        torch.testing.assert_close(grad, factor * 2 * x.detach())  # d(m·x²/(1-p))/dx
        (second,) = torch.autograd.grad(grad.sum(), x)
        torch.testing.assert_close(second, 2 * factor)

    def test_layer_option(self) -> None:
        layer = dropkit.Dropout(0.3, save_mask=False, generator=_generator())
        assert "save_mask=False" in repr(layer) and "save_mask" not in repr(dropkit.Dropout(0.3))
        x = _x((50, 20))
        y = layer(x)
        assert torch.equal(y.detach(), DF.dropout(x, 0.3, generator=_generator()).detach())
        y.sum().backward()
        assert x.grad is not None and torch.equal(x.grad * x.detach(), y.detach())
