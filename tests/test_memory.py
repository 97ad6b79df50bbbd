"""Large CPU outputs on huge pages (dropkit._memory): the same tensors as ``torch.empty_like``
gives, ordinary to every use a dropout output meets (in-place ops, autograd, saving, sharing,
compiling), and the same dropout results."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.nn.functional as F

import dropkit
import dropkit.functional as DF
from dropkit._memory import HUGE_PAGE_BYTES, fresh_like, fresh_strided, huge_pages_available

BIG = HUGE_PAGE_BYTES // 4  # float32 elements in a buffer at the threshold

needs_huge_pages = pytest.mark.skipif(
    not huge_pages_available(), reason="NumPy does not ask for huge pages here"
)


def _from_numpy(t: torch.Tensor) -> bool:
    """NumPy's memory: the storage cannot grow, unlike PyTorch's own."""
    return not t.untyped_storage().resizable()


def _layouts() -> list[torch.Tensor]:
    base = torch.randn(4, 8, 128, BIG // 4096)  # BIG float32 elements
    return [
        base,
        base.permute(3, 0, 2, 1),  # dense, permuted
        base.contiguous(memory_format=torch.channels_last),
        base[:, :, ::2],  # not dense: empty_like makes it contiguous
        base.to(torch.bfloat16),
    ]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("dtype", [None, torch.bool, torch.float64])
def test_the_layout_of_empty_like(index: int, dtype: torch.dtype | None) -> None:
    x = _layouts()[index]
    mine, theirs = fresh_like(x, dtype=dtype), torch.empty_like(x, dtype=dtype)
    assert (mine.shape, mine.stride(), mine.dtype) == (theirs.shape, theirs.stride(), theirs.dtype)
    assert mine._base is None and mine.storage_offset() == 0 and not mine.requires_grad
    mine.fill_(1)  # every element is addressable
    assert bool(mine.bool().all())


@needs_huge_pages
def test_large_cpu_buffers_come_from_numpy_and_small_or_other_ones_do_not() -> None:
    assert _from_numpy(fresh_like(torch.empty(BIG)))
    assert _from_numpy(fresh_strided((BIG,), (1,), torch.float32, torch.device("cpu")))
    assert not _from_numpy(fresh_like(torch.empty(BIG - 1)))
    assert not _from_numpy(fresh_like(torch.empty(BIG), dtype=torch.bool))  # a quarter the bytes
    assert fresh_like(torch.empty(BIG, device="meta")).device.type == "meta"
    under_vmap = torch.func.vmap(lambda row: fresh_like(row).fill_(2))(torch.empty(2, BIG))
    assert torch.equal(under_vmap, torch.full((2, BIG), 2.0))  # functorch tensors: torch's


@needs_huge_pages
def test_a_large_dropout_output_is_an_ordinary_tensor() -> None:
    torch.manual_seed(0)
    leaf = torch.randn(BIG // 1024, 1024, requires_grad=True)
    y = DF.dropout(leaf, 0.3)
    assert _from_numpy(y) and y._base is None
    z = y.relu_()  # in place on the output, as F.relu(inplace=True) after dropout does
    z.sum().backward()
    assert leaf.grad is not None and _from_numpy(leaf.grad)
    # d sum(relu(x · m / 0.7)) / dx = m / 0.7 where x > 0: non-zero exactly where y is
    torch.testing.assert_close(leaf.grad, (y > 0) / 0.7)
    out = y.detach()
    buffer = io.BytesIO()
    torch.save(out, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), out)
    assert torch.equal(pickle.loads(pickle.dumps(out)), out)
    shared = DF.dropout(leaf.detach(), 0.3)  # as DataLoader workers hand tensors over
    assert _from_numpy(shared) and shared.share_memory_().is_shared()
    with pytest.raises(RuntimeError, match="not resizable"):
        out.resize_(2 * out.numel())  # the one difference from torch.empty_like


@needs_huge_pages
def test_the_same_masks_and_gradients_as_before() -> None:
    """Only where the memory comes from changes: a seeded call gives what the same call with
    PyTorch's allocator gives."""
    x = torch.randn(BIG // 1024, 1024)
    results = []
    for threshold in (HUGE_PAGE_BYTES, 1 << 62):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("dropkit._memory.HUGE_PAGE_BYTES", threshold)
            leaf = x.clone().requires_grad_(True)
            torch.manual_seed(7)
            y = DF.dropout(leaf, 0.4)
            y.backward(torch.ones_like(y))
            results.append((y.detach(), leaf.grad, _from_numpy(y)))
    (y1, g1, numpy1), (y2, g2, numpy2) = results
    assert numpy1 and not numpy2
    assert torch.equal(y1, y2) and torch.equal(g1, g2)


@needs_huge_pages
def test_compiled_dropout_on_a_large_tensor() -> None:
    layer = dropkit.Dropout(0.5)
    compiled = torch.compile(lambda t: F.relu(layer(t)), fullgraph=True)
    leaf = (torch.rand(BIG // 1024, 1024) + 0.5).requires_grad_(True)
    y = compiled(leaf)
    y.sum().backward()
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad * leaf.detach(), y.detach())
