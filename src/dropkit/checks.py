"""Mistake checks: find dropout placed or rated the way that hurts, and say why and what to do.

:func:`check_model` looks at a model and returns :class:`Finding` objects, each with what is
wrong, why it matters and how to fix it; :func:`format_findings` prints them. The mistake that
cannot be seen in the model, predicting with dropout still on, is caught at run time:
:func:`inference` is the context manager to predict in, and :func:`warn_if_training` installs a
guard that warns when the model is called in training mode under ``torch.no_grad()``.

What the checks see: modules, and, when given an example input, the order in which the forward
pass calls them. Dropout applied through ``torch.nn.functional`` (``F.dropout(x, 0.5)``) and
activations called as functions (``F.selu``) are invisible to them.

Example::

    >>> net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3), Dropout(0.5))
    >>> print(format_findings(check_model(net)))  # doctest: +SKIP
    warning: `3`: Dropout(p=0.5) comes after `2` (Linear), the last layer with parameters in ...
    1 warning, 0 notes
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dropkit._float_dropout import KNOWN_GATES, class_usage
from dropkit._validation import check_module, check_one_of
from dropkit.layers import (
    AlphaDropout,
    DropBlock2d,
    DropBlock3d,
    Dropout,
    DropPath,
    FeatureAlphaDropout,
    GaussianDropout,
    LockedDropout,
    SpatialDropout1d,
    SpatialDropout2d,
    SpatialDropout3d,
)
from dropkit.surgery import (
    ACTIVATIONS,
    DropoutSite,
    apply_input_dropout,
    find_dropout,
    find_dropout_sites,
    is_dropout,
)
from dropkit.uncertainty import mc_dropout

__all__ = ["Finding", "check_model", "format_findings", "inference", "warn_if_training"]

_SEVERITIES = ("warning", "info")

_M = TypeVar("_M", bound=nn.Module)

# Parameter-free modules that pass values on without mixing units: dropout next to them acts as
# if it were next to the layer beyond. PReLU (in ACTIVATIONS) has parameters; the checks that
# use this tuple only look at modules after the last parametrized one or between a dropout and
# a BatchNorm, where a PReLU still counts as an activation.
_PASSTHROUGH: tuple[type[nn.Module], ...] = (
    *ACTIVATIONS,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softmin,
    nn.Softmax2d,
    nn.LogSigmoid,
    nn.Threshold,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)

_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

_BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)

_TRANSFORMER_LAYERS: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)

_ALPHA: tuple[type[nn.Module], ...] = (
    AlphaDropout,
    FeatureAlphaDropout,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

# Dropout that zeroes whole channels or blocks of a feature map.
_SPATIAL: tuple[type[nn.Module], ...] = (
    SpatialDropout1d,
    SpatialDropout2d,
    SpatialDropout3d,
    DropBlock2d,
    DropBlock3d,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)

# Dropout that zeroes (or multiplies by noise) and rescales: breaks SELU's self-normalization.
_STANDARD: tuple[type[nn.Module], ...] = (
    *_SPATIAL,
    Dropout,
    GaussianDropout,
    LockedDropout,
    nn.Dropout,
)

_CITE_LI = 'Li et al. 2019, "Understanding the Disharmony between Dropout and Batch Normalization"'


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`check_model`.

    Attributes:
        severity: ``"warning"`` (very likely a mistake) or ``"info"`` (unusual; check it).
        module: qualified name of the module concerned (as in ``model.named_modules()``);
            ``""`` for the model itself.
        what: what was found, one sentence.
        why: why it matters, one sentence.
        fix: what to do, one sentence.
        check: short identifier of the check that found it, e.g. ``"after-output"`` (see
            :func:`check_model` for the list).
    """

    severity: str
    module: str
    what: str
    why: str
    fix: str
    check: str

    def __post_init__(self) -> None:
        check_one_of(self.severity, "severity", _SEVERITIES)

    def __str__(self) -> str:
        where = f"`{self.module}`" if self.module else "model"
        return f"{self.severity}: {where}: {self.what} {self.why} Fix: {self.fix}"


# --------------------------------------------------------------------------------------------
# Mode handling: inference() and the training-mode guard.


@contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """Restore every module's own ``training`` flag on exit, also when the body raises."""
    saved = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


@contextmanager
def inference(model: _M) -> Iterator[_M]:
    """Predict with ``model``: eval mode and ``torch.no_grad()`` for the body, then undone.

    On exit every module gets back its own ``training`` flag, also when the body raises, so a
    mixed setup (Monte Carlo dropout: dropout in training mode, the rest in eval) survives.
    ``torch.no_grad()`` rather than ``torch.inference_mode()``: the tensors it returns can still
    be used in autograd afterwards (as targets, or inputs of a later training step), which
    inference-mode tensors cannot.

    Example::

        >>> with inference(model) as m:
        ...     y = m(x)          # dropout off, BatchNorm uses its running statistics
    """
    check_module(model)
    with _modes_restored(model), torch.no_grad():
        model.eval()
        yield model


_GUARD_MESSAGE = (
    "{name} is called in training mode under torch.no_grad(): dropout is still active, so the "
    "predictions are noisy, and BatchNorm updates its running statistics with "
    "these inputs. Call model.eval() before predicting (model.train() to resume training), or "
    "predict inside `with dropkit.checks.inference(model):`. This guard warns once until the "
    "model is next called in eval mode; remove it with the handle's .remove()."
)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the code that called the module.

    Counted from the function calling :func:`warnings.warn` (level 1), past every frame of
    ``torch.nn`` (``Module.__call__`` and its helpers) and of this file.
    """
    frame = sys._getframe(1)  # the hook
    level = 1
    torch_nn = str(torch.nn.__file__).rsplit("__init__", 1)[0]
    while frame.f_back is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith(torch_nn)
    ):
        frame = frame.f_back
        level += 1
    return level


def warn_if_training(model: nn.Module) -> RemovableHandle:
    """Warn when ``model`` is called in training mode under ``torch.no_grad()``.

    The heuristic: gradients are off, so the call is not a training step; the model is in
    training mode, so dropout is on and BatchNorm learns from the inputs. That is what
    predicting without ``model.eval()`` looks like. The guard (a forward pre-hook on
    ``model``) emits one :class:`UserWarning`, pointed at the line that called the model, and
    stays silent until the model has been called in eval mode again. Calls with gradients
    enabled and calls in eval mode never warn; Monte Carlo dropout (model in eval mode, dropout
    modules in training mode) does not either, since only ``model.training`` is looked at.
    Legitimate no-grad calls in training mode (a teacher network, a momentum encoder) do warn:
    remove the guard from such models.

    Returns:
        The hook's handle: ``handle.remove()`` takes the guard off.

    Example::

        >>> handle = warn_if_training(model)
        >>> with torch.no_grad():
        ...     y = model(x)     # UserWarning if model.train() is still in effect
        >>> handle.remove()
    """
    check_module(model)
    state = {"warned": False}
    name = type(model).__name__

    def guard(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not module.training:
            state["warned"] = False
        elif not torch.is_grad_enabled() and not state["warned"]:
            state["warned"] = True
            warnings.warn(
                _GUARD_MESSAGE.format(name=name), UserWarning, stacklevel=_caller_stacklevel()
            )

    return model.register_forward_pre_hook(guard)


# --------------------------------------------------------------------------------------------
# The order of the layers.


@dataclass
class _Trace:
    """The tracked modules in forward order, with repeats when a module is called again."""

    steps: list[tuple[str, nn.Module]]
    called: bool  # from a forward pass (True) or registration order (False)
    ends_model: bool = True  # the last step's output is the model's output


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _is_tracked(module: nn.Module) -> bool:
    """Leaves, and modules with parameters of their own (``MultiheadAttention``)."""
    return next(module.children(), None) is None or _has_params(module)


def _registration_order(model: nn.Module) -> _Trace:
    steps = [(name, m) for name, m in model.named_modules() if _is_tracked(m)]
    # insert_dropout's input dropout is registered last but applied first, by a pre-hook.
    if any(hook is apply_input_dropout for hook in model._forward_pre_hooks.values()):
        first = [step for step in steps if step[0] == "input_dropout"]
        steps = first + [step for step in steps if step[0] != "input_dropout"]
    return _Trace(steps, called=False)


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, tuple):
        return model(*example_input)
    if isinstance(example_input, Mapping):
        return model(**example_input)
    return model(example_input)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)


def _same_output(model_output: Any, last_output: Any) -> bool:
    """Whether the model returned what its last called layer returned (or can't tell)."""
    outputs = list(_tensors(model_output))
    lasts = list(_tensors(last_output))
    if not outputs or not lasts:
        return True
    return any(
        a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
        for a in outputs
        for b in lasts
    )


def _call_order(model: nn.Module, example_input: Any) -> _Trace:
    """Run one forward pass in eval mode under no_grad, recording which modules it calls."""
    steps: list[tuple[str, nn.Module]] = []
    last: list[Any] = [None]

    def pre_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            steps.append((name, module))

        return hook

    def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if steps and steps[-1][1] is module:
            last[0] = output

    handles: list[RemovableHandle] = []
    try:
        for name, module in model.named_modules():
            if _is_tracked(module):
                handles.append(module.register_forward_pre_hook(pre_hook(name)))
                handles.append(module.register_forward_hook(post_hook))
        with inference(model):
            output = _call(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return _Trace(steps, called=True, ends_model=_same_output(output, last[0]) if steps else True)


# --------------------------------------------------------------------------------------------
# The checks.


def _describe(module: nn.Module) -> str:
    p = getattr(module, "p", None)
    rate = f"(p={p:g})" if isinstance(p, (int, float)) else ""
    return f"{type(module).__name__}{rate}"


def _is_weight_layer(module: nn.Module) -> bool:
    """A layer with parameters that is neither a normalization nor an activation (PReLU)."""
    return _has_params(module) and not isinstance(module, (*_NORMS, *ACTIVATIONS))


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".") if name else []
    return [model.get_submodule(".".join(parts[:i])) for i in range(len(parts))]


def _in_transformer_layer(model: nn.Module, name: str) -> bool:
    return any(isinstance(a, _TRANSFORMER_LAYERS) for a in _ancestors(model, name))


def _is_transformer(model: nn.Module) -> bool:
    """Whether the network has attention: torch's layers, or names that say so (heuristic)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.MultiheadAttention, *_TRANSFORMER_LAYERS)):
            return True
        words = (type(module).__name__ + " " + name.rsplit(".", 1)[-1]).lower()
        if any(word in words for word in ("attention", "attn", "transformer")):
            return True
    return False


def _check_after_output(trace: _Trace, model: nn.Module) -> list[Finding]:
    steps = trace.steps
    last = max((i for i, (_, m) in enumerate(steps) if _has_params(m)), default=None)
    if last is None or not trace.ends_model:
        return []
    tail = steps[last + 1 :]
    if not tail or not all(is_dropout(m) or isinstance(m, _PASSTHROUGH) for _, m in tail):
        return []
    out_name, out_layer = steps[last]
    order = "" if trace.called else " in registration order"
    return [
        Finding(
            "warning",
            name,
            f"{_describe(m)} comes after `{out_name}` ({type(out_layer).__name__}), the last "
            f"layer with parameters{order}: dropout on the network's output.",
            "It zeroes predictions at random during training, so the loss is computed on "
            "corrupted outputs, and it does nothing at inference: pure noise in the training "
            "signal, never regularization.",
            "Remove it; to regularize the output layer, put dropout before it instead "
            "(0.3–0.5 is usual there).",
            "after-output",
        )
        for name, m in tail
        if is_dropout(m) and not _in_transformer_layer(model, name)
    ]


def _check_before_batchnorm(trace: _Trace) -> list[Finding]:
    findings = []
    steps = trace.steps
    for i, (name, m) in enumerate(steps):
        if not is_dropout(m) or isinstance(m, DropPath):
            continue
        j = i + 1
        while j < len(steps) and (is_dropout(steps[j][1]) or isinstance(steps[j][1], _PASSTHROUGH)):
            j += 1
        if j < len(steps) and isinstance(steps[j][1], _BATCH_NORMS):
            bn_name, bn = steps[j]
            findings.append(
                Finding(
                    "warning",
                    name,
                    f"{_describe(m)} feeds `{bn_name}` ({type(bn).__name__}): dropout before "
                    f"BatchNorm.",
                    "Dropout changes the variance of its output between training and "
                    "inference, so at test time BatchNorm normalizes with running statistics "
                    f"that no longer fit (variance shift; {_CITE_LI}).",
                    f"Put the dropout after `{bn_name}`, or better use dropout only after the "
                    f"last BatchNorm layer of the network.",
                    "before-batchnorm",
                )
            )
    return findings


def _check_selu(model: nn.Module) -> list[Finding]:
    has_selu = any(isinstance(m, nn.SELU) for m in model.modules())
    findings = []
    for name, m in find_dropout(model):
        if has_selu and isinstance(m, _STANDARD):
            spatial = isinstance(m, _SPATIAL)
            replacement = "FeatureAlphaDropout" if spatial else "AlphaDropout"
            findings.append(
                Finding(
                    "warning",
                    name,
                    f"{_describe(m)} is standard dropout in a network with SELU activations.",
                    "Zeroing units and rescaling the rest changes the activations' mean and "
                    "variance, which breaks SELU's self-normalization (Klambauer et al. 2017).",
                    f"Use dropkit.{replacement}(p) instead, with p of 0.05 or 0.1.",
                    "selu",
                )
            )
        elif not has_selu and isinstance(m, _ALPHA):
            findings.append(
                Finding(
                    "info",
                    name,
                    f"{_describe(m)} is alpha dropout in a network without nn.SELU modules.",
                    "Alpha dropout sets dropped units to SELU's saturation value -1.758 and "
                    "re-normalizes for zero-mean, unit-variance SELU activations; after other "
                    "activations it is biased noise.",
                    "Use dropkit.Dropout (or SpatialDropout2d for feature maps) unless the "
                    "network applies SELU in forward() with F.selu, which this check cannot "
                    "see.",
                    "alpha-without-selu",
                )
            )
    return findings


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    kind: str
    why: str


_INPUT = _Range(
    0.1,
    0.2,
    "input dropout",
    "Inputs are usually dropped lightly (Srivastava et al. 2014 keep 80 % of them): they carry "
    "all the information the network gets.",
)
_CONV = _Range(
    0.1,
    0.25,
    "dropout on convolutional feature maps",
    "Convolutional layers have few parameters per unit and correlated neighbouring "
    "activations, so heavier dropout mostly slows training.",
)
_TRANSFORMER = _Range(
    0.1,
    0.3,
    "dropout in a transformer",
    "Transformers usually use 0.1 (Vaswani et al. 2017), 0.1–0.3 after the attention and "
    "feed-forward blocks.",
)
_DENSE = _Range(
    0.2,
    0.5,
    "dropout after a hidden dense layer",
    "Hidden dense layers usually use 0.2–0.5 (0.5 was best for hidden units in Srivastava et "
    "al. 2014).",
)
_HEAD = _Range(
    0.2,
    0.5,
    "dropout before the output layer",
    "The layer before the output usually gets 0.2–0.5 (0.3–0.5 in most classifiers, 0.5 in "
    "Srivastava et al. 2014).",
)
_ALPHA_RANGE = _Range(
    0.05,
    0.1,
    "alpha dropout",
    "Klambauer et al. 2017 recommend alpha dropout rates of 0.05 or 0.1.",
)
_DROP_PATH = _Range(
    0.0,
    0.5,
    "stochastic depth",
    "Stochastic depth rates usually ramp up from 0 to 0.1–0.3 at the last block, 0.5 for the "
    "largest models.",
)


def _rate_kind(
    trace: _Trace, index: int | None, module: nn.Module, transformer: bool
) -> _Range | None:
    """The usual range for the dropout module at ``trace.steps[index]`` (None: not checked)."""
    if isinstance(module, _ALPHA):
        return _ALPHA_RANGE
    if isinstance(module, DropPath):
        return _DROP_PATH
    if isinstance(module, LockedDropout):
        return None  # RNN rates vary widely (0.1–0.65 in AWD-LSTM)
    if isinstance(module, _SPATIAL):
        return _CONV
    if transformer:
        return _TRANSFORMER
    if index is None:
        return None
    steps = trace.steps
    before = [m for _, m in steps[:index] if _is_weight_layer(m)]
    after = [i for i in range(index + 1, len(steps)) if _is_weight_layer(steps[i][1])]
    last_weight = max((i for i, (_, m) in enumerate(steps) if _is_weight_layer(m)), default=None)
    if not before:
        return _INPUT
    if after and after[0] == last_weight:
        return _HEAD  # whatever comes before: a conv backbone's head is dense
    if isinstance(before[-1], (nn.Embedding, nn.EmbeddingBag)):
        return None
    if isinstance(before[-1], nn.modules.conv._ConvNd):
        return _CONV
    return _DENSE


def _check_rates(model: nn.Module, trace: _Trace) -> list[Finding]:
    findings: list[Finding] = []
    transformer = _is_transformer(model)
    positions: dict[int, list[int]] = {}
    for i, (_, m) in enumerate(trace.steps):
        positions.setdefault(id(m), []).append(i)
    for name, m in find_dropout(model):
        p = getattr(m, "p", None)
        if not isinstance(p, (int, float)) or isinstance(p, bool):
            continue
        p = float(p)
        if math.isnan(p) or p < 0 or p > 1:
            percent = 1 < p <= 100
            findings.append(
                Finding(
                    "warning",
                    name,
                    f"{type(m).__name__} has p={p:g}, which is not a probability.",
                    "p is the drop probability, in [0, 1]"
                    + (f"; {p:g} looks like a percentage." if percent else "."),
                    f"Set p={p / 100:g} (p/100)." if percent else "Set p to a value in [0, 1].",
                    "rate",
                )
            )
            continue
        if p == 1:
            findings.append(
                Finding(
                    "warning",
                    name,
                    f"{type(m).__name__} has p=1: it drops everything during training.",
                    "Nothing reaches the layers after it in training, so they learn nothing "
                    "from the input.",
                    "Use a rate below 1 (0.2–0.5 for hidden layers) or remove the layer.",
                    "rate",
                )
            )
            continue
        if p == 0:
            continue  # switched off on purpose
        indices: list[int | None] = [*positions.get(id(m), [])] or [None]
        for index in indices:
            usual = _rate_kind(trace, index, m, transformer)
            if usual is None:
                continue
            if usual is _INPUT and p > 0.5:
                findings.append(
                    Finding(
                        "warning",
                        name,
                        f"{_describe(m)} drops more than half of the network's inputs.",
                        "Most of the information the network gets is thrown away at every "
                        "step; Srivastava et al. 2014 drop 20 % of the inputs.",
                        "Use p between 0.1 and 0.2 on the inputs.",
                        "rate",
                    )
                )
            elif not usual.low <= p <= usual.high:
                side = "above" if p > usual.high else "below"
                findings.append(
                    Finding(
                        "info",
                        name,
                        f"{_describe(m)} is {side} the usual {usual.low:g}–{usual.high:g} for "
                        f"{usual.kind}.",
                        usual.why,
                        f"Use p in {usual.low:g}–{usual.high:g} unless a rate search on "
                        f"validation data says otherwise.",
                        "rate",
                    )
                )
    return findings


def _unregistered(value: object, registered: set[int], depth: int = 0) -> list[nn.Module]:
    """Dropout modules in a plain container that the model does not register."""
    if isinstance(value, nn.Module):
        return [m for m in value.modules() if is_dropout(m) and id(m) not in registered]
    if depth >= 4:
        return []
    items: Iterable[object]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return []
    return [m for item in items for m in _unregistered(item, registered, depth + 1)]


_INTERNALS = frozenset({"_modules", "_parameters", "_buffers"})


def _check_unregistered(model: nn.Module) -> list[Finding]:
    registered = {id(m) for m in model.modules()}
    findings = []
    for owner_name, owner in model.named_modules():
        for attribute, value in vars(owner).items():
            if attribute in _INTERNALS or not isinstance(
                value, (list, tuple, set, frozenset, dict)
            ):
                continue
            hidden = _unregistered(value, registered)
            if not hidden:
                continue
            kind = type(value).__name__
            holder = "nn.ModuleDict" if isinstance(value, dict) else "nn.ModuleList"
            count = f"{len(hidden)} dropout module" + ("s" if len(hidden) > 1 else "")
            findings.append(
                Finding(
                    "warning",
                    owner_name,
                    f"Attribute `{attribute}` is a plain {kind} holding {count} "
                    f"({', '.join(sorted({type(m).__name__ for m in hidden}))}) that the model "
                    f"does not register.",
                    "PyTorch only sees submodules assigned directly or held in nn.ModuleList, "
                    "nn.ModuleDict or nn.Sequential, so model.eval() never turns this dropout "
                    "off and .to(), state_dict() and find_dropout() miss it.",
                    f"Hold them in an {holder} (self.{attribute} = {holder}(...)).",
                    "unregistered",
                )
            )
    return findings


def _applied_by_parent(model: nn.Module, name: str) -> bool:
    """Whether the parent of the dropout module ``name`` reads its ``p`` and applies it itself.

    Hugging Face attention passes ``self.dropout.p`` to its attention function and never calls
    the module, so "never called" would be a false alarm.
    """
    parent_name, _, local = name.rpartition(".")
    if not local:
        return False
    parent_class: type = type(model.get_submodule(parent_name))
    return local in class_usage(parent_class).child_rates


def _check_never_called(model: nn.Module, trace: _Trace) -> list[Finding]:
    if not trace.called:
        return []
    called = {id(m) for _, m in trace.steps}
    return [
        Finding(
            "info",
            name,
            f"{_describe(m)} is registered but the forward pass never called it.",
            "A dropout layer created in __init__ but not used in forward() regularizes "
            "nothing (unless it sits on a branch this example input did not take).",
            "Call it in forward() where it belongs, or delete it.",
            "never-called",
        )
        for name, m in find_dropout(model)
        if id(m) not in called and not _applied_by_parent(model, name)
    ]


# Monte Carlo passes compared on the example input. Two passes through n dropout units of rate p
# agree with probability (p² + (1-p)²)^n: 0.45 for n = 4, p = 0.1. Eight passes all agree with
# probability (p⁸ + (1-p)⁸)^n (0.034 for n = 4, p = 0.1; below 1e-6 from n = 16), and the
# comparison stops at the first pass that differs, so a sampled model costs two passes.
_MC_PASSES = 8


@contextmanager
def _rng_restored(example_input: Any) -> Iterator[None]:
    """The global RNGs of the CPU and of the example input's CUDA devices, restored on exit."""
    tensors = _tensors(example_input)
    cuda = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(cuda):
        yield


def _mc_passes_identical(model: nn.Module, example_input: Any) -> bool | None:
    """Whether Monte Carlo passes on ``example_input`` all return the same tensors.

    None when the model returns no tensor. The passes run under :func:`dropkit.mc_dropout` and
    ``torch.no_grad()``, with the global RNG state and every module's mode restored afterwards.
    """
    with _rng_restored(example_input), torch.no_grad(), mc_dropout(model):
        first = [t.clone() for t in _tensors(_call(model, example_input))]
        if not first:
            return None
        for _ in range(_MC_PASSES - 1):
            other = list(_tensors(_call(model, example_input)))
            if len(other) != len(first) or not all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=True)
            ):
                return False
    return True


def _other_masks_drawn(model: nn.Module) -> bool:
    """Whether ``mc_dropout`` switches on mask-drawing modules that are not dropout sites.

    dropkit's weight-level, learned and recurrent modules (DropConnect, ConcreteDropout, …) and
    modules that apply a literal rate (``F.dropout(x, 0.1, self.training)``); torch's gates
    (``nn.MultiheadAttention``, the Transformer layers, RNNs) only apply their sites' rates.
    """
    with mc_dropout(model):
        return any(
            m.training and not is_dropout(m) and not isinstance(m, KNOWN_GATES)
            for m in model.modules()
        )


def _unreachable(site: DropoutSite) -> Finding:
    return Finding(
        "info",
        site.module_name,
        f"`{site.name}` (p={site.p:g}) is dropout that Monte Carlo dropout cannot switch on: "
        f"{site.reason}.",
        "mc_dropout and mc_predict leave it off, so the Monte Carlo samples miss its noise and "
        "understate the uncertainty; training is not affected.",
        "Apply it through a dropout module called in forward() (self.drop = nn.Dropout(p)), or "
        "make the module read self.training only to switch its dropout.",
        "mc-unreachable",
    )


def _check_monte_carlo(model: nn.Module, example_input: Any, trace: _Trace) -> list[Finding]:
    called = {id(m) for _, m in trace.steps}
    sites = [
        site
        for site in find_dropout_sites(model)
        if site.p > 0
        # a dropout module the forward pass never called has its own never-called note
        and not (
            trace.called
            and site.is_module
            and id(site.module) not in called
            and not _applied_by_parent(model, site.module_name)
        )
    ]
    findings = [_unreachable(site) for site in sites if not site.sampled]
    if not sites:
        return findings
    count = f"{len(sites)} dropout site" + ("s" if len(sites) > 1 else "") + " with p > 0"
    if example_input is None:
        if any(site.sampled for site in sites) or _other_masks_drawn(model):
            return findings
        what = f"Monte Carlo dropout passes would all be identical: {count}, none reachable."
    else:
        if not _mc_passes_identical(model, example_input):
            return findings
        what = (
            f"{_MC_PASSES} Monte Carlo dropout passes on the example input gave identical "
            f"outputs, although the model has {count}."
        )
    fix = (
        "See the mc-unreachable notes for the dropout it cannot reach; apply dropout through "
        "dropout modules called in forward(), or gate float rates on self.training alone."
        if len(findings)
        else "Check that forward() uses the dropout (and does not take a fused inference path "
        "that skips it) when the dropout modules are in training mode."
    )
    finding = Finding(
        "warning",
        "",
        what,
        "mc_predict would report zero uncertainty (std and mutual information exactly 0) for "
        "every input: the samples are one network, not draws from the approximate posterior.",
        fix,
        "mc-identical",
    )
    return [finding, *findings]


def check_model(model: nn.Module, example_input: Any = None) -> list[Finding]:
    """Look for dropout mistakes in ``model``; return the findings, warnings first.

    The checks (the ``check`` field of each :class:`Finding`):

    * ``after-output`` (warning): a dropout module after the last module with parameters, with
      only dropout and parameter-free activations, pooling or reshaping modules after it.
      Dropout inside ``nn.TransformerEncoderLayer`` / ``DecoderLayer`` (on residual branches)
      is exempt, and so is a tail whose output the model does not return (a residual sum).
    * ``before-batchnorm`` (warning): dropout followed by a BatchNorm layer, with only
      activations, pooling, reshaping or other dropout in between (Li et al. 2019). DropPath
      is exempt.
    * ``selu`` (warning): standard dropout (dropkit's ``Dropout``, spatial, Gaussian, locked,
      DropBlock; torch's ``nn.Dropout``, ``nn.Dropout1d/2d/3d``) in a model with an
      ``nn.SELU`` module. ``alpha-without-selu`` (info): alpha dropout with no ``nn.SELU``.
    * ``rate`` (warning): ``p`` outside [0, 1] (possible for torch's modules, whose ``p`` is
      a plain attribute; ``1 < p <= 100`` reads as a percentage), ``p == 1``, or more than 0.5
      on the inputs. (info): ``p`` outside the usual range for where the dropout sits: inputs
      0.1–0.2; feature maps (spatial dropout, DropBlock, or dropout after a convolution)
      0.1–0.25; any element-wise dropout in a network with attention 0.1–0.3; hidden dense
      layers and the layer before the output (even after convolutions) 0.2–0.5; alpha
      dropout 0.05–0.1; DropPath up to 0.5. ``p == 0``, ``LockedDropout`` and dropout right
      after an embedding are not checked.
    * ``unregistered`` (warning): dropout modules kept in a plain list, tuple, set or dict
      attribute of any module, which ``model.eval()`` and ``.to()`` never reach.
    * ``never-called`` (info, with ``example_input`` only): a dropout module the forward pass
      did not call (except one whose ``p`` its parent reads and applies itself, as Hugging
      Face attention does).
    * ``mc-unreachable`` (info): a dropout site (:func:`dropkit.surgery.find_dropout_sites`)
      with ``p > 0`` that :func:`dropkit.mc_dropout` cannot switch on, with where (the site's
      qualified name) and why (``DropoutSite.reason``).
    * ``mc-identical`` (warning): Monte Carlo passes would all be identical although the model
      has dropout with ``p > 0``: with ``example_input``, up to eight passes under
      ``mc_dropout`` return equal outputs; without it, no dropout site is reachable.

    Args:
        model: the model; left unchanged (modes included).
        example_input: if given, one forward pass is run on it (eval mode, ``torch.no_grad()``,
            every module's ``training`` flag restored afterwards, also on error) and the order
            in which it calls the modules is the order the checks use, so custom ``forward``
            methods are followed. ``mc-identical`` then runs up to eight Monte Carlo passes on
            it (under ``mc_dropout`` and ``torch.no_grad()``, the global RNG state restored).
            A tuple is unpacked into positional arguments and a mapping into keyword
            arguments; to pass one tuple, wrap it: ``((x, h),)``. Without it the
            order is registration order (the order ``__init__`` assigned the modules), exact
            for ``nn.Sequential`` and usually right otherwise. Errors of the forward pass
            propagate.

    Returns:
        The findings, warnings before notes; an empty list when nothing is wrong.
    """
    check_module(model)
    if example_input is None:
        trace = _registration_order(model)
    else:
        trace = _call_order(model, example_input)
    findings = [
        *_check_after_output(trace, model),
        *_check_before_batchnorm(trace),
        *_check_selu(model),
        *_check_rates(model, trace),
        *_check_unregistered(model),
        *_check_never_called(model, trace),
        *_check_monte_carlo(model, example_input, trace),
    ]
    unique = list(dict.fromkeys(findings))
    return sorted(unique, key=lambda f: _SEVERITIES.index(f.severity))


def format_findings(findings: Iterable[Finding]) -> str:
    """One line per finding, then ``"N warnings, M notes"`` (or ``"no problems found"``)."""
    findings = list(findings)
    if not findings:
        return "no problems found"
    warnings_ = sum(f.severity == "warning" for f in findings)
    notes = len(findings) - warnings_
    summary = (
        f"{warnings_} warning{'' if warnings_ == 1 else 's'}, "
        f"{notes} note{'' if notes == 1 else 's'}"
    )
    return "\n".join([*(str(f) for f in findings), summary])
