"""Argument checks: the one place where dropkit writes argument errors.

Every message names the argument, the valid range or type, and the value received, in the
form ``"`p` must be a probability in [0, 1] (the drop probability), got 30. ..."``. Wrong
types raise :class:`TypeError`, wrong values :class:`ValueError`.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, cast, overload

if TYPE_CHECKING:  # torch is imported by whoever passes a tensor; argument checks need not
    import torch

__all__ = [
    "check_batch_output",
    "check_block_size",
    "check_dim",
    "check_generator",
    "check_instance",
    "check_min_ndim",
    "check_module",
    "check_names",
    "check_ndim",
    "check_nonnegative",
    "check_one_of",
    "check_open_probability",
    "check_positive",
    "check_positive_int",
    "check_probability",
    "check_shape",
    "check_tensor",
    "check_trainable_rate",
]


def _describe(value: object) -> str:
    """``repr`` of a value, shortened so that an error message stays one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_probability(
    value: object, name: str = "p", *, meaning: str = "drop", description: str | None = None
) -> float:
    """Return ``value`` as a float after checking it is a probability in [0, 1].

    Args:
        value: the value received. Python and NumPy reals are accepted, as is a 0-d tensor
            (converted with ``float``); ``bool``, strings and NaN are refused.
        name: the argument's name, used in the message.
        meaning: ``"drop"`` or ``"keep"``: which probability the argument is, said in the message
            because the two are the classic mix-up.
        description: what the number is, said in the message instead, for a fraction in [0, 1]
            that is not a probability.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is NaN or outside [0, 1]. For ``1 < value <= 100`` the message
            asks whether a percentage was passed.
    """
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case, checked on every op call
        return value
    kind = description or f"the {meaning} probability"
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if (
        torch is not None
        and isinstance(value, torch.Tensor)
        and value.ndim == 0
        and not (value.is_complex())
    ):
        if value.dtype == torch.bool:
            raise TypeError(f"`{name}` must be a real number in [0, 1] ({kind}), got a bool tensor")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number in [0, 1] ({kind}), "
            f"got {_describe(value)} of type {type(value).__name__}"
        )
    p = float(value)
    if not 0.0 <= p <= 1.0:  # written this way so that NaN fails too
        message = f"`{name}` must be in [0, 1] ({kind}), got {_describe(value)}."
        if math.isnan(p):
            message += " NaN is not a probability."
        elif 1.0 < p <= 100.0:
            message += f" Did you pass a percentage? Use {name}={p / 100:g}."
        raise ValueError(message)
    return p


def check_one_of(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` after checking it is one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {options}, got {_describe(value)}")
    return value


def check_block_size(value: object, ndim: int, name: str = "block_size") -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``ndim`` positive ints (an int is repeated ``ndim`` times)."""
    items = (value,) * ndim if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != ndim or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items
    ):
        raise TypeError(
            f"`{name}` must be a positive int or a tuple of {ndim} positive ints, "
            f"got {_describe(value)}"
        )
    sizes = tuple(int(cast(numbers.Integral, v)) for v in items)
    if min(sizes) < 1:
        raise ValueError(f"`{name}` must be >= 1 along every axis, got {_describe(value)}")
    return sizes


def check_ndim(
    x: torch.Tensor, allowed: Sequence[int], op: str, layout: str, hint: str = ""
) -> None:
    """Refuse an input whose rank is not in ``allowed`` rather than guess its layout.

    Args:
        x: the input tensor.
        allowed: the accepted ranks.
        op: the name of the op or layer, for the message.
        layout: the expected layout in words, e.g. ``"(N, C, H, W)"``.
        hint: an extra sentence, e.g. how to add a missing batch axis.
    """
    if x.ndim not in allowed:
        ranks = " or ".join(f"{n}-D" for n in allowed)
        message = (
            f"{op} expects a {ranks} input {layout}, got a {x.ndim}-D input "
            f"of shape {tuple(x.shape)}."
        )
        raise ValueError(f"{message} {hint}".rstrip())


def check_min_ndim(x: torch.Tensor, min_ndim: int, op: str, layout: str, hint: str = "") -> None:
    """Refuse an input of rank below ``min_ndim``; see :func:`check_ndim`."""
    if x.ndim < min_ndim:
        message = (
            f"{op} expects an input of at least {min_ndim} dimension{'s' * (min_ndim != 1)} "
            f"{layout}, got a "
            f"{x.ndim}-D input of shape {tuple(x.shape)}."
        )
        raise ValueError(f"{message} {hint}".rstrip())


def check_generator(generator: object, x: torch.Tensor | None = None) -> None:
    """Check that ``generator`` is ``None`` or a :class:`torch.Generator` (on ``x``'s device)."""
    import torch

    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"`generator` must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if x is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"`generator` is on device {generator.device.type!r} but the input is on "
            f"{x.device.type!r}; create it with torch.Generator(device={x.device.type!r})"
        )


def _check_finite(value: object, name: str, *, allow_zero: bool) -> float:
    """``value`` as a float, a finite real number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a finite number {bound}, got {_describe(value)} "
            f"of type {type(value).__name__}"
        )
    number = float(value)
    if not ((number >= 0 if allow_zero else number > 0) and math.isfinite(number)):
        raise ValueError(f"`{name}` must be a finite number {bound}, got {_describe(value)}")
    return number


def check_positive(value: object, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite real number > 0."""
    return _check_finite(value, name, allow_zero=False)


@overload
def check_positive_int(value: object, name: str) -> int: ...
@overload
def check_positive_int(value: object, name: str, *, optional: Literal[True]) -> int | None: ...
def check_positive_int(value: object, name: str, *, optional: bool = False) -> int | None:
    """Return ``value`` as an int after checking it is an integer >= 1 (or None if ``optional``).

    Python and NumPy integers are accepted; ``bool`` and floats (even ``3.0``) are refused.
    """
    if optional and value is None:
        return None
    expected = "an int >= 1" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"`{name}` must be {expected}, got {_describe(value)} of type {type(value).__name__}"
        )
    if int(value) < 1:
        raise ValueError(f"`{name}` must be {expected}, got {_describe(value)}")
    return int(value)


def check_tensor(value: object, name: str) -> torch.Tensor:
    """Return ``value`` after checking it is a :class:`torch.Tensor`."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_batch_output(
    output: object, rows: int, op: str, *, min_ndim: int = 1, layout: str = "(N, *)", hint: str = ""
) -> torch.Tensor:
    """Check that a model returned a tensor of ``rows`` rows along its first (batch) axis.

    Args:
        output: what the model returned.
        rows: the number of rows of the input it was given.
        op: the name of the function that called the model, for the message.
        min_ndim: the least rank the output must have.
        layout: the expected layout in words, e.g. ``"(N, *, C)"``.
        hint: an extra sentence for a rank below ``min_ndim``.
    """
    import torch

    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"{op} expects the model to return a torch.Tensor, got {type(output).__name__}; "
            f"wrap the model so that it returns the one output to summarize."
        )
    if output.ndim < max(min_ndim, 1) or output.shape[0] != rows:
        message = (
            f"{op} expects the model to return a tensor {layout} of at least {max(min_ndim, 1)} "
            f"dimensions with the batch axis first; for an input of {rows} rows it returned "
            f"shape {tuple(output.shape)}."
        )
        raise ValueError(f"{message} {hint}".rstrip())
    return output


def check_module(value: object, name: str = "model") -> torch.nn.Module:
    """Return ``value`` after checking it is a :class:`torch.nn.Module`."""
    import torch

    if not isinstance(value, torch.nn.Module):
        raise TypeError(
            f"`{name}` must be a torch.nn.Module, got {_describe(value)} "
            f"of type {type(value).__name__}"
        )
    return value


def check_dim(value: object, ndim: int, name: str = "dim", owner: str = "the tensor") -> int:
    """Return ``value`` after checking it is an axis of a ``ndim``-D tensor (negatives allowed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {_describe(value)}")
    axis = int(value)
    if not -ndim <= axis < ndim:
        raise ValueError(f"`{name}` must be in [{-ndim}, {ndim - 1}] for {owner}, got {axis}")
    return axis


def check_open_probability(value: object, name: str, *, meaning: str = "drop") -> float:
    """Return ``value`` as a float after checking it is a probability in (0, 1), ends excluded.

    For a rate that is learned through its logit, which is infinite at 0 and at 1.
    """
    p = check_probability(value, name, meaning=meaning)
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"`{name}` must be in (0, 1), ends excluded (the {meaning} probability, learned "
            f"through its logit, which is infinite at 0 and 1), got {_describe(value)}"
        )
    return p


def check_trainable_rate(value: object, name: str = "p") -> float:
    """Return ``value`` as a drop probability in [0, 1), for a rate the lab trains with.

    ``p = 1`` drops every unit: the layers compute exact zeros (as PyTorch does), but a model
    trained that way outputs a constant, so a sweep at that rate has nothing to measure.
    """
    p = check_probability(value, name)
    if p == 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1) for the lab, got {_describe(value)}: p = 1 drops every "
            "unit, so the network outputs a constant and there is nothing to learn or compare"
        )
    return p


def check_nonnegative(value: object, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite real number >= 0."""
    return _check_finite(value, name, allow_zero=True)


def check_shape(x: torch.Tensor, expected: Sequence[int], name: str, op: str) -> None:
    """Refuse a tensor ``name`` whose shape is not ``expected`` (e.g. an RNN's initial state)."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{op} expects `{name}` of shape {tuple(expected)}, got shape {tuple(x.shape)}"
        )


def check_names(
    value: object, valid: Sequence[str], name: str = "names", owner: str = "the module"
) -> tuple[str, ...]:
    """Return ``value`` (a str or a sequence of str) as a non-empty tuple of names in ``valid``.

    Raises:
        TypeError: ``value`` is not a str or a sequence of str.
        ValueError: ``value`` is empty, repeats a name, or names one that is not in ``valid``;
            the message lists the valid names.
    """
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(v, str) for v in items):
        raise TypeError(f"`{name}` must be a str or a sequence of str, got {_describe(value)}")
    names = tuple(cast(Sequence[str], items))
    options = ", ".join(repr(v) for v in valid) or "none"
    unknown = [v for v in names if v not in valid]
    if not names or unknown or len(set(names)) != len(names):
        problem = f"unknown {unknown}" if unknown else "empty or repeated names"
        raise ValueError(
            f"`{name}` must name distinct parameters of {owner} (valid: {options}), "
            f"got {_describe(value)}: {problem}"
        )
    return names


def check_instance(value: object, types: type | tuple[type, ...], name: str, expected: str) -> None:
    """Refuse ``value`` with a :class:`TypeError` unless it is an instance of ``types``."""
    if not isinstance(value, types):
        raise TypeError(
            f"`{name}` must be {expected}, got {_describe(value)} of type {type(value).__name__}"
        )
