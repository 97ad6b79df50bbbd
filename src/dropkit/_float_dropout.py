"""Dropout that a module applies itself: float rates and training-mode gates, read from its code.

Many modules do not call a dropout *module* but apply dropout themselves, from a float rate
and their own ``training`` flag::

    F.dropout(x, self.dropout, training=self.training)                    # float attribute
    F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.)
    attention(..., dropout=0.0 if not self.training else self.dropout.p)  # a child's p

``nn.MultiheadAttention``, the ``nn.Transformer*`` layers (whose eval-mode "fast path" skips
dropout) and the RNNs with ``dropout=`` between layers are such modules too. Monte Carlo dropout
has to put these *gates* in training mode, which is safe only when their own code reads
``self.training`` for nothing but dropout. This module answers that question for a module's
class by reading the Python source of its methods (:func:`class_usage`); torch's modules above
are known and not read.

What counts as a read of ``self.training`` that gates dropout (anything else is "other"):

* ``training=self.training`` passed to a function whose name contains ``drop`` or
  ``attention`` (``F.dropout``, ``drop_path``, ``F.multi_head_attention_forward``), or
  ``self.training`` passed by position to a function whose name contains ``drop``;
* a conditional expression on it with a branch that is the constant 0 or a rate
  (``p if self.training else 0.``);
* an ``if`` statement whose test also reads a rate (``if not self.training or self.p == 0:``).

A rate is an attribute read as ``self.<name>`` where the name is ``p`` or contains ``drop``
(``dropout``, ``dropout_p``, ``attn_drop``, ``attention_dropout``, ``drop_prob`` …), or a
child's ``self.<child>.p``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

__all__ = ["KNOWN_GATES", "ClassUsage", "class_usage", "gates_own_dropout", "is_rate_name"]

KNOWN_GATES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.modules.rnn.RNNBase,
)
"""torch modules whose ``training`` flag switches only their own dropout and fast path."""

_KNOWN_RATES: dict[type[nn.Module], frozenset[str]] = {
    nn.MultiheadAttention: frozenset({"dropout"}),
    nn.modules.rnn.RNNBase: frozenset({"dropout"}),
}

# Methods whose reads of `self` say nothing about the forward pass.
_SKIPPED_METHODS = frozenset({"__init__", "__repr__", "extra_repr", "__setstate__", "train"})


def is_rate_name(name: str) -> bool:
    """Whether an attribute name reads as a drop rate: ``p`` or a name containing ``drop``."""
    return name == "p" or "drop" in name.lower()


@dataclass(frozen=True)
class ClassUsage:
    """How the methods of a module class read ``self.training`` and rates.

    Attributes:
        readable: whether the source of every method could be read.
        rates: attributes read as ``self.<name>`` (rate names only) outside ``__init__``.
        child_rates: children whose ``p`` is read as ``self.<child>.p``.
        gating: how many reads of ``self.training`` gate dropout.
        other: where ``self.training`` is read for something else, as ``"Class.method line N"``.
    """

    readable: bool
    rates: frozenset[str]
    child_rates: frozenset[str]
    gating: int
    other: tuple[str, ...]

    @property
    def gate(self) -> bool:
        """Its reads of ``self.training`` gate dropout, and nothing else (at least one)."""
        return self.readable and self.gating > 0 and not self.other


def gates_own_dropout(module: nn.Module) -> bool:
    """Whether Monte Carlo dropout can put ``module`` in training mode to sample its dropout."""
    cls: type = type(module)
    return class_usage(cls).gate


@functools.lru_cache(maxsize=512)
def class_usage(cls: type) -> ClassUsage:
    """How ``cls`` (with its bases up to ``nn.Module``) reads ``self.training`` and rates."""
    readable, gating = True, 0
    rates: set[str] = set()
    child_rates: set[str] = set()
    other: list[str] = []
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        if klass in KNOWN_GATES:
            rates |= _KNOWN_RATES.get(klass, frozenset())
            gating += 1
            continue
        if klass.__module__.startswith("torch.nn.") and issubclass(cls, KNOWN_GATES):
            continue  # torch's own bases of a known gate (Module helpers)
        for method_name, function in _methods(klass):
            if not _may_matter(function):
                continue
            tree = _parse(function)
            if tree is None:
                readable = False
                continue
            usage = _scan(tree)
            first = _first_line(function)
            rates |= usage.rates
            child_rates |= usage.child_rates
            gating += usage.gating
            where = f"{klass.__name__}.{method_name}, line"
            other += [f"{where} {first + line}" for line in usage.other]
    return ClassUsage(readable, frozenset(rates), frozenset(child_rates), gating, tuple(other))


def _methods(klass: type) -> Iterator[tuple[str, object]]:
    """The functions defined in ``klass`` itself (methods, static/class methods, properties)."""
    for name, value in vars(klass).items():
        if name in _SKIPPED_METHODS:
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value):
            yield name, value


def _unwrapped(function: object) -> object:
    """The function under its decorators (``functools.wraps`` chains), or itself."""
    try:
        return inspect.unwrap(function)  # type: ignore[arg-type]
    except ValueError:  # a cycle of __wrapped__
        return function


def _code(function: object) -> types.CodeType | None:
    """The code object of a Python function (under its decorators), else None."""
    code = getattr(_unwrapped(function), "__code__", None)
    return code if isinstance(code, types.CodeType) else None


def _names(code: types.CodeType) -> Iterator[str]:
    """The names a code object and the functions nested in it use (attributes included)."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _names(constant)


def _may_matter(function: object) -> bool:
    """Whether a function can read ``training`` or a rate: a cheap test before parsing it."""
    code = _code(function)
    if code is None:
        return True
    return any(name == "training" or is_rate_name(name) for name in _names(code))


@functools.lru_cache(maxsize=4096)
def _parse_cached(function: object) -> ast.Module | None:
    try:
        source = inspect.getsource(_unwrapped(function))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    try:
        return ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return None


def _parse(function: object) -> ast.Module | None:
    """The syntax tree of a function's source, or None when it cannot be read."""
    try:
        return _parse_cached(function)
    except TypeError:  # unhashable
        return None


def _first_line(function: object) -> int:
    """The line of the file before the function's source begins (0 when unknown)."""
    code = _code(function)
    return code.co_firstlineno - 1 if code is not None else 0


@dataclass
class _Usage:
    rates: set[str]
    child_rates: set[str]
    gating: int
    other: list[int]


def self_attribute(node: ast.AST) -> str | None:
    """``name`` for a read of ``self.name``, else None."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, ast.Load)
    ):
        return node.attr
    return None


def _is_rate(node: ast.AST) -> bool:
    """A read of ``self.<rate>`` or ``self.<child>.p``."""
    name = self_attribute(node)
    if name is not None:
        return name != "training" and is_rate_name(name)
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "p"
        and self_attribute(node.value) is not None
    )


def _mentions_rate(node: ast.AST) -> bool:
    return any(_is_rate(child) for child in ast.walk(node))


def _is_zero(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
        and node.value == 0
    )


def _function_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr.lower()
    if isinstance(func, ast.Name):
        return func.id.lower()
    return ""


def _gates(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether this read of ``self.training`` switches dropout (see the module docstring)."""
    child, parent = node, parents.get(node)
    while isinstance(parent, (ast.UnaryOp, ast.BoolOp, ast.Compare)):
        child, parent = parent, parents.get(parent)
    if isinstance(parent, ast.keyword):
        call = parents.get(parent)
        name = _function_name(call) if isinstance(call, ast.Call) else ""
        return parent.arg == "training" and ("drop" in name or "attention" in name)
    if isinstance(parent, ast.Call):
        return child in parent.args and "drop" in _function_name(parent)
    if isinstance(parent, ast.IfExp) and child is parent.test:
        branches = (parent.body, parent.orelse)
        return any(_is_zero(b) for b in branches) or any(_mentions_rate(b) for b in branches)
    if isinstance(parent, (ast.If, ast.While)) and child is parent.test:
        return _mentions_rate(parent.test)
    return False


def _scan(tree: ast.Module) -> _Usage:
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    usage = _Usage(set(), set(), 0, [])
    for node in ast.walk(tree):
        name = self_attribute(node)
        if name == "training":
            if _gates(node, parents):
                usage.gating += 1
            else:
                usage.other.append(getattr(node, "lineno", 0))
        elif name is not None and is_rate_name(name):
            usage.rates.add(name)
        if isinstance(node, ast.Attribute) and node.attr == "p":
            owner = self_attribute(node.value)
            if owner is not None:
                usage.child_rates.add(owner)
    return usage
