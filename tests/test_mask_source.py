"""The per-device mask source (the CUDA dispatch rule), forced on the CPU.

On a ``"torch"`` device (CUDA by default) element-wise inverted dropout is PyTorch's fused
``native_dropout``; other masks come from ``bernoulli_``. These tests set the CPU's entry of
``dropkit.functional.MASK_SOURCES`` to ``"torch"`` so that the GPU's code path runs here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional

import dropkit
import dropkit.functional as DF


@pytest.fixture
def torch_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DF.MASK_SOURCES, "cpu", "torch")


def test_defaults() -> None:
    assert DF.mask_source("cpu") == "dropkit"
    assert DF.mask_source(torch.device("cuda")) == "torch"
    assert DF.mask_source("meta") == "torch"


def test_bad_source_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DF.MASK_SOURCES, "cpu", "fast")
    with pytest.raises(
        ValueError, match=r"`MASK_SOURCES\['cpu'\]` must be one of 'dropkit', 'torch', got 'fast'"
    ):
        DF.dropout(torch.ones(5000), 0.5)


@pytest.mark.usefixtures("torch_source")
class TestTorchSource:
    @pytest.mark.parametrize("requires_grad", [False, True])
    def test_inverted_dropout_is_the_fused_kernel(self, requires_grad: bool) -> None:
        """Same RNG state, same output and gradient as torch.native_dropout: the same kernel."""
        x = torch.randn(64, 100)
        leaf = x.clone().requires_grad_(requires_grad)
        torch.manual_seed(3)
        ours = DF.dropout(leaf, 0.3)
        reference_leaf = x.clone().requires_grad_(requires_grad)
        torch.manual_seed(3)
        theirs = torch.native_dropout(reference_leaf, 0.3, True)[0]
        assert torch.equal(ours, theirs)
        if requires_grad:
            g = torch.randn_like(x)
            ours.backward(g)
            theirs.backward(g)
            assert torch.equal(leaf.grad, reference_leaf.grad)

    def test_default_keeps_the_fused_kernels_one_byte_mask(self) -> None:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel() * t.element_size())
            return t

        x = torch.randn(128, 64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            DF.dropout(x, 0.3)
        assert sum(sizes) == x.numel()

    def test_save_mask_false_keeps_its_memory_promise(self) -> None:
        """The fused kernel would keep its mask; save_mask=False re-draws it with bernoulli_."""
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel() * t.element_size())
            return t

        x = (torch.rand(128, 64) + 0.5).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = DF.dropout(x, 0.3, save_mask=False)
        assert sum(sizes) == 0
        y.backward(torch.ones_like(y))
        assert torch.equal(x.grad * x.detach(), y.detach())
        assert (y == 0).any()

    def test_generator_and_classic_scaling_use_bernoulli(self) -> None:
        x = torch.rand(64, 100) + 0.5
        a = DF.dropout(x, 0.4, generator=torch.Generator().manual_seed(1))
        b = DF.dropout(x, 0.4, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        expected = torch.empty_like(x).bernoulli_(0.6, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, x * expected * (1 / 0.6))
        classic = DF.dropout(x, 0.4, scaling="classic")
        assert ((classic == 0) | (classic == x)).all() and (classic == 0).any()

    @pytest.mark.parametrize("p", [0.0, 1.0])
    def test_exact_edges(self, p: float) -> None:
        x = torch.randn(50, 40)
        x[0, 0] = float("inf")
        x.requires_grad_(True)
        y = DF.dropout(x, p)
        if p == 0.0:
            assert y is x
        else:
            assert torch.equal(y, torch.zeros_like(y))
            y.sum().backward()
            assert torch.equal(x.grad, torch.zeros_like(x))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_dtype_and_layout_kept(self, dtype: torch.dtype) -> None:
        x = torch.randn(6, 8, 10, 4, dtype=dtype).permute(2, 0, 3, 1)
        for y in (DF.dropout(x, 0.3), DF.alpha_dropout(x, 0.3), DF.spatial_dropout(x, 0.3)):
            assert y.dtype == dtype and y.stride() == x.stride()

    def test_every_op_runs(self) -> None:
        x = torch.rand(4, 6, 10, 10) + 0.5
        for y in (
            DF.spatial_dropout(x, 0.5),
            DF.locked_dropout(x[..., 0], 0.5),
            DF.drop_path(x, 0.5),
            DF.alpha_dropout(x, 0.5),
            DF.feature_alpha_dropout(x, 0.5),
            DF.drop_block(x, 0.3, block_size=3),
            dropkit.Dropout(0.5, True)(x.clone()),
        ):
            assert y.shape[0] == 4 and (y == 0).any() | (y < 0).any()

    def test_compiles_fullgraph(self) -> None:
        torch._dynamo.reset()
        compiled = torch.compile(lambda v: DF.dropout(v, 0.3), fullgraph=True, backend="aot_eager")
        x = (torch.rand(32, 16) + 0.5).requires_grad_(True)
        y = compiled(x)
        y.sum().backward()
        assert torch.equal(x.grad * x.detach(), y.detach())


@pytest.mark.usefixtures("torch_source")
def test_spatial_dropout_is_torchs_channel_dropout() -> None:
    x = torch.randn(8, 6, 5, 4)
    torch.manual_seed(2)
    ours = DF.spatial_dropout(x, 0.4)
    torch.manual_seed(2)
    theirs = torch.nn.functional.dropout2d(x, 0.4)
    assert torch.equal(ours, theirs)


@pytest.mark.usefixtures("torch_source")
def test_compiled_dropout_traces_what_compiled_torch_traces() -> None:
    """Under torch.compile a "torch" device gets torch.native_dropout, the op a compiled
    F.dropout traces on a GPU, so the compiler generates the same fused kernel."""
    torch._dynamo.reset()
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: object) -> object:
        graphs.append(gm)
        return gm.forward

    torch.compile(lambda v: DF.dropout(v, 0.3), fullgraph=True, backend=backend)(torch.ones(8, 4))
    assert "native_dropout" in graphs[0].code and "dropkit" not in graphs[0].code
