"""Fresh buffers for large CPU outputs, on transparent huge pages.

Dropout allocates what it returns (the output in the forward, the input's gradient in the
backward) and the mask it keeps. On a CPU a buffer above glibc's mmap threshold (at most
32 MiB) is new memory at every call, and the kernel maps it one 4 KiB page at a time on first
touch: allocating and filling 40 MB took ~18 ms against ~3 ms for filling a reused buffer
(``docs/performance.md``), more than dropout's own arithmetic. NumPy's allocator asks Linux for
transparent huge pages (``madvise(MADV_HUGEPAGE)``) on arrays of 4 MiB and more, which cuts that
first-touch cost three- to fourfold; PyTorch's allocator does so only with
``THP_MEM_ALLOC_ENABLE=1`` set before start. :func:`fresh_like` takes such buffers for large
CPU tensors and hands them to PyTorch as an ordinary tensor (not a view) over NumPy's memory,
freed with it. Its storage cannot grow (``resize_`` to a larger size raises, as for any tensor
made with ``torch.from_numpy``); everything else behaves as for ``torch.empty_like``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["HUGE_PAGE_BYTES", "fresh_like", "fresh_strided", "huge_pages_available"]

HUGE_PAGE_BYTES = 1 << 22
"""Buffers of at least this many bytes (4 MiB, NumPy's own threshold for asking for huge
pages) come from NumPy; smaller ones from PyTorch, whose allocator reuses them."""


def huge_pages_available() -> bool:
    """Whether NumPy asks for transparent huge pages (Linux 4.6 and later, unless disabled)."""
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    query = getattr(getattr(core, "multiarray", None), "_get_madvise_hugepage", None)
    return bool(query()) if query is not None else False


_HUGE_PAGES = huge_pages_available()


def _on_huge_pages(device: torch.device, nbytes: int) -> bool:
    """Whether a fresh buffer of ``nbytes`` on ``device`` is taken from NumPy."""
    return _HUGE_PAGES and device.type == "cpu" and nbytes >= HUGE_PAGE_BYTES


def _numpy_strided(
    shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype, nbytes: int
) -> Tensor:
    """A CPU tensor (not a view) of a dense layout over ``nbytes`` of NumPy's memory."""
    storage = torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).untyped_storage()
    return torch.empty((0,), dtype=dtype).set_(storage, 0, shape, strides)


def fresh_strided(
    shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``torch.empty_strided(shape, strides)`` for a dense layout (``strides`` a permutation of
    contiguous strides), on huge pages where :func:`fresh_like` would take them."""
    nbytes = math.prod(shape) * dtype.itemsize
    if not _on_huge_pages(device, nbytes):
        return torch.empty_strided(shape, strides, dtype=dtype, device=device)
    return _numpy_strided(shape, strides, dtype, nbytes)


def fresh_like(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.empty_like(t, dtype=dtype)``: same shape and strides, uninitialized.

    Large CPU tensors (:data:`HUGE_PAGE_BYTES` and more, plain tensors outside ``torch.func``
    transforms, where NumPy asks for huge pages) get NumPy's memory; all others PyTorch's.
    """
    kind = t.dtype if dtype is None else dtype
    nbytes = t.numel() * kind.itemsize
    if (
        not _on_huge_pages(t.device, nbytes)
        or type(t) not in (Tensor, torch.nn.Parameter)
        or torch._C._functorch.is_functorch_wrapped_tensor(t)
    ):
        return torch.empty_like(t, dtype=kind)
    layout = torch.empty_like(t, dtype=kind, device="meta")  # dense: t's strides or contiguous
    return _numpy_strided(layout.shape, layout.stride(), kind, nbytes)
