"""Mask sources and the element-wise dropout kernel, shared by :mod:`dropkit.functional`.

**Which mask source runs where** (:data:`MASK_SOURCES`, :func:`mask_source`):

* ``"dropkit"`` (the CPU default): one generator call fills 64-bit words with random bits, each
  word gives four 16-bit fields, and a unit is kept when its field is at least
  ``round(p · 2**16)`` (:func:`field_threshold`). PyTorch's CPU dropout is bound by
  ``bernoulli_``; this source is several times faster there.
* ``"torch"`` (every other device, CUDA included): PyTorch's own kernels. Element-wise inverted
  dropout calls the fused ``torch.native_dropout`` (one pass, the ``bool`` mask kept for the
  backward, exactly what ``torch.nn.functional.dropout`` runs on a GPU); every other mask comes
  from ``bernoulli_``. dropkit's random-word source was never measured faster than the fused
  kernel on a GPU, so a GPU never gets slower dropout than torch's.

The switch is a plain dict so that tests (and benchmarks) can force a source per device type.

**Under torch.compile** the element-wise op on a ``"dropkit"`` device is the custom op
``dropkit::element_dropout`` (``torch.library.custom_op``, with its own autograd and fake
implementation), so the compiler calls dropkit's kernel instead of tracing it into its own
per-element random numbers (which were 3-6x slower on a CPU). Its backward is the custom op
``dropkit::element_dropout_backward`` (the eager two-pass kernel into a fresh buffer, on huge
pages when large: a pointwise ``where`` that inductor fused into one loop took about twice as
long, its output on PyTorch's allocator). On a ``"torch"`` device the op is traced as
``torch.native_dropout``, exactly what a compiled ``torch.nn.functional.dropout`` traces there,
and inductor fuses it into one kernel.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dropkit._memory import fresh_like, fresh_strided
from dropkit._validation import check_one_of

__all__ = [
    "FEW_DRAWS",
    "MASK_SOURCES",
    "ElementDropout",
    "default_generator",
    "element_dropout",
    "field_threshold",
    "fill_mask",
    "flat_view",
    "keep_mask",
    "mask_source",
    "masked_scale",
    "random_fields",
    "scale_by_factor",
    "trivial_result",
    "uniform",
    "zeros_with_grad",
]

MASK_SOURCES: dict[str, str] = {"cpu": "dropkit"}
"""Mask source per device type: ``"dropkit"`` (random 16-bit fields) or ``"torch"`` (PyTorch's
kernels: fused ``native_dropout``, ``bernoulli_``). Device types not listed use ``"torch"``."""

_SOURCES = ("dropkit", "torch")

FEW_DRAWS = 2048
"""Masks of at most this many entries are drawn with ``bernoulli_`` (see :func:`fill_mask`)."""

_FINE_RATE = 2.0**-8
"""Rates with ``min(p, 1 - p)`` below this are drawn with 32-bit fields instead of 16-bit ones."""


def mask_source(device: torch.device | str) -> str:
    """``"dropkit"`` or ``"torch"``: where the masks of ops on ``device`` come from.

    Reads :data:`MASK_SOURCES` (device type -> source); unlisted device types use ``"torch"``.
    """
    kind = torch.device(device).type
    return check_one_of(MASK_SOURCES.get(kind, "torch"), f"MASK_SOURCES[{kind!r}]", _SOURCES)


def field_threshold(p: float) -> tuple[int, int]:
    """``(bits, threshold)``: keep a unit when its signed random field is ``>= threshold``.

    A field of ``bits`` uniform random bits read as a signed integer ``h`` is kept when
    ``h + 2**(bits - 1) >= t`` with ``t = round(p · 2**bits)``, so the realized drop probability
    is ``p_eff = t / 2**bits`` and ``|p_eff - p| <= 2**-(bits + 1)``. 16-bit fields (four
    decisions per 64-bit random word) serve ``2**-8 <= p <= 1 - 2**-8``: there the error is at
    most ``2**-17`` absolute and ``2**-9`` relative to ``p`` and to ``1 - p``. Rarer events
    (``p`` or ``1 - p`` below ``2**-8``) use 32-bit fields (two per word, error ``<= 2**-33``).
    """
    bits = 16 if _FINE_RATE <= p <= 1.0 - _FINE_RATE else 32
    t = min(round(p * 2.0**bits), 2**bits - 1)
    return bits, t - 2 ** (bits - 1)


def flat_view(t: Tensor) -> Tensor:
    """The memory of a dense tensor (as made by ``empty_like``/``empty_strided``) as 1-D.

    Writing it in order writes ``t`` in its memory order, whatever its axis permutation.
    """
    return t.as_strided((t.numel(),), (1,))


def random_fields(
    device: torch.device,
    n: int,
    bits: int,
    generator: torch.Generator | None,
    into: Tensor | None = None,
) -> Tensor:
    """``n`` uniform random signed ``bits``-bit integers, 1-D, on ``device``.

    One generator call fills 64-bit words with random bits (``random_`` over the full int64
    range); each word is read as four int16 or two int32 fields. On a CPU this costs about a
    quarter of ``rand`` per decision and a tenth of ``bernoulli_``. With ``into`` (a dense
    tensor with room for the words) the words are written into its memory, saving an
    allocation; the words are the same either way.
    """
    per_word = 64 // bits
    length = -(-n // per_word) * per_word
    dtype = torch.int16 if bits == 16 else torch.int32
    nbytes = length * bits // 8
    if into is not None and into.numel() * into.element_size() >= nbytes:
        fields = flat_view(into).view(torch.uint8)[:nbytes].view(dtype)
    else:
        fields = torch.empty((length,), dtype=dtype, device=device)
    fields.view(torch.int64).random_(-(2**63), None, generator=generator)
    return fields[:n]


def fill_mask(
    factor: Tensor, p: float, generator: torch.Generator | None, keep: Tensor | None = None
) -> None:
    """Write the keep mask, 0/1, into the dense tensor ``factor`` in its memory order.

    Masks of more than :data:`FEW_DRAWS` entries on a ``"dropkit"`` device compare random
    fields with :func:`field_threshold`; the comparison writes 0/1 over the fields themselves,
    in their integer type (vectorized on a CPU, ~7x faster than comparing into ``bool`` or
    float), then an integer-to-float copy fills ``factor``. Smaller masks (one entry per sample,
    or per channel of a small batch: there the fixed cost of a call dominates) and ``"torch"``
    devices use ``bernoulli_(1 - p)``. ``keep`` (``bool``, ``factor``'s strides) receives the
    same mask. The same arguments, strides and generator state always give the same mask.
    """
    flat = flat_view(factor)
    n = flat.numel()
    if n <= FEW_DRAWS or mask_source(factor.device) != "dropkit":
        flat.bernoulli_(1.0 - p, generator=generator)
        if keep is not None:
            torch.ne(flat, 0, out=flat_view(keep))
        return
    bits, threshold = field_threshold(p)
    fields = random_fields(factor.device, n, bits, generator)
    torch.ge(fields, threshold, out=fields)
    flat.copy_(fields)
    if keep is not None:
        flat_view(keep).copy_(fields)


def default_generator(device: torch.device) -> torch.Generator | None:
    """The global generator that ``generator=None`` draws from on ``device`` (CPU and CUDA)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return None


def scale_by_factor(x: Tensor, factor: Tensor, scale: float) -> Tensor:
    """``x · factor · scale`` written over ``factor`` in one pass (``factor`` 0/1 in x's dtype)."""
    return torch.addcmul(x.new_zeros(()), x, factor, value=scale, out=factor)


def _forward(
    x: Tensor, p: float, scale: float, generator: torch.Generator | None, with_keep: bool
) -> tuple[Tensor, Tensor | None]:
    """``(y, keep)``: ``y = x · m · scale`` laid out like ``torch.empty_like(x)``, and ``m``.

    ``keep`` (``bool``, ``y``'s strides) is returned with ``with_keep``. On a ``"dropkit"``
    device the random words are drawn into ``y``'s own memory, compared in place, copied to
    ``bool`` and back to 0/1 in ``y``'s dtype, then ``y = x · y · scale``: two fresh tensors
    (``y`` and the 1-byte mask) instead of three, which matters where fresh pages are costly.
    """
    y = fresh_like(x)
    n = y.numel()
    keep = fresh_like(x, dtype=torch.bool) if with_keep else None
    if n <= FEW_DRAWS or mask_source(x.device) != "dropkit":
        fill_mask(y, p, generator, keep)
        return scale_by_factor(x, y, scale), keep
    bits, threshold = field_threshold(p)
    fields = random_fields(x.device, n, bits, generator, into=y)
    torch.ge(fields, threshold, out=fields)
    keep = fresh_like(x, dtype=torch.bool) if keep is None else keep
    flat_view(keep).copy_(fields)
    flat_view(y).copy_(flat_view(keep).view(torch.uint8))  # uint8 -> float is vectorized
    return scale_by_factor(x, y, scale), keep if with_keep else None


def _backward(grad: Tensor, keep: Tensor, scale: float) -> Tensor:
    """``grad · m · scale`` from the saved ``bool`` mask: two passes (copy, ``addcmul``)."""
    # bool -> float copies run element by element on a CPU; uint8 -> float is vectorized
    factor = fresh_like(keep, dtype=grad.dtype)
    flat_view(factor).copy_(flat_view(keep).view(torch.uint8))
    if grad.requires_grad:  # create_graph=True (e.g. a gradient penalty): stay differentiable
        return grad * factor.mul_(scale)
    return scale_by_factor(grad, factor, scale)


def _replay(
    grad: Tensor, generator: torch.Generator, strides: tuple[int, ...], p: float, scale: float
) -> Tensor:
    """``grad · m · scale`` with ``m`` re-drawn from ``generator`` in the forward's layout."""
    factor = fresh_strided(grad.shape, strides, grad.dtype, grad.device)
    fill_mask(factor, p, generator)
    if grad.requires_grad:
        return grad * factor.mul_(scale)
    return scale_by_factor(grad, factor, scale)


class ElementDropout(torch.autograd.Function):
    """``y = x · m · scale`` with ``m`` drawn inside (eager autograd).

    What is kept for the backward:

    * ``save_mask=True``: the mask as ``bool`` (1 byte per element, like ``torch.nn.Dropout``);
    * ``save_mask=False``: nothing per element, only the generator's state before the draw
      (a few KB on CPU, 16 bytes on CUDA); the backward re-draws the identical mask from a
      copy of that state. The state is a plain attribute of the graph node, not a saved tensor,
      so under ``torch.utils.checkpoint`` the backward still replays the *original* forward's
      draw, even when the recomputed forward drew a different one from an explicit generator.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        p: float,
        scale: float,
        generator: torch.Generator | None,
        save_mask: bool,
    ) -> Tensor:
        source = None if save_mask else (generator or default_generator(x.device))
        ctx.replay = None if source is None else (x.device, source.get_state())
        ctx.p, ctx.scale = p, scale
        y, keep = _forward(x, p, scale, generator, with_keep=ctx.replay is None)
        ctx.strides = y.stride()
        if keep is not None:
            ctx.save_for_backward(keep)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.replay is None:
            return _backward(grad, ctx.saved_tensors[0], ctx.scale), None, None, None, None
        device, state = ctx.replay
        replay = torch.Generator(device=device)
        replay.set_state(state)
        return _replay(grad, replay, ctx.strides, ctx.p, ctx.scale), None, None, None, None


# --------------------------------------------------------------------------------------------
# The custom op that torch.compile calls on "dropkit" devices
# --------------------------------------------------------------------------------------------


def _seeded(device: torch.device, seed: Tensor) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed.item()))
    return generator


# Tagged as random so that the compiler neither merges two calls nor recomputes one for the
# backward (``tags`` is a keyword of ``custom_op`` in recent releases only).
_RANDOM_OP: dict[str, Any] = (
    {"tags": (torch.Tag.nondeterministic_seeded,)}
    if "tags" in inspect.signature(torch.library.custom_op).parameters
    else {}
)


@torch.library.custom_op("dropkit::element_dropout", mutates_args=(), **_RANDOM_OP)
def _element_dropout_op(x: Tensor, p: float, scale: float, save_mask: bool) -> list[Tensor]:
    """``[y, saved]``: ``saved`` is the ``bool`` mask, or (``save_mask=False``) a 64-bit seed
    drawn from the global generator, from which the mask was drawn and is re-drawn."""
    if save_mask:
        y, keep = _forward(x, p, scale, None, with_keep=True)
        assert keep is not None
        return [y, keep]
    source = default_generator(x.device)
    seed = torch.empty((), dtype=torch.int64, device=x.device).random_(0, 2**62, generator=source)
    y, _ = _forward(x, p, scale, _seeded(x.device, seed), with_keep=False)
    return [y, seed]


@_element_dropout_op.register_fake
def _element_dropout_fake(x: Tensor, p: float, scale: float, save_mask: bool) -> list[Tensor]:
    y = torch.empty_like(x)
    if save_mask:
        return [y, torch.empty_like(x, dtype=torch.bool)]
    return [y, torch.empty((), dtype=torch.int64, device=x.device)]


@torch.library.custom_op("dropkit::element_dropout_replay", mutates_args=())
def _element_dropout_replay_op(
    grad: Tensor, seed: Tensor, strides: list[int], p: float, scale: float
) -> Tensor:
    """The backward of ``element_dropout`` with ``save_mask=False``: the mask re-drawn."""
    return _replay(grad, _seeded(grad.device, seed), tuple(strides), p, scale)


@_element_dropout_replay_op.register_fake
def _element_dropout_replay_fake(
    grad: Tensor, seed: Tensor, strides: list[int], p: float, scale: float
) -> Tensor:
    return torch.empty_strided(grad.shape, strides, dtype=grad.dtype, device=grad.device)


@torch.library.custom_op("dropkit::element_dropout_backward", mutates_args=())
def _element_dropout_backward_op(grad: Tensor, keep: Tensor, scale: float) -> Tensor:
    """The backward of ``element_dropout`` with the saved mask: ``grad · m · scale``, by the
    eager kernel (two passes into a fresh buffer, on huge pages when large; see _memory)."""
    return _backward(grad, keep, scale)


@_element_dropout_backward_op.register_fake
def _element_dropout_backward_fake(grad: Tensor, keep: Tensor, scale: float) -> Tensor:
    return torch.empty_like(keep, dtype=grad.dtype)


def _op_setup(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    _, p, scale, save_mask = inputs
    ctx.p, ctx.scale, ctx.save_mask = p, scale, save_mask
    ctx.strides = list(output[0].stride())
    ctx.save_for_backward(output[1])


def _op_backward(ctx: Any, grads: list[Tensor | None]) -> tuple[Tensor | None, ...]:
    grad = grads[0]
    if grad is None:
        return None, None, None, None
    (saved,) = ctx.saved_tensors
    if ctx.save_mask:
        dx = torch.ops.dropkit.element_dropout_backward(grad, saved, ctx.scale)
    else:
        dx = torch.ops.dropkit.element_dropout_replay(grad, saved, ctx.strides, ctx.p, ctx.scale)
    return dx, None, None, None


_element_dropout_op.register_autograd(_op_backward, setup_context=_op_setup)


# --------------------------------------------------------------------------------------------
# The dispatcher
# --------------------------------------------------------------------------------------------


def _uniform_keep(x: Tensor, p: float) -> Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty_like(x, dtype=dtype).uniform_() >= p


def element_dropout(
    x: Tensor, p: float, scale: float, generator: torch.Generator | None, save_mask: bool
) -> Tensor:
    """``x · m · scale`` with one ``m ~ Bernoulli(1 - p)`` per element (``0 < p < 1``).

    Picked by context, the same math each time:

    * under ``torch.compile``: the custom op ``dropkit::element_dropout`` on a ``"dropkit"``
      device (``save_mask`` honoured: with False it keeps a seed, not the mask); elsewhere
      ``torch.native_dropout`` (inverted) or ``where(U[0, 1) >= p, x, 0)`` (classic), which
      the compiler fuses into one kernel as it does for ``torch.nn.functional.dropout``;
    * ``"torch"`` device, inverted scaling, no generator, the mask may be kept: the fused
      ``torch.native_dropout`` (its autograd keeps the ``bool`` mask, as ``F.dropout`` does);
    * otherwise :class:`ElementDropout` (gradient needed) or its forward (no gradient).
    """
    source = mask_source(x.device)
    if torch.compiler.is_compiling():
        if source == "dropkit" and generator is None:
            y: Tensor = torch.ops.dropkit.element_dropout(x, p, scale, save_mask)[0]
            return y
        if scale != 1.0:  # what a compiled torch.nn.functional.dropout traces on a GPU
            traced: Tensor = torch.native_dropout(x, p, True)[0]
            return traced
        keep = _uniform_keep(x, p)
        return torch.where(keep, x * scale, torch.zeros((), dtype=x.dtype, device=x.device))
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    fused = (
        source == "torch"
        and generator is None
        and scale != 1.0  # inverted scaling (classic is scale 1: the fused kernel cannot)
        and (save_mask or not needs_grad)
        and x.numel() > 0
    )
    if fused:
        out: Tensor = torch.native_dropout(x, p, True)[0]
        return out
    if needs_grad:
        result: Tensor = ElementDropout.apply(  # type: ignore[no-untyped-call]  # untyped in torch
            x, p, scale, generator, save_mask
        )
        return result
    return _forward(x, p, scale, generator, with_keep=False)[0]


# -- helpers shared by the ops (dropkit.functional) and the weight-level modules -------------


def uniform(x: Tensor, shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
    """U[0, 1) samples of ``shape`` on ``x``'s device (float64 for float64 inputs, else float32).

    A full-size draw copies ``x``'s memory layout (channels_last stays channels_last).
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if tuple(shape) == tuple(x.shape):
        noise = torch.empty_like(x, dtype=dtype)
    else:
        noise = torch.empty(tuple(shape), dtype=dtype, device=x.device)
    return noise.uniform_(generator=generator)


def keep_mask(
    x: Tensor, p: float, shape: Sequence[int], generator: torch.Generator | None
) -> Tensor:
    """Boolean mask ``U[0, 1) >= p`` of ``shape``: the weight-level modules' mask source.

    DropConnect (:func:`dropkit.functional.drop_connect`, :mod:`dropkit.weights`) draws its
    masks this way, one float32 uniform per weight (``p`` resolved to ``2**-24``), so that a
    mask can be reproduced as ``torch.empty(shape).uniform_(generator=g) >= p``. Weight tensors
    are small next to activations; the activation ops use the cheaper bit-field masks.
    """
    return uniform(x, shape, generator) >= p


def masked_scale(x: Tensor, keep: Tensor, scale: float, inplace: bool = False) -> Tensor:
    """``x * keep * scale`` in ``x``'s dtype; its gradient ``keep * scale`` is 0 where dropped."""
    factor = keep.to(x.dtype)
    if scale != 1.0:
        factor = factor * scale
    return x.mul_(factor) if inplace else x * factor


def zeros_with_grad(x: Tensor, inplace: bool = False) -> Tensor:
    """Exact zeros shaped like ``x`` whose gradient is exactly zero.

    ``x * 0`` would give NaN for inf inputs and ``x * mask / (1 - p)`` NaN gradients at
    ``p == 1``; ``masked_fill`` gives neither.
    """
    everywhere = torch.ones((), dtype=torch.bool, device=x.device)
    return x.masked_fill_(everywhere, 0) if inplace else x.masked_fill(everywhere, 0)


def trivial_result(x: Tensor, p: float, training: bool, inplace: bool = False) -> Tensor | None:
    """The result when nothing is drawn: ``x`` itself (inference, ``p = 0``), zeros (``p = 1``)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return zeros_with_grad(x, inplace)
    return None
