"""Dropout as pure functions: ``op(x, p, *, training, generator) -> Tensor``.

``p`` is always the **drop** probability (the probability of an element being zeroed), never
the keep probability ``1 - p``. Every op

* returns ``x`` itself when ``training=False`` or ``p == 0`` (classic scaling excepted: it
  multiplies by ``1 - p`` at inference, which is its definition);
* returns exact zeros with zero gradients when ``p == 1`` (never NaN, also for inf inputs);
* keeps the input's dtype (float16, bfloat16, float32, float64) and memory layout;
* draws its randomness from ``generator`` when one is given, else from PyTorch's global RNG;
* traces under ``torch.compile(fullgraph=True)`` with ``generator=None`` (dynamo cannot trace a
  ``torch.Generator`` argument; with one the compiled function falls back to eager there).

The variants differ mainly in the **shape of the mask**: one draw per element
(:func:`dropout`), per (sample, channel) (:func:`spatial_dropout`,
:func:`feature_alpha_dropout`), per (sequence, feature) (:func:`locked_dropout`) or per sample
(:func:`drop_path`). :func:`_keep_factor` serves them all.

**The mask source** (:data:`MASK_SOURCES`, :func:`mask_source`, details in
:mod:`dropkit._masks`). On a CPU (``"dropkit"``), PyTorch's dropout is bound by random-number
generation (``bernoulli_``), not by memory. There one generator call fills 64-bit words with
random bits, each word gives four 16-bit fields, and a unit is kept when its field is at least
``round(p · 2**16)``: ``p`` is resolved to ``2**-16`` (``|p_eff - p| <= 2**-17``, at most
``2**-9`` relative to ``p`` and to ``1 - p``); rates with ``p`` or ``1 - p`` below ``2**-8``
use 32-bit fields (``|p_eff - p| <= 2**-33``). The scale stays exactly ``1 / (1 - p)``. On every
other device (CUDA: ``"torch"``), the ops use PyTorch's kernels: element-wise inverted dropout
is the fused ``torch.native_dropout`` that ``torch.nn.functional.dropout`` runs there, other
masks come from ``bernoulli_``. Under ``torch.compile`` the element-wise op stays dropkit's
kernel on a ``"dropkit"`` device (a ``torch.library`` custom op) and the other masks are
``U[0, 1) >= p`` (float32 uniforms), which the compiler generates inside its fused loop.
:func:`drop_connect` keeps ``U[0, 1) >= p`` too (see :func:`keep_mask`). Element-wise
:func:`dropout` keeps its mask for the backward as ``bool`` (1 byte per element), or nothing
with ``save_mask=False``.

References:
    - Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
      JMLR 2014. https://jmlr.org/papers/v15/srivastava14a.html
    - Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015.
      https://arxiv.org/abs/1411.4280
    - Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
      Networks", NeurIPS 2016. https://arxiv.org/abs/1512.05287
    - Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017.
      https://arxiv.org/abs/1706.02515
    - Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
      https://arxiv.org/abs/1603.09382
    - Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
      https://proceedings.mlr.press/v28/wan13.html
    - Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional networks",
      NeurIPS 2018. https://arxiv.org/abs/1810.12890
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from dropkit._masks import (
    MASK_SOURCES,
    element_dropout,
    field_threshold,
    fill_mask,
    keep_mask,
    mask_source,
    masked_scale,
    random_fields,
    trivial_result,
    uniform,
    zeros_with_grad,
)
from dropkit._validation import (
    check_block_size,
    check_generator,
    check_min_ndim,
    check_ndim,
    check_one_of,
    check_probability,
)

__all__ = [
    "MASK_SOURCES",
    "SELU_ALPHA_PRIME",
    "alpha_dropout",
    "drop_block",
    "drop_connect",
    "drop_path",
    "dropout",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "locked_dropout",
    "mask_source",
    "spatial_dropout",
]

SELU_ALPHA_PRIME = -1.7580993408473766
"""SELU's negative saturation value ``-λα`` (Klambauer et al. 2017): what alpha dropout drops to."""

SCALINGS = ("inverted", "classic")


# --------------------------------------------------------------------------------------------
# The mask helper shared by every variant
# --------------------------------------------------------------------------------------------


def _field_threshold(p: float) -> tuple[int, int]:
    """``(bits, threshold)`` of the random-field mask source; see :func:`field_threshold`."""
    return field_threshold(p)


def _bits_keep_mask(
    x: Tensor, p: float, shape: Sequence[int], generator: torch.Generator | None
) -> Tensor:
    """Boolean mask of ``shape`` (broadcastable to ``x``): each entry True with probability 1 - p.

    The random fields of :func:`dropkit._masks.fill_mask` as ``bool``: DropBlock's seeds. Under
    ``torch.compile`` and on ``"torch"`` devices (:func:`mask_source`) it is ``U[0, 1) >= p``
    instead (``p`` resolved to ``2**-24``): dynamo cannot trace the in-place integer draw, and
    the compiler generates its own uniforms inside the fused loop.
    """
    if torch.compiler.is_compiling() or mask_source(x.device) != "dropkit":
        return uniform(x, shape, generator) >= p
    bits, threshold = field_threshold(p)
    fields = random_fields(x.device, math.prod(shape), bits, generator)
    return torch.ge(fields, threshold, out=fields).to(torch.bool).view(tuple(shape))


def _keep_factor(
    x: Tensor, p: float, shape: Sequence[int], generator: torch.Generator | None
) -> Tensor:
    """The keep mask of ``shape`` as 0/1 in ``x``'s dtype (see :func:`dropkit._masks.fill_mask`).

    A full-size mask is laid out like ``torch.empty_like(x)`` (as PyTorch lays out its
    outputs: every dense axis permutation kept, discontiguous inputs made dense in their
    axis order) and drawn in that memory order.
    """
    if torch.compiler.is_compiling():
        return _bits_keep_mask(x, p, shape, generator).to(x.dtype)
    if tuple(shape) == tuple(x.shape):
        factor = torch.empty_like(x)
    else:
        factor = torch.empty(tuple(shape), dtype=x.dtype, device=x.device)
    fill_mask(factor, p, generator)
    return factor


def _broadcast_dropout(
    x: Tensor,
    p: float,
    shape: Sequence[int],
    scale: float,
    generator: torch.Generator | None,
    inplace: bool = False,
) -> Tensor:
    """``x · m · scale`` with a mask of ``shape`` broadcast over ``x``: one pass over ``x``.

    The factor ``m · scale`` has the mask's (small) shape; autograd keeps only it.
    """
    factor = _keep_factor(x, p, shape, generator)
    factor = factor.mul_(scale) if scale != 1.0 else factor
    return x.mul_(factor) if inplace else x * factor


def _checked_rate(x: Tensor, p: float, generator: torch.Generator | None) -> float:
    """The arguments every op checks: ``p`` a probability, ``generator`` on ``x``'s device."""
    check_generator(generator, x)
    return check_probability(p)


def _per_channel_shape(x: Tensor) -> tuple[int, ...]:
    """``(N, C, 1, ..., 1)``: one draw per (sample, channel) of an ``(N, C, *spatial)`` input."""
    return (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)


# --------------------------------------------------------------------------------------------
# Element-wise and mask-shape variants
# --------------------------------------------------------------------------------------------


def dropout(
    x: Tensor,
    p: float = 0.5,
    *,
    training: bool = True,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
    inplace: bool = False,
    save_mask: bool = True,
) -> Tensor:
    """Zero each element independently with probability ``p`` (Srivastava et al. 2014).

    With ``m ~ Bernoulli(1 - p)`` per element:

    * ``scaling="inverted"`` (default): ``y = x * m / (1 - p)`` in training, ``y = x`` at
      inference.
    * ``scaling="classic"``: ``y = x * m`` in training, ``y = (1 - p) * x`` at inference.

    In both, the training output's expectation equals the inference output (``x`` for
    inverted, ``(1 - p)·x`` for classic). The factor is the keep probability ``1 - p``, not the
    drop rate; the two coincide only at ``p = 0.5``.

    Args:
        x: input of any shape, including 0-d and empty.
        p: drop probability in [0, 1].
        training: apply dropout (True) or the inference rule (False).
        scaling: ``"inverted"`` or ``"classic"``.
        generator: source of randomness; the global RNG when None.
        inplace: write the result into ``x``.
        save_mask: keep the mask for the backward as ``bool`` (1 byte per element, like
            ``torch.nn.functional.dropout``). False keeps nothing per element: the backward
            re-draws the identical mask from the generator state saved at the forward (0 bytes
            of activation memory, one more random draw in the backward). Ignored with
            ``inplace=True``. Under ``torch.compile`` on a CPU it keeps a 64-bit seed instead
            of the generator state (the mask then differs from ``save_mask=True``'s for the same
            RNG state, with the same distribution); on a ``"torch"`` device it keeps the
            generator state and re-draws with ``bernoulli_`` (the fused kernel would keep the
            mask), and under ``torch.compile`` there the compiler decides.

    Returns:
        Tensor of ``x``'s shape and dtype, laid out like ``torch.empty_like(x)`` (as
        ``torch.nn.functional.dropout``'s output).

    On a ``"torch"`` device (CUDA, see :func:`mask_source`) inverted dropout without a
    generator runs PyTorch's fused ``native_dropout``. On a ``"dropkit"`` device (CPU) ``p``
    is resolved to ``2**-16`` (``|p_eff - p| <= 2**-17``; finer for ``p`` or ``1 - p`` below
    ``2**-8``, see :func:`_field_threshold`); kept units are scaled by exactly ``1 / (1 - p)``.
    """
    p = _checked_rate(x, p, generator)
    check_one_of(scaling, "scaling", SCALINGS)
    if not training:
        if scaling == "classic" and p == 1.0:  # (1 - p)·x, without 0·inf = NaN
            return zeros_with_grad(x, inplace)
        if scaling == "classic" and p != 0.0:
            return x.mul_(1.0 - p) if inplace else x * (1.0 - p)
        return x
    if p == 0.0:
        return x
    if p == 1.0:
        return zeros_with_grad(x, inplace)
    scale = 1.0 / (1.0 - p) if scaling == "inverted" else 1.0
    if inplace:
        factor = _keep_factor(x, p, x.shape, generator)
        return x.mul_(factor.mul_(scale) if scale != 1.0 else factor)
    return element_dropout(x, p, scale, generator, bool(save_mask))


def spatial_dropout(
    x: Tensor,
    p: float = 0.2,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> Tensor:
    """Zero whole channels (feature maps) with probability ``p`` (Tompson et al. 2015).

    One ``m ~ Bernoulli(1 - p)`` per (sample, channel), broadcast over the spatial axes:
    ``y[n, c] = x[n, c] * m[n, c] / (1 - p)``. Neighbouring pixels of a feature map are strongly
    correlated, so element-wise dropout hardly removes information there; dropping whole maps
    does.

    Args:
        x: input of shape ``(N, C, *spatial)`` with at least one spatial axis. Axis 0 is
            always read as the batch and axis 1 as the channel; an unbatched ``(C, L)`` input
            is refused rather than reinterpreted.
        p: drop probability in [0, 1].
        training: apply dropout (True) or return ``x`` (False).
        generator: source of randomness; the global RNG when None.
        inplace: write the result into ``x``.

    On a ``"torch"`` device (CUDA, see :func:`mask_source`) without a generator this is
    PyTorch's ``torch.feature_dropout``, the kernel behind ``torch.nn.Dropout2d``.
    """
    p = _checked_rate(x, p, generator)
    check_min_ndim(
        x, 3, "spatial_dropout", "(N, C, *spatial)", "Add the batch axis with x.unsqueeze(0)."
    )
    if (trivial := trivial_result(x, p, training, inplace)) is not None:
        return trivial
    if generator is None and mask_source(x.device) == "torch" and x.numel() > 0:
        # PyTorch's own channel dropout (what dropout1d/2d/3d run): the same math, one call
        dropped: Tensor = (torch.feature_dropout_ if inplace else torch.feature_dropout)(x, p, True)
        return dropped
    return _broadcast_dropout(x, p, _per_channel_shape(x), 1.0 / (1.0 - p), generator, inplace)


def locked_dropout(
    x: Tensor,
    p: float = 0.3,
    *,
    training: bool = True,
    batch_first: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Variational ("locked") dropout: one mask per sequence, the same at every time step.

    ``y[n, t, f] = x[n, t, f] * m[n, f] / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` drawn once per
    (sequence, feature) and shared over time (Gal & Ghahramani 2016). Dropping a feature at
    some steps only would let the recurrent layer recover it from the others.

    Args:
        x: ``(N, T, *features)`` if ``batch_first`` else ``(T, N, *features)``.
        p: drop probability in [0, 1].
        training: apply dropout (True) or return ``x`` (False).
        batch_first: layout of ``x`` (True: batch, time; False: time, batch).
        generator: source of randomness; the global RNG when None.
    """
    p = _checked_rate(x, p, generator)
    layout = "(N, T, *features)" if batch_first else "(T, N, *features)"
    check_min_ndim(x, 3, "locked_dropout", layout, "Add the batch axis with unsqueeze.")
    if (trivial := trivial_result(x, p, training)) is not None:
        return trivial
    time_axis = 1 if batch_first else 0
    shape = list(x.shape)
    shape[time_axis] = 1
    return _broadcast_dropout(x, p, shape, 1.0 / (1.0 - p), generator)


def drop_path(
    x: Tensor,
    p: float = 0.1,
    *,
    training: bool = True,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Drop whole samples of a residual branch: stochastic depth (Huang et al. 2016).

    ``y[n] = x[n] * m[n] / (1 - p)`` with one ``m[n] ~ Bernoulli(1 - p)`` per sample; use it
    on the branch, ``out = shortcut + drop_path(branch(x), p)``, so a dropped sample takes the
    identity path through the block. This is *not* DropConnect, which drops individual weights
    (Wan et al. 2013); some codebases call DropPath "drop connect" by mistake.

    Args:
        x: input of shape ``(N, ...)``.
        p: drop probability in [0, 1].
        training: apply the op (True) or return ``x`` (False).
        scale_by_keep: divide kept samples by ``1 - p`` (inverted scaling); False leaves them
            as they are.
        generator: source of randomness; the global RNG when None.
    """
    p = _checked_rate(x, p, generator)
    check_min_ndim(x, 1, "drop_path", "(N, ...)", "drop_path needs a batch axis.")
    if (trivial := trivial_result(x, p, training)) is not None:
        return trivial
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return _broadcast_dropout(x, p, shape, 1.0 / (1.0 - p) if scale_by_keep else 1.0, generator)


def drop_connect(
    weight: Tensor,
    p: float = 0.5,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DropConnect: zero each *weight* independently with probability ``p`` (Wan et al. 2013).

    ``W' = W ⊙ M / (1 - p)`` with ``M ~ Bernoulli(1 - p)`` drawn per weight; a layer then
    computes ``y = W' x``. Unlike :func:`dropout`, which zeroes activations (whole columns of
    ``W`` for a given sample), DropConnect removes individual connections. One call draws one
    mask, so every sample of a batch that uses ``W'`` shares it (a per-batch mask); the
    per-sample masks of the paper are :class:`dropkit.weights.DropConnectLinear`'s
    ``per_sample=True``. At inference the full weights are used (inverted scaling keeps
    ``E[W'] = W``); the paper's Gaussian moment-matching inference is not implemented.
    Wan et al. use ``p = 0.5``.

    Args:
        weight: a weight tensor of any shape (a ``Parameter`` or any tensor).
        p: drop probability in [0, 1].
        training: drop weights (True) or return ``weight`` itself (False).
        generator: source of randomness; the global RNG when None.

    Returns:
        Tensor of ``weight``'s shape and dtype whose gradient w.r.t. ``weight`` is
        ``M / (1 - p)``: exactly 0 for dropped weights (and everywhere at ``p = 1``).
    """
    p = _checked_rate(weight, p, generator)
    if (trivial := trivial_result(weight, p, training)) is not None:
        return trivial
    keep = keep_mask(weight, p, weight.shape, generator)
    return masked_scale(weight, keep, 1.0 / (1.0 - p))


# --------------------------------------------------------------------------------------------
# Noise variants
# --------------------------------------------------------------------------------------------


def gaussian_dropout(
    x: Tensor,
    p: float = 0.5,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multiply each element by Gaussian noise ``ε ~ N(1, p / (1 - p))`` (Srivastava et al. §10).

    The noise has the mean (1) and variance (``p / (1 - p)``) of inverted Bernoulli dropout's
    factor ``m / (1 - p)``, so ``E[y] = x``; nothing is exactly zeroed. As ``p → 1`` the
    variance grows without bound; ``p == 1`` is defined, like every dropkit op, as dropping
    everything (exact zeros).

    Args:
        x: input of any shape.
        p: drop probability in [0, 1] whose Bernoulli variance the noise matches.
        training: apply noise (True) or return ``x`` (False).
        generator: source of randomness; the global RNG when None.
    """
    p = _checked_rate(x, p, generator)
    if (trivial := trivial_result(x, p, training)) is not None:
        return trivial
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    noise = torch.empty_like(x, dtype=dtype).normal_(
        1.0, math.sqrt(p / (1.0 - p)), generator=generator
    )
    return x * noise.to(x.dtype)


def _alpha_dropout(x: Tensor, p: float, keep: Tensor, inplace: bool = False) -> Tensor:
    """``a * (x if kept else α') + b`` with ``a, b`` that restore zero mean and unit variance.

    For inputs of mean 0 and variance 1, ``z = x·m + α'·(1 - m)`` has mean ``p·α'`` and variance
    ``(1 - p)(1 + p·α'²)``, so ``a = ((1 - p)(1 + p·α'²))^(-1/2)`` and ``b = -a·α'·p``.
    ``keep`` is the mask as 0/1 in ``x``'s dtype, of ``x``'s shape or broadcastable to it.
    Written as ``c + m·(a·x + b - c)`` with ``c = a·α' + b`` (the dropped value): two passes.
    """
    alpha = SELU_ALPHA_PRIME
    a: float = ((1.0 - p) * (1.0 + p * alpha * alpha)) ** -0.5
    b = -a * alpha * p
    dropped = a * alpha + b
    if inplace:
        return x.mul_(a).add_(b - dropped).mul_(keep).add_(dropped)
    shifted = torch.add(x.new_full((), b - dropped), x, alpha=a)  # a·x + b - c
    # `shifted` first: the output takes its (x's) memory layout, not the mask's
    return torch.addcmul(x.new_full((), dropped), shifted, keep)


def alpha_dropout(
    x: Tensor,
    p: float = 0.1,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> Tensor:
    """Alpha dropout for self-normalizing (SELU) networks (Klambauer et al. 2017).

    Dropped units are set to SELU's saturation value ``α' = -λα ≈ -1.7581`` instead of 0, then
    an affine map restores the input's mean 0 and variance 1: kept units give ``a·x + b``,
    dropped ones ``a·α' + b``, with ``a = ((1 - p)(1 + p·α'²))^(-1/2)`` and ``b = -a·α'·p``.
    Standard dropout would shift a SELU network's variance and break its self-normalization.
    ``p == 1`` gives exact zeros (the target mean).

    Args:
        x: input of any shape, ideally of mean 0 and variance 1 (a SELU layer's output).
        p: drop probability in [0, 1]; Klambauer et al. recommend 0.05 or 0.1.
        training: apply dropout (True) or return ``x`` (False).
        generator: source of randomness; the global RNG when None.
        inplace: write the result into ``x``.
    """
    p = _checked_rate(x, p, generator)
    if (trivial := trivial_result(x, p, training, inplace)) is not None:
        return trivial
    return _alpha_dropout(x, p, _keep_factor(x, p, x.shape, generator), inplace)


def feature_alpha_dropout(
    x: Tensor,
    p: float = 0.1,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> Tensor:
    """Alpha dropout of whole channels: one draw per (sample, channel), as in spatial dropout.

    Same affine correction as :func:`alpha_dropout`; a dropped channel becomes the constant
    ``a·α' + b``. Axis 0 is always the batch and axis 1 the channel, as in
    ``torch.nn.functional.feature_alpha_dropout``; a 2-D ``(N, C)`` input has one unit per
    channel, so there it drops single units.

    Args:
        x: input of shape ``(N, C, *spatial)``, at least 2-D.
        p: drop probability in [0, 1].
        training: apply dropout (True) or return ``x`` (False).
        generator: source of randomness; the global RNG when None.
        inplace: write the result into ``x``.
    """
    p = _checked_rate(x, p, generator)
    check_min_ndim(
        x,
        2,
        "feature_alpha_dropout",
        "(N, C, *spatial)",
        "Add the batch axis with x.unsqueeze(0).",
    )
    if (trivial := trivial_result(x, p, training, inplace)) is not None:
        return trivial
    return _alpha_dropout(x, p, _keep_factor(x, p, _per_channel_shape(x), generator), inplace)


# --------------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------------


_Fn = TypeVar("_Fn", bound=Callable[..., object])


def _assume_constant_result(fn: _Fn) -> _Fn:
    """:func:`torch.compiler.assume_constant_result` without importing ``torch._dynamo``.

    torch's decorator imports the whole compiler stack (about a second) only to set one
    attribute, ``_dynamo_marked_constant``, that dynamo reads when it traces a call to ``fn``
    (dynamo is then imported anyway). Setting it here keeps ``import dropkit`` light; the
    tests check that torch's decorator sets exactly this attribute.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]  # read by dynamo only
    return fn


def _coverage_counts(size: int, block: int) -> Counter[int]:
    """Histogram over the units of one axis of how many block positions cover each unit.

    With blocks of length ``block`` whose first unit lies in ``0 .. size - block``, unit ``u``
    is covered by ``min(u, size - block) - max(0, u - block + 1) + 1`` positions.
    """
    last = size - block
    return Counter(min(u, last) - max(0, u - block + 1) + 1 for u in range(size))


@_assume_constant_result
def _drop_block_seed_rate(p: float, spatial: tuple[int, ...], block: tuple[int, ...]) -> float:
    """Cached :func:`_solve_drop_block_seed_rate`, evaluated as a constant under torch.compile."""
    return _solve_drop_block_seed_rate(p, spatial, block)


@functools.lru_cache(maxsize=1024)
def _solve_drop_block_seed_rate(
    p: float, spatial: tuple[int, ...], block: tuple[int, ...]
) -> float:
    """The seed rate γ whose grown blocks drop, in expectation, exactly a fraction ``p`` of units.

    Seeds are Bernoulli(γ) at the valid block positions (where the whole block fits); a unit
    covered by ``c`` positions is dropped with probability ``1 - (1 - γ)^c``. Ghiasi et al.'s
    ``γ = p / Πb · Πf / Π(f - b + 1)`` ignores overlaps between blocks, so it under-drops (0.093
    instead of 0.1 for p = 0.1, block 7, a 14x14 map; 0.243 instead of 0.3 for p = 0.3). Here
    the mean over all units of ``1 - (1 - γ)^c`` is solved for γ by bisection; the mean is
    exact, computed from the per-axis coverage histograms. ``block`` must already be clipped
    to ``spatial``.
    """
    total = math.prod(spatial)
    terms: list[tuple[float, int]] = [(1.0, 1)]  # (weight, coverage) over the units
    for size, b in zip(spatial, block, strict=True):
        terms = [(w * n, c * k) for w, c in terms for k, n in _coverage_counts(size, b).items()]
    terms = [(w / total, c) for w, c in terms]

    def dropped_fraction(gamma: float) -> float:
        return sum(w * (1.0 - (1.0 - gamma) ** c) for w, c in terms)

    low, high = 0.0, 1.0
    for _ in range(60):  # 2**-60: well below float32's resolution of the uniforms
        mid = 0.5 * (low + high)
        if dropped_fraction(mid) < p:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _grow_blocks(seeds: Tensor, block: Sequence[int]) -> Tensor:
    """Dilation of 0/1 ``uint8`` seeds: unit ``u`` is 1 if a seed starts a block in ``u-b+1 .. u``.

    ``seeds`` holds one entry per valid block start, ``S - b + 1`` along each of the trailing
    ``len(block)`` axes; the result has ``S`` there. The seeds are padded by ``b - 1`` on both
    sides, then OR-ed over a sliding window of ``b`` along each axis by doubling (windows 1, 2,
    4, ..., then one overlapping step to ``b``): ``ceil(log2 b)`` passes per axis. Each pass
    shifts the *flat* buffer by ``step · stride``, so it runs as one long vectorized loop
    instead of many short rows; positions whose window wraps into the next row or map only
    ever feed positions that the final strided view leaves out. The CPU max-pool kernel that
    computes the same for an ``(N, C, H, W)`` layout was ~10x slower.
    """
    padding = [b - 1 for b in reversed(block) for _ in range(2)]
    padded = F.pad(seeds, padding)
    flat = padded.view(-1)
    axes = range(seeds.ndim - len(block), seeds.ndim)
    for axis, b in zip(axes, block, strict=True):
        width = 1
        while width < b:
            step = min(width, b - width)  # window width -> width + step
            shift = step * padded.stride(axis)
            flat = flat[:-shift] | flat[shift:]
            width += step
    size = list(padded.shape)
    for axis, b in zip(axes, block, strict=True):
        size[axis] -= b - 1
    return flat.as_strided(size, padded.stride())


def drop_block(
    x: Tensor,
    p: float = 0.1,
    *,
    block_size: int | Sequence[int] = 7,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Drop contiguous square (cubic) blocks of each feature map (Ghiasi et al. 2018).

    Block seeds are drawn with rate γ at the positions where a whole block fits, grown to
    ``block_size`` blocks by max-pooling, and the kept units rescaled by ``numel / Σ mask``
    as in the paper. Unlike the paper's γ formula and the published implementations, γ here is
    calibrated so that the *realized* fraction of dropped units is ``p`` in expectation
    (see :func:`_drop_block_seed_rate`). Each (sample, channel) gets its own blocks. Even block
    sizes work; a block larger than the map along an axis is clipped to the map's length there.

    Args:
        x: ``(N, C, H, W)`` for 2-d blocks or ``(N, C, D, H, W)`` for 3-d blocks.
        p: fraction of units to drop, in [0, 1].
        block_size: edge of the block; an int or one int per spatial axis.
        training: apply DropBlock (True) or return ``x`` (False).
        generator: source of randomness; the global RNG when None.
    """
    p = _checked_rate(x, p, generator)
    check_ndim(
        x,
        (4, 5),
        "drop_block",
        "(N, C, H, W) or (N, C, D, H, W)",
        "For an unbatched input add the batch axis with x.unsqueeze(0).",
    )
    spatial = tuple(int(s) for s in x.shape[2:])
    block = tuple(
        min(b, s) for b, s in zip(check_block_size(block_size, len(spatial)), spatial, strict=True)
    )
    if (trivial := trivial_result(x, p, training)) is not None:
        return trivial
    if x.numel() == 0:
        return x
    gamma = _drop_block_seed_rate(p, spatial, block)
    valid = tuple(s - b + 1 for s, b in zip(spatial, block, strict=True))
    keep = _bits_keep_mask(x, 1.0 - gamma, x.shape[:2] + valid, generator)
    # A bool tensor viewed as bytes costs nothing eagerly; inductor before torch 2.13 cannot
    # lower that view, so the compiled graph converts instead.
    seeds = keep.to(torch.uint8) if torch.compiler.is_compiling() else keep.view(torch.uint8)
    dropped = _grow_blocks(seeds, block)
    kept = torch.eq(dropped, 0, out=torch.empty_like(dropped, dtype=x.dtype))
    scale = kept.numel() / kept.sum(dtype=torch.float32).clamp_min(1.0)
    return x * kept.mul_(scale.to(x.dtype))
