"""Every op and layer traces under torch.compile(fullgraph=True): no graph breaks."""

from __future__ import annotations

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


@pytest.mark.parametrize(("name", "fn", "shape"), CASES, ids=[c[0] for c in CASES])
def test_op_compiles_without_graph_breaks(
    name: str, fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]
) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x = torch.randn(shape, requires_grad=True)
    y = compiled(x)
    y.sum().backward()  # the backward graph traces too
    assert y.shape == x.shape and x.grad is not None


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
