"""The batched trainer for any user model: R runs of one ``nn.Module`` as one computation.

:func:`train_custom` trains the runs of a user's model that differ in dropout rate, seed, fold
or regularization strengths together: the R modules' parameters and buffers are stacked with
``torch.func.stack_module_state``; one forward ``torch.vmap``-s
``torch.func.functional_call`` over the runs (in_dims 0 for parameters, buffers and each run's
own mini-batch); the loss is the sum over runs of each run's mean loss, with one backward
pass and ONE Adam (:func:`dropkit.lab.train.contract.make_adam`) over the stacked tensors. Adam is
element-wise, so per run it is the same optimizer as one Adam per run.

Why counter-based masks. The property this trainer keeps is: *a run trained in a batch gives
the result it gives alone* (final weights equal to float rounding). PyTorch's randomness
cannot give that under ``vmap``: ``randomness="same"`` gives every run the same masks, and
``"different"`` draws one tensor for the whole batch, so a run's masks depend on its position
and on the batch's size. So each dropout module is replaced (:func:`~dropkit.lab.
counter_masks.counter_module`) by a :class:`~dropkit.lab.train.counter_masks.CounterDropout` whose
keep decisions are a hash of (run seed, optimizer step, layer index, element index); its seed,
rate and current key are buffers, stacked and vmapped like any buffer, so per-run rates are
tensors (and early/late dropout is a per-run rate of 0 outside the window). Inverted dropout
``x·m / (1 − p)``: ``p = 0`` gives ``x`` exactly, ``p = 1`` zeros. Covered: ``nn.Dropout``,
``nn.Dropout1d/2d/3d`` (one draw per (sample, channel)), ``nn.AlphaDropout``,
``nn.FeatureAlphaDropout``, dropkit's ``Dropout``, ``SpatialDropout1d/2d/3d``,
``AlphaDropout``, ``FeatureAlphaDropout``, ``DropPath`` and ``LockedDropout``.

Each run's epoch order comes from ``torch.Generator().manual_seed(seed)`` (drawn outside vmap),
as do its input jitter (``augment``), so its data and its masks are functions of its config.
When one batch holds every fit row no order is drawn (it would only move rows between mask
elements), and runs that share their rows get them once (vmap's ``in_dims`` None).

Per step, the work outside the model is a few tensor ops whatever R is: the mask keys of all
runs and layers for 256 steps come from one call of
:func:`~dropkit.lab.train.counter_masks.mask_key` and are copied into the stacked ``key`` buffers;
an epoch's evaluation is one forward pass per chunk of :data:`EVAL_CHUNK` rows over the fit and
test rows of every run, gathered once (and early stopping's rows, every epoch, under early
stopping), and its metrics stay tensors until the epoch is recorded. The validation rows are
measured once, after the last epoch.

Rows. Runs fit on the ``fit_idx`` rows of :func:`dropkit.lab.plan.splits.validation_rows` and report
``val_*`` on its ``val_idx`` rows, which choose the winner; early-stopping runs take their rows
from :func:`dropkit.lab.plan.splits.stopping_rows` (20% of the fit rows with a validation split, 20%
of the training split without), as the other trainers do: early stopping never sees the rows
that choose the winner.

Compiling (``compile``, by default for runs with enough work, :data:`COMPILE_MIN_WORK`). The
training step is ``torch.func.grad_and_value`` of the summed loss, so forward and backward are
one graph; ``torch.compile`` fuses the mask hashing, the activations and their gradients into
a few loops around the BLAS and convolution calls. (A compiled forward with autograd's
backward would hand the backward the ReLU's and the masks' bool tensors, which torch's CPU
code generation stores very slowly.) The evaluation step is compiled with a graph pass that
writes products with an inner size of at most 8 or one output column, and convolutions with at
most 9 weights per output, as sums of broadcast products, which the compiler fuses with the
ops around them instead of storing their outputs. Each group compiles into a cache of its
own; the evaluation chunks are padded to one size, so each step is one graph (and the smaller
last batch of an epoch runs eagerly in short trainings, :data:`COMPILE_PARTIAL_EPOCHS`). The
masks are the same as eagerly; the numbers agree to float rounding. A step that fails to
compile is logged and the group trains eagerly.

Fallbacks, all training the same functions run by run (R = 1 per computation, no vmap, the same
counter masks, hence the same results), each with a one-line reason passed to ``log``:

- a model ``vmap`` cannot run (data-dependent control flow, ``.item()``, random ops of its
  own): found by trying one forward and backward on a two-row slice under
  ``vmap(randomness="error")``, not by guessing;
- dropout that cannot be swapped: a float rate used inside a module's own code
  (``nn.MultiheadAttention(dropout=...)``, ``F.dropout(x, self.p)``, listed by
  :func:`dropkit.find_dropout_sites`) or a dropout module with no counter equivalent
  (Gaussian dropout, DropBlock): these draw from PyTorch's RNG, which is seeded with the
  run's seed for the run (``torch.random.fork_rng`` + ``torch.manual_seed``).

``batched=True`` turns a fallback into a ``ValueError`` naming the reason; ``batched=False``
trains every run alone. (BatchNorm needs no fallback: ``vmap`` updates stacked running
statistics in place, per run.) Runs whose modules differ in structure (a source that builds
``nn.Identity`` instead of ``nn.Dropout`` at ``p = 0``) or, with k-fold cross-validation, in
the number of fit rows train in separate groups; groups are also cut to fit a memory budget.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import re
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from dropkit.lab.plan.arms import entry_regularizer, trainer_entries
from dropkit.lab.plan.config import RunConfig
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.effects import run_effects
from dropkit.lab.plan.records import MAX_STATE_PARAMETERS
from dropkit.lab.plan.splits import stopping_rows, validation_rows
from dropkit.lab.train.contract import (
    METRICS,
    BatchResult,
    EarlyStopping,
    EpochTicker,
    augment_batch,
    bound_unit_norms_,
    dropout_on,
    feature_scale,
    make_adam,
    sample_scores,
)
from dropkit.lab.train.counter_masks import CounterDropout, counter_module, mask_key
from dropkit.lab.train.stacked import compiler_available
from dropkit.surgery import find_dropout_sites

__all__ = [
    "COMPILE_MIN_WORK",
    "COMPILE_PARTIAL_EPOCHS",
    "EVAL_CHUNK",
    "MEMORY_FRACTION",
    "SUPPORTED_REGULARIZERS",
    "ModelSource",
    "train_custom",
]

EVAL_CHUNK = 512
"""Rows per run of one evaluation forward pass (at most: the rows are cut into equal chunks).
Small enough that a CNN's activations for tens of runs stay in reused heap memory (the
allocator maps and faults in fresh pages for every buffer over 32 MiB, which costs more than
the convolution)."""

COMPILE_MIN_WORK = 2**30
"""Work per run (:meth:`_Group.work_bytes`, bytes) from which a group's steps are compiled by
default (``compile=None``): compiling costs seconds (tracing, and on the first use of a
structure, building its kernels), repaid by runs with about this much memory traffic or more.
It does not depend on the number of runs, so a run is compiled alone as in a batch."""

COMPILE_PARTIAL_EPOCHS = 50
"""In a compiled group, the smaller last batch of each epoch runs through its own compiled
graph from this many epochs on; with fewer it runs eagerly (tracing a second graph costs
about as much as that many eager steps)."""

MEMORY_FRACTION = 0.5
"""Share of the free memory (RAM, or the CUDA device's) a batch may use by default."""

VMAPPED_REGULARIZERS = trainer_entries("vmapped")
"""Regularizer entries a user model's runs may have: derived from the registry
(:mod:`dropkit.lab.plan.arms`), the arms that list ``vmapped`` in their ``trainers``; the others
change the built-in models' modules."""

SUPPORTED_REGULARIZERS = tuple(
    sorted(name for name in VMAPPED_REGULARIZERS if entry_regularizer(name).targets is None)
)
"""Of :data:`VMAPPED_REGULARIZERS`, those that leave the targets alone (the rest transform
them: ``label_smoothing``)."""

_INPUT = "input_dropout"
_MODEL = "model"


class ModelSource(Protocol):
    """What :func:`train_custom` builds modules from."""

    def build(self, p: float, seed: int) -> nn.Module:
        """A fresh module, weights initialized from ``seed``, its dropout modules at rate ``p``."""
        ...


class _Wrapped(nn.Module):
    """The user's module behind an optional counter-based input dropout (layer 0)."""

    def __init__(self, model: nn.Module, input_dropout: nn.Module) -> None:
        super().__init__()
        self.input_dropout = input_dropout
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model(self.input_dropout(x))


@dataclass
class _Run:
    """One run while it is prepared and trained."""

    index: int
    config: RunConfig
    module: _Wrapped
    fit: Tensor  # (n_fit,) int64 rows of the training split it trains on
    val: Tensor  # (n_val,) int64 validation rows: they choose, so training never reads them
    stop: Tensor  # (n_stop,) int64 rows early stopping watches (empty without it)
    reasons: list[str]
    sites: list[tuple[str, str, float]]  # unswapped rate sites: (module name, attribute, rate)
    signature: tuple[Any, ...] = ()
    state_keys: list[str] = field(default_factory=list)  # the user module's state_dict keys
    canonical: dict[str, str] = field(default_factory=dict)  # see _canonical_names
    width: int = 0  # outputs per sample, once a forward pass has shown them (0: not yet)


@dataclass
class _Output:
    """What one run produced."""

    history: NDArray[np.float64]  # (metrics, epochs)
    info: dict[str, float] = field(default_factory=dict)
    state: dict[str, Tensor] | None = None


# --- preparing runs ----------------------------------------------------------------------------


def _check_configs(configs: Sequence[RunConfig], data: Dataset) -> None:
    if not configs:
        raise ValueError("`configs` must hold at least one run")
    first = configs[0]
    for config in configs[1:]:
        if config.shape_key() != first.shape_key():
            raise ValueError(
                "every config of `configs` must share data, model and train settings; "
                f"run with seed {config.seed} differs from the first"
            )
    for config in configs:
        for name, _ in config.regularizers:
            if name not in VMAPPED_REGULARIZERS:
                transforming = sorted(VMAPPED_REGULARIZERS.difference(SUPPORTED_REGULARIZERS))
                raise ValueError(
                    f"regularizer {name!r} cannot train a custom model; supported: "
                    f"{', '.join(SUPPORTED_REGULARIZERS)} and {', '.join(transforming)}"
                )
            if data.task == "regression" and entry_regularizer(name).targets is not None:
                raise ValueError(
                    f"regularizer {name!r} transforms class targets; the task is regression"
                )
    if data.task == "regression" and data.n_classes:
        raise ValueError(f"a regression data set has n_classes 0, got {data.n_classes}")


def _swap_dropout(wrapped: _Wrapped, seed: int) -> tuple[list[str], list[tuple[str, str, float]]]:
    """Replace the model's dropout modules by counter-based ones (layers 1, 2, … in
    registration order); return the reasons that keep the run off vmap and the unswapped rate
    sites (names relative to ``wrapped``)."""
    reasons: list[str] = []
    unswapped: list[tuple[str, str, float]] = []
    replacements: dict[int, nn.Module] = {}
    layer = 0
    for site in find_dropout_sites(wrapped.model):
        name = f"{_MODEL}.{site.module_name}" if site.module_name else _MODEL
        if site.is_module:
            layer += 1
            counter = counter_module(site.module, seed, layer)
            if counter is not None:
                replacements[id(site.module)] = counter
                continue
            what = f"dropout module `{site.name}` ({type(site.module).__name__})"
            detail = "has no counter-based equivalent"
        else:
            what = f"the float rate `{site.name}` of {type(site.module).__name__}"
            detail = "is applied inside the module's own code"
        unswapped.append((name, site.attribute, site.p))
        if site.p > 0:
            reasons.append(f"{what} {detail}: it draws from torch's RNG")
    for parent in wrapped.modules():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]
    return reasons, unswapped


def _signature(module: nn.Module) -> tuple[Any, ...]:
    """What runs must share to stack: the module tree and every tensor's name, shape, dtype."""
    tensors = [
        (name, tuple(t.shape), t.dtype)
        for name, t in (*module.named_parameters(), *module.named_buffers())
    ]
    return (repr(module), tuple(tensors))


def _prepare(
    source: ModelSource,
    data: Dataset,
    configs: Sequence[RunConfig],
    device: torch.device,
) -> list[_Run]:
    any_input = any(c.input_p > 0 for c in configs)
    Rows = tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]
    split_cache: dict[tuple[int | None, bool], Rows] = {}
    runs = []
    for index, config in enumerate(configs):
        model = source.build(config.p, config.seed)
        if not isinstance(model, nn.Module):
            raise TypeError(f"`source.build` must return an nn.Module, got {type(model).__name__}")
        entry = (
            CounterDropout(config.input_p, config.seed, 0, name="input dropout")
            if any_input
            else nn.Identity()
        )
        wrapped = _Wrapped(model, entry)
        reasons, sites = _swap_dropout(wrapped, config.seed)
        wrapped.to(device)
        # Early stopping's rows (splits.stopping_rows) are never the validation rows.
        stops = run_effects(config).patience is not None
        if (config.fold, stops) not in split_cache:
            if stops:
                rows = stopping_rows(data.y_train, config.data, config.fold)
            else:
                fit, val = validation_rows(data.y_train, config.data, config.fold)
                rows = (fit, val[:0], val)
            split_cache[config.fold, stops] = rows
        fit, stop, val = split_cache[config.fold, stops]
        if not len(fit):
            raise ValueError(f"run with seed {config.seed} has no training rows left to fit")
        run = _Run(
            index,
            config,
            wrapped,
            torch.from_numpy(np.asarray(fit, dtype=np.int64)),
            torch.from_numpy(np.asarray(val, dtype=np.int64)),
            torch.from_numpy(np.asarray(stop, dtype=np.int64)),
            reasons,
            sites,
        )
        run.signature = (_signature(wrapped), len(fit), len(stop), len(val))
        run.state_keys = list(model.state_dict())
        run.canonical = _canonical_names(wrapped)
        runs.append(run)
    return runs


# --- memory ------------------------------------------------------------------------------------


def _free_memory(device: torch.device) -> int:
    """Bytes free now: ``torch.cuda.mem_get_info`` on CUDA, available RAM otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 32


def _tensor_bytes(tensors: Iterator[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# --- one group ---------------------------------------------------------------------------------


@dataclass
class _Shared:
    """Data and settings every group of a call uses."""

    data: Dataset
    device: torch.device
    dtype: torch.dtype
    x_train: Tensor  # (n, d) on the device
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_cpu: Tensor  # (n, d) for augmentation
    scale: Tensor
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class _Head:
    """What the model's output must be: ``width`` values per sample (``what`` names them) for
    a ``task``, or two logits for two classes (``two_logits``). Plain values, so a compiled
    step specializes on them."""

    task: str
    width: int
    what: str
    two_logits: bool = False


def _per_run_shape(out: Tensor, head: _Head) -> Tensor:
    """``out`` ``(R, N, k)`` checked against ``(N, head.width)`` (``(N,)`` allowed for one
    output, ``(N, 2)`` for two classes: two logits and cross-entropy)."""
    shape = tuple(out.shape[1:])
    if len(shape) == 2 and (shape[1] == head.width or (head.two_logits and shape[1] == 2)):
        return out
    if len(shape) == 1 and head.width == 1:
        return out.unsqueeze(-1)
    widths = f"(N, {head.width}) or (N, 2)" if head.two_logits else f"(N, {head.width})"
    raise ValueError(
        f"the model's output must have shape {widths} for N samples ({head.what}), "
        f"got {shape}" + (f" for N = {shape[0]}" if shape else "")
    )


def _data_loss(
    out: Tensor, y: Tensor, task: str, soft: Tensor | None, use_soft: Tensor | None
) -> Tensor:
    """Per-run mean data loss ``(R,)`` of outputs ``(R, b, k)`` for targets ``(R, b)``:
    mean squared error (regression), binary cross-entropy of one logit, or cross-entropy;
    ``soft`` targets (``(R, b)`` or ``(R, b, k)``) for the runs where ``use_soft``."""
    if task == "regression":
        return (out[..., 0] - y).pow(2).mean(-1)
    binary = out.shape[-1] == 1
    if binary:
        z = out[..., 0]
        hard = F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none")
    else:
        hard = F.cross_entropy(out.transpose(1, 2), y, reduction="none")
    loss = hard.mean(-1)
    if soft is None or use_soft is None:
        return loss
    if binary:
        smooth = F.binary_cross_entropy_with_logits(out[..., 0], soft, reduction="none")
    else:
        smooth = F.cross_entropy(out.transpose(1, 2), soft.transpose(1, 2), reduction="none")
    return torch.where(use_soft, smooth.mean(-1), loss)


# --- the steps (pure functions of their arguments, so torch.compile can take them) -------------


def _apply(
    template: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    shared_rows: bool,
    vmapped: bool,
) -> Tensor:
    """The model's outputs ``(R, N, …)`` for inputs ``(R, N, *sample)`` (``shared_rows``:
    ``(N, *sample)`` for every run): ``vmap`` of ``functional_call`` over the stacked tensors,
    or (not ``vmapped``, R = 1) one ``functional_call`` on run 0's."""

    def call(p: dict[str, Tensor], b: dict[str, Tensor], inputs: Tensor) -> Tensor:
        out = functional_call(template, (p, b), (inputs,))
        if not isinstance(out, Tensor):
            raise TypeError(f"the model must return a Tensor, got {type(out).__name__}")
        return out

    if vmapped:
        fn = torch.vmap(call, in_dims=(0, 0, None if shared_rows else 0), randomness="error")
        out: Tensor = fn(params, buffers, x)
        return out
    one = call(
        {k: v[0] for k, v in params.items()},
        {k: v[0] for k, v in buffers.items()},
        x if shared_rows else x[0],
    )
    return one.unsqueeze(0)


def _outputs(
    template: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    head: _Head,
    shared_rows: bool,
    vmapped: bool,
) -> tuple[Tensor, Tensor]:
    """The runs' outputs ``(R, b, k)`` on the rows ``x``, checked against the head, and the
    targets ``y`` as ``(R, b)`` (broadcast over the runs with ``shared_rows``)."""
    out = _per_run_shape(_apply(template, params, buffers, x, shared_rows, vmapped), head)
    return out, (y.expand(out.shape[0], *y.shape) if shared_rows else y)


def _train_loss(
    template: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    soft: Tensor | None,
    use_soft: Tensor | None,
    l1: Tensor | None,
    l2: Tensor | None,
    penalized: tuple[str, ...],
    head: _Head,
    shared_rows: bool,
    vmapped: bool,
) -> Tensor:
    """The summed loss of one mini-batch: per run the mean data loss of its rows ``x``
    (``(R, b, *sample)``, or ``(b, *sample)`` with ``shared_rows``) against ``y`` (``(R, b)``
    or ``(b,)``), plus ``l1·Σ|w|`` / ``l2·Σw²`` (``(R,)`` strengths, None when no run has
    one) over the weights ``penalized``."""
    out, y = _outputs(template, params, buffers, x, y, head, shared_rows, vmapped)
    if head.task == "regression":
        y = y.to(out.dtype)
    loss = _data_loss(out, y, head.task, soft, use_soft).sum()
    for name in penalized:
        w = params[name].flatten(1)
        if l1 is not None:
            loss = loss + (l1 * w.abs().sum(1)).sum()
        if l2 is not None:
            loss = loss + (l2 * w.pow(2).sum(1)).sum()
    return loss


def _sample_stats(
    template: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    head: _Head,
    shared_rows: bool,
    vmapped: bool,
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(squared error, absolute error)`` or ``(correct, cross-entropy)``,
    ``(R, n)`` float64, of the rows ``x`` (as :func:`_train_loss`)."""
    out, y = _outputs(template, params, buffers, x, y, head, shared_rows, vmapped)
    if head.task == "regression":
        error = out[..., 0].double() - y.double()
        return error.pow(2), error.abs()
    correct, loss = sample_scores(out, y)
    return correct.double(), loss.double()


def _train_grads(
    template: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    soft: Tensor | None,
    use_soft: Tensor | None,
    l1: Tensor | None,
    l2: Tensor | None,
    penalized: tuple[str, ...],
    head: _Head,
    shared_rows: bool,
    vmapped: bool,
) -> tuple[dict[str, Tensor], Tensor]:
    """The gradients of :func:`_train_loss` with respect to ``params``, and the loss, by
    ``torch.func.grad_and_value``: the forward and backward passes as one function, which a
    compiler fuses into one graph (no activations handed to a separate backward graph)."""

    def loss(stacked: dict[str, Tensor], state: dict[str, Tensor]) -> Tensor:
        return _train_loss(
            template, stacked, state, x, y, soft, use_soft, l1, l2, penalized, head,
            shared_rows, vmapped,
        )  # fmt: skip

    # The buffers are an argument (not captured): BatchNorm updates them in place.
    grads, value = torch.func.grad_and_value(loss)(params, buffers)
    return grads, value


def _narrow_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for a small inner size, as broadcast and sum."""
    return (a.unsqueeze(-1) * b.unsqueeze(1)).sum(-2)


def _column_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for one output column, as broadcast and sum."""
    return (a * b.transpose(1, 2)).sum(-1, keepdim=True)


_KEY_BLOCK = 256
"""Optimizer steps whose mask keys :meth:`_Group._set_keys` computes at once."""

_SMALL_KERNEL = 9
"""Weights per output (``C/groups·kh·kw``) up to which the evaluation step unrolls a 2-d
convolution (one input channel, 3×3)."""


def _unrolled_convolution(
    x: Tensor,
    w: Tensor,
    bias: Tensor | None,
    shape: tuple[int, ...],
    stride: list[int],
    padding: list[int],
    groups: int,
) -> Tensor:
    """A 2-d convolution with few weights per output (``C/groups·kh·kw``) as a sum of
    shifted, scaled copies of its input."""
    n, _, height, width = x.shape
    out_channels, per_group, kh, kw = shape
    per_out = out_channels // groups
    out_h = (height + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (width + 2 * padding[1] - kw) // stride[1] + 1
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    padded = padded.view(n, groups, per_group, *padded.shape[2:])
    w = w.view(groups, per_out, per_group, kh, kw)
    total: Tensor | None = None
    for c in range(per_group):
        for i in range(kh):
            for j in range(kw):
                patch = padded[
                    :,
                    :,
                    c,
                    i : i + stride[0] * (out_h - 1) + 1 : stride[0],
                    j : j + stride[1] * (out_w - 1) + 1 : stride[1],
                ]
                term = patch.unsqueeze(2) * w[:, :, c, i, j].view(1, groups, per_out, 1, 1)
                total = term if total is None else total + term
    assert total is not None
    out = total.reshape(n, out_channels, out_h, out_w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


@functools.cache
def _evaluation_options() -> dict[str, Any]:
    """Inductor options of the compiled evaluation step: a graph pass that writes each batched
    product with an inner size of at most 8 or one output column (``(R, N, 2) @ (R, 2, 500)``,
    ``(R, N, 500) @ (R, 500, 1)``) as broadcast and sum, which the compiler fuses with the ops
    around it into one loop instead of storing a BLAS call's ``(R, N, 500)`` output (the
    built-in trainer's ``_mm`` does the same by hand). In the training step, whose backward
    reuses those outputs, the BLAS calls are faster, so it keeps them."""
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch._inductor.pattern_matcher import (
        Arg,
        CallFunction,
        Match,
        PatternMatcherPass,
        register_graph_pattern,
    )

    patterns = PatternMatcherPass()

    def small_product(match: Match, a: torch.fx.Node, b: torch.fx.Node) -> None:
        left, right = a.meta.get("val"), b.meta.get("val")
        if not isinstance(left, Tensor) or not isinstance(right, Tensor):
            return
        if not left.is_floating_point() or left.ndim != 3 or right.ndim != 3:
            return
        if left.shape[2] <= 8:
            match.replace_by_example(_narrow_product, [a, b])
        elif right.shape[2] == 1:
            match.replace_by_example(_column_product, [a, b])

    register_graph_pattern(
        CallFunction(torch.ops.aten.bmm.default, Arg(), Arg()), pass_dict=patterns
    )(small_product)

    def small_convolution(
        match: Match,
        x: torch.fx.Node,
        w: torch.fx.Node,
        bias: torch.fx.Node | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        transposed: bool,
        output_padding: list[int],
        groups: int,
    ) -> None:
        weight = w.meta.get("val")
        if not isinstance(weight, Tensor) or not weight.is_floating_point():
            return
        if transposed or weight.ndim != 4 or any(d != 1 for d in dilation):
            return
        if weight.shape[1] * weight.shape[2] * weight.shape[3] > _SMALL_KERNEL:
            return
        shape = tuple(weight.shape)

        def unrolled(x: Tensor, w: Tensor, *rest: Tensor) -> Tensor:
            return _unrolled_convolution(
                x, w, rest[0] if rest else None, shape, stride, padding, groups
            )

        inputs = [x, w] if bias is None else [x, w, bias]
        match.replace_by_example(unrolled, inputs)

    register_graph_pattern(
        CallFunction(
            torch.ops.aten.convolution.default,
            Arg(),
            Arg(),
            Arg(),
            Arg(),
            Arg(),
            Arg(),
            Arg(),
            Arg(),
            Arg(),
        ),
        pass_dict=patterns,
    )(small_convolution)

    class SmallProducts(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            patterns.apply(graph)

        def uuid(self) -> str:
            return f"dropkit.lab.train.vmapped.small-products-2-{_SMALL_KERNEL}"

    return {"post_grad_custom_post_pass": SmallProducts()}


_Step = TypeVar("_Step", bound=Callable[..., Any])


def _own_code(function: _Step) -> _Step:
    """``function`` with a code object of its own: ``torch.compile`` keeps its compiled graphs
    per code object, at most ``recompile_limit`` of them, so each group of runs compiles into
    its own cache instead of evicting another's (and falling back to eager)."""
    copy = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    return cast(_Step, copy)


class _Group:
    """R runs of one structure trained as one computation (``vmapped``) or, with R = 1, on
    the same functions without vmap; ``compiled``: the training and evaluation steps run
    through ``torch.compile`` (a failure to compile is logged and the steps run eagerly)."""

    def __init__(
        self,
        runs: list[_Run],
        shared: _Shared,
        vmapped: bool,
        release: bool = True,
        compiled: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.runs, self.shared, self.vmapped = runs, shared, vmapped
        self.size = len(runs)
        self.say = log if log is not None else (lambda _line: None)
        device = shared.device
        data = shared.data
        self.head = _Head(
            data.task,
            data.n_outputs,
            "regression target" if data.task == "regression" else f"{data.n_classes} classes",
            two_logits=data.task == "classification" and data.n_classes == 2,
        )
        self.out_width = runs[0].width or data.n_outputs
        self.params, self.buffers = stack_module_state([run.module for run in runs])
        self.template: nn.Module = copy.deepcopy(runs[0].module).to("meta")
        if release:  # the stacked tensors are the runs' weights from now on
            for run in runs:
                run.module.to("meta")
        counters = [
            (name, m) for name, m in self.template.named_modules() if isinstance(m, CounterDropout)
        ]
        self.key_layers = [(f"{name}.key", f"{name}.seed", m.layer) for name, m in counters]
        self.rate_names = [f"{name}.p" for name, _ in counters if name != _INPUT]
        self.base_rates = {name: self.buffers[name].clone() for name in self.rate_names}
        modules = dict(self.template.named_modules())
        self.sites = [(modules[name], attr, rate) for name, attr, rate in runs[0].sites]
        counter_buffers = {f"{n}.{b}" for n, _ in counters for b in ("seed", "p", "key")}
        self.state_names = [n for n in (*self.params, *self.buffers) if n not in counter_buffers]
        self.bn = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.template.modules()
        )
        configs = [run.config for run in runs]
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        effects = [run_effects(c) for c in configs]  # what each run's entries do
        self.windows = [e.dropout_window for e in effects]
        self.fit = torch.stack([run.fit for run in runs])  # (R, n_fit)
        self.val = torch.stack([run.val for run in runs])  # (R, n_val)
        self.stop = torch.stack([run.stop for run in runs])  # (R, n_stop)
        self.n_fit, self.n_val = self.fit.shape[1], self.val.shape[1]
        self.n_stop = self.stop.shape[1]
        self.n_test = len(shared.y_test)
        # Every run trains and is measured on the same rows: one copy of them, vmap's
        # in_dims None (the usual case; k-fold groups mix folds).
        self.same_rows = all(
            bool((rows == rows[:1]).all()) for rows in (self.fit, self.stop, self.val)
        )

        def vector(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=shared.dtype, device=device)

        l1 = [e.l1 or 0.0 for e in effects]
        l2 = [e.l2 or 0.0 for e in effects]
        self.l1 = vector(l1) if any(l1) else None
        self.l2 = vector(l2) if any(l2) else None
        bounds = [math.inf if c.max_norm is None else c.max_norm for c in configs]
        self.bound = vector(bounds) if any(map(math.isfinite, bounds)) else None
        self.augment = [e.augment for e in effects]
        self.targets = [e.targets for e in effects]
        self.use_soft = (
            torch.tensor([bool(t) for t in self.targets], device=device)
            if any(self.targets)
            else None
        )
        patience = [e.patience for e in effects]
        self.watched = torch.tensor([p is not None for p in patience])
        waits = [p for p in patience if p is not None]
        self.stopper = EarlyStopping(waits, shared.epochs) if waits else None
        self.best: dict[str, Tensor] = {}
        self.layers = [
            f"{name}.weight"
            for name, m in self.template.named_modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
            and f"{name}.weight" in self.params
        ]
        self.penalized = tuple(self.layers) if self.l1 is not None or self.l2 is not None else ()
        self.optimizer = make_adam(list(self.params.values()), configs[0].train)
        self.step = 0
        self.key_table: tuple[int, list[Tensor]] = (0, [torch.zeros(0)])
        self.sst = self._sums_of_squares()
        self.grads_fn: Callable[..., tuple[dict[str, Tensor], Tensor]] | None = None
        self.stats_fn: Callable[..., tuple[Tensor, Tensor]] | None = None
        self.compile_partial = shared.epochs >= COMPILE_PARTIAL_EPOCHS
        self.fit_rows: tuple[Tensor, Tensor] | None = None
        if compiled:
            self.grads_fn = torch.compile(_own_code(_train_grads), dynamic=False)
            self.stats_fn = torch.compile(
                _own_code(_sample_stats), dynamic=False, options=_evaluation_options()
            )
        self._eval_rows()

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self, x: Tensor, shared_rows: bool = False, buffers: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Outputs ``(R, N, k)`` for inputs ``(R, N, *sample)`` (``shared_rows``: ``(N, …)``
        for every run), eagerly."""
        buffers = self.buffers if buffers is None else buffers
        out = _apply(self.template, self.params, buffers, x, shared_rows, self.vmapped)
        return _per_run_shape(out, self.head)

    def _compiled(self, fn: Callable[..., Any] | None, *args: Any) -> Any:
        """``fn(*args)`` for a compiled step ``fn``; None when there is none, or when it fails
        (logged once: the group's steps run eagerly from then on)."""
        if fn is None:
            return None
        try:
            with torch.no_grad():  # grad_and_value's gradients need no graph around them
                return fn(*args)
        except Exception as error:  # the compiler's failures come in many types
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.say(
                f"torch.compile failed ({type(error).__name__}: {message[:160]}); training eagerly"
            )
            self.grads_fn = self.stats_fn = None
            return None

    def _inputs(self, rows: Tensor) -> Tensor:
        """Model inputs ``(R, b, *sample)`` of training rows ``(R, b)`` (``(b, *sample)`` for
        rows ``(b,)``)."""
        x = self.shared.x_train[rows.to(self.shared.device)]
        return x.view(*rows.shape, *self.shared.data.sample_shape)

    def check(self) -> str | None:
        """Check the output shape on a two-row slice, then (vmapped) try one forward and
        backward under vmap; the reason vmap cannot run the model, or None. Nothing changes:
        the buffers are copies and torch's RNG state is restored."""
        with _rng_restored(self.shared.device):
            return self._check()

    def _check(self) -> str | None:
        rows = self.fit[:, : min(2, self.n_fit)]
        x = self._inputs(rows)
        scratch = {k: v.clone() for k, v in self.buffers.items()}
        self.template.train()
        vmapped, self.vmapped = self.vmapped, False
        try:
            with torch.no_grad():
                out = self.forward(x[:1], buffers={k: v[:1] for k, v in scratch.items()})
            self.out_width = int(out.shape[-1])
            for run in self.runs:
                run.width = self.out_width
        finally:
            self.vmapped = vmapped
        if not vmapped:
            return None
        try:
            out = self.forward(x, buffers=scratch)
            grads = torch.autograd.grad(out.sum(), list(self.params.values()), allow_unused=True)
            del grads
            self.template.eval()
            with torch.no_grad():
                self.forward(x, buffers=scratch)
        except Exception as error:  # vmap's refusals are RuntimeErrors and others
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return f"torch.vmap cannot run the model ({type(error).__name__}: {message[:160]})"
        finally:
            self.template.train()
        return None

    def _saved_per_row(self) -> float:
        """Bytes one run's training batch saves for the backward pass, per row (measured on
        a forward pass of run 0, eagerly)."""
        rows = self.fit[:1, : min(self.shared.batch_size, self.n_fit)]
        x = self._inputs(rows)
        saved = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        vmapped, self.vmapped = self.vmapped, False
        scratch = {k: v[:1].clone() for k, v in self.buffers.items()}
        try:
            self.template.train()
            with (
                _rng_restored(self.shared.device),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                self.forward(x, buffers=scratch).sum()
        finally:
            self.vmapped = vmapped
        return saved / max(1, rows.shape[1])

    def peak_bytes(self) -> int:
        """A rough upper estimate of one run's memory while training: parameters ×5 (weights,
        gradients, Adam's two moments, early stopping's copy), buffers ×2, the tensors one
        training batch saves for the backward ×2 (the mask hashing's temporaries), and one
        evaluation chunk's activations (at the training batch's bytes per row)."""
        per_row = self._saved_per_row()
        saved = per_row * min(self.shared.batch_size, self.n_fit)
        eval_rows = min(EVAL_CHUNK, self.n_fit + self.n_stop + self.n_val + self.n_test)
        params = _tensor_bytes(iter(self.params.values())) // self.size
        buffers = _tensor_bytes(iter(self.buffers.values())) // self.size
        return int(5 * params + 2 * buffers + 2 * saved + per_row * eval_rows)

    def work_bytes(self) -> float:
        """A rough measure of one run's work: the bytes its training batches save for the
        backward over all epochs, ×3 (forward, backward, masks), plus its evaluations'
        activations at the same bytes per row."""
        rows = 3 * self.n_fit + self.n_fit + self.n_test
        return self._saved_per_row() * rows * self.shared.epochs

    # -- evaluation ---------------------------------------------------------------------------

    def _gather(self, rows: Tensor, test: bool) -> tuple[Tensor, Tensor]:
        """Inputs and targets of each run's training-split ``rows`` ``(R, n)`` followed (with
        ``test``) by the test rows: ``(N, *sample)`` and ``(N,)`` when the runs share their
        rows, else ``(R, N, *sample)`` and ``(R, N)``."""
        shared = self.shared
        shape = shared.data.sample_shape
        rows = rows.to(shared.device)
        if self.same_rows:
            xs, ys = [shared.x_train[rows[0]]], [shared.y_train[rows[0]]]
            if test:
                xs.append(shared.x_test)
                ys.append(shared.y_test)
            return torch.cat(xs).view(-1, *shape), torch.cat(ys)
        xs, ys = [shared.x_train[rows]], [shared.y_train[rows]]
        if test:
            xs.append(shared.x_test.expand(self.size, *shared.x_test.shape))
            ys.append(shared.y_test.expand(self.size, -1))
        return torch.cat(xs, 1).view(self.size, -1, *shape), torch.cat(ys, 1)

    def _eval_rows(self) -> None:
        """The rows every epoch's evaluation measures, gathered once: each run's fit rows,
        its early-stopping rows when early stopping reads them every epoch, and the test rows.
        The validation rows are measured once, after the last epoch: they choose the winner,
        so nothing during training reads them."""
        self.stop_every_epoch = self.stopper is not None and self.n_stop > 0
        parts = [self.fit, self.stop] if self.stop_every_epoch else [self.fit]
        pad = self.stats_fn is not None
        self.eval_chunks = self._chunks(*self._gather(torch.cat(parts, 1), test=True), pad)
        self.val_chunks = self._chunks(*self._gather(self.val, test=False), pad=False)

    def _sums_of_squares(self) -> dict[str, Tensor]:
        """``Σ (y − ȳ)²`` per run of each split (float64, for R²; regression only)."""
        if self.shared.data.task != "regression":
            return {}
        y = torch.from_numpy(np.asarray(self.shared.data.y_train, dtype=np.float64))
        y_test = torch.from_numpy(np.asarray(self.shared.data.y_test, dtype=np.float64))

        def sst(values: Tensor) -> Tensor:
            return (values - values.mean(-1, keepdim=True)).pow(2).sum(-1)

        sums = {
            "train": sst(y[self.fit]),
            "val": sst(y[self.val]) if self.n_val else torch.full((self.size,), math.nan),
            "stop": sst(y[self.stop]) if self.n_stop else torch.full((self.size,), math.nan),
            "test": sst(y_test).expand(self.size),
        }
        return {split: value.to(self.shared.device) for split, value in sums.items()}

    def _chunks(self, x: Tensor, y: Tensor, pad: bool) -> list[tuple[Tensor, Tensor, int]]:
        """Rows ``x``, ``y`` (as :meth:`_gather` gives them) cut into equal chunks of at most
        :data:`EVAL_CHUNK` rows per run: ``(x, y, real rows)`` (views but the last); ``pad``:
        the last chunk padded to the others' size with copies of its first row (whose results
        are dropped), so one compiled graph serves every chunk."""
        axis = 0 if self.same_rows else 1
        n = x.shape[axis]
        size = max(1, math.ceil(n / max(1, math.ceil(n / EVAL_CHUNK))))
        chunks = []
        for begin in range(0, n, size):
            part_x, part_y = (
                x.narrow(axis, begin, min(size, n - begin)),
                y.narrow(axis, begin, min(size, n - begin)),
            )
            real = part_x.shape[axis]
            if pad and real < size:
                rows = torch.zeros(size, dtype=torch.int64, device=x.device)
                rows[:real] = torch.arange(real, device=x.device)
                part_x, part_y = part_x.index_select(axis, rows), part_y.index_select(axis, rows)
            chunks.append((part_x, part_y, real))
        return chunks

    def _stats(
        self, chunks: list[tuple[Tensor, Tensor, int]], compiled: bool
    ) -> tuple[Tensor, Tensor]:
        """:func:`_sample_stats` ``(R, n)`` of the rows of :meth:`_chunks` (through the
        compiled step when ``compiled`` and there is one)."""
        first: list[Tensor] = []
        second: list[Tensor] = []
        for x, y, real in chunks:
            args = (self.template, self.params, self.buffers, x, y, self.head)
            stats = None
            if compiled:
                stats = self._compiled(self.stats_fn, *args, self.same_rows, self.vmapped)
            if stats is None:
                stats = _sample_stats(*args, self.same_rows, self.vmapped)
            first.append(stats[0][:, :real])
            second.append(stats[1][:, :real])
        return torch.cat(first, 1), torch.cat(second, 1)

    def _metrics(self, a: Tensor, b: Tensor, split: str) -> dict[str, Tensor]:
        """A split's metrics from its per-sample statistics ``(R, n)`` (see
        :meth:`evaluate`)."""
        count = a.shape[1]
        if not count:
            nan = torch.full((self.size,), math.nan, dtype=torch.float64, device=a.device)
            return {"score": nan, "loss": nan, "rmse": nan, "mae": nan}
        first_sum = a.sum(1)
        second_mean = b.sum(1) / count
        if self.head.task == "regression":  # a: squared errors, b: absolute errors
            mse = first_sum / count
            return {
                "score": 1.0 - first_sum / self.sst[split],
                "loss": mse,
                "rmse": mse.sqrt(),
                "mae": second_mean,
            }
        return {"score": first_sum / count, "loss": second_mean}  # a: correct, b: CE

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, Tensor]]:
        """Eval-mode metrics per split (``train``: the fit rows, ``test``, ``stop``: early
        stopping's rows): ``score`` (accuracy or R²), ``loss`` (cross-entropy or MSE) and, for
        regression, ``rmse`` and ``mae``; each ``(R,)`` float64 on the device (NaN for an
        empty split). One pass over the epoch's rows (:meth:`_eval_rows`); the stopping metrics
        are NaN without early stopping. The validation rows are not measured here
        (:meth:`train` measures them after the last epoch)."""
        self.template.eval()
        a, b = self._stats(self.eval_chunks, compiled=True)
        self.template.train()
        stop_end = self.n_fit + (self.n_stop if self.stop_every_epoch else 0)
        parts = {
            "train": (a[:, : self.n_fit], b[:, : self.n_fit]),
            "stop": (a[:, self.n_fit : stop_end], b[:, self.n_fit : stop_end]),
            "test": (a[:, stop_end:], b[:, stop_end:]),
        }
        return {split: self._metrics(*pair, split) for split, pair in parts.items()}

    # -- training -----------------------------------------------------------------------------

    def _set_rates(self, epoch: int) -> None:
        if all(window is None for window in self.windows):
            return
        on = [dropout_on(window, epoch) for window in self.windows]
        mask = torch.tensor(on, device=self.shared.device)
        for name in self.rate_names:
            base = self.base_rates[name]
            self.buffers[name].copy_(torch.where(mask, base, torch.zeros_like(base)))
        for module, attribute, rate in self.sites:  # R = 1 here
            setattr(module, attribute, rate if on[0] else 0.0)

    def _set_keys(self) -> None:
        """Set every dropout layer's stacked ``key`` buffer ``(R, 2)`` to the keys of the
        current step, computed for blocks of :data:`_KEY_BLOCK` steps at once."""
        if not self.key_layers:
            return
        start, table = self.key_table
        if not start <= self.step < start + len(table[0]):
            device = self.shared.device
            numbers = torch.arange(self.step, self.step + _KEY_BLOCK, device=device).view(-1, 1)
            table = [
                mask_key(self.buffers[seed], numbers, layer) for _, seed, layer in self.key_layers
            ]
            start = self.step
            self.key_table = (start, table)
        for (key, _, _), keys in zip(self.key_layers, table, strict=True):
            self.buffers[key].copy_(keys[self.step - start])

    def _soft_targets(self, y: Tensor, width: int) -> Tensor | None:
        if self.use_soft is None:
            return None
        classes = 2 if width == 1 else width
        rows = []
        for r, transforms in enumerate(self.targets):
            soft = (
                y[r].to(self.shared.dtype)
                if width == 1
                else F.one_hot(y[r], classes).to(self.shared.dtype)
            )
            for transform, strength in transforms:
                soft = transform(soft, strength, classes)
            rows.append(soft)
        return torch.stack(rows)

    def _batch(self, rows: Tensor) -> Tensor:
        x = self._inputs(rows)
        if not any(s is not None for s in self.augment):
            return x
        shared = self.shared
        parts = []
        for r, strength in enumerate(self.augment):
            if strength is None:
                parts.append(x[r])
                continue
            moved = augment_batch(
                shared.x_cpu[rows[r]],
                strength,
                shared.scale,
                shared.data.input_shape,
                self.generators[r],
            )
            parts.append(moved.to(shared.device).view(x.shape[1:]))
        return torch.stack(parts)

    def train_epoch(self, epoch: int, stopped: Tensor) -> None:
        """One epoch of mini-batches. A run draws its epoch order from its generator; when
        one batch holds every fit row the order changes nothing but the row a mask element
        falls on, so it is not drawn (the rows are then shared by the runs that share them)."""
        shared = self.shared
        self._set_rates(epoch)
        self.template.train()
        batch = min(shared.batch_size, self.n_fit)
        starts = [
            begin
            for begin in range(0, self.n_fit, batch)
            # BatchNorm cannot normalize a batch of one sample (as the loop)
            if not (self.bn and min(batch, self.n_fit - begin) == 1 and begin > 0)
        ]
        shuffle = batch < self.n_fit
        if shuffle:
            order = torch.stack(
                [
                    self.fit[r][torch.randperm(self.n_fit, generator=g)]
                    for r, g in enumerate(self.generators)
                ]
            )
        else:
            order = self.fit
        plain = all(s is None for s in self.augment) and self.use_soft is None
        shared_rows = not shuffle and self.same_rows and plain
        frozen = bool(stopped.any())
        for begin in starts:
            self._set_keys()
            rows = order[0] if shared_rows else order[:, begin : begin + batch]
            if shared_rows:
                if self.fit_rows is None:  # the same every epoch
                    self.fit_rows = (self._inputs(rows), shared.y_train[rows.to(shared.device)])
                x, y = self.fit_rows
            else:
                x, y = self._batch(rows), shared.y_train[rows.to(shared.device)]
            soft = None
            if self.use_soft is not None:
                soft = self._soft_targets(y, self.out_width)
            args = (
                self.template,
                self.params,
                self.buffers,
                x,
                y,
                soft,
                self.use_soft,
                self.l1,
                self.l2,
                self.penalized,
                self.head,
                shared_rows,
                self.vmapped,
            )
            full = rows.shape[-1] == batch
            grads = self._compiled(self.grads_fn, *args) if full or self.compile_partial else None
            if grads is None:
                self.optimizer.zero_grad(set_to_none=True)
                _train_loss(*args).backward()  # type: ignore[no-untyped-call]
            else:
                for name, param in self.params.items():
                    param.grad = _laid_out_as(grads[0][name], param)
            self.optimizer.step()
            if self.bound is not None:
                for name in self.layers:
                    w = self.params[name]
                    bound_unit_norms_(
                        w, self.bound.view(-1, *([1] * (w.ndim - 1))), range(2, w.ndim)
                    )
            if frozen:
                self.restore(stopped)
            self.step += 1

    # -- early stopping -----------------------------------------------------------------------

    def _state(self) -> dict[str, Tensor]:
        return {
            n: (self.params[n] if n in self.params else self.buffers[n]) for n in self.state_names
        }

    def keep(self, best: dict[str, Tensor], which: Tensor) -> None:
        if not bool(which.any()):
            return
        index = which.to(self.shared.device)
        with torch.no_grad():
            for name, tensor in self._state().items():
                best[name][index] = tensor.detach()[index]

    def restore(self, which: Tensor) -> None:
        index = which.to(self.shared.device)
        with torch.no_grad():
            for name, tensor in self._state().items():
                tensor[index] = self.best[name][index]

    def export(self, r: int) -> dict[str, Tensor]:
        """Run ``r``'s weights as the ``state_dict`` of its original module, CPU tensors."""
        run = self.runs[r]
        stacked = {**self.params, **self.buffers}
        return {
            key: stacked[run.canonical[f"{_MODEL}.{key}"]][r].detach().cpu().clone()
            for key in run.state_keys
        }

    def train(self, ticker: EpochTicker) -> list[_Output]:
        shared = self.shared
        epochs = shared.epochs
        histories = np.full((self.size, len(METRICS), epochs), np.nan)
        stopped = torch.zeros(self.size, dtype=torch.bool)
        if self.stopper is not None:
            self.best = {n: t.detach().clone() for n, t in self._state().items()}
        tick = ticker.part(self.size)
        names = {
            "train_acc": ("train", "score"),
            "test_acc": ("test", "score"),
            "train_loss": ("train", "loss"),
            "test_loss": ("test", "loss"),
        }

        def record(metrics: dict[str, dict[str, Tensor]], which: Tensor, slots: slice) -> None:
            values = torch.stack([metrics[s][k] for s, k in (names[m] for m in METRICS)])
            table = values.cpu().numpy().T  # (R, metrics)
            if bool(which.all()):
                histories[:, :, slots] = table[:, :, None]
                return
            rows = which.nonzero().flatten().numpy()
            histories[rows, :, slots] = table[rows][:, :, None]

        finished = epochs
        for epoch in range(epochs):
            self.train_epoch(epoch, stopped)
            metrics = self.evaluate()
            running = ~stopped
            record(metrics, running, slice(epoch, epoch + 1))
            if self.stopper is not None:
                stop_loss = metrics["stop"]["loss"].cpu()
                reported = torch.where(running & self.watched, stop_loss, math.nan)
                improved, newly = self.stopper.update(epoch + 1, reported[self.watched])
                self.keep(self.best, _scatter(improved, self.watched))
                newly_all = _scatter(newly, self.watched)
                if bool(newly_all.any()):
                    stopped = stopped | newly_all
                    self.restore(newly_all)
                    if epoch + 1 < epochs:
                        record(self.evaluate(), newly_all, slice(epoch + 1, epochs))
            tick(epoch + 1)
            if bool(stopped.all()):
                finished = epoch + 1
                break
        if finished < epochs:
            ticker.advance(self.size * (epochs - finished))
        if self.stopper is not None:
            self.restore(self.watched)
            final = self.evaluate()
            record(final, self.watched, slice(epochs - 1, epochs))
        else:
            final = metrics
        if self.n_val:  # measured once, after the last epoch (the restored weights)
            with torch.no_grad():
                self.template.eval()
                val = self._stats(self.val_chunks, compiled=False)
                self.template.train()
            final = {**final, "val": self._metrics(*val, "val")}
        return self._outputs(histories, final)

    def _outputs(
        self, histories: NDArray[np.float64], final: dict[str, dict[str, Tensor]]
    ) -> list[_Output]:
        shared = self.shared
        stop_info = self.stopper.info() if self.stopper is not None else []
        watched = self.watched.nonzero().flatten().tolist()
        keep_states = sum(t[0].numel() for t in self._state().values()) <= MAX_STATE_PARAMETERS
        numbers = {
            split: {key: value.cpu().tolist() for key, value in values.items()}
            for split, values in final.items()
        }
        outputs = []
        for r, run in enumerate(self.runs):
            info: dict[str, float] = {}
            if r in watched:
                info.update(stop_info[watched.index(r)])
            has_validation = run.config.data.validation > 0 or run.config.data.folds > 0
            if has_validation:
                info["val_acc"] = float(numbers["val"]["score"][r])
                info["val_loss"] = float(numbers["val"]["loss"][r])
            if shared.data.task == "regression":
                splits = ("test", "train", "val") if has_validation else ("test", "train")
                for split in splits:
                    info[f"{split}_rmse"] = float(numbers[split]["rmse"][r])
                    info[f"{split}_mae"] = float(numbers[split]["mae"][r])
            state = self.export(r) if keep_states else None
            outputs.append(_Output(histories[r], info, state))
        return outputs


def _canonical_names(module: nn.Module) -> dict[str, str]:
    """Every (possibly shared) parameter or buffer name of ``module`` → the name under which
    ``named_parameters`` / ``named_buffers`` (and so ``stack_module_state``) lists it."""
    names: dict[str, str] = {}
    for listing, every in (
        (module.named_parameters(), module.named_parameters(remove_duplicate=False)),
        (module.named_buffers(), module.named_buffers(remove_duplicate=False)),
    ):
        first = {id(t): name for name, t in listing}
        for name, t in every:
            names[name] = first[id(t)]
    return names


def _laid_out_as(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` with ``param``'s strides. torch's fused CPU Adam pairs a parameter's elements
    with its gradient's in memory order, so a gradient laid out otherwise (a compiled graph
    may return a transposed one) would update the wrong elements."""
    if grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


def _scatter(values: Tensor, where: Tensor) -> Tensor:
    """``(R,)`` bool: ``values`` at the positions where ``where`` is True, False elsewhere."""
    out = torch.zeros(where.shape, dtype=torch.bool)
    out[where] = values
    return out


def _rng_restored(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """torch's RNG state saved and restored around the block (CPU, and ``device`` on CUDA)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's RNG seeded with ``seed`` (restored afterwards): the draws of dropout that has
    no counter-based equivalent."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


_LOOPED_WARNING = "There is a performance drop because we have not yet implemented the batching"
_LOOPED = re.compile(r"batching rule for (?:nested )?(\S+?)\.(?:\s|$)")


@contextmanager
def _vmap_loops(ops: list[str]) -> Iterator[None]:
    """torch's warnings that ``vmap`` has no batching rule for an op (it then loops over the
    runs for that op) collected as the ops' names into ``ops`` instead of shown, one warning
    per call site; other warnings are passed on."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for warning in caught:
            match = _LOOPED.search(str(warning.message))
            if match is None:
                warnings.warn_explicit(
                    warning.message,
                    warning.category,
                    warning.filename,
                    warning.lineno,
                    source=warning.source,
                )
            elif match.group(1) not in ops:
                ops.append(match.group(1))


# --- entry point -------------------------------------------------------------------------------


def train_custom(
    source: ModelSource,
    data: Dataset,
    configs: Sequence[RunConfig],
    *,
    device: str | torch.device = "cpu",
    batched: bool | None = None,
    max_batch_memory: int | None = None,
    on_epoch: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    compile: bool | None = None,
) -> BatchResult:
    """Train the runs ``configs`` of a user's model on ``data``, batched where possible.

    See the module docstring for the design. Per config: ``p`` is the rate the source built
    every dropout module with (their rates, read back per run, become the counter modules'
    buffers); ``input_p > 0`` adds a counter-based dropout on the inputs; ``max_norm`` bounds
    the incoming weights of every unit of every Linear and ConvNd layer after each Adam step;
    ``l1`` / ``l2`` add ``λ·Σ|w|`` / ``λ·Σw²`` over their weights (no biases);
    ``label_smoothing`` smooths the class targets; ``early_dropout`` / ``late_dropout`` set the
    run's rates to 0 outside :func:`~dropkit.lab.train.contract.dropout_window`; ``early_stopping``
    (patience ``round(strength)``) stops on the loss of its own rows
    (:func:`~dropkit.lab.plan.splits.stopping_rows`, never the validation rows) and restores the
    best weights, as :mod:`dropkit.lab.train.module_loop`; ``augment`` perturbs each batch
    (:func:`~dropkit.lab.train.contract.augment_batch`, from the run's generator).

    Args:
        source: builds the modules: ``source.build(p, seed)`` returns a fresh ``nn.Module``
            whose weights come from ``seed`` and whose dropout modules have rate ``p``.
        data: the data set; a row ``(d,)`` is reshaped to ``data.sample_shape`` for the model,
            which returns ``(N, data.n_outputs)`` (``(N,)`` for one output).
        configs: the runs, sharing data, model and training settings.
        device: where to train; the results come back on the CPU.
        batched: None: vmap where the model allows, run by run elsewhere; True: raise instead
            of falling back; False: every run alone (no vmap).
        max_batch_memory: bytes a group of runs may use, against a rough per-run estimate
            (weights, gradients and Adam's moments, buffers, the tensors one training batch
            saves for the backward, one evaluation chunk); None: :data:`MEMORY_FRACTION` of
            the free memory. The runs are cut into consecutive groups that fit (``log`` says
            how many).
        on_epoch: called with the number of finished epochs, once per epoch of the batch.
        log: receives one line per decision (fallbacks and their reasons, groups, compiling).
        compile: run each vmapped group's training and evaluation steps through
            ``torch.compile`` (its masks are the same; the numbers agree with the eager steps
            to float rounding); None: when a compiler is found
            (:func:`~dropkit.lab.train.stacked.compiler_available`) and a run's work is at least
            :data:`COMPILE_MIN_WORK`, enough to repay compiling. Runs trained run by run
            (fallbacks, ``batched=False``) always run eagerly.

    Returns:
        Curves ``(R, epochs)`` per :data:`~dropkit.lab.train.contract.METRICS` name (for regression
        ``*_acc`` holds R² and ``*_loss`` the mean squared error), the wall time, per-run
        ``state_dict``s of the original modules (None when a model has more than
        :data:`~dropkit.lab.store.MAX_STATE_PARAMETERS` values) and per-run ``info``
        (``val_acc`` / ``val_loss`` with a validation split; ``train_rmse``, ``train_mae``,
        ``test_rmse``, ``test_mae`` (and ``val_*``) for regression; ``stop_epoch`` /
        ``best_epoch`` under early stopping).

    Raises:
        ValueError: configs that differ in data, model or training settings, an unsupported
            regularizer, a wrong output shape, or ``batched=True`` with a fallback reason.
    """
    start = time.perf_counter()
    say = log if log is not None else (lambda _line: None)
    _check_configs(configs, data)
    if batched is not None and not isinstance(batched, bool):
        raise TypeError(f"`batched` must be None, True or False, got {batched!r}")
    if max_batch_memory is not None and (
        isinstance(max_batch_memory, bool)
        or not isinstance(max_batch_memory, int)
        or max_batch_memory < 1
    ):
        raise ValueError(
            f"`max_batch_memory` must be None or an int >= 1 (bytes), got {max_batch_memory!r}"
        )
    device = torch.device(device)
    runs = _prepare(source, data, configs, device)
    first_param = next((t for t in runs[0].module.parameters() if t.is_floating_point()), None)
    dtype = first_param.dtype if first_param is not None else torch.float32
    regression = data.task == "regression"
    y_dtype = dtype if regression else torch.int64
    shared = _Shared(
        data=data,
        device=device,
        dtype=dtype,
        x_train=torch.from_numpy(data.x_train).to(device=device, dtype=dtype),
        y_train=torch.from_numpy(np.asarray(data.y_train)).to(device=device, dtype=y_dtype),
        x_test=torch.from_numpy(data.x_test).to(device=device, dtype=dtype),
        y_test=torch.from_numpy(np.asarray(data.y_test)).to(device=device, dtype=y_dtype),
        x_cpu=torch.from_numpy(data.x_train).to(dtype),
        scale=feature_scale(data.x_train).to(dtype),
        epochs=configs[0].train.epochs,
        batch_size=configs[0].train.batch_size,
    )

    alone: list[_Run] = []
    together: dict[tuple[Any, ...], list[_Run]] = {}
    for run in runs:
        if run.reasons:
            reason = f"run with seed {run.config.seed}: {run.reasons[0]}"
            if batched:
                raise ValueError(f"`batched=True` but it cannot be batched: {reason}")
            say(f"training run by run: {run.reasons[0]}")  # one line per reason, not per run
            alone.append(run)
        elif batched is False:
            alone.append(run)
        else:
            together.setdefault(run.signature, []).append(run)
    if batched is False:
        say("training run by run (batched=False)")

    ticker = EpochTicker(len(runs), shared.epochs, on_epoch)
    outputs: dict[int, _Output] = {}

    for members in together.values():
        probe = _Group(members[:2], shared, vmapped=True, release=False)
        looped: list[str] = []  # torch's vmap warnings, as the ops it loops over: one note
        with _vmap_loops(looped):
            failure = probe.check()
        for run in members:
            run.width = probe.out_width
        if failure is not None:
            if batched:
                raise ValueError(f"`batched=True` but it cannot be batched: {failure}")
            also = f"; torch also lacks a batching rule for {', '.join(looped)}" if looped else ""
            say(f"training run by run: {failure}{also}")
            alone.extend(members)
            continue
        if looped:
            say(
                f"{len(members)} runs vmapped, but torch has no batching rule for "
                f"{', '.join(looped)} and loops over the runs there (slower; the same results)"
            )
        chunks = [members]
        if len(members) > 1:
            budget = max_batch_memory
            if budget is None:
                budget = int(MEMORY_FRACTION * _free_memory(device))
            per_run = probe.peak_bytes()
            size = max(1, min(len(members), budget // max(1, per_run)))
            chunks = [members[i : i + size] for i in range(0, len(members), size)]
            say(
                f"{len(members)} runs in {len(chunks)} group(s) of at most {size} "
                f"(about {per_run / 2**20:.2f} MiB per run, budget {budget / 2**20:.2f} MiB)"
            )
        if compile is None:
            work = probe.work_bytes()
            compiled = work >= COMPILE_MIN_WORK and compiler_available(device)
        else:
            compiled = compile
        if compiled:
            say(f"{len(members)} runs: compiling the training and evaluation steps")
        del probe
        for chunk in chunks:
            group = _Group(chunk, shared, vmapped=True, compiled=compiled, log=say)
            with warnings.catch_warnings():  # said above, once
                warnings.filterwarnings("ignore", message=_LOOPED_WARNING)
                trained = group.train(ticker)
            for run, output in zip(chunk, trained, strict=True):
                outputs[run.index] = output
    for run in sorted(alone, key=lambda r: r.index):
        with _seeded(run.config.seed, device):
            group = _Group([run], shared, vmapped=False)
            group.check()
            outputs[run.index] = group.train(ticker)[0]
    ticker.finish()

    ordered = [outputs[i] for i in range(len(runs))]
    history = np.stack([o.history for o in ordered], axis=1)  # (metrics, R, epochs)
    states = [o.state for o in ordered]
    return BatchResult(
        curves={name: history[i] for i, name in enumerate(METRICS)},
        seconds=time.perf_counter() - start,
        states=None if any(s is None for s in states) else [s for s in states if s is not None],
        info=[o.info for o in ordered],
    )
