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
``AlphaDropout``, ``FeatureAlphaDropout``, ``DropPath`` and ``LockedDropout``. Modules that
apply dropout in their own code or that ``vmap`` cannot run become *batchable twins* of
themselves (the same parameters under the same names, the same outputs in evaluation mode,
their dropout counter-based): attention (``nn.MultiheadAttention``, the ``nn.Transformer*``
modules without their fused fast paths, Hugging Face attention through an attention function
of the lab's, :mod:`~dropkit.lab.train.attention_twins`), recurrent layers (``nn.LSTM``,
``nn.GRU``, ``nn.RNN`` and dropkit's variational ``LSTM``/``GRU`` unrolled over time,
:mod:`~dropkit.lab.train.recurrent_twins`) and embeddings with a padding row (whose gradient
``vmap``'s rule leaks for every run but the first). Tied weights stay tied: every name of a
tensor is passed its stacked tensor. Integer features (``Dataset.integer_inputs``: token ids)
reach the model as int64.

How it runs is chosen from what it costs: whether the steps are compiled (a few eager steps
timed against the operations a compile would trace, :data:`COMPILE_SECONDS_PER_OP`), the
thread count (:class:`~dropkit.lab.train.threads.ThreadChooser`: one or torch's, timed on the
training steps and checked again while training), the groups' size (a memory budget), and how
often the curves are measured (``eval_every``, :data:`EVAL_SHARE`). Adam steps the stacked
parameters in their gradients' memory layout (:class:`_DenseAdam`), so no step copies them.

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

Compiling (``compile``; by default when the eager steps it replaces, timed on a few steps, cost
:data:`COMPILE_PAYBACK` times its estimated cost, :data:`COMPILE_SECONDS_PER_OP`). The
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
- dropout that cannot be swapped: a float rate used inside a module's own code that no twin
  covers (``F.dropout(x, self.p)``, attention modules of other libraries, listed by
  :func:`dropkit.find_dropout_sites`) or a dropout module with no counter equivalent
  (Gaussian dropout, DropBlock): these draw from PyTorch's RNG, which is seeded with the
  run's seed for the run (``torch.random.fork_rng`` + ``torch.manual_seed``).

Each reason is said once, with the number of runs it trains one after another and what that
costs; torch's warnings on the way are folded into that line, never shown raw.

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
import itertools
import math
import os
import re
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from dropkit._float_dropout import class_usage
from dropkit.lab.plan.arms import entry_regularizer, trainer_entries
from dropkit.lab.plan.config import RunConfig, TrainSpec
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
from dropkit.lab.train.predictive import CHUNK_ROWS, Evaluation, Predictor, Split, measure
from dropkit.lab.train.stacked import compiler_available
from dropkit.lab.train.threads import ThreadChooser
from dropkit.surgery import find_dropout_sites
from dropkit.uncertainty import mc_dropout

__all__ = [
    "COMPILE_PARTIAL_EPOCHS",
    "COMPILE_PAYBACK",
    "COMPILE_SECONDS_PER_OP",
    "EVAL_CHUNK",
    "EVAL_SHARE",
    "MEMORY_FRACTION",
    "MIN_CURVE_POINTS",
    "RELAYOUT_BYTES",
    "SUPPORTED_REGULARIZERS",
    "ModelSource",
    "measure_modules",
    "train_custom",
]

EVAL_CHUNK = 512
"""Rows per run of one evaluation forward pass (at most: the rows are cut into equal chunks).
Small enough that a CNN's activations for tens of runs stay in reused heap memory (the
allocator maps and faults in fresh pages for every buffer over 32 MiB, which costs more than
the convolution)."""

COMPILE_SECONDS_PER_OP = 0.08
"""Compiling's cost by default (``compile=None``), in seconds per operation of one training
step (forward and backward, counted on one run): a 2-layer Transformer's ~770 operations took
about 60 s to compile with an empty kernel cache (the training and evaluation steps), an MLP's
~100 a few seconds. A group compiles when the eager training it would replace (timed on a few
steps) is at least :data:`COMPILE_PAYBACK` times that."""

COMPILE_PAYBACK = 2.0
"""How many times its expected cost compiling must save, at least, to be chosen by default:
compiled steps took about half the eager time on the lab's benchmarks, so a group compiles
when its eager training would take ``2x`` the compile time or more."""

RELAYOUT_BYTES = 2**24
"""Bytes of weight gradients per step from which :class:`_DenseAdam` lays the parameters out
as the compiled step's gradients (one retrace) instead of copying the gradients (a copy of
a few MiB costs less than compiling the step again)."""

COMPILE_PARTIAL_EPOCHS = 50
"""In a compiled group, the smaller last batch of each epoch runs through its own compiled
graph from this many epochs on; with fewer it runs eagerly (tracing a second graph costs
about as much as that many eager steps)."""

EVAL_SHARE = 0.1
"""Share of a group's training time its per-epoch evaluation may take by default
(``eval_every=None``): beyond it, the curves are evaluated every ``k``-th epoch."""

MIN_CURVE_POINTS = 25
"""Fewest points a curve keeps by default (``eval_every=None``)."""

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
    """Make the model's dropout counter-based and its modules batchable: its dropout modules
    become :class:`~dropkit.lab.train.counter_masks.CounterDropout` (layers 1, 2, … in
    registration order), then attention modules (whose rates are floats used in their own
    code), recurrent modules (which ``vmap`` cannot run, whatever their rates) and embeddings
    with a padding row become their batchable twins (:mod:`~dropkit.lab.train.attention_twins`,
    :mod:`~dropkit.lab.train.recurrent_twins`; the layers after). Return the reasons that keep
    the run off vmap and the rate sites left as they were (names relative to ``wrapped``)."""
    from dropkit.lab.train.attention_twins import rewrite_attention, rewrite_embeddings
    from dropkit.lab.train.recurrent_twins import rewrite_recurrent

    reasons: list[str] = []
    unswapped: list[tuple[str, str, float]] = []
    replacements: dict[int, nn.Module] = {}
    read_by_parent: list[tuple[str, nn.Module]] = []  # (name, original): its parent reads .p
    layers = itertools.count(1)
    for site in find_dropout_sites(wrapped.model):
        if not site.is_module:
            continue
        counter = counter_module(site.module, seed, next(layers))
        if counter is not None:
            replacements[id(site.module)] = counter
            if _rate_read_by_parent(wrapped.model, site.module_name):
                read_by_parent.append((site.module_name, site.module))
    for parent in wrapped.modules():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]
    rewritten = set(rewrite_attention(wrapped.model, seed, layers))
    rewrite_recurrent(wrapped.model, seed, layers)
    rewrite_embeddings(wrapped.model)
    # A dropout module whose parent reads its `p` and applies the rate itself (a float for
    # `F.scaled_dot_product_attention(dropout_p=self.attn_drop.p)`) stays as it was unless a
    # twin took the parent over: its rate must stay a float there.
    for name, original in read_by_parent:
        parent_name, _, local = name.rpartition(".")
        if parent_name not in rewritten:
            wrapped.model.get_submodule(parent_name)._modules[local] = original
    for site in find_dropout_sites(wrapped.model):
        name = f"{_MODEL}.{site.module_name}" if site.module_name else _MODEL
        if site.is_module and site.p > 0 and _rate_read_by_parent(wrapped.model, site.module_name):
            unswapped.append((name, site.attribute, site.p))
            reasons.append(
                f"the rate of dropout module `{site.name}` is applied by its parent's own "
                "code: it draws from torch's RNG"
            )
            continue
        if site.is_module:
            what = f"dropout module `{site.name}` ({type(site.module).__name__})"
            detail = "has no counter-based equivalent"
        else:
            what = f"the float rate `{site.name}` of {type(site.module).__name__}"
            detail = "is applied inside the module's own code"
        unswapped.append((name, site.attribute, site.p))
        if site.p > 0:
            reasons.append(f"{what} {detail}: it draws from torch's RNG")
    return reasons, unswapped


def _rate_read_by_parent(model: nn.Module, name: str) -> bool:
    """Whether the parent of the dropout module ``name`` reads its rate (``self.<child>.p``)
    in its own code, to apply it there (:func:`dropkit._float_dropout.class_usage`)."""
    parent_name, _, local = name.rpartition(".")
    parent: type = type(model.get_submodule(parent_name))
    return local in class_usage(parent).child_rates


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


# --- what every group of a call shares ---------------------------------------------------------


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

    @classmethod
    def of(cls, data: Dataset, runs: list[_Run], device: torch.device) -> _Shared:
        """The data on ``device`` in the dtype of the first run's first floating-point
        parameter (float32 without one); targets in it for regression, int64 otherwise."""
        first = next((t for t in runs[0].module.parameters() if t.is_floating_point()), None)
        dtype = first.dtype if first is not None else torch.float32
        y_dtype = dtype if data.task == "regression" else torch.int64
        train = runs[0].config.train
        return cls(
            data=data,
            device=device,
            dtype=dtype,
            x_train=torch.from_numpy(data.x_train).to(device=device, dtype=dtype),
            y_train=torch.from_numpy(np.asarray(data.y_train)).to(device=device, dtype=y_dtype),
            x_test=torch.from_numpy(data.x_test).to(device=device, dtype=dtype),
            y_test=torch.from_numpy(np.asarray(data.y_test)).to(device=device, dtype=y_dtype),
            x_cpu=torch.from_numpy(data.x_train).to(dtype),
            scale=feature_scale(data.x_train).to(dtype),
            epochs=train.epochs,
            batch_size=train.batch_size,
        )


def _integer_inputs(shared: _Shared, runs: list[_Run], say: Callable[[str], None]) -> _Shared:
    """``shared`` with the inputs as int64 when the user's features were integers
    (``Dataset.integer_inputs``: token ids, indices) and the model takes them so (one
    evaluation-mode forward pass of run 0 on two rows); else as they were (floats), said once
    with the reason when the model refused them or a run jitters its inputs (``augment``)."""
    if not shared.data.integer_inputs:
        return shared
    if any(run_effects(run.config).augment for run in runs):
        say("integer inputs reach the model as floats: `augment` jitters them")
        return shared
    ids = shared.x_train[:2].to(torch.int64).view(-1, *shared.data.sample_shape)
    module = runs[0].module
    try:
        module.eval()
        with torch.no_grad(), _rng_restored(shared.device):
            module(ids)
    except Exception as error:  # a model for float features refuses int64 in many ways
        say(
            f"integer inputs reach the model as {str(shared.dtype).removeprefix('torch.')}: "
            f"it refused int64 ({_error_line(error, 120)})"
        )
        return shared
    finally:
        module.train()
    return replace(
        shared, x_train=shared.x_train.to(torch.int64), x_test=shared.x_test.to(torch.int64)
    )


@dataclass(frozen=True)
class _Head:
    """What the model's output must be: ``width`` values per sample (``what`` names them) for
    a ``task``, or two logits for two classes (``two_logits``). Plain values, so a compiled
    step specializes on them."""

    task: str
    width: int
    what: str
    two_logits: bool = False

    @classmethod
    def of(cls, data: Dataset) -> _Head:
        """The head of ``data``'s task: ``data.n_outputs`` values per sample."""
        return cls(
            data.task,
            data.n_outputs,
            "regression target" if data.task == "regression" else f"{data.n_classes} classes",
            two_logits=data.task == "classification" and data.n_classes == 2,
        )


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


@dataclass(frozen=True)
class _Net:
    """How a group's runs are called: ``template`` is the module tree on the meta device
    (``functional_call``'s module), ``head`` the output it must give; ``vmapped``: ``vmap``
    over the runs, else (R = 1) one plain call of run 0; ``aliases``: (name, stacked name) of
    every tensor the model reaches under a second name (tied weights: moving the template to
    the meta device unties them, so each name is passed its tensor). Plain values and a
    module, so a compiled step specializes on them."""

    template: nn.Module
    head: _Head
    vmapped: bool
    aliases: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _State:
    """The runs' stacked tensors, name → ``(R, *shape)``: ``params`` (Adam updates them) and
    ``buffers`` (BatchNorm's statistics, the counter dropout's seeds, rates and keys)."""

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]

    @classmethod
    def stacked(cls, runs: Sequence[_Run], data: Dataset, vmapped: bool) -> tuple[_Net, _State]:
        """The runs' modules stacked (``torch.func.stack_module_state``) and the template
        that calls them: run 0's module on the meta device, with its tied-weight aliases."""
        params, buffers = stack_module_state([run.module for run in runs])
        template: nn.Module = copy.deepcopy(runs[0].module).to("meta")
        aliases = tuple((n, c) for n, c in runs[0].canonical.items() if n != c)
        return _Net(template, _Head.of(data), vmapped, aliases), cls(params, buffers)

    def part(self, start: int, stop: int) -> _State:
        """The tensors of runs ``start .. stop - 1`` (views)."""
        return _State(
            {k: v[start:stop] for k, v in self.params.items()},
            {k: v[start:stop] for k, v in self.buffers.items()},
        )


@dataclass(frozen=True)
class _Rows:
    """A step's rows: inputs ``x`` ``(R, b, *sample)`` and targets ``y`` ``(R, b)``, or, when
    ``shared``, ``(b, *sample)`` and ``(b,)`` for every run (vmap's in_dims None); ``soft``:
    the runs' smoothed targets ``(R, b)`` or ``(R, b, k)`` (training, None without)."""

    x: Tensor
    y: Tensor
    shared: bool
    soft: Tensor | None = None


@dataclass(frozen=True)
class _Loss:
    """What the training loss adds to the mean data loss: ``use_soft`` ``(R,)`` bool, the runs
    whose targets are :attr:`_Rows.soft`; ``l1`` / ``l2`` ``(R,)`` strengths of ``λ·Σ|w|`` /
    ``λ·Σw²`` over the weights named ``penalized``. None: no run has one."""

    use_soft: Tensor | None = None
    l1: Tensor | None = None
    l2: Tensor | None = None
    penalized: tuple[str, ...] = ()


def _call(net: _Net) -> Callable[[dict[str, Tensor], dict[str, Tensor], Tensor], Tensor]:
    """One run's forward pass as a function of its tensors: ``functional_call`` of the
    template, every name of a tied tensor given it."""

    def call(p: dict[str, Tensor], b: dict[str, Tensor], inputs: Tensor) -> Tensor:
        if net.aliases:  # tied weights: every name of a tensor gets it
            stacked = {**p, **b}
            p = {**p, **{alias: stacked[name] for alias, name in net.aliases}}
        out = functional_call(net.template, (p, b), (inputs,), tie_weights=False)
        if not isinstance(out, Tensor):
            raise TypeError(f"the model must return a Tensor, got {type(out).__name__}")
        return out

    return call


def _apply(net: _Net, state: _State, x: Tensor, shared_rows: bool) -> Tensor:
    """The model's outputs ``(R, N, …)`` for inputs ``(R, N, *sample)`` (``shared_rows``:
    ``(N, *sample)`` for every run): ``vmap`` of ``functional_call`` over the stacked tensors,
    or (not ``net.vmapped``, R = 1) one ``functional_call`` on run 0's."""
    call = _call(net)
    if net.vmapped:
        fn = torch.vmap(call, in_dims=(0, 0, None if shared_rows else 0), randomness="error")
        out: Tensor = fn(state.params, state.buffers, x)
        return out
    one = call(
        {k: v[0] for k, v in state.params.items()},
        {k: v[0] for k, v in state.buffers.items()},
        x if shared_rows else x[0],
    )
    return one.unsqueeze(0)


def _outputs(net: _Net, state: _State, rows: _Rows) -> tuple[Tensor, Tensor]:
    """The runs' outputs ``(R, b, k)`` on ``rows``, checked against the head, and the targets
    as ``(R, b)`` (broadcast over the runs for shared rows)."""
    out = _per_run_shape(_apply(net, state, rows.x, rows.shared), net.head)
    y = rows.y
    return out, (y.expand(out.shape[0], *y.shape) if rows.shared else y)


def _train_loss(net: _Net, state: _State, rows: _Rows, loss: _Loss) -> Tensor:
    """The summed loss of one mini-batch: per run the mean data loss of its ``rows`` (soft
    targets for the runs of ``loss.use_soft``), plus ``l1·Σ|w|`` / ``l2·Σw²`` over the weights
    ``loss.penalized``; a scalar."""
    out, y = _outputs(net, state, rows)
    if net.head.task == "regression":
        y = y.to(out.dtype)
    total = _data_loss(out, y, net.head.task, rows.soft, loss.use_soft).sum()
    for name in loss.penalized:
        w = state.params[name].flatten(1)
        if loss.l1 is not None:
            total = total + (loss.l1 * w.abs().sum(1)).sum()
        if loss.l2 is not None:
            total = total + (loss.l2 * w.pow(2).sum(1)).sum()
    return total


def _sample_stats(net: _Net, state: _State, rows: _Rows) -> tuple[Tensor, Tensor]:
    """Per-sample ``(squared error, absolute error)`` or ``(correct, cross-entropy)``,
    ``(R, n)`` float64, of ``rows`` (``n`` rows per run)."""
    out, y = _outputs(net, state, rows)
    if net.head.task == "regression":
        error = out[..., 0].double() - y.double()
        return error.pow(2), error.abs()
    correct, loss = sample_scores(out, y)
    return correct.double(), loss.double()


def _train_grads(
    net: _Net, state: _State, rows: _Rows, loss: _Loss
) -> tuple[dict[str, Tensor], Tensor]:
    """The gradients of :func:`_train_loss` with respect to ``state.params`` (name →
    ``(R, *shape)``), and the loss, by ``torch.func.grad_and_value``: the forward and backward
    passes as one function, which a compiler fuses into one graph (no activations handed to a
    separate backward graph)."""

    def summed(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> Tensor:
        return _train_loss(net, _State(params, buffers), rows, loss)

    # The buffers are an argument (not captured): BatchNorm updates them in place.
    grads, value = torch.func.grad_and_value(summed)(state.params, state.buffers)
    return grads, value


def _narrow_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for a small inner size, as broadcast and sum."""
    return (a.unsqueeze(-1) * b.unsqueeze(1)).sum(-2)


def _column_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for one output column, as broadcast and sum."""
    return (a * b.transpose(1, 2)).sum(-1, keepdim=True)


_KEY_BLOCK = 256
"""Optimizer steps whose mask keys :meth:`_Masks.set_keys` computes at once."""

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


# --- a group's parts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunRows:
    """Each run's rows of the training split, ``(R, n)`` int64: ``fit`` (it trains on them),
    ``val`` (they choose the winner: measured once, after the last epoch) and ``stop`` (early
    stopping's; no columns without it); ``same``: every run has the same rows (the usual case;
    k-fold groups mix folds), so they are gathered once (vmap's in_dims None)."""

    fit: Tensor
    val: Tensor
    stop: Tensor
    same: bool

    @classmethod
    def of(cls, runs: Sequence[_Run]) -> _RunRows:
        """The rows of ``runs``, stacked (runs of one group have as many of each)."""
        fit = torch.stack([run.fit for run in runs])
        val = torch.stack([run.val for run in runs])
        stop = torch.stack([run.stop for run in runs])
        same = all(bool((rows == rows[:1]).all()) for rows in (fit, stop, val))
        return cls(fit, val, stop, same)

    @property
    def n_fit(self) -> int:
        return self.fit.shape[1]

    @property
    def n_val(self) -> int:
        return self.val.shape[1]

    @property
    def n_stop(self) -> int:
        return self.stop.shape[1]


class _Compiled:
    """A group's training and evaluation steps through ``torch.compile`` (none when not
    ``compiled``): each call returns None where there is no compiled step, and the first
    failure to compile is logged and leaves the group eager from then on. ``partial``: the
    smaller last batch of an epoch runs through its own graph (else eagerly)."""

    def __init__(self, compiled: bool, partial: bool, say: Callable[[str], None]) -> None:
        self.grads_fn: Callable[..., tuple[dict[str, Tensor], Tensor]] | None = None
        self.stats_fn: Callable[..., tuple[Tensor, Tensor]] | None = None
        self.partial = partial
        self.say = say
        if compiled:
            self.grads_fn = torch.compile(_own_code(_train_grads), dynamic=False)
            self.stats_fn = torch.compile(
                _own_code(_sample_stats), dynamic=False, options=_evaluation_options()
            )

    def grads(
        self, net: _Net, state: _State, rows: _Rows, loss: _Loss, full: bool
    ) -> dict[str, Tensor] | None:
        """:func:`_train_grads` of one mini-batch (``full``: of the epoch's batch size), name
        → ``(R, *shape)``, or None: run the step eagerly."""
        if not (full or self.partial):
            return None
        out = self._call(self.grads_fn, net, state, rows, loss)
        return None if out is None else cast(dict[str, Tensor], out[0])

    def stats(self, net: _Net, state: _State, rows: _Rows) -> tuple[Tensor, Tensor] | None:
        """:func:`_sample_stats` ``(R, n)`` of one evaluation chunk, or None: run it eagerly."""
        return cast(tuple[Tensor, Tensor] | None, self._call(self.stats_fn, net, state, rows))

    def _call(self, fn: Callable[..., Any] | None, *args: Any) -> Any:
        """``fn(*args)`` without a graph around it; None without ``fn`` or when it fails."""
        if fn is None:
            return None
        try:
            with torch.no_grad():  # grad_and_value's gradients need no graph around them
                return fn(*args)
        except Exception as error:  # the compiler's failures come in many types
            self.say(f"torch.compile failed ({_error_line(error, 160)}); training eagerly")
            self.grads_fn = self.stats_fn = None
            return None


class _Masks:
    """The counter-based dropout of a group's runs, in its stacked buffers (name → ``(R, …)``):
    each epoch's rates (early/late dropout: 0 outside a run's window) and each optimizer
    step's mask keys."""

    def __init__(
        self,
        template: nn.Module,
        buffers: dict[str, Tensor],
        sites: list[tuple[str, str, float]],
        windows: list[tuple[int, int] | None],
        device: torch.device,
    ) -> None:
        counters = [
            (name, m) for name, m in template.named_modules() if isinstance(m, CounterDropout)
        ]
        self.buffers, self.windows, self.device = buffers, windows, device
        self.key_layers = [(f"{name}.key", f"{name}.seed", m.layer) for name, m in counters]
        self.rate_names = [f"{name}.p" for name, _ in counters if name != _INPUT]
        self.base_rates = {name: buffers[name].clone() for name in self.rate_names}
        modules = dict(template.named_modules())
        self.sites = [(modules[name], attr, rate) for name, attr, rate in sites]
        self.buffer_names = {f"{n}.{b}" for n, _ in counters for b in ("seed", "p", "key")}
        self.key_table: tuple[int, list[Tensor]] = (0, [torch.zeros(0)])

    def set_rates(self, epoch: int) -> None:
        """Every run's rates ``(R,)`` of ``epoch`` (0-based): its own inside its dropout
        window, 0 outside; unswapped rate sites likewise (R = 1 there)."""
        if all(window is None for window in self.windows):
            return
        on = [dropout_on(window, epoch) for window in self.windows]
        mask = torch.tensor(on, device=self.device)
        for name in self.rate_names:
            base = self.base_rates[name]
            self.buffers[name].copy_(torch.where(mask, base, torch.zeros_like(base)))
        for module, attribute, rate in self.sites:  # R = 1 here
            setattr(module, attribute, rate if on[0] else 0.0)

    def restore_rates(self) -> None:
        """Every run's own rates again (after early or late dropout's last epoch)."""
        for name in self.rate_names:
            self.buffers[name].copy_(self.base_rates[name])
        for module, attribute, rate in self.sites:
            setattr(module, attribute, rate)

    def set_keys(self, step: int) -> None:
        """Set every dropout layer's stacked ``key`` buffer ``(R, 2)`` to the keys of
        optimizer step ``step``, computed for blocks of :data:`_KEY_BLOCK` steps at once."""
        if not self.key_layers:
            return
        start, table = self.key_table
        if not start <= step < start + len(table[0]):
            numbers = torch.arange(step, step + _KEY_BLOCK, device=self.device).view(-1, 1)
            table = [
                mask_key(self.buffers[seed], numbers, layer) for _, seed, layer in self.key_layers
            ]
            start = step
            self.key_table = (start, table)
        for (key, _, _), keys in zip(self.key_layers, table, strict=True):
            self.buffers[key].copy_(keys[step - start])


_Chunk = tuple[Tensor, Tensor, int]
"""Evaluation rows ``(x, y, real rows)``, see :meth:`_Evaluation.chunks`."""


class _Evaluation:
    """A group's evaluation: the rows each epoch measures (each run's fit rows, early
    stopping's rows when it reads them every epoch, the test rows), gathered once and cut into
    chunks, the validation rows (measured once, after the last epoch: they choose the winner,
    so nothing during training reads them), and the metrics per split."""

    def __init__(
        self, shared: _Shared, rows: _RunRows, size: int, stop_every_epoch: bool, pad: bool
    ) -> None:
        self.shared, self.rows, self.size = shared, rows, size
        self.regression = shared.data.task == "regression"
        self.stop_every_epoch = stop_every_epoch
        self.sst = self._sums_of_squares()
        parts = [rows.fit, rows.stop] if stop_every_epoch else [rows.fit]
        self.epoch_chunks = self.chunks(*self.gather(torch.cat(parts, 1), test=True), pad)
        self.val_chunks = self.chunks(*self.gather(rows.val, test=False), pad=False)

    def gather(self, rows: Tensor, test: bool) -> tuple[Tensor, Tensor]:
        """Inputs and targets of each run's training-split ``rows`` ``(R, n)`` followed (with
        ``test``) by the test rows: ``(N, *sample)`` and ``(N,)`` when the runs share their
        rows, else ``(R, N, *sample)`` and ``(R, N)``."""
        shared = self.shared
        shape = shared.data.sample_shape
        rows = rows.to(shared.device)
        if self.rows.same:
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

    def chunks(self, x: Tensor, y: Tensor, pad: bool) -> list[_Chunk]:
        """Rows ``x``, ``y`` (as :meth:`gather` gives them) cut into equal chunks of at most
        :data:`EVAL_CHUNK` rows per run: ``(x, y, real rows)`` (views but the last); ``pad``:
        the last chunk padded to the others' size with copies of its first row (whose results
        are dropped), so one compiled graph serves every chunk."""
        axis = 0 if self.rows.same else 1
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

    def _sums_of_squares(self) -> dict[str, Tensor]:
        """``Σ (y − ȳ)²`` per run of each split, ``(R,)`` float64 (for R²; regression only)."""
        if not self.regression:
            return {}
        data, rows = self.shared.data, self.rows
        y = torch.from_numpy(np.asarray(data.y_train, dtype=np.float64))
        y_test = torch.from_numpy(np.asarray(data.y_test, dtype=np.float64))

        def sst(values: Tensor) -> Tensor:
            return (values - values.mean(-1, keepdim=True)).pow(2).sum(-1)

        sums = {
            "train": sst(y[rows.fit]),
            "val": sst(y[rows.val]) if rows.n_val else torch.full((self.size,), math.nan),
            "stop": sst(y[rows.stop]) if rows.n_stop else torch.full((self.size,), math.nan),
            "test": sst(y_test).expand(self.size),
        }
        return {split: value.to(self.shared.device) for split, value in sums.items()}

    def stats(
        self, net: _Net, state: _State, chunks: list[_Chunk], compiled: _Compiled | None
    ) -> tuple[Tensor, Tensor]:
        """:func:`_sample_stats` ``(R, n)`` of the rows of :meth:`chunks` (through the
        compiled step where ``compiled`` has one)."""
        first: list[Tensor] = []
        second: list[Tensor] = []
        for x, y, real in chunks:
            rows = _Rows(x, y, self.rows.same)
            stats = None if compiled is None else compiled.stats(net, state, rows)
            if stats is None:
                stats = _sample_stats(net, state, rows)
            first.append(stats[0][:, :real])
            second.append(stats[1][:, :real])
        return torch.cat(first, 1), torch.cat(second, 1)

    def metrics(self, a: Tensor, b: Tensor, split: str) -> dict[str, Tensor]:
        """A split's metrics, each ``(R,)``, from its per-sample statistics ``(R, n)`` (see
        :meth:`epoch`)."""
        count = a.shape[1]
        if not count:
            nan = torch.full((self.size,), math.nan, dtype=torch.float64, device=a.device)
            return {"score": nan, "loss": nan, "rmse": nan, "mae": nan}
        first_sum = a.sum(1)
        second_mean = b.sum(1) / count
        if self.regression:  # a: squared errors, b: absolute errors
            mse = first_sum / count
            return {
                "score": 1.0 - first_sum / self.sst[split],
                "loss": mse,
                "rmse": mse.sqrt(),
                "mae": second_mean,
            }
        return {"score": first_sum / count, "loss": second_mean}  # a: correct, b: CE

    @torch.no_grad()
    def epoch(self, net: _Net, state: _State, compiled: _Compiled) -> dict[str, dict[str, Tensor]]:
        """Eval-mode metrics per split (``train``: the fit rows, ``test``, ``stop``: early
        stopping's rows): ``score`` (accuracy or R²), ``loss`` (cross-entropy or MSE) and, for
        regression, ``rmse`` and ``mae``; each ``(R,)`` float64 on the device (NaN for an
        empty split). One pass over the epoch's rows; the stopping metrics are NaN without
        early stopping. The validation rows are not measured here (:meth:`validation`)."""
        net.template.eval()
        a, b = self.stats(net, state, self.epoch_chunks, compiled)
        net.template.train()
        n_fit = self.rows.n_fit
        stop_end = n_fit + (self.rows.n_stop if self.stop_every_epoch else 0)
        parts = {
            "train": (a[:, :n_fit], b[:, :n_fit]),
            "stop": (a[:, n_fit:stop_end], b[:, n_fit:stop_end]),
            "test": (a[:, stop_end:], b[:, stop_end:]),
        }
        return {split: self.metrics(*pair, split) for split, pair in parts.items()}

    @torch.no_grad()
    def validation(self, net: _Net, state: _State) -> dict[str, Tensor]:
        """Eval-mode metrics of the validation rows (as :meth:`epoch`), eagerly."""
        net.template.eval()
        a, b = self.stats(net, state, self.val_chunks, compiled=None)
        net.template.train()
        return self.metrics(a, b, "val")


_CURVES = {
    "train_acc": ("train", "score"),
    "test_acc": ("test", "score"),
    "train_loss": ("train", "loss"),
    "test_loss": ("test", "loss"),
}
"""Each curve of :data:`~dropkit.lab.train.contract.METRICS` as (split, metric) of
:meth:`_Evaluation.epoch`."""


class _History:
    """The curves of a group's runs, ``table`` ``(R, len(METRICS), epochs)`` float64, NaN
    until recorded."""

    def __init__(self, runs: int, epochs: int) -> None:
        self.table = np.full((runs, len(METRICS), epochs), np.nan)

    def record(self, metrics: dict[str, dict[str, Tensor]], which: Tensor, slots: slice) -> None:
        """Record ``metrics`` (as :meth:`_Evaluation.epoch` gives them) for the runs
        ``which`` ``(R,)`` bool at the epochs ``slots``."""
        values = torch.stack([metrics[s][k] for s, k in (_CURVES[m] for m in METRICS)])
        table = values.cpu().numpy().T  # (R, metrics)
        if bool(which.all()):
            self.table[:, :, slots] = table[:, :, None]
            return
        rows = which.nonzero().flatten().numpy()
        self.table[rows, :, slots] = table[rows][:, :, None]


def _inputs(shared: _Shared, rows: Tensor) -> Tensor:
    """Model inputs ``(R, b, *sample)`` of training rows ``(R, b)`` (``(b, *sample)`` for rows
    ``(b,)``)."""
    x = shared.x_train[rows.to(shared.device)]
    return x.view(*rows.shape, *shared.data.sample_shape)


class _Batches:
    """The mini-batches of a group's epochs: each run's order of its fit rows (from its
    generator), its inputs (jittered where ``augment``, from the same generator) and its
    targets (smoothed where ``targets`` transform them; ``use_soft`` ``(R,)`` says which)."""

    def __init__(
        self,
        shared: _Shared,
        rows: _RunRows,
        generators: list[torch.Generator],
        augment: list[float | None],
        targets: list[Any],
        use_soft: Tensor | None,
        bn: bool,
    ) -> None:
        self.shared, self.rows, self.generators = shared, rows, generators
        self.augment, self.targets, self.use_soft, self.bn = augment, targets, use_soft, bn
        self.fit_rows: tuple[Tensor, Tensor] | None = None  # shared rows, gathered once

    def order(self, batch: int) -> tuple[Tensor, bool]:
        """This epoch's fit rows in training order, ``(R, n_fit)``, and whether the runs share
        their batches (vmap's in_dims None). A run draws its order from its generator; when
        one batch of ``batch`` rows holds every fit row the order changes nothing but the row
        a mask element falls on, so it is not drawn (the rows are then shared by the runs that
        share them and transform neither inputs nor targets)."""
        fit, n_fit = self.rows.fit, self.rows.n_fit
        shuffle = batch < n_fit
        if shuffle:
            order = torch.stack(
                [fit[r][torch.randperm(n_fit, generator=g)] for r, g in enumerate(self.generators)]
            )
        else:
            order = fit
        plain = all(s is None for s in self.augment) and self.use_soft is None
        return order, not shuffle and self.rows.same and plain

    def starts(self, batch: int) -> list[int]:
        """The first positions of an epoch's mini-batches of ``batch`` rows."""
        n_fit = self.rows.n_fit
        return [
            begin
            for begin in range(0, n_fit, batch)
            # BatchNorm cannot normalize a batch of one sample (as the loop)
            if not (self.bn and min(batch, n_fit - begin) == 1 and begin > 0)
        ]

    def step(self, order: Tensor, begin: int, batch: int, shared_rows: bool, width: int) -> _Rows:
        """The mini-batch of ``order`` ``(R, n_fit)`` at ``begin`` for a model of ``width``
        outputs: inputs, targets and soft targets (shapes: :class:`_Rows`)."""
        shared = self.shared
        if shared_rows:
            if self.fit_rows is None:  # the same every epoch
                rows = order[0]
                self.fit_rows = (_inputs(shared, rows), shared.y_train[rows.to(shared.device)])
            x, y = self.fit_rows
        else:
            rows = order[:, begin : begin + batch]
            x, y = self._augmented(rows), shared.y_train[rows.to(shared.device)]
        soft = None
        if self.use_soft is not None:
            soft = self._soft_targets(y, width)
        return _Rows(x, y, shared_rows, soft)

    def _augmented(self, rows: Tensor) -> Tensor:
        """Model inputs ``(R, b, *sample)`` of training rows ``(R, b)``, each run's jittered
        (``augment``) from its generator."""
        x = _inputs(self.shared, rows)
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

    def _soft_targets(self, y: Tensor, width: int) -> Tensor:
        """Each run's targets ``(R, b)`` as its target transforms make them: ``(R, b)`` for
        one output, ``(R, b, k)`` for ``k``."""
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


class _Stopping:
    """Early stopping's bookkeeping for a group: ``stopper`` (the state machine of the runs
    it ``watched``, ``(R,)`` bool; None: no run stops early) and the best ``tensors`` of every
    run so far (name → ``(R, …)``: the weights and statistics, not the dropout's buffers)."""

    def __init__(
        self,
        stopper: EarlyStopping | None,
        watched: Tensor,
        tensors: dict[str, Tensor],
        device: torch.device,
    ) -> None:
        self.stopper, self.watched, self.tensors, self.device = stopper, watched, tensors, device
        self.best: dict[str, Tensor] = {}

    def start(self) -> None:
        """Take the current tensors as every run's best (before the first epoch)."""
        if self.stopper is not None:
            self.best = {n: t.detach().clone() for n, t in self.tensors.items()}

    def keep(self, which: Tensor) -> None:
        """Copy the current tensors of the runs ``which`` ``(R,)`` bool into their best."""
        if not bool(which.any()):
            return
        index = which.to(self.device)
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                self.best[name][index] = tensor.detach()[index]

    def restore(self, which: Tensor) -> None:
        """Set the runs ``which`` ``(R,)`` bool back to their best."""
        index = which.to(self.device)
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                tensor[index] = self.best[name][index]

    def update(self, epoch: int, metrics: dict[str, dict[str, Tensor]], stopped: Tensor) -> Tensor:
        """After ``epoch`` (0-based), on the stopping rows' loss in ``metrics`` of the runs not
        ``stopped`` ``(R,)`` bool: keep the improved runs' tensors, restore those whose
        patience ran out; those, ``(R,)`` bool."""
        assert self.stopper is not None
        stop_loss = metrics["stop"]["loss"].cpu()
        reported = torch.where(~stopped & self.watched, stop_loss, math.nan)
        improved, newly = self.stopper.update(epoch + 1, reported[self.watched])
        self.keep(_scatter(improved, self.watched))
        newly_all = _scatter(newly, self.watched)
        if bool(newly_all.any()):
            self.restore(newly_all)
        return newly_all


class _EvalSchedule:
    """Which epochs a group evaluates (its curves' points): every ``every``-th and the last;
    ``every=None`` (automatic): every epoch until two epochs after the first (compiling) have
    been timed, then every ``k``-th with ``k`` the smallest that keeps evaluating under
    :data:`EVAL_SHARE` of the training time, at most ``epochs // MIN_CURVE_POINTS`` (a curve
    keeps at least that many points). The epochs left out are NaN in the curves."""

    def __init__(self, every: int | None, epochs: int) -> None:
        self.every, self.epochs = every, epochs
        self.seconds = {"train": 0.0, "eval": 0.0}
        self.timed = 0  # epochs timed (after the first)
        self.started = 0  # epochs trained

    @contextmanager
    def training(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.started += 1
        if self.every is None and self.started > 1:
            self.seconds["train"] += time.perf_counter() - start

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.every is None and self.started > 1:
            self.seconds["eval"] += time.perf_counter() - start
            self.timed += 1
            if self.timed == 2:
                self.every = self._chosen()

    def _chosen(self) -> int:
        most = max(1, self.epochs // MIN_CURVE_POINTS)
        train, evaluate = self.seconds["train"], self.seconds["eval"]
        needed = math.ceil(evaluate / (EVAL_SHARE * train)) if train > 0 else 1
        return max(1, min(most, needed))

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is evaluated."""
        if epoch + 1 == self.epochs or self.every is None:
            return True
        return (epoch + 1) % self.every == 0


# --- probing a model (can vmap run it, what does it cost) --------------------------------------


def _forward(net: _Net, state: _State, x: Tensor, vmapped: bool | None = None) -> Tensor:
    """Outputs ``(R, N, k)`` for inputs ``(R, N, *sample)``, eagerly; ``vmapped``: instead of
    the net's (False: one call of run 0's tensors, R = 1)."""
    net = net if vmapped is None else replace(net, vmapped=vmapped)
    return _per_run_shape(_apply(net, state, x, shared_rows=False), net.head)


def _output_width(net: _Net, state: _State, x: Tensor) -> int:
    """Outputs per sample of run 0's model on its first rows of ``x`` ``(R, n, *sample)``
    (training mode, no vmap): a wrong shape raises here, before any vmap."""
    net.template.train()
    with torch.no_grad():
        buffers = {k: v[:1] for k, v in state.buffers.items()}
        out = _forward(net, _State(state.params, buffers), x[:1], vmapped=False)
    return int(out.shape[-1])


def _vmap_failure(net: _Net, state: _State, x: Tensor) -> str | None:
    """Why ``vmap`` cannot run the model (one forward and backward in training mode, one
    forward in evaluation mode on ``x`` ``(R, n, *sample)``), or None."""
    try:
        out = _forward(net, state, x)
        grads = torch.autograd.grad(out.sum(), list(state.params.values()), allow_unused=True)
        del grads
        net.template.eval()
        with torch.no_grad():
            _forward(net, state, x)
    except Exception as error:  # vmap's refusals are RuntimeErrors and others
        return f"torch.vmap cannot run the model ({_error_line(error, 160)})"
    finally:
        net.template.train()
    return None


def _saved_per_row(net: _Net, state: _State, x: Tensor, device: torch.device) -> float:
    """Bytes run 0's training forward pass on ``x`` ``(1, b, *sample)`` saves for the
    backward, per row (eagerly, torch's RNG on ``device`` restored)."""
    saved = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    net.template.train()
    with _rng_restored(device), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _forward(net, state, x, vmapped=False).sum()
    return saved / max(1, x.shape[1])


def _count_ops(net: _Net, state: _State, x: Tensor, backward: bool = True) -> int:
    """Operations of one run's training step (forward and, with ``backward``, backward,
    eagerly, no vmap) on ``x`` ``(1, b, *sample)``: torch's dispatched ops, counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):  # type: ignore[no-untyped-call]
        count = 0

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            Counter.count += 1
            return func(*args, **(kwargs or {}))

    one = state.part(0, 1)
    with Counter():  # type: ignore[no-untyped-call]
        out = _forward(net, one, x, vmapped=False)
        if backward:
            torch.autograd.grad(out.sum(), list(one.params.values()), allow_unused=True)
    return Counter.count


# --- the group ---------------------------------------------------------------------------------


class _Group:
    """R runs of one structure trained as one computation (``vmapped``) or, with R = 1, on
    the same functions without vmap; ``compiled``: the training and evaluation steps run
    through ``torch.compile`` (a failure to compile is logged and the steps run eagerly).

    Its parts: ``net`` and ``state`` (the template and the stacked tensors the steps take),
    ``rows`` (each run's fit, validation and stopping rows), ``batches`` (each epoch's
    mini-batches), ``masks`` (the counter dropout's rates and keys), ``loss`` and ``bound``
    (the penalties and max-norm, per run), ``compiled`` (the compiled steps), ``evaluation``
    and ``stopping`` (early stopping's bookkeeping)."""

    def __init__(
        self,
        runs: list[_Run],
        shared: _Shared,
        vmapped: bool,
        release: bool = True,
        compiled: bool = False,
        log: Callable[[str], None] | None = None,
        threads: ThreadChooser | None = None,
        eval_every: int | None = 1,
        mc_compile: bool | None = False,
    ) -> None:
        self.runs, self.shared = runs, shared
        self.mc_compile = mc_compile  # `compile` for the Monte Carlo passes (see _measure)
        self.eval_every = eval_every
        self.threads = threads if threads is not None else ThreadChooser(None)
        self.size = len(runs)
        self.say = log if log is not None else (lambda _line: None)
        device = shared.device
        data = shared.data
        self.out_width = runs[0].width or data.n_outputs
        self.net, self.state = _State.stacked(runs, data, vmapped)
        template, params, buffers = self.net.template, self.state.params, self.state.buffers
        if release:  # the stacked tensors are the runs' weights from now on
            for run in runs:
                run.module.to("meta")
        self.bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in template.modules())
        self.rows = _RunRows.of(runs)
        configs = [run.config for run in runs]
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        effects = [run_effects(c) for c in configs]  # what each run's entries do
        self.windows = [e.dropout_window for e in effects]

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

        self.masks = _Masks(template, buffers, runs[0].sites, self.windows, device)
        kept = [n for n in (*params, *buffers) if n not in self.masks.buffer_names]
        tensors = {n: (params[n] if n in params else buffers[n]) for n in kept}
        self.stopping = _Stopping(self.stopper, self.watched, tensors, device)
        self.batches = _Batches(
            shared, self.rows, self.generators, self.augment, self.targets, self.use_soft, self.bn
        )
        self.layers = [
            f"{name}.weight"
            for name, m in template.named_modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and f"{name}.weight" in params
        ]
        penalized = tuple(self.layers) if self.l1 is not None or self.l2 is not None else ()
        self.loss = _Loss(self.use_soft, self.l1, self.l2, penalized)
        self.optimizer = _DenseAdam(params, configs[0].train)
        self.step = 0
        self.compiled = _Compiled(compiled, shared.epochs >= COMPILE_PARTIAL_EPOCHS, self.say)
        stop_every_epoch = self.stopper is not None and self.rows.n_stop > 0
        self.evaluation = _Evaluation(shared, self.rows, self.size, stop_every_epoch, compiled)

    # -- probing: can vmap run the model, and what does a run cost ----------------------------

    def check(self) -> str | None:
        """Check the output shape on a two-row slice, then (vmapped) try one forward and
        backward under vmap; the reason vmap cannot run the model, or None. Nothing changes:
        the buffers are copies and torch's RNG state is restored."""
        with _rng_restored(self.shared.device):
            x = _inputs(self.shared, self.rows.fit[:, : min(2, self.rows.n_fit)])
            scratch = {k: v.clone() for k, v in self.state.buffers.items()}
            state = _State(self.state.params, scratch)
            self.out_width = _output_width(self.net, state, x)
            for run in self.runs:
                run.width = self.out_width
            return _vmap_failure(self.net, state, x) if self.net.vmapped else None

    def _saved_per_row(self) -> float:
        """Bytes one run's training batch saves for the backward pass, per row (measured on
        a forward pass of run 0, eagerly)."""
        x = _inputs(self.shared, self.rows.fit[:1, : min(self.shared.batch_size, self.rows.n_fit)])
        scratch = {k: v[:1].clone() for k, v in self.state.buffers.items()}
        return _saved_per_row(self.net, _State(self.state.params, scratch), x, self.shared.device)

    def peak_bytes(self) -> int:
        """A rough upper estimate of one run's memory while training: parameters ×5 (weights,
        gradients, Adam's two moments, early stopping's copy), buffers ×2, the tensors one
        training batch saves for the backward ×2 (the mask hashing's temporaries), and one
        evaluation chunk's activations (at the training batch's bytes per row)."""
        per_row = self._saved_per_row()
        n_fit, n_test = self.rows.n_fit, len(self.shared.y_test)
        saved = per_row * min(self.shared.batch_size, n_fit)
        eval_rows = min(EVAL_CHUNK, n_fit + self.rows.n_stop + self.rows.n_val + n_test)
        params = _tensor_bytes(iter(self.state.params.values())) // self.size
        buffers = _tensor_bytes(iter(self.state.buffers.values())) // self.size
        return int(5 * params + 2 * buffers + 2 * saved + per_row * eval_rows)

    def compile_pays(self, runs: int) -> tuple[bool, float, float]:
        """Whether compiling the steps of a group of ``runs`` runs should repay its cost, with
        the estimated eager training seconds and compile seconds: a few eager training steps
        of this (probe) group are timed, scaled per run to ``runs`` runs and to every step of
        every epoch (plus a third for the evaluations), and weighed against
        :data:`COMPILE_SECONDS_PER_OP` per operation of one step (counted). Nothing changes:
        gradients are dropped and the buffers are copies."""
        batch = min(self.shared.batch_size, self.rows.n_fit)
        x = _inputs(self.shared, self.rows.fit[:, :batch])
        y = self.shared.y_train[self.rows.fit[:, :batch].to(self.shared.device)]
        rows = _Rows(x, y, shared=False)
        scratch = _State(self.state.params, {k: v.clone() for k, v in self.state.buffers.items()})
        self.net.template.train()

        def step() -> None:
            loss = _train_loss(self.net, scratch, rows, _Loss())
            torch.autograd.grad(loss, list(scratch.params.values()), allow_unused=True)

        with _rng_restored(self.shared.device):
            step()  # warm up
            start = time.perf_counter()
            for _ in range(3):
                step()
            if self.shared.device.type == "cuda":
                torch.cuda.synchronize(self.shared.device)
            per_step = (time.perf_counter() - start) / 3 / self.size
            ops = _count_ops(self.net, scratch, x[:1])
        steps = len(self.batches.starts(batch)) * self.shared.epochs
        eager = per_step * runs * steps * 4 / 3
        cost = COMPILE_SECONDS_PER_OP * ops
        return eager >= COMPILE_PAYBACK * cost, eager, cost

    # -- training -----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, dict[str, Tensor]]:
        """This epoch's metrics per split, ``(R,)`` each: :meth:`_Evaluation.epoch`."""
        return self.evaluation.epoch(self.net, self.state, self.compiled)

    def _step(self, rows: _Rows, full: bool) -> None:
        """One optimizer step of every run on ``rows`` (``full``: a batch of the epoch's batch
        size): the gradients (compiled, or by autograd), Adam, then max-norm."""
        grads = self.compiled.grads(self.net, self.state, rows, self.loss, full)
        if grads is None:
            loss = _train_loss(self.net, self.state, rows, self.loss)
            loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step(grads)
        if self.bound is not None:
            for name in self.layers:
                w = self.state.params[name]
                bound_unit_norms_(w, self.bound.view(-1, *([1] * (w.ndim - 1))), range(2, w.ndim))

    def train_epoch(self, epoch: int, stopped: Tensor) -> None:
        """One epoch of mini-batches (``epoch`` 0-based); the runs ``stopped`` ``(R,)`` bool
        keep their best weights (restored after every step)."""
        self.masks.set_rates(epoch)
        self.net.template.train()
        batch = min(self.shared.batch_size, self.rows.n_fit)
        order, shared_rows = self.batches.order(batch)
        frozen = bool(stopped.any())
        for begin in self.batches.starts(batch):
            self.masks.set_keys(self.step)
            rows = self.batches.step(order, begin, batch, shared_rows, self.out_width)
            full = min(batch, self.rows.n_fit - begin) == batch
            with self.threads.timed() if full else contextlib.nullcontext():
                self._step(rows, full=full)
            if frozen:
                self.stopping.restore(stopped)
            self.step += 1

    def train(self, ticker: EpochTicker) -> list[_Output]:
        """Train every epoch (each run until it stops early), then measure the final weights:
        one :class:`_Output` per run."""
        epochs = self.shared.epochs
        history = _History(self.size, epochs)
        stopped = torch.zeros(self.size, dtype=torch.bool)
        self.stopping.start()
        tick = ticker.part(self.size)
        finished = epochs
        schedule = _EvalSchedule(1 if self.stopper is not None else self.eval_every, epochs)
        metrics: dict[str, dict[str, Tensor]] = {}
        for epoch in range(epochs):
            with schedule.training():
                self.train_epoch(epoch, stopped)
            if not schedule.due(epoch):
                tick(epoch + 1)
                continue
            with schedule.evaluating():
                metrics = self.evaluate()
            history.record(metrics, ~stopped, slice(epoch, epoch + 1))
            if self.stopper is not None:
                newly = self.stopping.update(epoch, metrics, stopped)
                if bool(newly.any()):
                    stopped = stopped | newly
                    if epoch + 1 < epochs:  # the restored weights, for the epochs left
                        history.record(self.evaluate(), newly, slice(epoch + 1, epochs))
            tick(epoch + 1)
            if bool(stopped.all()):
                finished = epoch + 1
                break
        if finished < epochs:
            ticker.advance(self.size * (epochs - finished))
        outputs = self._results(history.table, self._final(metrics, history))
        evaluation = Evaluation.of(self.runs[0].config.train)
        if evaluation is not None:
            self.masks.restore_rates()  # Monte Carlo draws at each run's own rate
            measured = _measure(
                self.net,
                self.state,
                self.runs,
                self.shared,
                self.rows,
                evaluation,
                self.mc_compile,
                self.say,
            )
            for output, info in zip(outputs, measured, strict=True):
                output.info.update(info)
        return outputs

    # -- results ------------------------------------------------------------------------------

    def _final(
        self, last: dict[str, dict[str, Tensor]], history: _History
    ) -> dict[str, dict[str, Tensor]]:
        """The metrics the results report, per split ``(R,)``: the ``last`` epoch's, or under
        early stopping the restored best weights' (the watched runs' last epoch, recorded),
        and the validation rows', measured once, now."""
        epochs, final = self.shared.epochs, last
        if self.stopper is not None:
            self.stopping.restore(self.watched)
            final = self.evaluate()
            history.record(final, self.watched, slice(epochs - 1, epochs))
        if self.rows.n_val:  # measured once, after the last epoch (the restored weights)
            final = {**final, "val": self.evaluation.validation(self.net, self.state)}
        return final

    def export(self, r: int) -> dict[str, Tensor]:
        """Run ``r``'s weights as the ``state_dict`` of its original module, CPU tensors."""
        run = self.runs[r]
        stacked = {**self.state.params, **self.state.buffers}
        return {
            key: stacked[run.canonical[f"{_MODEL}.{key}"]][r].detach().cpu().contiguous().clone()
            for key in run.state_keys
        }

    def _results(
        self, histories: NDArray[np.float64], final: dict[str, dict[str, Tensor]]
    ) -> list[_Output]:
        """Per run: its curves ``(len(METRICS), epochs)``, its ``info`` (early stopping's
        epochs; validation and regression metrics) and its ``state_dict`` (None when too
        large)."""
        task = self.shared.data.task
        stop_info = self.stopper.info() if self.stopper is not None else []
        watched = self.watched.nonzero().flatten().tolist()
        tensors = self.stopping.tensors.values()
        keep_states = sum(t[0].numel() for t in tensors) <= MAX_STATE_PARAMETERS
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
            if task == "regression":
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


class _DenseAdam:
    """ONE Adam (:func:`~dropkit.lab.train.contract.make_adam`) over a group's stacked
    parameters ``(R, *shape)``, stepping each in its own dense memory order.

    torch's fused CPU Adam pairs a parameter's elements with its gradient's in memory order and
    copies a tensor that is not contiguous. A compiled step returns a weight's gradient in the
    layout its batched product writes, ``(R, out, in)`` transposed in memory, and copying it into
    the parameter's layout at every step costs as much as the step's products at large widths.
    So on the first step each parameter is laid out as its gradient, once (the values are
    unchanged; the compiled step retraces for the new strides and keeps them), and Adam steps
    contiguous views of the parameters and gradients (a permutation of their axes, sharing their
    memory). Element-wise, it is the same optimizer. A gradient in another layout later (the
    eager path's, e.g.) is copied into the parameter's."""

    def __init__(self, params: dict[str, Tensor], train: TrainSpec) -> None:
        self.params, self.train = params, train
        self.orders: dict[str, list[int]] = {}
        self.views: dict[str, Tensor] = {}
        self.adam: torch.optim.Optimizer | None = None

    def _start(self, grads: dict[str, Tensor] | None) -> None:
        """Lay each parameter out as its first gradient (when the gradients laid out otherwise
        make :data:`RELAYOUT_BYTES` or more) and make Adam over contiguous views."""
        given = grads if grads is not None else {}
        relayout = (
            sum(
                g.numel() * g.element_size()
                for name, g in given.items()
                if g.stride() != self.params[name].stride()
            )
            >= RELAYOUT_BYTES
        )
        with torch.no_grad():
            for name, param in self.params.items():
                grad = param.grad if grads is None else grads[name]
                layout = param if grad is None else grad
                strides = layout.stride()
                order = sorted(range(param.ndim), key=lambda d: -strides[d])
                dense = (
                    relayout
                    and grad is not None
                    and grad.stride() != param.stride()
                    and grad.permute(order).is_contiguous()
                )
                if dense:
                    assert grad is not None
                    param.data = torch.empty_strided(
                        grad.shape, grad.stride(), dtype=param.dtype, device=param.device
                    ).copy_(param)
                if not param.permute(order).is_contiguous():
                    param.data = param.contiguous()
                    order = list(range(param.ndim))
                self.orders[name] = order
                self.views[name] = param.detach().permute(order)
        self.adam = make_adam(list(self.views.values()), self.train)

    def step(self, grads: dict[str, Tensor] | None) -> None:
        """One Adam step with ``grads`` (name → ``(R, *shape)``), or the parameters' ``.grad``
        (None: autograd's), which are then cleared."""
        if self.adam is None:
            self._start(grads)
        assert self.adam is not None
        for name, param in self.params.items():
            grad = param.grad if grads is None else grads[name]
            if grad is not None and grad.stride() != param.stride():
                grad = torch.empty_like(param).copy_(grad)
            self.views[name].grad = None if grad is None else grad.permute(self.orders[name])
            param.grad = None
        self.adam.step()
        for view in self.views.values():
            view.grad = None


def _error_line(error: BaseException, limit: int) -> str:
    """``Type: first line of the message``, cut at a word before ``limit`` characters (``…``)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"
    return f"{type(error).__name__}: {line}"


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


# --- measuring the trained runs (lab.train.predictive) ------------------------------------------


@contextmanager
def _monte_carlo(template: nn.Module, consistent: bool) -> Iterator[None]:
    """Within the body, the template's dropout draws masks and every other module evaluates
    (:func:`dropkit.mc_dropout`'s choice, the counter dropout included); ``consistent``: one
    mask per pass for all rows. Flags restored on exit."""
    counters = [m for m in template.modules() if isinstance(m, CounterDropout)]
    with mc_dropout(template):
        for counter in counters:
            counter.training = True
            counter.consistent = consistent
        try:
            yield
        finally:
            for counter in counters:
                counter.consistent = False


def _sample_fn(net: _Net, shared: bool) -> Callable[..., Tensor]:
    """The Monte Carlo passes of stacked runs as one function of ``(params, buffers, keys,
    x)``: a ``vmap`` over the runs (``x`` shared by them or per run) of a ``vmap`` over the
    samples that batches only the counter dropout's ``key`` buffers ``(R, T, 2)``."""
    call = _call(net)

    def samples(
        params: dict[str, Tensor], fixed: dict[str, Tensor], keys: dict[str, Tensor], x: Tensor
    ) -> Tensor:
        def run(
            p: dict[str, Tensor], b: dict[str, Tensor], k: dict[str, Tensor], xs: Tensor
        ) -> Tensor:
            def sample(one: dict[str, Tensor]) -> Tensor:
                return call(p, {**b, **one}, xs)

            return torch.vmap(sample, randomness="error")(k)

        dims = (0, 0, 0, None if shared else 0)
        out: Tensor = torch.vmap(run, in_dims=dims, randomness="error")(params, fixed, keys, x)
        return out

    return samples


class _SampleSteps:
    """A group's Monte Carlo passes (:func:`_sample_fn`), eagerly or through ``torch.compile``
    (``compiled``), which fuses the mask hashing with the activations around it: each chunk's
    rows are padded to :data:`~dropkit.lab.train.predictive.CHUNK_ROWS` (copies of its first
    row, dropped after; the masks of the real rows do not change) so one graph serves every
    chunk. A failure to compile is said once and the passes run eagerly."""

    def __init__(self, net: _Net, compiled: bool, say: Callable[[str], None]) -> None:
        self.net, self.compiled, self.say = net, compiled, say
        self.functions: dict[bool, Callable[..., Tensor]] = {}

    def __call__(
        self,
        params: dict[str, Tensor],
        fixed: dict[str, Tensor],
        keys: dict[str, Tensor],
        x: Tensor,
        shared: bool,
    ) -> Tensor:
        function = self.functions.get(shared)
        if function is None:
            function = _sample_fn(self.net, shared)
            if self.compiled:
                function = torch.compile(function, dynamic=False)
            self.functions[shared] = function
        if not self.compiled:
            return function(params, fixed, keys, x)
        axis = 0 if shared else 1
        n = x.shape[axis]
        if n < CHUNK_ROWS:
            rows = torch.zeros(CHUNK_ROWS, dtype=torch.int64, device=x.device)
            rows[:n] = torch.arange(n, device=x.device)
            x = x.index_select(axis, rows)
        try:
            out = function(params, fixed, keys, x)
        except Exception as error:  # the compiler's failures come in many types
            self.say(
                f"torch.compile failed on the Monte Carlo passes ({_error_line(error, 160)}); "
                "measuring eagerly"
            )
            self.compiled = False
            self.functions.clear()
            return self(params, fixed, keys, x.narrow(axis, 0, n), shared)
        return out.narrow(2, 0, n)  # (R, T, rows, ...)


class _StackedPredictor:
    """The :class:`~dropkit.lab.train.predictive.Predictor` of a group's stacked runs: its
    Monte Carlo passes ``vmap`` over the samples inside the ``vmap`` over the runs, the
    samples batching only the counter dropout's ``key`` buffers (so what comes before the
    first dropout is computed once per run); a group that trains run by run (R = 1, no vmap)
    loops over the samples."""

    def __init__(self, net: _Net, state: _State, steps: _SampleSteps | None = None) -> None:
        self.net, self.state = net, state
        self.steps = steps if steps is not None else _SampleSteps(net, False, lambda _line: None)
        tensors = [*state.params.values(), *state.buffers.values()]
        self.runs = int(tensors[0].shape[0]) if tensors else 1
        self.keys = [
            (f"{name}.key", f"{name}.seed", m.layer)
            for name, m in net.template.named_modules()
            if isinstance(m, CounterDropout)
        ]

    def outputs(self, x: Tensor, shared: bool) -> Tensor:
        self.net.template.eval()
        try:
            return _per_run_shape(_apply(self.net, self.state, x, shared), self.net.head)
        finally:
            self.net.template.train()

    def samples(self, x: Tensor, shared: bool, steps: Tensor, consistent: bool) -> Tensor:
        buffers = self.state.buffers
        steps = steps.to(next(iter(buffers.values())).device if buffers else x.device)
        keys = {
            key: mask_key(buffers[seed].view(-1, 1), steps.view(1, -1), layer)  # (R, T, 2)
            for key, seed, layer in self.keys
        }
        fixed = {k: v for k, v in buffers.items() if k not in keys}
        count = len(steps)
        with _monte_carlo(self.net.template, consistent):
            if self.net.vmapped:
                out = self.steps(self.state.params, fixed, keys, x, shared)
            else:  # R = 1: a model vmap cannot run, or dropout drawn from torch's RNG
                passes = []
                for t in range(count):
                    state = _State(
                        self.state.params, {**fixed, **{k: v[:, t] for k, v in keys.items()}}
                    )
                    passes.append(_apply(self.net, state, x, shared))
                out = torch.stack(passes, 1)
        flat = _per_run_shape(out.flatten(0, 1), self.net.head)
        return flat.view(self.runs, count, *flat.shape[1:])

    def part(self, start: int, stop: int) -> Predictor:
        return _StackedPredictor(self.net, self.state.part(start, stop), self.steps)


MC_MEMORY = 2**28
"""Bytes of activations one Monte Carlo pass over a chunk may hold (runs × samples × rows),
by default: the runs of a group are measured in parts that fit."""


def _measure(
    net: _Net,
    state: _State,
    runs: Sequence[_Run],
    shared: _Shared,
    rows: _RunRows,
    evaluation: Evaluation,
    compile: bool | None = None,
    say: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """The predictive metrics of a group's trained runs
    (:func:`dropkit.lab.train.predictive.measure`) on the test rows and each run's validation
    rows (regression: with the noise variance of its fit rows), as ``info`` entries.

    The Monte Carlo passes of a vmapped group go through ``torch.compile`` with ``compile=True``,
    never with False, and with None when a compiler is found and their eager time (one chunk
    timed, times the chunks) is :data:`COMPILE_PAYBACK` times the compile's estimate
    (:data:`COMPILE_SECONDS_PER_OP` per operation of one forward pass)."""
    say = say if say is not None else (lambda _line: None)
    data = shared.data
    shape = data.sample_shape

    def split(which: Tensor, prefix: str) -> Split:
        if rows.same:
            picked = which[0].to(shared.device)
            return Split(
                shared.x_train[picked].view(-1, *shape), shared.y_train[picked], True, prefix
            )
        return Split(_inputs(shared, which), shared.y_train[which.to(shared.device)], False, prefix)

    splits = [Split(shared.x_test.view(-1, *shape), shared.y_test, True, "", bins=True)]
    if rows.n_val:
        splits.append(split(rows.val, "val_"))
    regression = data.task == "regression"
    per_run = None
    if evaluation.monte_carlo:
        x = _inputs(shared, rows.fit[:1, : min(CHUNK_ROWS, rows.n_fit)])
        scratch = {k: v[:1].clone() for k, v in state.buffers.items()}
        per_row = _saved_per_row(net, _State(state.params, scratch), x, shared.device)
        per_run = max(1, int(MC_MEMORY // max(1.0, per_row * CHUNK_ROWS * evaluation.samples)))
    steps = _SampleSteps(net, False, say)
    if (
        evaluation.monte_carlo
        and net.vmapped
        and compile is not False
        and compiler_available(shared.device)
    ):
        size = min(len(runs), per_run or len(runs))
        chunks = sum(math.ceil(s.x.shape[0 if s.shared else 1] / CHUNK_ROWS) for s in splits)
        calls = math.ceil(len(runs) / size) * chunks
        steps.compiled = compile is True or _compile_pays(
            net, state, shared, evaluation, size, calls, len(runs), say
        )
    return measure(
        _StackedPredictor(net, state, steps),
        evaluation,
        splits,
        classes=0 if regression else data.n_classes,
        fit=split(rows.fit, "") if regression else None,
        runs_per_pass=per_run,
    )


def _compile_pays(
    net: _Net,
    state: _State,
    shared: _Shared,
    evaluation: Evaluation,
    size: int,
    calls: int,
    total: int,
    say: Callable[[str], None],
) -> bool:
    """Whether compiling the Monte Carlo passes (``calls`` calls of ``size`` runs) should repay
    its cost: one eager call on the first test chunk, timed, against
    :data:`COMPILE_SECONDS_PER_OP` per operation of one run's forward pass. Said in one line."""
    part = state.part(0, size)
    x = shared.x_test[:CHUNK_ROWS].view(-1, *shared.data.sample_shape)
    predictor = _StackedPredictor(net, part)
    with torch.no_grad(), _rng_restored(shared.device):
        start = time.perf_counter()
        steps = torch.arange(evaluation.samples, dtype=torch.int64)
        predictor.samples(x, True, steps, evaluation.consistent)
        if shared.device.type == "cuda":
            torch.cuda.synchronize(shared.device)
        eager = (time.perf_counter() - start) * calls
        with _monte_carlo(net.template, evaluation.consistent):
            ops = _count_ops(net, part, x[None, :1], backward=False)
    cost = COMPILE_SECONDS_PER_OP * ops
    pays = eager >= COMPILE_PAYBACK * cost
    verdict = "compiling" if pays else "not compiling"
    say(
        f"{total} runs: {verdict} the Monte Carlo passes (about {eager:.3g} s eager against "
        f"about {cost:.3g} s to compile)"
    )
    return pays


def measure_modules(
    modules: Sequence[nn.Module],
    data: Dataset,
    configs: Sequence[RunConfig],
    *,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
    compile: bool | None = None,
) -> list[dict[str, float]]:
    """The predictive metrics (:mod:`dropkit.lab.train.predictive`) of trained modules, one per
    config (its ``train.evaluate`` says what to measure), as ``info`` entries.

    For the runs the built-in trainers trained: the modules' dropout becomes counter-based as
    in :func:`train_custom` and runs of one structure are measured together (a ``vmap`` over
    the runs and one over the Monte Carlo samples); a module ``vmap`` cannot run, or whose
    dropout draws from torch's RNG, is measured alone, under its run's seed.

    Args:
        modules: the trained networks (as :func:`dropkit.lab.plan.models.build_model` builds
            them), in the order of ``configs``; they are changed (their dropout swapped).
        data: the data they trained on, as the modules take it: a row is reshaped to
            ``data.sample_shape``, so for the built-in models, which take flat rows and reshape
            them themselves, pass ``dataclasses.replace(data, input_shape=None)``.
        configs: their runs (one shape key).
        device: where to measure.
        log: receives one line per fallback and per decision to compile.
        compile: whether the Monte Carlo passes of the runs measured together go through
            ``torch.compile`` (None: when it pays, timed; see :func:`train_custom`).
    """
    say = log if log is not None else (lambda _line: None)
    where = torch.device(device)
    evaluation = Evaluation.of(configs[0].train)
    if evaluation is None:
        return [{} for _ in configs]
    source = _Built(list(modules))
    runs = _prepare(source, data, configs, where)
    shared = _integer_inputs(_Shared.of(data, runs, where), runs, say)
    together: dict[tuple[Any, ...], list[_Run]] = {}
    alone: list[_Run] = []
    for run in runs:
        (alone if run.reasons else together.setdefault(run.signature, [])).append(run)
    reasons: dict[str, int] = {}
    for run in alone:
        reasons[run.reasons[0]] = reasons.get(run.reasons[0], 0) + 1
    for reason, count in reasons.items():
        say(f"measuring run by run: {reason} ({_cost_of_alone(count)})")
    infos: dict[int, dict[str, float]] = {}
    for members in together.values():
        net, state = _State.stacked(members, data, vmapped=True)
        rows = _RunRows.of(members)
        x = _inputs(shared, rows.fit[:, : min(2, rows.n_fit)])
        scratch = {k: v.clone() for k, v in state.buffers.items()}
        failure = _vmap_failure(net, _State(state.params, scratch), x)
        if failure is not None:
            say(f"measuring run by run: {failure} ({_cost_of_alone(len(members))})")
            alone.extend(members)
            continue
        measured = _measure(net, state, members, shared, rows, evaluation, compile, say)
        for run, info in zip(members, measured, strict=True):
            infos[run.index] = info
    for run in alone:
        net, state = _State.stacked([run], data, vmapped=False)
        with _seeded(run.config.seed, where):
            infos[run.index] = _measure(net, state, [run], shared, _RunRows.of([run]), evaluation)[
                0
            ]
    return [infos[i] for i in range(len(runs))]


class _Built:
    """A :class:`ModelSource` that hands out given modules in order (one per config)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = iter(modules)

    def build(self, p: float, seed: int) -> nn.Module:
        return next(self.modules)


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
    threads: int | None = None,
    eval_every: int | None = None,
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
            (:func:`~dropkit.lab.train.stacked.compiler_available`) and the eager training it
            replaces (timed on a few steps) costs :data:`COMPILE_PAYBACK` times compiling's
            estimate (:data:`COMPILE_SECONDS_PER_OP` per operation of a step). Runs trained run
            by run (fallbacks, ``batched=False``) always run eagerly.
        threads: on the CPU, the most intra-op threads a vmapped group may use: it trains
            with 1 or ``threads``, whichever its epochs take less time with, timed while it
            trains (:class:`~dropkit.lab.train.threads.ThreadChooser`); torch's setting is
            restored afterwards. None: torch's setting as it is.
        eval_every: the curves' resolution: measure the fit and test rows after every
            ``eval_every``-th epoch and the last (the others are NaN in the curves). None
            (automatic): every epoch while evaluating costs under :data:`EVAL_SHARE` of the
            training time, else every ``k``-th (timed on the first epochs; a curve keeps at
            least :data:`MIN_CURVE_POINTS` points). Runs that stop early evaluate every epoch.
            The final figures are the last epoch's either way.

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
    _check_options(batched, max_batch_memory)
    if eval_every is not None and (
        isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1
    ):
        raise ValueError(f"`eval_every` must be None or an int >= 1, got {eval_every!r}")
    device = torch.device(device)
    runs = _prepare(source, data, configs, device)
    shared = _integer_inputs(_Shared.of(data, runs, device), runs, say)
    alone, together = _sort_runs(runs, batched, say)
    ticker = EpochTicker(len(runs), shared.epochs, on_epoch)
    outputs: dict[int, _Output] = {}
    for members in together:
        plan = _plan_group(members, shared, batched, max_batch_memory, compile, say)
        if plan is None:
            alone.extend(members)
            continue
        chunks, compiled = plan
        for chunk in chunks:
            chooser = ThreadChooser(threads if device.type == "cpu" else None, say)
            group = _Group(
                chunk,
                shared,
                vmapped=True,
                compiled=compiled,
                log=say,
                threads=chooser,
                eval_every=eval_every,
                mc_compile=compile,
            )
            try:
                with warnings.catch_warnings():  # said above, once
                    warnings.filterwarnings("ignore", message=_LOOPED_WARNING)
                    trained = group.train(ticker)
            finally:
                chooser.restore()
            for run, output in zip(chunk, trained, strict=True):
                outputs[run.index] = output
    for run in sorted(alone, key=lambda r: r.index):
        with _seeded(run.config.seed, device):
            group = _Group([run], shared, vmapped=False, eval_every=eval_every)
            group.check()
            outputs[run.index] = group.train(ticker)[0]
    ticker.finish()
    return _batch_result([outputs[i] for i in range(len(runs))], time.perf_counter() - start)


def _check_options(batched: bool | None, max_batch_memory: int | None) -> None:
    """Refuse a ``batched`` or ``max_batch_memory`` of :func:`train_custom` out of range."""
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


def _sort_runs(
    runs: list[_Run], batched: bool | None, say: Callable[[str], None]
) -> tuple[list[_Run], list[list[_Run]]]:
    """The runs to train alone (a fallback reason, or ``batched=False``; logged) and the
    others by structure (:attr:`_Run.signature`), each list in the runs' order."""
    alone: list[_Run] = []
    together: dict[tuple[Any, ...], list[_Run]] = {}
    reasons: dict[str, int] = {}  # one line per reason, not per run
    for run in runs:
        if run.reasons:
            reason = f"run with seed {run.config.seed}: {run.reasons[0]}"
            if batched:
                raise ValueError(f"`batched=True` but it cannot be batched: {reason}")
            reasons[run.reasons[0]] = reasons.get(run.reasons[0], 0) + 1
            alone.append(run)
        elif batched is False:
            alone.append(run)
        else:
            together.setdefault(run.signature, []).append(run)
    for reason, count in reasons.items():
        say(f"training run by run: {reason} ({_cost_of_alone(count)})")
    if batched is False:
        say("training run by run (batched=False)")
    return alone, list(together.values())


def _cost_of_alone(count: int) -> str:
    """The expected cost of training ``count`` runs one after another, in words."""
    if count == 1:
        return "1 run"
    return f"{count} runs, one after another: about {count}x the time of one"


def _plan_group(
    members: list[_Run],
    shared: _Shared,
    batched: bool | None,
    max_batch_memory: int | None,
    compile: bool | None,
    say: Callable[[str], None],
) -> tuple[list[list[_Run]], bool] | None:
    """How runs of one structure train: probed on two of them (can vmap run the model, the
    memory and work per run), the consecutive groups that fit the memory budget and whether
    their steps are compiled; None: vmap cannot run it (logged), so they train run by run.
    Each decision is logged."""
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
        say(f"training run by run: {failure}{also} ({_cost_of_alone(len(members))})")
        return None
    if looped:
        say(
            f"{len(members)} runs vmapped, but torch has no batching rule for "
            f"{', '.join(looped)} and loops over the runs there (slower; the same results)"
        )
    chunks = [members]
    if len(members) > 1:
        budget = max_batch_memory
        if budget is None:
            budget = int(MEMORY_FRACTION * _free_memory(shared.device))
        per_run = probe.peak_bytes()
        size = max(1, min(len(members), budget // max(1, per_run)))
        chunks = [members[i : i + size] for i in range(0, len(members), size)]
        say(
            f"{len(members)} runs in {len(chunks)} group(s) of at most {size} "
            f"(about {per_run / 2**20:.2f} MiB per run, budget {budget / 2**20:.2f} MiB)"
        )
    if compile is None and compiler_available(shared.device):
        with warnings.catch_warnings():  # said above, once
            warnings.filterwarnings("ignore", message=_LOOPED_WARNING)
            compiled, eager, cost = probe.compile_pays(max(len(chunk) for chunk in chunks))
        verdict = "compiling" if compiled else "not compiling"
        say(
            f"{len(members)} runs: {verdict} the training and evaluation steps (about "
            f"{eager:.3g} s of eager training against about {cost:.3g} s to compile)"
        )
        return chunks, compiled
    compiled = bool(compile)
    if compiled:
        say(f"{len(members)} runs: compiling the training and evaluation steps")
    return chunks, compiled


def _batch_result(ordered: list[_Output], seconds: float) -> BatchResult:
    """The runs' outputs, in the configs' order, as one :class:`BatchResult`."""
    history = np.stack([o.history for o in ordered], axis=1)  # (metrics, R, epochs)
    states = [o.state for o in ordered]
    return BatchResult(
        curves={name: history[i] for i, name in enumerate(METRICS)},
        seconds=seconds,
        states=None if any(s is None for s in states) else [s for s in states if s is not None],
        info=[o.info for o in ordered],
    )
