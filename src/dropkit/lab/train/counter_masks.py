"""Counter-based dropout masks: a mask is a pure function of (seed, step, layer, element).

PyTorch's dropout draws from a generator whose state advances with every draw, so a run's masks
depend on everything drawn before them, and under ``torch.vmap`` its ``randomness="different"``
draws one tensor for the whole batch of runs: a run's masks then depend on its batch. Here a
unit's keep decision is a hash of four integers instead:

``u = H(seed, step, layer, i) ∈ [0, 2¹⁶)``, kept when ``u / 2¹⁶ >= p``,

``seed`` the run's seed, ``step`` the optimizer step (shared by all runs of a batch), ``layer``
the dropout module's index in the model, ``i`` the unit's index in the mask tensor (its
position in C order in one run's tensor, so under ``vmap`` it is the same for every run).
The same run therefore draws the same masks alone or inside a batch of any size, on any
device.

The hash: the 32-bit mixer ``x ^= x >> 16; x *= 0x21F0AAAD; x ^= x >> 15; x *= 0x735A2D97;
x ^= x >> 15`` (C. Wellons' "lowbias32", a bias of 0.11 against 0.17 for MurmurHash3's
finalizer; the stacked MLP trainer's masks use it too). The step and the layer are mixed, then
with the seed's two 32-bit halves, into a *key* (:func:`mask_key`): an odd multiplier ``a`` and
an offset ``b``; word ``j`` is ``w = mix(a·j + b mod 2³²)`` and units ``2j`` and ``2j + 1``
read its low and high 16 bits (so ``p`` is resolved to ``2**-16``, as dropkit's CPU masks).
(A key that only offset the index, ``mix(i + b)``, would make two keys' masks shifted copies
of each other; the per-key multiplier makes them unrelated permutations.)

Arithmetic. The keys are int64 arithmetic on values below ``2³²`` (no product overflows). The
words are int32 arithmetic with wrapping multiplies and masked (logical) shifts: the same 32
bits at half the memory traffic of int64, and the multiply vectorizes where int64's does not
(AVX2). A mask of more than ``2³²`` units hashes its words in int64 (:func:`counter_bits`, the
reference every path agrees with). Two layouts give the same masks: eagerly, each word is
hashed once and its two halves compared where they lie (:func:`keep_mask`); inside
``torch.compile``, each unit hashes its own word (twice the integer work, but one fused pass
and no interleaving, which the compiler turns into slow gathers).

:class:`CounterDropout` is the module that replaces a dropout module (:func:`counter_module`):
its ``seed``, ``p`` and current ``key`` are (non-persistent) buffers, so
``torch.func.stack_module_state`` stacks them per run like any buffer, and a trainer sets the
keys of all runs for a step at once (no Python value that would make ``torch.compile``
specialize on the step); ``layer`` is a plain integer.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import torch
from torch import Tensor, nn

from dropkit._base import DropoutLayer, module_rate
from dropkit.functional import SELU_ALPHA_PRIME
from dropkit.layers import (
    AlphaDropout,
    Dropout,
    DropPath,
    FeatureAlphaDropout,
    LockedDropout,
    SpatialDropout1d,
    SpatialDropout2d,
    SpatialDropout3d,
)

__all__ = [
    "MASK_BITS",
    "CounterDropout",
    "counter_bits",
    "counter_fields",
    "counter_module",
    "counter_uniform",
    "keep_mask",
    "key_keep_mask",
    "mask_key",
    "mask_shape",
]

MASK_BITS = 16
"""Bits of the uniform compared with ``p``: rates are resolved to ``2**-16`` (as dropkit's
CPU masks and the stacked MLP trainer's)."""

_M32 = 0xFFFFFFFF
_M31 = 0x7FFFFFFF
_M16 = 0xFFFF
_MUL1 = 0x21F0AAAD
_MUL2 = 0x735A2D97
# Salts so that the chain's stages differ even for equal inputs.
_SALT_STEP = 0x2545F491
_SALT_OFFSET = 0x5BD1E995
_INT32_WORDS = 1 << 31  # word indices below this fit int32
_HALF_SIGNS = -0x7FFF8000  # 0x80008000 as int32: the top bit of each 16-bit half
_HALF_EVEN = -0x10002  # 0xFFFEFFFE as int32: each half without its lowest bit
_LITTLE_ENDIAN = sys.byteorder == "little"  # int32 word j viewed as int16: low half first


def _mix(h: Tensor) -> Tensor:
    """The lowbias32 mixer on int64 values in ``[0, 2³²)`` (a bijection of 32-bit words)."""
    h = h ^ (h >> 16)
    h = (h * _MUL1) & _M32
    h = h ^ (h >> 15)
    h = (h * _MUL2) & _M32
    return h ^ (h >> 15)


def _mix_(h: Tensor) -> Tensor:
    """:func:`_mix` in place (``h`` is a fresh tensor): half the memory traffic on big masks."""
    h ^= h >> 16
    h.mul_(_MUL1).bitwise_and_(_M32)
    h ^= h >> 15
    h.mul_(_MUL2).bitwise_and_(_M32)
    h ^= h >> 15
    return h


def _mix32(h: Tensor) -> Tensor:
    """:func:`_mix` on int32 words (two's complement): wrapping multiplies, and shifts masked
    to their logical result; the same 32 bits."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _MUL1
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * _MUL2
    return h ^ ((h >> 15) & 0x1FFFF)


def _mix32_(h: Tensor) -> Tensor:
    """:func:`_mix32` in place (``h`` is a fresh tensor)."""
    h ^= (h >> 16).bitwise_and_(0xFFFF)
    h.mul_(_MUL1)
    h ^= (h >> 15).bitwise_and_(0x1FFFF)
    h.mul_(_MUL2)
    h ^= (h >> 15).bitwise_and_(0x1FFFF)
    return h


def _mix_int(h: int) -> int:
    """:func:`_mix` on a Python int in ``[0, 2³²)``."""
    h ^= h >> 16
    h = (h * _MUL1) & _M32
    h ^= h >> 15
    h = (h * _MUL2) & _M32
    return h ^ (h >> 15)


def _counter(step: Tensor | int, layer: int) -> Tensor | int:
    """The step and the layer mixed into one 32-bit word (a Python int for an int step, an
    int64 tensor of ``step``'s shape otherwise: the same values)."""
    if isinstance(step, Tensor):
        step = step.to(torch.int64)
        mixed = _mix(_mix((step & _M32) ^ _SALT_STEP) ^ ((step >> 32) & _M32))
        return _mix(mixed ^ (layer & _M32))
    counter = _mix_int(_mix_int((step & _M32) ^ _SALT_STEP) ^ ((step >> 32) & _M32))
    return _mix_int(counter ^ (layer & _M32))


def _keys(seed: Tensor, step: Tensor | int, layer: int) -> tuple[Tensor, Tensor]:
    """The key of (seed, step, layer): an odd multiplier in ``(0, 2³¹)`` and an offset in
    ``[0, 2³²)``, int64 tensors of the broadcast shape of ``seed`` and ``step``."""
    seed = seed.to(torch.int64)
    h = _mix(_mix((seed & _M32) ^ _counter(step, layer)) ^ ((seed >> 32) & _M32))
    return (h & _M31) | 1, _mix(h ^ _SALT_OFFSET)


def mask_key(seed: Tensor, step: Tensor | int, layer: int) -> Tensor:
    """The key of the masks of (seed, step, layer): int32 ``(..., 2)``, the multiplier ``a``
    and the offset ``b`` as signed 32-bit words, ``...`` the broadcast shape of ``seed`` and
    ``step`` (e.g. seeds ``(R,)`` and steps ``(S, 1)`` give the keys ``(S, R, 2)`` of S steps of
    R runs in one call).

    Args:
        seed: the runs' seeds, int64 (any values).
        step: optimizer steps ``>= 0``, an int or an int64 tensor.
        layer: the dropout layer's index in the model (``>= 0``).
    """
    multiplier, offset = _keys(seed, step, layer)
    offset = offset - ((offset >> 31) << 32)  # [2³¹, 2³²) → negative: the same 32 bits
    return torch.stack((multiplier, offset), -1).to(torch.int32)


def _word_bits(multiplier: Tensor, offset: Tensor, index: Tensor) -> Tensor:
    """``mix(a·j + b mod 2³²)`` for word indices ``j`` in ``[0, 2³²)``: ``a·j < 2⁶³ − 2³²``, so
    the sum does not overflow int64."""
    return _mix_((index * multiplier).add_(offset).bitwise_and_(_M32))


def counter_bits(seed: Tensor, step: int, layer: int, index: Tensor) -> Tensor:
    """32 random bits per word: ``H(seed, step, layer, j)``, int64 in ``[0, 2³²)``.

    Element ``i`` of a mask reads the 16-bit field ``i mod 2`` (low, then high half) of word
    ``j = i // 2`` (see :func:`counter_fields`). The int64 reference of every mask path.

    Args:
        seed: the run's seed, an int64 scalar tensor (any int64 value).
        step: the optimizer step (``>= 0``).
        layer: the dropout layer's index in the model (``>= 0``).
        index: int64 word indices ``>= 0``, any shape; the result has its shape. Indices of
            ``2³²`` and more also mix in their high word.
    """
    multiplier, offset = _keys(seed, step, layer)
    return _word_bits(multiplier, offset ^ _mix(index >> 32 & _M32), index & _M32)


def _numel(shape: tuple[int, ...]) -> int:
    numel = 1
    for size in shape:
        numel *= int(size)
    if numel > 1 << 33:
        raise ValueError(f"a counter-based mask holds at most 2**33 units, got shape {shape}")
    return numel


def _halves(key: Tensor, numel: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """The low and high 16-bit fields ``(⌈numel/2⌉,)`` of the words of a mask of ``numel``
    units under ``key`` (:func:`mask_key`, ``(2,)``): units ``2j`` and ``2j + 1``."""
    words = (numel + 1) // 2
    if words > _INT32_WORDS:  # int64 words, from the key's 32-bit halves
        multiplier = key[0].to(torch.int64) & _M32
        offset = key[1].to(torch.int64) & _M32
        index = torch.arange(words, dtype=torch.int64, device=device)
        bits = _word_bits(multiplier, offset ^ _mix(index >> 32 & _M32), index & _M32)
        return bits & _M16, bits >> 16
    bits = _int32_words(key, words, device)
    return bits & _M16, (bits >> 16).bitwise_and_(_M16)


def _int32_words(key: Tensor, words: int, device: torch.device | None) -> Tensor:
    """The hashed words ``mix(a·j + b)`` (int32 ``(words,)``, the same 32 bits as
    :func:`counter_bits`) for ``words <= 2³¹`` under ``key`` ``(2,)``."""
    index = torch.arange(words, dtype=torch.int32, device=device)
    return _mix32_((index * key[0]).add_(key[1]))


def _interleave(low: Tensor, high: Tensor, numel: int, shape: tuple[int, ...]) -> Tensor:
    return torch.stack((low, high), -1).flatten(-2)[..., :numel].reshape(shape)


def _packed_keep(
    key: Tensor, threshold: Tensor, numel: int, shape: tuple[int, ...], device: torch.device | None
) -> Tensor:
    """:func:`key_keep_mask`'s decisions with the words read in place as int16 fields (on a
    little-endian machine, int16 ``2j`` of the int32 words is word ``j``'s low half, unit
    ``2j``, as in :func:`_halves`): no halves taken apart and interleaved.

    Flipping each half's top bit turns the unsigned field ``u`` into the signed ``u − 2¹⁵``, so
    one int16 comparison with ``⌈p·2¹⁶⌉ − 2¹⁵`` decides. ``p = 1`` (threshold ``2¹⁶``, past
    int16) clears each half's lowest bit instead of nothing: no field then reaches the
    clamped threshold ``2¹⁵ − 1``, and none is kept. The same decisions, in about 0.7 of
    the time."""
    bits = _int32_words(key, (numel + 1) // 2, device)
    bits ^= _HALF_SIGNS
    bits = bits & torch.where(threshold < 1 << MASK_BITS, -1, _HALF_EVEN).to(torch.int32)
    signed = (threshold - (1 << (MASK_BITS - 1))).clamp(max=(1 << (MASK_BITS - 1)) - 1)
    return (bits.view(torch.int16)[..., :numel] >= signed.to(torch.int16)).reshape(shape)


def _unit_fields(key: Tensor, numel: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """The 16-bit fields of :func:`_halves`, computed per unit (int32 ``shape``): unit ``i``
    hashes word ``i >> 1`` and shifts by ``16·(i & 1)``. One pass, for the compiler."""
    index = torch.arange(numel, dtype=torch.int32, device=device)
    bits = _mix32((index >> 1) * key[0] + key[1])
    return ((bits >> ((index & 1) << 4)) & _M16).view(shape)


def _threshold(p: Tensor) -> Tensor:
    """``⌈p·2¹⁶⌉`` (int32): a unit is kept when its field is at least this."""
    return torch.ceil(p.to(torch.float64) * (1 << MASK_BITS)).to(torch.int32)


def counter_fields(
    seed: Tensor, step: int, layer: int, shape: tuple[int, ...], device: torch.device | None = None
) -> Tensor:
    """The 16-bit field of every unit of a mask of ``shape`` (int64 in ``[0, 2¹⁶)``): unit
    ``i`` (in C order) is half ``i mod 2`` of :func:`counter_bits` at word ``i // 2``."""
    numel = _numel(shape)
    low, high = _halves(mask_key(seed, step, layer), numel, device)
    return _interleave(low, high, numel, shape).to(torch.int64)


def counter_uniform(
    seed: Tensor, step: int, layer: int, shape: tuple[int, ...], device: torch.device | None = None
) -> Tensor:
    """Uniforms in ``[0, 1)`` of ``shape`` (float32, multiples of ``2**-16``):
    :func:`counter_fields` ``· 2**-16``."""
    fields = counter_fields(seed, step, layer, shape, device)
    return fields.to(torch.float32) * (1.0 / (1 << MASK_BITS))


def key_keep_mask(
    key: Tensor, p: Tensor, shape: tuple[int, ...], device: torch.device | None = None
) -> Tensor:
    """The keep mask ``field >= ⌈p·2**16⌉`` (bool, ``shape``) of the unit fields under ``key``
    (:func:`mask_key`, ``(2,)``; vmap batches it). Inside ``torch.compile`` each unit hashes its
    own word; eagerly each word is hashed once and its halves compared in place
    (:func:`_packed_keep`). The same decisions either way."""
    numel = _numel(shape)
    threshold = _threshold(p)
    if torch.compiler.is_compiling() and numel <= _INT32_WORDS:
        where = device if device is not None else key.device
        return _unit_fields(key, numel, shape, where) >= threshold
    if _LITTLE_ENDIAN and (numel + 1) // 2 <= _INT32_WORDS:
        return _packed_keep(key, threshold, numel, shape, device)
    low, high = _halves(key, numel, device)
    return _interleave(low >= threshold, high >= threshold, numel, shape)


def keep_mask(
    seed: Tensor,
    p: Tensor,
    step: int,
    layer: int,
    shape: tuple[int, ...],
    device: torch.device | None = None,
) -> Tensor:
    """The keep mask ``U >= p`` of ``shape`` as bool, ``U`` of :func:`counter_uniform`
    (``p = 0``: all kept; ``p = 1``: none): :func:`key_keep_mask` under
    :func:`mask_key` ``(seed, step, layer)``."""
    return key_keep_mask(mask_key(seed, step, layer), p, shape, device)


def mask_shape(
    kind: str, shape: tuple[int, ...], channel_axes: int | None = None
) -> tuple[int, ...]:
    """The shape of one draw per unit for a mask ``kind`` over an input of ``shape``.

    ``element``: the input's shape. ``channel``: one draw per leading ``channel_axes`` axes
    (``(N, C)`` → ``(N, C, 1, …)``). ``sample``: one per sample, ``(N, 1, …)``. ``locked`` /
    ``locked_time_first``: one per (sequence, feature), broadcast over time (axis 1, resp. 0).
    """
    if kind == "element":
        return shape
    if kind == "channel":
        axes = 2 if channel_axes is None else channel_axes
        return shape[:axes] + (1,) * (len(shape) - axes)
    if kind == "sample":
        return shape[:1] + (1,) * (len(shape) - 1)
    if kind in ("locked", "locked_time_first"):
        time_axis = 1 if kind == "locked" else 0
        return tuple(1 if axis == time_axis else size for axis, size in enumerate(shape))
    raise ValueError(f"mask `kind` must be element, channel, sample or locked, got {kind!r}")


class CounterDropout(nn.Module):
    """A dropout module whose masks come from :func:`key_keep_mask`, its rate a buffer.

    Training: inverted dropout ``y = x·m / (1 − p)`` (``scaling="inverted"``; ``p = 1`` gives
    zeros), ``y = x·m`` (``"classic"`` and ``"unscaled"``), or alpha dropout (``"alpha"``:
    ``a·(x·m + α'·(1 − m)) + b``, ``a = ((1 − p)(1 + p·α'²))^(-1/2)``, ``b = −a·α'·p``,
    Klambauer et al. 2017); ``m`` of :func:`mask_shape` ``(kind, x.shape)``. Inference: ``x``
    (``"classic"``: ``(1 − p)·x``). Eagerly a dropped unit is ``where(m, ·, 0)``, exactly 0;
    inside ``torch.compile`` it is ``x·0`` (so the backward saves a float factor, not a bool
    mask, which the compiler stores slowly): the same for finite ``x``.

    Buffers (non-persistent, so a state dict keeps the original layout): ``seed`` (int64
    scalar), ``p`` (float32 scalar) and ``key`` (int32 ``(2,)``, :func:`mask_key` of the
    current step). ``layer`` is a plain int; setting ``step`` (an int) recomputes ``key``. A
    trainer that stacks these buffers sets the stacked keys of every run itself.

    Args:
        p: drop probability in [0, 1].
        seed: the run's seed.
        layer: this module's index among the model's dropout modules.
        kind: the mask's shape (see :func:`mask_shape`).
        scaling: ``"inverted"``, ``"classic"`` (inference ``(1 − p)·x``), ``"unscaled"``
            (DropPath without ``scale_by_keep``: inference ``x``) or ``"alpha"``.
        channel_axes: for ``kind="channel"``, per input rank, the number of leading axes that
            get their own draw (``{3: 2, 2: 1}`` for ``nn.Dropout1d``: ``(N, C, L)`` batched,
            ``(C, L)`` unbatched); a rank not listed is refused.
        name: the replaced module's class name, for error messages.

    Attributes:
        consistent: draw one mask for all rows of a pass (the rows' axis of the mask has size
            1; Monte Carlo dropout's consistent masks, as baal's ``ConsistentDropout``).
            Plain attribute, off by default.
        batch_axis: the rows' axis of the input (0; 1 for time-first sequences).
    """

    SCALINGS: ClassVar[tuple[str, ...]] = ("inverted", "classic", "unscaled", "alpha")

    seed: Tensor
    p: Tensor
    key: Tensor

    def __init__(
        self,
        p: float,
        seed: int,
        layer: int,
        *,
        kind: str = "element",
        scaling: str = "inverted",
        channel_axes: dict[int, int] | None = None,
        name: str = "Dropout",
    ) -> None:
        super().__init__()
        if scaling not in self.SCALINGS:
            raise ValueError(
                f"`scaling` must be one of {', '.join(self.SCALINGS)}, got {scaling!r}"
            )
        mask_shape(kind, (1,))  # validates kind
        seed_tensor = torch.tensor(int(seed), dtype=torch.int64)
        self.register_buffer("seed", seed_tensor, persistent=False)
        self.register_buffer("p", torch.tensor(float(p), dtype=torch.float32), persistent=False)
        self.layer = int(layer)
        self.register_buffer("key", mask_key(seed_tensor, 0, self.layer), persistent=False)
        self._step = 0
        self.kind = kind
        self.scaling = scaling
        self.channel_axes = dict(channel_axes or {})
        self.name = name
        self.consistent = False
        self.batch_axis = 1 if kind == "locked_time_first" else 0

    def draw_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """``shape`` of a mask as drawn: with :attr:`consistent`, size 1 on the rows' axis."""
        axis = self.batch_axis
        if not self.consistent or len(shape) <= axis:
            return shape
        return (*shape[:axis], 1, *shape[axis + 1 :])

    @property
    def step(self) -> int:
        """The optimizer step whose masks the module draws (setting it recomputes ``key``)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = int(value)
        with torch.no_grad():
            self.key.copy_(mask_key(self.seed, self._step, self.layer))

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        shape = tuple(x.shape)
        if self.kind != "channel":
            return mask_shape(self.kind, shape)
        axes = self.channel_axes.get(x.ndim)
        if axes is None:
            ranks = " or ".join(f"{r}-D" for r in sorted(self.channel_axes))
            raise ValueError(
                f"{self.name} takes a {ranks} input (whole channels), got shape {list(shape)}"
            )
        return mask_shape("channel", shape, axes)

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.to(x.dtype)
        if not self.training:
            return x * (1.0 - p) if self.scaling == "classic" else x
        keep = key_keep_mask(self.key, self.p, self.draw_shape(self._shape(x)), x.device)
        zero = x.new_zeros(())
        compiling = torch.compiler.is_compiling()
        if self.scaling in ("classic", "unscaled"):
            return x * keep.to(x.dtype) if compiling else torch.where(keep, x, zero)
        if self.scaling == "alpha":
            m = keep.to(x.dtype)
            alpha = SELU_ALPHA_PRIME
            kept = p < 1.0
            q = torch.where(kept, 1.0 - p, 1.0)  # p = 1: no division by 0, zeros below
            a = (q * (1.0 + p * alpha * alpha)).rsqrt()
            b = -a * alpha * p
            out = a * (x * m + alpha * (1.0 - m)) + b
            return torch.where(kept, out, zero)
        # 1 / (1 - p), and 0 at p = 1 (every unit dropped: no division by zero)
        scale = torch.where(p < 1.0, 1.0 / torch.where(p < 1.0, 1.0 - p, 1.0), 0.0)
        if compiling:
            return x * torch.where(keep, scale, zero)
        return torch.where(keep, x * scale, zero)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, kind={self.kind}, scaling={self.scaling}, name={self.name}"


# torch's channel dropouts: Dropout1d takes (N, C, L) or unbatched (C, L); Dropout2d takes
# (N, C, H, W) and reads a 3-D input as (N, C, L) (with a warning); Dropout3d takes
# (N, C, D, H, W) or unbatched (C, D, H, W). dropkit's spatial layers take batched input only.
_TORCH_CHANNELS: dict[type[nn.Module], dict[int, int]] = {
    nn.Dropout1d: {3: 2, 2: 1},
    nn.Dropout2d: {4: 2, 3: 2},
    nn.Dropout3d: {5: 2, 4: 1},
}
_DROPKIT_CHANNELS: dict[type[nn.Module], dict[int, int]] = {
    SpatialDropout1d: {3: 2},
    SpatialDropout2d: {4: 2},
    SpatialDropout3d: {5: 2},
}


def counter_module(module: nn.Module, seed: int, layer: int) -> CounterDropout | None:
    """The :class:`CounterDropout` equivalent of a dropout module, or None when there is none.

    Covered (by exact type, so a subclass with its own ``forward`` is not silently replaced):
    ``nn.Dropout``, ``nn.Dropout1d/2d/3d``, ``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``,
    and dropkit's ``Dropout`` (both scalings), ``SpatialDropout1d/2d/3d``, ``AlphaDropout``,
    ``FeatureAlphaDropout``, ``DropPath``, ``LockedDropout``. Not covered: Gaussian noise,
    DropBlock and modules with parameters or buffers of their own.
    """
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return None
    kind_type = type(module)
    name = kind_type.__name__
    p = module_rate(module)

    def make(
        kind: str, scaling: str = "inverted", axes: dict[int, int] | None = None
    ) -> CounterDropout:
        return CounterDropout(
            p, seed, layer, kind=kind, scaling=scaling, channel_axes=axes, name=name
        )

    if kind_type is nn.Dropout:
        return make("element")
    if kind_type in _TORCH_CHANNELS:
        return make("channel", axes=_TORCH_CHANNELS[kind_type])
    if kind_type is nn.AlphaDropout or kind_type is AlphaDropout:
        return make("element", "alpha")
    if kind_type is nn.FeatureAlphaDropout or kind_type is FeatureAlphaDropout:
        return make("channel", "alpha", {rank: 2 for rank in range(2, 9)})
    if not isinstance(module, DropoutLayer):
        return None
    if kind_type is Dropout:
        return make("element", str(getattr(module, "scaling", "inverted")))
    if kind_type in _DROPKIT_CHANNELS:
        return make("channel", axes=_DROPKIT_CHANNELS[kind_type])
    if kind_type is DropPath:
        return make("sample", "inverted" if getattr(module, "scale_by_keep", True) else "unscaled")
    if kind_type is LockedDropout:
        return make("locked" if getattr(module, "batch_first", True) else "locked_time_first")
    return None
