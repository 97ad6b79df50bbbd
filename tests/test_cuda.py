"""CUDA: dropkit's ops on a GPU dispatch to PyTorch's fused kernels with the same semantics.

Run with ``python3 -m pytest -m cuda`` on a machine with a GPU (``benchmarks/cuda_check.sh``);
skipped where CUDA is absent.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dropkit
import dropkit.functional as DF
from helpers import check_dropout_layer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]

CUDA = "cuda"


def _saved_bytes(fn: object, x: torch.Tensor) -> int:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)  # type: ignore[operator]
    return sum(sizes)


def test_cuda_uses_torchs_kernels() -> None:
    assert DF.mask_source(torch.device(CUDA)) == "torch"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dropout_is_torchs_fused_dropout(dtype: torch.dtype) -> None:
    """Same seed: the same output and gradient as torch.nn.functional.dropout on a GPU."""
    x = torch.randn(256, 1000, device=CUDA, dtype=dtype)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(7)
    ours = DF.dropout(a, 0.3)
    torch.manual_seed(7)
    theirs = F.dropout(b, 0.3)
    assert ours.dtype == dtype and torch.equal(ours, theirs)
    g = torch.randn_like(x)
    ours.backward(g)
    theirs.backward(g)
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_exact_edges(p: float) -> None:
    x = torch.randn(64, 64, device=CUDA)
    x[0, 0] = float("inf")
    x.requires_grad_(True)
    y = DF.dropout(x, p)
    if p == 0.0:
        assert y is x
        return
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_save_mask_false_saves_nothing_and_replays_the_mask() -> None:
    x = (torch.rand(512, 300, device=CUDA) + 0.5).requires_grad_(True)
    assert _saved_bytes(lambda v: DF.dropout(v, 0.3, save_mask=False), x) == 0
    assert _saved_bytes(lambda v: DF.dropout(v, 0.3), x) == x.numel()  # the fused kernel's mask
    y = DF.dropout(x, 0.3, save_mask=False)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad * x.detach(), y.detach())
    assert torch.equal(x.grad == 0, y.detach() == 0)


def test_generator_on_cuda() -> None:
    x = torch.rand(128, 100, device=CUDA) + 0.5

    def run(seed: int) -> torch.Tensor:
        return DF.dropout(x, 0.5, generator=torch.Generator(device=CUDA).manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_layouts_kept() -> None:
    x = torch.randn(4, 6, 8, 10, device=CUDA).to(memory_format=torch.channels_last)
    for y in (DF.dropout(x, 0.3), DF.alpha_dropout(x, 0.3), DF.spatial_dropout(x, 0.3)):
        assert y.stride() == x.stride()
    permuted = torch.randn(8, 10, 4, 6, device=CUDA).permute(2, 3, 0, 1)
    assert DF.dropout(permuted, 0.3).stride() == permuted.stride()


def test_every_op_on_cuda() -> None:
    x = torch.rand(4, 6, 10, 10, device=CUDA) + 0.5
    for fn in (
        lambda v: DF.dropout(v, 0.5),
        lambda v: DF.dropout(v, 0.5, scaling="classic"),
        lambda v: DF.spatial_dropout(v, 0.5),
        lambda v: DF.locked_dropout(v[..., 0], 0.5),
        lambda v: DF.drop_path(v, 0.5),
        lambda v: DF.gaussian_dropout(v, 0.5),
        lambda v: DF.alpha_dropout(v, 0.5),
        lambda v: DF.feature_alpha_dropout(v, 0.5),
        lambda v: DF.drop_block(v, 0.3, block_size=3),
        lambda v: DF.drop_connect(v, 0.5),
    ):
        leaf = x.clone().requires_grad_(True)
        y = fn(leaf)
        y.sum().backward()
        assert y.device.type == CUDA and y.shape[0] == 4 and torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        (dropkit.Dropout, (6, 5, 4)),
        (dropkit.SpatialDropout2d, (6, 5, 4, 3)),
        (dropkit.AlphaDropout, (6, 5, 4)),
    ],
)
def test_layer_modes_on_cuda(cls: type[torch.nn.Module], shape: tuple[int, ...]) -> None:
    layer = cls(0.3).to(CUDA)
    x = torch.randn(shape, device=CUDA)
    assert layer(x).device.type == CUDA
    assert layer.eval()(x) is x
    check_dropout_layer(cls, shape)  # the CPU contract still holds beside the GPU


def test_compiled_dropout_on_cuda() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(lambda v: DF.dropout(v, 0.3), fullgraph=True)
    x = (torch.rand(256, 512, device=CUDA) + 0.5).requires_grad_(True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad * x.detach(), y.detach())
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.02
