"""The batched trainer for any user model: R runs of one ``nn.Module`` as one computation.

:func:`train_custom` trains the runs of a user's model that differ in dropout rate, seed, fold
or regularization strengths together: the R modules' parameters and buffers are stacked with
``torch.func.stack_module_state``; one forward ``torch.vmap``-s
``torch.func.functional_call`` over the runs (in_dims 0 for parameters, buffers and each run's
own mini-batch); the loss is the sum over runs of each run's mean loss, with one
``.backward()`` and ONE Adam (:func:`dropkit.lab.training.make_adam`) over the stacked
tensors. Adam is element-wise, so per run it is the same optimizer as one Adam per run.

Why counter-based masks. The property this trainer keeps is: *a run trained in a batch gives
the result it gives alone* (final weights equal to float rounding). PyTorch's randomness
cannot give that under ``vmap``: ``randomness="same"`` gives every run the same masks, and
``"different"`` draws one tensor for the whole batch, so a run's masks depend on its position
and on the batch's size. So each dropout module is replaced (:func:`~dropkit.lab.
counter_masks.counter_module`) by a :class:`~dropkit.lab.counter_masks.CounterDropout` whose
keep decisions are a hash of (run seed, optimizer step, layer index, element index); its seed
and rate are buffers, stacked and vmapped like any buffer, so per-run rates are tensors (and
early/late dropout is a per-run rate of 0 outside the window). Inverted dropout
``x·m / (1 − p)``: ``p = 0`` gives ``x`` exactly, ``p = 1`` zeros. Covered: ``nn.Dropout``,
``nn.Dropout1d/2d/3d`` (one draw per (sample, channel)), ``nn.AlphaDropout``,
``nn.FeatureAlphaDropout``, dropkit's ``Dropout``, ``SpatialDropout1d/2d/3d``,
``AlphaDropout``, ``FeatureAlphaDropout``, ``DropPath`` and ``LockedDropout``.

Each run's epoch order comes from ``torch.Generator().manual_seed(seed)`` (drawn outside vmap),
as do its input jitter (``augment``), so its data and its masks are functions of its config.

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
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from dropkit.lab.arms import entry_regularizer, target_transforms
from dropkit.lab.config import RunConfig
from dropkit.lab.counter_masks import CounterDropout, counter_module
from dropkit.lab.data import Dataset
from dropkit.lab.loop import augment_batch
from dropkit.lab.splits import holdout_rows, validation_rows
from dropkit.lab.store import MAX_STATE_PARAMETERS
from dropkit.lab.training import (
    METRICS,
    VALIDATION_FRACTION,
    BatchResult,
    EarlyStopping,
    EpochTicker,
    bound_unit_norms_,
    dropout_on,
    dropout_window,
    feature_scale,
    make_adam,
    sample_scores,
)
from dropkit.surgery import find_dropout_sites

__all__ = [
    "EVAL_CHUNK",
    "MEMORY_FRACTION",
    "SUPPORTED_REGULARIZERS",
    "ModelSource",
    "train_custom",
]

EVAL_CHUNK = 2048
"""Rows per run of one evaluation forward pass."""

MEMORY_FRACTION = 0.5
"""Share of the free memory (RAM, or the CUDA device's) a batch may use by default."""

SUPPORTED_REGULARIZERS = (
    "augment",
    "early_dropout",
    "early_stopping",
    "l1",
    "l2",
    "late_dropout",
)
"""Regularizer entries a user model's runs may have, besides those that transform the targets
(``label_smoothing``); the others change the built-in models' modules."""

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
    val: Tensor  # (n_val,) int64 validation rows (early stopping's when it has no split)
    reasons: list[str]
    sites: list[tuple[str, str, float]]  # unswapped rate sites: (module name, attribute, rate)
    signature: tuple[Any, ...] = ()
    state_keys: list[str] = field(default_factory=list)  # the user module's state_dict keys
    canonical: dict[str, str] = field(default_factory=dict)  # see _canonical_names


@dataclass
class _Output:
    """What one run produced."""

    history: NDArray[np.float64]  # (metrics, epochs)
    info: dict[str, float] = field(default_factory=dict)
    state: dict[str, Tensor] | None = None


# --- validation rows ---------------------------------------------------------------------------


def _stopping_rows(y: NDArray[Any], task: str) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Early stopping's hold-out when the data has no validation split: the generic loop's
    (:data:`~dropkit.lab.training.VALIDATION_FRACTION` of the rows, seed 0, stratified for
    classification: the rows of :func:`~dropkit.lab.training.validation_split`)."""
    return holdout_rows(y, VALIDATION_FRACTION, 0, stratify=task == "classification")


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
            if name in SUPPORTED_REGULARIZERS:
                continue
            try:
                transforms = entry_regularizer(name).targets
            except ValueError:
                transforms = None
            if transforms is None:
                raise ValueError(
                    f"regularizer {name!r} cannot train a custom model; supported: "
                    f"{', '.join(SUPPORTED_REGULARIZERS)} and label_smoothing"
                )
            if data.task == "regression":
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
    split_cache: dict[int | None, tuple[NDArray[np.intp], NDArray[np.intp]]] = {}
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
        if config.fold not in split_cache:
            split_cache[config.fold] = validation_rows(data.y_train, config.data, config.fold)
        fit, val = split_cache[config.fold]
        if config.strength("early_stopping") is not None and not len(val):
            fit, val = _stopping_rows(data.y_train, data.task)
        if not len(fit):
            raise ValueError(f"run with seed {config.seed} has no training rows left to fit")
        run = _Run(
            index,
            config,
            wrapped,
            torch.from_numpy(np.asarray(fit, dtype=np.int64)),
            torch.from_numpy(np.asarray(val, dtype=np.int64)),
            reasons,
            sites,
        )
        run.signature = (_signature(wrapped), len(fit), len(val))
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


def _per_run_shape(out: Tensor, data: Dataset) -> Tensor:
    """``out`` ``(R, N, k)`` checked against ``(N, data.n_outputs)`` (``(N,)`` allowed for one
    output)."""
    width = data.n_outputs
    shape = tuple(out.shape[1:])
    if len(shape) == 2 and shape[1] == width:
        return out
    if len(shape) == 1 and width == 1:
        return out.unsqueeze(-1)
    what = "regression target" if data.task == "regression" else f"{data.n_classes} classes"
    raise ValueError(
        f"the model's output must have shape (N, {width}) for N samples ({what}), "
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


class _Group:
    """R runs of one structure trained as one computation (``vmapped``) or, with R = 1, on
    the same functions without vmap."""

    def __init__(
        self, runs: list[_Run], shared: _Shared, vmapped: bool, release: bool = True
    ) -> None:
        self.runs, self.shared, self.vmapped = runs, shared, vmapped
        self.size = len(runs)
        device = shared.device
        self.params, self.buffers = stack_module_state([run.module for run in runs])
        self.template: nn.Module = copy.deepcopy(runs[0].module).to("meta")
        if release:  # the stacked tensors are the runs' weights from now on
            for run in runs:
                run.module.to("meta")
        self.counters = [m for m in self.template.modules() if isinstance(m, CounterDropout)]
        self.rate_names = [
            f"{name}.p"
            for name, m in self.template.named_modules()
            if isinstance(m, CounterDropout) and name != _INPUT
        ]
        self.base_rates = {name: self.buffers[name].clone() for name in self.rate_names}
        modules = dict(self.template.named_modules())
        self.sites = [(modules[name], attr, rate) for name, attr, rate in runs[0].sites]
        counter_buffers = {
            f"{n}.{b}"
            for n, m in self.template.named_modules()
            if isinstance(m, CounterDropout)
            for b in ("seed", "p")
        }
        self.state_names = [n for n in (*self.params, *self.buffers) if n not in counter_buffers]
        self.bn = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.template.modules()
        )
        configs = [run.config for run in runs]
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        self.windows = [dropout_window(c) for c in configs]
        self.fit = torch.stack([run.fit for run in runs])  # (R, n_fit)
        self.val = torch.stack([run.val for run in runs])  # (R, n_val)
        self.n_fit, self.n_val = self.fit.shape[1], self.val.shape[1]

        def vector(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=shared.dtype, device=device)

        self.l1 = vector([c.strength("l1", 0.0) or 0.0 for c in configs])
        self.l2 = vector([c.strength("l2", 0.0) or 0.0 for c in configs])
        self.bound = vector([math.inf if c.max_norm is None else c.max_norm for c in configs])
        self.augment = [c.strength("augment") for c in configs]
        self.targets = [target_transforms(c.regularizers) for c in configs]
        self.use_soft = torch.tensor([bool(t) for t in self.targets], device=device)
        patience = [c.strength("early_stopping") for c in configs]
        self.watched = torch.tensor([p is not None for p in patience])
        waits = [max(1, round(p)) for p in patience if p is not None]
        self.stopper = EarlyStopping(waits, shared.epochs) if waits else None
        self.best: dict[str, Tensor] = {}
        self.layers = [
            f"{name}.weight"
            for name, m in self.template.named_modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
            and f"{name}.weight" in self.params
        ]
        self.optimizer = make_adam(list(self.params.values()), configs[0].train)
        self.step = 0
        self.sst = self._sums_of_squares()

    # -- forward ------------------------------------------------------------------------------

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        out = functional_call(self.template, (params, buffers), (x,))
        if not isinstance(out, Tensor):
            raise TypeError(f"the model must return a Tensor, got {type(out).__name__}")
        return out

    def forward(
        self, x: Tensor, shared_rows: bool = False, buffers: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Outputs ``(R, N, k)`` for inputs ``(R, N, *sample)`` (``shared_rows``: ``(N, …)``
        for every run)."""
        buffers = self.buffers if buffers is None else buffers
        for counter in self.counters:
            counter.step = self.step
        if self.vmapped:
            fn = torch.vmap(
                self._call, in_dims=(0, 0, None if shared_rows else 0), randomness="error"
            )
            out = fn(self.params, buffers, x)
        else:
            one = self._call(
                {k: v[0] for k, v in self.params.items()},
                {k: v[0] for k, v in buffers.items()},
                x if shared_rows else x[0],
            )
            out = one.unsqueeze(0)
        return _per_run_shape(out, self.shared.data)

    def _inputs(self, rows: Tensor) -> Tensor:
        """Model inputs ``(R, b, *sample)`` of training rows ``(R, b)``."""
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
                self.forward(x[:1], buffers={k: v[:1] for k, v in scratch.items()})
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

    def peak_bytes(self) -> int:
        """A rough upper estimate of one run's memory while training: parameters ×5 (weights,
        gradients, Adam's two moments, early stopping's copy), buffers ×2, the tensors one
        training batch saves for the backward ×2 (the mask hashing's temporaries), and one
        evaluation chunk's activations (at the training batch's bytes per row)."""
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
        per_row = saved / max(1, rows.shape[1])
        eval_rows = min(EVAL_CHUNK, max(self.n_fit + self.n_val, len(self.shared.y_test)))
        params = _tensor_bytes(iter(self.params.values())) // self.size
        buffers = _tensor_bytes(iter(self.buffers.values())) // self.size
        return int(5 * params + 2 * buffers + 2 * saved + per_row * eval_rows)

    # -- evaluation ---------------------------------------------------------------------------

    def _sums_of_squares(self) -> dict[str, Tensor]:
        """``Σ (y − ȳ)²`` per run of each split (float64, for R²; regression only)."""
        if self.shared.data.task != "regression":
            return {}
        y = torch.from_numpy(np.asarray(self.shared.data.y_train, dtype=np.float64))
        y_test = torch.from_numpy(np.asarray(self.shared.data.y_test, dtype=np.float64))

        def sst(values: Tensor) -> Tensor:
            return (values - values.mean(-1, keepdim=True)).pow(2).sum(-1)

        return {
            "train": sst(y[self.fit]),
            "val": sst(y[self.val]) if self.n_val else torch.full((self.size,), math.nan),
            "test": sst(y_test).expand(self.size),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, Tensor]]:
        """Eval-mode metrics per split (``train``: the fit rows, ``test``, ``val``): ``score``
        (accuracy or R²), ``loss`` (cross-entropy or MSE) and, for regression, ``rmse`` and
        ``mae``; each ``(R,)`` float64 on the CPU (NaN for an empty split)."""
        self.template.eval()
        shared = self.shared
        regression = shared.data.task == "regression"
        own = torch.cat([self.fit, self.val], 1)  # (R, n_fit + n_val)
        first: list[Tensor] = []
        second: list[Tensor] = []
        for begin in range(0, own.shape[1], EVAL_CHUNK):
            rows = own[:, begin : begin + EVAL_CHUNK]
            out = self.forward(self._inputs(rows))
            a, b = self._sample_stats(out, shared.y_train[rows.to(shared.device)], regression)
            first.append(a)
            second.append(b)
        test_a: list[Tensor] = []
        test_b: list[Tensor] = []
        n_test = len(shared.y_test)
        for begin in range(0, n_test, EVAL_CHUNK):
            x = shared.x_test[begin : begin + EVAL_CHUNK]
            out = self.forward(x.view(len(x), *shared.data.sample_shape), shared_rows=True)
            y = shared.y_test[begin : begin + EVAL_CHUNK].expand(self.size, -1)
            a, b = self._sample_stats(out, y, regression)
            test_a.append(a)
            test_b.append(b)
        self.template.train()
        own_a, own_b = torch.cat(first, 1), torch.cat(second, 1)
        parts = {
            "train": (own_a[:, : self.n_fit], own_b[:, : self.n_fit]),
            "val": (own_a[:, self.n_fit :], own_b[:, self.n_fit :]),
            "test": (
                torch.cat(test_a, 1) if test_a else torch.zeros(self.size, 0, dtype=torch.float64),
                torch.cat(test_b, 1) if test_b else torch.zeros(self.size, 0, dtype=torch.float64),
            ),
        }
        result = {}
        for split, (a, b) in parts.items():
            n = a.shape[1]
            if not n:
                nan = torch.full((self.size,), math.nan, dtype=torch.float64)
                result[split] = {"score": nan, "loss": nan, "rmse": nan, "mae": nan}
                continue
            if regression:  # a: squared errors, b: absolute errors
                sse = a.sum(1)
                mse = sse / n
                result[split] = {
                    "score": 1.0 - sse / self.sst[split],
                    "loss": mse,
                    "rmse": mse.sqrt(),
                    "mae": b.mean(1),
                }
            else:  # a: correct, b: cross-entropy
                result[split] = {"score": a.mean(1), "loss": b.mean(1)}
        return result

    @staticmethod
    def _sample_stats(out: Tensor, y: Tensor, regression: bool) -> tuple[Tensor, Tensor]:
        """Per-sample ``(squared error, absolute error)`` or ``(correct, cross-entropy)``,
        ``(R, n)`` float64 on the CPU."""
        if regression:
            error = out[..., 0].double() - y.double()
            return error.pow(2).cpu(), error.abs().cpu()
        correct, loss = sample_scores(out, y)
        return correct.double().cpu(), loss.double().cpu()

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

    def _soft_targets(self, y: Tensor, width: int) -> Tensor | None:
        if not bool(self.use_soft.any()):
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
        shared = self.shared
        self._set_rates(epoch)
        self.template.train()
        order = torch.stack(
            [
                self.fit[r][torch.randperm(self.n_fit, generator=g)]
                for r, g in enumerate(self.generators)
            ]
        )
        batch = min(shared.batch_size, self.n_fit)
        penalize_l1, penalize_l2 = bool(self.l1.any()), bool(self.l2.any())
        bounded = bool(torch.isfinite(self.bound).any())
        frozen = bool(stopped.any())
        for begin in range(0, self.n_fit, batch):
            rows = order[:, begin : begin + batch]
            if self.bn and rows.shape[1] == 1 and begin > 0:
                continue  # BatchNorm cannot normalize a batch of one sample (as the loop)
            x = self._batch(rows)
            y = shared.y_train[rows.to(shared.device)]
            out = self.forward(x)
            soft = (
                self._soft_targets(y, out.shape[-1]) if shared.data.task != "regression" else None
            )
            y = y.to(out.dtype) if shared.data.task == "regression" else y
            loss = _data_loss(out, y, shared.data.task, soft, self.use_soft).sum()
            if penalize_l1 or penalize_l2:
                for name in self.layers:
                    w = self.params[name].flatten(1)
                    if penalize_l1:
                        loss = loss + (self.l1 * w.abs().sum(1)).sum()
                    if penalize_l2:
                        loss = loss + (self.l2 * w.pow(2).sum(1)).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            if bounded:
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

        def record(metrics: dict[str, dict[str, Tensor]], which: Tensor, slots: slice) -> None:
            rows = which.nonzero().flatten().tolist()
            values = {
                "train_acc": metrics["train"]["score"],
                "test_acc": metrics["test"]["score"],
                "train_loss": metrics["train"]["loss"],
                "test_loss": metrics["test"]["loss"],
            }
            for i, name in enumerate(METRICS):
                for r in rows:
                    histories[r, i, slots] = float(values[name][r])

        finished = epochs
        for epoch in range(epochs):
            self.train_epoch(epoch, stopped)
            metrics = self.evaluate()
            running = ~stopped
            record(metrics, running, slice(epoch, epoch + 1))
            if self.stopper is not None:
                reported = torch.where(running & self.watched, metrics["val"]["loss"], math.nan)
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
        return self._outputs(histories, final)

    def _outputs(
        self, histories: NDArray[np.float64], final: dict[str, dict[str, Tensor]]
    ) -> list[_Output]:
        shared = self.shared
        stop_info = self.stopper.info() if self.stopper is not None else []
        watched = self.watched.nonzero().flatten().tolist()
        keep_states = sum(t[0].numel() for t in self._state().values()) <= MAX_STATE_PARAMETERS
        outputs = []
        for r, run in enumerate(self.runs):
            info: dict[str, float] = {}
            if r in watched:
                info.update(stop_info[watched.index(r)])
            has_validation = run.config.data.validation > 0 or run.config.data.folds > 0
            if has_validation:
                info["val_acc"] = float(final["val"]["score"][r])
                info["val_loss"] = float(final["val"]["loss"][r])
            if shared.data.task == "regression":
                splits = ("test", "train", "val") if has_validation else ("test", "train")
                for split in splits:
                    info[f"{split}_rmse"] = float(final[split]["rmse"][r])
                    info[f"{split}_mae"] = float(final[split]["mae"][r])
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
) -> BatchResult:
    """Train the runs ``configs`` of a user's model on ``data``, batched where possible.

    See the module docstring for the design. Per config: ``p`` is the rate the source built
    every dropout module with (their rates, read back per run, become the counter modules'
    buffers); ``input_p > 0`` adds a counter-based dropout on the inputs; ``max_norm`` bounds
    the incoming weights of every unit of every Linear and ConvNd layer after each Adam step;
    ``l1`` / ``l2`` add ``λ·Σ|w|`` / ``λ·Σw²`` over their weights (no biases);
    ``label_smoothing`` smooths the class targets; ``early_dropout`` / ``late_dropout`` set the
    run's rates to 0 outside :func:`~dropkit.lab.training.dropout_window`; ``early_stopping``
    (patience ``round(strength)``) stops on the validation loss and restores the best weights,
    as :mod:`dropkit.lab.loop`; ``augment`` perturbs each batch
    (:func:`~dropkit.lab.loop.augment_batch`, from the run's generator).

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
        log: receives one line per decision (fallbacks and their reasons, groups).

    Returns:
        Curves ``(R, epochs)`` per :data:`~dropkit.lab.training.METRICS` name (for regression
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
            say(f"training run by run: {reason}")
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
        failure = probe.check()
        if failure is not None:
            if batched:
                raise ValueError(f"`batched=True` but it cannot be batched: {failure}")
            say(f"training run by run: {failure}")
            alone.extend(members)
            continue
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
        del probe
        for chunk in chunks:
            group = _Group(chunk, shared, vmapped=True)
            for run, output in zip(chunk, group.train(ticker), strict=True):
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
