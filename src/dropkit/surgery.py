"""Model surgery: find, re-rate and insert dropout in an existing ``nn.Module``.

Dropout modules are dropkit's layers and PyTorch's own (``nn.Dropout``, ``nn.Dropout1d/2d/3d``,
``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``). Surgery changes the model in place and
returns it.

Real models also apply dropout without a dropout module, from a float rate held by the module
that uses it: ``nn.MultiheadAttention(dropout=...)``, ``nn.LSTM(dropout=...)``, attention
blocks calling ``F.scaled_dot_product_attention(dropout_p=self.attn_drop if self.training
else 0.)``. :func:`find_dropout_sites` lists both kinds as :class:`DropoutSite` records, and
:func:`set_dropout` re-rates both, optionally only one kind (``"attention"``, ``"hidden"``,
``"path"``), by name pattern or within a module type.

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

import fnmatch
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dropkit._base import DropoutLayer, module_rate, set_module_rate
from dropkit._float_dropout import KNOWN_GATES, class_usage, is_rate_name
from dropkit._validation import check_instance, check_module, check_one_of, check_probability
from dropkit.layers import Dropout, DropPath

__all__ = [
    "DROPOUT_KINDS",
    "DROPOUT_TYPES",
    "DropoutSite",
    "find_dropout",
    "find_dropout_sites",
    "insert_dropout",
    "is_dropout",
    "set_dropout",
]

DROPOUT_TYPES: tuple[type[nn.Module], ...] = (DropoutLayer, nn.modules.dropout._DropoutNd)
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


DROPOUT_KINDS: tuple[str, ...] = ("attention", "hidden", "path")
"""What a dropout site drops (:attr:`DropoutSite.kind`): attention weights, activations
(embeddings, residual and feed-forward branches, heads), or whole residual branches (DropPath)."""

# Names that say nothing about where the dropout acts: the owner's class decides.
_PLAIN_NAMES = frozenset({"dropout", "dropout_p", "dropout_prob", "dropout_rate", "drop", "p"})


@dataclass(frozen=True)
class DropoutSite:
    """One place where a model applies dropout: a dropout module, or a float rate of a module.

    Attributes:
        module_name: qualified name of ``module`` (as in ``model.named_modules()``).
        module: the dropout module itself, or the module that holds the rate and applies it
            (``nn.MultiheadAttention``, an attention block).
        attribute: the attribute that holds the rate: ``"p"`` for a dropout module, the float
            attribute's name otherwise (``"dropout"``, ``"attn_drop"``, …).
        p: the drop probability when the site was found.
        kind: ``"attention"`` (attention weights), ``"hidden"`` (activations) or ``"path"``
            (whole residual branches). Read from names and types: attention when the attribute
            or module name contains ``attn``/``attention``, or a plainly named rate
            (``dropout``, ``p``, …) belongs to an ``nn.MultiheadAttention`` or a class whose
            name contains ``Attention``; path for DropPath modules and names containing
            ``path``; hidden otherwise.
        sampled: whether :func:`dropkit.mc_dropout` switches this dropout on.
        reason: why it is not sampled (``""`` when it is).
    """

    module_name: str
    module: nn.Module
    attribute: str
    p: float
    kind: str
    sampled: bool
    reason: str = ""

    @property
    def is_module(self) -> bool:
        """Whether the site is a dropout module (else a float rate of another module)."""
        return is_dropout(self.module)

    @property
    def name(self) -> str:
        """The site's qualified name: the dropout module's, or ``"<module>.<attribute>"``."""
        if self.is_module:
            return self.module_name
        return f"{self.module_name}.{self.attribute}" if self.module_name else self.attribute


def find_dropout_sites(
    model: nn.Module,
    *,
    kind: str | None = None,
    name: str | None = None,
    within: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
) -> list[DropoutSite]:
    """Every place ``model`` applies dropout, in registration order, optionally filtered.

    Two kinds of site: dropout modules (those :func:`find_dropout` lists), and float rates held
    by other modules and applied in their own code: ``nn.MultiheadAttention.dropout``, the
    inter-layer ``dropout`` of ``nn.LSTM``/``GRU``/``RNN``, and an instance attribute named
    ``p`` or containing ``drop`` (``dropout``, ``dropout_p``, ``attn_drop``,
    ``attention_dropout``, ``dropout_prob`` …) with a value in [0, 1] that the class's methods
    read (``self.<name>``) outside ``__init__``. A rate whose class source cannot be read is
    listed too (``sampled=False``). dropkit's own weight-level, learned and recurrent modules
    (``DropConnect``, ``ConcreteDropout``, ``LSTM``, …) are not listed: their rates have their
    own attributes.

    Args:
        model: the model.
        kind: only sites of this kind (:data:`DROPOUT_KINDS`).
        name: only sites whose qualified name (:attr:`DropoutSite.name`) matches this
            ``fnmatch`` pattern, e.g. ``"*.attention.*"`` or ``"encoder.layers.0.*"``.
        within: only sites whose module (the dropout module, or the module holding the rate),
            or one of its ancestors, is an instance of these types.

    Example::

        >>> layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        >>> [(s.name, s.attribute, s.kind) for s in find_dropout_sites(layer)][:2]
        [('self_attn.dropout', 'dropout', 'attention'), ('dropout', 'p', 'hidden')]
    """
    check_module(model)
    kind, name, types = _check_filters(kind, name, within)
    sites: list[DropoutSite] = []
    modules = dict(model.named_modules())
    for module_name, module in modules.items():
        if is_dropout(module):
            sites.append(_module_site(modules, module_name, module))
        elif not type(module).__module__.startswith("dropkit."):
            sites += _attribute_sites(module_name, module)
    return [
        site
        for site in sites
        if (kind is None or site.kind == kind)
        and (name is None or fnmatch.fnmatchcase(site.name, name))
        and (types is None or _within(modules, site.module_name, types))
    ]


def set_dropout(
    model: nn.Module,
    p: float,
    *,
    kind: str | None = None,
    name: str | None = None,
    within: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
) -> nn.Module:
    """Set the drop probability of every dropout site of ``model`` to ``p``; return ``model``.

    The sites are those of :func:`find_dropout_sites`: dropout modules (dropkit's, validated on
    assignment, and PyTorch's, whose ``p`` is a plain attribute) and float rates of other
    modules, such as ``nn.MultiheadAttention(dropout=...)`` or an attention block's
    ``attn_drop``. ``set_dropout(model, 0.0)`` therefore makes a model's training-mode forward
    pass deterministic as far as dropout goes. The keyword-only filters choose a subset.

    Args:
        model: the model, changed in place.
        p: the new drop probability.
        kind: only sites of this kind: ``"attention"``, ``"hidden"`` or ``"path"``.
        name: only sites whose qualified name matches this ``fnmatch`` pattern.
        within: only sites inside modules of these types (see :func:`find_dropout_sites`).

    Example::

        >>> model = nn.TransformerEncoder(
        ...     nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True), 2)
        >>> _ = set_dropout(model, 0.0, kind="attention")  # attention weights only
        >>> model.layers[0].self_attn.dropout, model.layers[0].dropout1.p
        (0.0, 0.1)
    """
    p = check_probability(p)
    for site in find_dropout_sites(model, kind=kind, name=name, within=within):
        if site.is_module:
            set_module_rate(site.module, p)
        else:
            setattr(site.module, site.attribute, p)
    return model


def _check_filters(
    kind: object, name: object, within: object
) -> tuple[str | None, str | None, tuple[type[nn.Module], ...] | None]:
    """The filters of :func:`find_dropout_sites`, checked."""
    checked_kind = None if kind is None else check_one_of(kind, "kind", DROPOUT_KINDS)
    pattern: str | None = None
    if name is not None:
        check_instance(name, str, "name", "an fnmatch pattern (str) such as '*.attention.*'")
        pattern = str(name)
    if within is None:
        return checked_kind, pattern, None
    items = within if isinstance(within, tuple) else (within,)
    types: list[type[nn.Module]] = []
    for item in items or (within,):  # an empty tuple is refused too
        if isinstance(item, type) and issubclass(item, nn.Module):
            types.append(item)
        else:  # isinstance(item, ()) is False: the helper raises, naming the value
            check_instance(item, (), "within", "an nn.Module subclass or a tuple of them")
    return checked_kind, pattern, tuple(types)


def _within(
    modules: dict[str, nn.Module], module_name: str, types: tuple[type[nn.Module], ...]
) -> bool:
    parts = module_name.split(".") if module_name else []
    chain = [".".join(parts[:i]) for i in range(len(parts) + 1)]
    return any(isinstance(modules.get(prefix), types) for prefix in chain)


def _parent(modules: dict[str, nn.Module], module_name: str) -> tuple[str, nn.Module | None]:
    """The parent's qualified name and module, and the child's own name."""
    if not module_name:
        return "", None
    parent_name, _, _ = module_name.rpartition(".")
    return parent_name, modules.get(parent_name)


def _kind(attribute: str, owner: nn.Module) -> str:
    """:attr:`DropoutSite.kind` of a rate named ``attribute`` applied by ``owner``."""
    lowered, owner_class = attribute.lower(), type(owner).__name__.lower()
    if isinstance(owner, DropPath) or "path" in lowered or "droppath" in owner_class:
        return "path"
    if "attn" in lowered or "attention" in lowered:
        return "attention"
    if attribute in _PLAIN_NAMES and (
        isinstance(owner, nn.MultiheadAttention) or "attention" in owner_class
    ):
        return "attention"
    return "hidden"


def _module_site(modules: dict[str, nn.Module], module_name: str, module: nn.Module) -> DropoutSite:
    """The site of a dropout module: named by its parent, sampled unless a parent gates it."""
    parent_name, parent = _parent(modules, module_name)
    local = module_name.rpartition(".")[2]
    kind = "path" if isinstance(module, DropPath) else "hidden"
    reason = ""
    if parent is not None and kind != "path":
        kind = _kind(local, parent)
    if parent is not None:
        parent_class: type = type(parent)
        usage = class_usage(parent_class)
        if local in usage.child_rates and not usage.gate:
            reason = (
                f"`{parent_name}` ({parent_class.__name__}) reads its `p` and applies it itself, "
                f"and {_not_a_gate(parent_class)}"
            )
    return DropoutSite(module_name, module, "p", module_rate(module), kind, not reason, reason)


def _attribute_sites(module_name: str, module: nn.Module) -> list[DropoutSite]:
    """The float rates ``module`` holds and applies itself."""
    if isinstance(module, (nn.modules.loss._Loss, nn.PairwiseDistance, nn.CosineSimilarity)):
        return []
    cls: type = type(module)
    usage = class_usage(cls)
    known = isinstance(module, KNOWN_GATES)
    sites = []
    for attribute, value in vars(module).items():
        if attribute.startswith("_") or not is_rate_name(attribute):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            continue
        if usage.readable and attribute not in usage.rates:
            continue  # read nowhere outside __init__: a leftover, not a dropout
        if not usage.readable and not known and attribute == "p":
            continue  # `p` alone, unread: too common a name to call it a rate
        reason = "" if usage.gate else _not_a_gate(cls)
        kind = _kind(attribute, module)
        sites.append(DropoutSite(module_name, module, attribute, rate, kind, not reason, reason))
    return sites


def _not_a_gate(cls: type) -> str:
    """Why Monte Carlo dropout does not put a module of class ``cls`` in training mode."""
    usage = class_usage(cls)
    if not usage.readable:
        return (
            f"the source of {cls.__name__} cannot be read, so dropkit cannot tell whether it "
            f"applies the rate only in training mode"
        )
    if usage.other:
        where = "; ".join(usage.other[:3])
        return (
            f"{cls.__name__} also reads `self.training` for something other than dropout "
            f"({where}), so switching it to training mode to sample would change more than "
            f"dropout"
        )
    return (
        f"{cls.__name__} never reads `self.training`, so dropkit cannot tell what switches "
        f"this dropout on and off"
    )


def _apply_output_dropout(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's own ``dropout`` child applied to its output."""
    dropout = module.get_submodule("dropout")
    return dropout(output)  # type: ignore[no-any-return]


def apply_input_dropout(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
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
            model.register_forward_pre_hook(apply_input_dropout)
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
