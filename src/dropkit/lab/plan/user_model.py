"""A user's own model in the lab: a factory ``f(p) -> nn.Module`` or an ``nn.Module`` instance.

:func:`model_source` turns what a user passes as ``model=`` into a :class:`ModelSource`, the
object the trainers call once per run: ``source.build(p, seed)`` returns a fresh module whose
dropout acts at rate ``p`` and whose initial weights are a function of ``seed``.

- **A factory** ``f(p)`` is called under ``torch.manual_seed(seed)`` (in a forked RNG state,
  so the caller's generator does not move): runs of the same seed start from the same weights
  whatever their rate, runs of different seeds from different weights.
- **An instance** is deep-copied per run, every dropout site of it re-rated with
  :func:`dropkit.set_dropout` (dropout modules and float rates such as
  ``nn.MultiheadAttention(dropout=...)``), and every module that holds parameters
  re-initialized with its ``reset_parameters()`` under the run's seed. A module with
  parameters but no ``reset_parameters`` cannot be re-initialized: that is an error naming it,
  with the fix (pass a factory).

Before anything trains, :func:`model_source` builds the model twice (rates 0.1 and 0.3) and
reports, as notes, every dropout site whose rate does not follow ``p`` (a factory that passes
its ``p`` to the hidden dropout but keeps ``attn_drop=0.1`` has that attention dropout left at
0.1: said, never silent), and refuses a model with no dropout at all when a rate above 0 is
asked for.

The model's *fingerprint* (part of every run's key) hashes its name, its parameter and buffer
names, shapes and dtypes, the class names of its modules, and the source code of the factory
and of the model's own classes where Python can read it; ``model_id`` replaces it when given
(the user then owns the id: change it when the model changes).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dropkit.lab.plan.config import CUSTOM_MODEL, ModelSpec
from dropkit.surgery import find_dropout_sites, set_dropout

__all__ = ["ModelSource", "model_source"]

_PROBES = (0.1, 0.3)


def _qualified_name(obj: object) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}" if module else str(name)


def _source(obj: object) -> str:
    """The source code of a function or class, or its name when Python cannot read it."""
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return _qualified_name(obj)


def _own_classes(module: nn.Module) -> list[type]:
    """The classes of ``module``'s submodules that are not PyTorch's or dropkit's."""
    seen: dict[str, type] = {}
    for sub in module.modules():
        cls = type(sub)
        if not cls.__module__.startswith(("torch.", "dropkit.")):
            seen.setdefault(_qualified_name(cls), cls)
    return [seen[name] for name in sorted(seen)]


def _fingerprint(name: str, module: nn.Module, extra_sources: Sequence[str]) -> str:
    digest = hashlib.sha256(name.encode())
    for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    for sub_name, sub in module.named_modules():
        digest.update(f"{sub_name}={type(sub).__qualname__};".encode())
    for text in [*extra_sources, *(_source(cls) for cls in _own_classes(module))]:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def _reset_owners(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that hold parameters themselves, each with a ``reset_parameters`` (or
    ``_reset_parameters``, as ``nn.MultiheadAttention`` names it); a ValueError naming the
    first one without."""
    owners = []
    for name, sub in module.named_modules():
        if not any(True for _ in sub.parameters(recurse=False)):
            continue
        if not callable(getattr(sub, "reset_parameters", None)) and not callable(
            getattr(sub, "_reset_parameters", None)
        ):
            where = repr(name) if name else "the model itself"
            raise ValueError(
                f"`model`: module {where} ({type(sub).__name__}) holds parameters but has no "
                "reset_parameters(), so the lab cannot re-initialize it for each seed; pass a "
                "factory instead: model=lambda p: MyModel(p) (called under each run's seed)"
            )
        owners.append((name, sub))
    return owners


def _reset(owners: Sequence[tuple[str, nn.Module]]) -> None:
    for _, sub in owners:
        reset = getattr(sub, "reset_parameters", None)
        if not callable(reset):
            reset = getattr(sub, "_reset_parameters")  # noqa: B009 - nn.MultiheadAttention's
        reset()


@dataclass
class ModelSource:
    """Builds a user's model for one run: ``build(p, seed)``.

    Attributes:
        name: the factory's or the model class's qualified name (``module:qualname``).
        fingerprint: the model's identity in run keys (see the module docstring).
        notes: what the checks found that the user should know (dropout left at its own rate).
        factory: the user's factory, or None for an instance.
        template: the user's instance (deep-copied per run), or None for a factory.
    """

    name: str
    fingerprint: str
    notes: tuple[str, ...] = ()
    factory: Callable[[float], nn.Module] | None = None
    template: nn.Module | None = field(default=None, repr=False)

    @property
    def spec(self) -> ModelSpec:
        """The :class:`~dropkit.lab.plan.config.ModelSpec` of runs of this model."""
        return ModelSpec(hidden=(), kind=CUSTOM_MODEL, name=self.name, fingerprint=self.fingerprint)

    def build(self, p: float, seed: int) -> nn.Module:
        """A fresh module: dropout at rate ``p``, initial weights drawn under ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.factory is not None:
                module = _call_factory(self.factory, p)
            else:
                assert self.template is not None
                module = copy.deepcopy(self.template)
                _reset(_reset_owners(module))
                set_dropout(module, p)
        return module


def _call_factory(factory: Callable[[float], nn.Module], p: float) -> nn.Module:
    module = factory(p)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"`model`: the factory {_qualified_name(factory)} must return an nn.Module for a "
            f"rate p, got {type(module).__name__} for p={p}"
        )
    return module


def _inert(module: nn.Module, attribute: str) -> bool:
    """Whether a rate site does nothing whatever its rate: the between-layers ``dropout`` of a
    one-layer ``nn.LSTM``/``GRU``/``RNN`` (torch drops the outputs of all layers but the last)."""
    return (
        isinstance(module, nn.RNNBase)
        and attribute == "dropout"
        and getattr(module, "num_layers", 2) == 1
    )


def _rate_notes(source: ModelSource) -> tuple[list[str], bool]:
    """Notes on sites whose rate does not follow ``p``; whether the model has any site."""
    built = {p: find_dropout_sites(source.build(p, 0)) for p in _PROBES}
    first, second = (built[p] for p in _PROBES)
    if [s.name for s in first] != [s.name for s in second]:
        return ["the model's dropout sites differ between rates; each rate trains as built"], True
    fixed = [
        f"{a.name!r} at {a.p:g}"
        for a, b in zip(first, second, strict=True)
        if not (a.p == _PROBES[0] and b.p == _PROBES[1]) and not _inert(a.module, a.attribute)
    ]
    notes = []
    if fixed:
        shown = ", ".join(fixed[:5]) + (f" and {len(fixed) - 5} more" if len(fixed) > 5 else "")
        notes.append(
            f"dropout not set by the swept rate p, left at its own rate: {shown}; "
            "pass p to it in your factory to sweep it too"
        )
    return notes, bool(first)


def model_source(
    model: Callable[[float], nn.Module] | nn.Module,
    *,
    model_id: str | None = None,
    rates: Sequence[float] = (),
) -> ModelSource:
    """Check a user's ``model=`` (a factory ``f(p)`` or an ``nn.Module``) and wrap it.

    Args:
        model: a factory called with the drop probability ``p`` that returns a fresh
            ``nn.Module`` with its dropout at ``p``, or an ``nn.Module`` (deep-copied,
            re-rated and re-initialized per run).
        model_id: the model's identity in run keys instead of the computed fingerprint.
        rates: the rates the runs will use: a rate above 0 needs dropout in the model.

    Raises:
        TypeError: ``model`` is neither; the factory does not return an ``nn.Module``.
        ValueError: an instance with a parameterized module that cannot be re-initialized;
            a rate above 0 for a model without dropout; an empty ``model_id``.
    """
    if model_id is not None and (not isinstance(model_id, str) or not model_id.strip()):
        raise ValueError(f"`model_id` must be a non-empty string, got {model_id!r}")
    if isinstance(model, nn.Module):
        _reset_owners(model)  # refuse an instance that cannot be re-initialized, now
        name = _qualified_name(type(model))
        source = ModelSource(name=name, fingerprint="", template=model)
        sources: list[str] = []
    elif callable(model):
        name = _qualified_name(model)
        source = ModelSource(name=name, fingerprint="", factory=model)
        sources = [_source(model)]
    else:
        raise TypeError(
            "`model` must be a factory f(p) -> nn.Module or an nn.Module, "
            f"got {type(model).__name__}"
        )
    example = source.build(_PROBES[0], 0)
    if not any(True for _ in example.parameters()):
        raise ValueError(f"`model` {name}: the model has no parameters to train")
    notes, has_dropout = _rate_notes(source)
    if not has_dropout and any(p > 0 for p in rates):
        raise ValueError(
            f"`model` {name} has no dropout for the rate p to act on (no dropout module and no "
            "dropout rate attribute): build it with dropout at rate p (the factory's argument), "
            "or sweep the input dropout (`input_p`) only"
        )
    source.fingerprint = model_id or _fingerprint(name, example, sources)
    source.notes = tuple(notes)
    return source
