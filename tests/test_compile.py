"""Every op and layer traces under torch.compile(fullgraph=True): no graph breaks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import dropkit
import dropkit.functional as DF

CASES: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], tuple[int, ...]]] = [
    ("dropout", lambda x: DF.dropout(x, 0.3), (8, 16)),
    (
        "dropout_classic_eval",
        lambda x: DF.dropout(x, 0.3, scaling="classic", training=False),
        (8, 16),
    ),
    ("dropout_save_mask_false", lambda x: DF.dropout(x, 0.3, save_mask=False), (8, 16)),
    ("drop_connect", lambda w: DF.drop_connect(w, 0.3), (8, 16)),
    ("spatial_dropout", lambda x: DF.spatial_dropout(x, 0.3), (4, 8, 6, 6)),
    ("locked_dropout", lambda x: DF.locked_dropout(x, 0.3), (4, 10, 8)),
    ("gaussian_dropout", lambda x: DF.gaussian_dropout(x, 0.3), (8, 16)),
    ("alpha_dropout", lambda x: DF.alpha_dropout(x, 0.3), (8, 16)),
    ("feature_alpha_dropout", lambda x: DF.feature_alpha_dropout(x, 0.3), (4, 8, 6, 6)),
    ("drop_path", lambda x: DF.drop_path(x, 0.3), (8, 16)),
    ("drop_block", lambda x: DF.drop_block(x, 0.3, block_size=3), (4, 8, 10, 10)),
    ("drop_block_3d", lambda x: DF.drop_block(x, 0.3, block_size=2), (2, 4, 6, 6, 6)),
    ("p_one", lambda x: DF.dropout(x, 1.0), (8, 16)),
]


MULTIPLICATIVE = {
    "dropout",
    "dropout_save_mask_false",
    "drop_connect",
    "spatial_dropout",
    "locked_dropout",
    "drop_path",
}


@pytest.mark.parametrize(("name", "fn", "shape"), CASES, ids=[c[0] for c in CASES])
def test_op_compiles_without_graph_breaks(
    name: str, fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]
) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x = (torch.rand(shape) + 0.5).requires_grad_(True)
    y = compiled(x)
    y.sum().backward()  # the backward graph traces too
    assert y.shape == x.shape and x.grad is not None
    if name in MULTIPLICATIVE:  # y = x · factor, so the gradient is the factor y / x
        torch.testing.assert_close(x.grad * x.detach(), y.detach())
        assert (y == 0).any() and (y != 0).any()


def test_model_with_layers_compiles_with_inductor() -> None:
    """The real compiler, once, on a model that stacks several layers."""
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        dropkit.DropBlock2d(0.1, 3),
        dropkit.SpatialDropout2d(0.2),
        torch.nn.Flatten(),
        dropkit.Dropout(0.5),
        torch.nn.Linear(8 * 8 * 8, 4),
    )
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 3, 8, 8)
    y = compiled(x)
    y.sum().backward()
    assert y.shape == (4, 4)
    model.eval()
    assert torch.allclose(compiled(x), model(x))


@pytest.mark.parametrize("save_mask", [True, False])
def test_inductor_keeps_dropkits_kernel(save_mask: bool) -> None:
    """Compiled with the real compiler, dropout is dropkit's custom op: with the mask saved it
    draws the same mask as eager code from the same seed, and the gradient is the mask."""
    torch._dynamo.reset()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return DF.dropout(x, 0.3, save_mask=save_mask) * 2.0

    compiled = torch.compile(fn, fullgraph=True)
    x = (torch.rand(64, 96) + 0.5).requires_grad_(True)
    torch.manual_seed(4)
    y = compiled(x)
    torch.manual_seed(4)
    eager = fn(x.detach())
    if save_mask:
        assert torch.equal(y.detach(), eager)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad * x.detach(), y.detach())
    # x > 0, so y == 0 exactly where a unit was dropped: a Bernoulli(0.3) fraction of n draws,
    # within 5 binomial standard errors sqrt(p(1 - p) / n) of p.
    n = y.numel()
    assert abs((y == 0).double().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)


def test_custom_op_in_the_graph() -> None:
    torch._dynamo.reset()
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda v: DF.dropout(v, 0.3), fullgraph=True, backend=backend)
    compiled(torch.randn(8, 16))
    assert "dropkit.element_dropout" in graphs[0].code
