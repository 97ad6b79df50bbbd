"""Model surgery: find, re-rate and insert dropout in an existing ``nn.Module``.

Dropout modules are dropkit's layers and PyTorch's own (``nn.Dropout``, ``nn.Dropout1d/2d/3d``,
``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``). Surgery changes the model in place and
returns it.

What :func:`insert_dropout` can rewrite: it sees modules, not code. In an ``nn.Sequential`` it
inserts a ``dropkit.Dropout`` element after each hidden layer, after the activation module that
follows it when there is one. In any other container it cannot know what ``forward`` does with
the layer's output (a functional ``F.relu`` call, a residual sum), so it attaches the dropout to
the layer itself: a child module named ``dropout`` applied to the layer's output by a forward
hook. That is before a functional activation, which for ReLU is the same thing
(``relu(m·z/(1-p)) = m·relu(z)/(1-p)`` for ``m ∈ {0, 1}``) but not for tanh, GELU or sigmoid.
Layers called inside ``forward`` through ``torch.nn.functional`` (``F.linear(x, self.w)``) are
invisible to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dropkit._validation import check_probability
from dropkit.layers import Dropout, _DropoutLayer

__all__ = ["DROPOUT_TYPES", "find_dropout", "insert_dropout", "is_dropout", "set_dropout"]

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (_DropoutLayer, nn.modules.dropout._DropoutNd)
"""Base classes of the dropout modules dropkit recognizes: its own and PyTorch's."""

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
)
"""Element-wise activation modules that :func:`insert_dropout` steps over."""


def is_dropout(module: nn.Module) -> bool:
    """Whether ``module`` is a dropout module (dropkit's or PyTorch's)."""
    return isinstance(module, DROPOUT_TYPES)


def find_dropout(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every dropout module in ``model`` with its qualified name, in registration order.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Dropout(0.3), nn.Linear(8, 1))
        >>> [(name, m.p) for name, m in find_dropout(net)]
        [('2', 0.3)]
    """
    return [(name, module) for name, module in model.named_modules() if is_dropout(module)]


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Set the drop probability of every dropout module in ``model`` to ``p``; return ``model``.

    Both dropkit's layers (validated on assignment) and PyTorch's (whose ``p`` is a plain
    attribute) are changed. Rates stored as floats inside other modules, such as
    ``nn.MultiheadAttention(dropout=...)``, are not dropout modules and are left alone.
    """
    p = check_probability(p)
    for _, module in find_dropout(model):
        _set_rate(module, p)
    return model


def _rate(module: nn.Module) -> float:
    """A dropout module's ``p`` (torch's modules declare no type for it)."""
    return float(getattr(module, "p"))  # noqa: B009


def _set_rate(module: nn.Module, p: float) -> None:
    """Set a dropout module's ``p`` (validated by dropkit's layers, plain for torch's)."""
    setattr(module, "p", p)  # noqa: B010


def _apply_output_dropout(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's own ``dropout`` child applied to its output."""
    dropout = module.get_submodule("dropout")
    return dropout(output)  # type: ignore[no-any-return]


def _apply_input_dropout(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the model's ``input_dropout`` child applied to its first input."""
    dropout = module.get_submodule("input_dropout")
    return (dropout(inputs[0]), *inputs[1:])


def _targets(
    model: nn.Module, after: tuple[type[nn.Module], ...], skip_last: bool
) -> list[nn.Module]:
    """The layers that get dropout: every module of the ``after`` types but the last one."""
    layers = [m for m in model.modules() if isinstance(m, after)]
    return layers[:-1] if skip_last and layers else layers


def insert_dropout(
    model: nn.Module,
    p: float = 0.5,
    *,
    after: type[nn.Module] | Sequence[type[nn.Module]] = (nn.Linear,),
    input_p: float | None = None,
    skip_last: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Insert ``dropkit.Dropout(p)`` after each hidden layer of the ``after`` types; return it.

    Args:
        model: the model, changed in place.
        p: drop probability of the inserted layers (hidden layers: 0.2–0.5 is usual).
        after: the layer types that get dropout after them.
        input_p: if given, also drop the model's (first) input with this probability
            (0.1–0.2 is usual).
        skip_last: never put dropout after the last layer of the ``after`` types in
            registration order: the output layer. Registration order is the order in which
            ``__init__`` assigned the layers; pass False and choose ``after`` yourself when it
            differs from the order of the forward pass.
        generator: shared by the inserted layers, for reproducible masks.

    A layer already followed by a dropout module is left as it is, so calling this twice does
    not stack dropout. In an ``nn.Sequential`` the new layers are new elements, so the indices
    (and ``state_dict`` keys) of later elements shift; elsewhere the dropout is a child of the
    layer applied by a forward hook and the ``state_dict`` keys do not change (see the module
    docstring for what this can and cannot rewrite).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Linear(500, 1))
        >>> insert_dropout(net, 0.4)
        Sequential(
          (0): Linear(in_features=2, out_features=500, bias=True)
          (1): ReLU()
          (2): Dropout(p=0.4)
          (3): Linear(in_features=500, out_features=1, bias=True)
        )
    """
    p = check_probability(p)
    kinds = (after,) if isinstance(after, type) else tuple(after)
    if not kinds or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in kinds):
        raise TypeError(f"`after` must be nn.Module subclasses, got {after!r}")
    if input_p is not None:
        input_p = check_probability(input_p, "input_p")
    targets = {id(m) for m in _targets(model, kinds, skip_last)}

    # Sequential containers: insert an element after the layer (and its activations).
    handled: set[int] = set()
    for container in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = _elements(container)
        rebuilt: list[nn.Module] = []
        index = 0
        while index < len(children):
            child = children[index]
            rebuilt.append(child)
            index += 1
            if id(child) not in targets:
                continue
            handled.add(id(child))
            while index < len(children) and isinstance(children[index], ACTIVATIONS):
                rebuilt.append(children[index])
                index += 1
            following = children[index] if index < len(children) else _after(model, container)
            if following is not None and is_dropout(following):
                continue
            rebuilt.append(_new_dropout(p, generator, container))
        if len(rebuilt) != len(children):
            _refill(container, rebuilt)

    # Any other parent: a dropout child on the layer, applied by a forward hook.
    for child in list(model.modules()):
        if id(child) in targets and id(child) not in handled and not hasattr(child, "dropout"):
            child.add_module("dropout", _new_dropout(p, generator, child))
            child.register_forward_hook(_apply_output_dropout)
            handled.add(id(child))

    if input_p is not None and input_p > 0:
        first = next(iter(model.children()), None)
        if isinstance(model, nn.Sequential) and first is not None:
            if not is_dropout(first):
                _refill(model, [_new_dropout(input_p, generator, model), *_elements(model)])
        elif not hasattr(model, "input_dropout"):
            model.add_module("input_dropout", _new_dropout(input_p, generator, model))
            model.register_forward_pre_hook(_apply_input_dropout)
    return model


def _elements(container: nn.Sequential) -> list[nn.Module]:
    """A Sequential's elements in order, repeats included (``children()`` skips repeats)."""
    return [m for m in container._modules.values() if m is not None]


def _after(model: nn.Module, container: nn.Sequential) -> nn.Module | None:
    """The first non-activation element that runs after ``container`` in an enclosing Sequential."""
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        elements = _elements(parent)
        for index, element in enumerate(elements):
            if element is container:
                rest = [m for m in elements[index + 1 :] if not isinstance(m, ACTIVATIONS)]
                return rest[0] if rest else _after(model, parent)
    return None


def _new_dropout(p: float, generator: torch.Generator | None, like: nn.Module) -> Dropout:
    """A new dropout layer in the same train/eval mode as ``like``, where it goes."""
    return Dropout(p, generator=generator).train(like.training)


def _refill(container: nn.Sequential, modules: list[nn.Module]) -> None:
    """Replace the elements of ``container`` by ``modules``, numbered from 0."""
    for name in list(container._modules):
        del container._modules[name]
    for index, module in enumerate(modules):
        container.add_module(str(index), module)
