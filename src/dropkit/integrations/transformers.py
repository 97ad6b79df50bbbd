"""Hugging Face ``Trainer`` callbacks and Monte Carlo dropout on batch dicts.

Install with ``pip install "dropkit[transformers]"``.

* :class:`DropoutScheduleCallback`: drives a :class:`~dropkit.DropoutSchedule` from
  ``state.global_step`` or the epoch, and adds the rate to the trainer's logs.
* :class:`MaxNormCallback`: the max-norm constraint after every optimizer step.
* :class:`DropoutCheckCallback`: :func:`dropkit.check_model` when training begins, and a
  warning when the first training step ran with dropout in eval mode.
* :func:`mc_predict`: :func:`dropkit.mc_predict` for a model called on a batch dict
  (``model(**batch)``) whose output has ``.logits``.

Example::

    >>> trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[
    ...     DropoutScheduleCallback(DropoutSchedule(model, "early", total_steps=3, cutoff=0.34),
    ...                             interval="epoch"),
    ...     MaxNormCallback(3.0),
    ...     DropoutCheckCallback(),
    ... ])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dropkit._validation import check_module
from dropkit.checks import Finding
from dropkit.integrations._common import (
    check_interval,
    check_on_error,
    check_schedule,
    missing_extra,
    report_findings,
    schedule_rate,
    sync_schedule,
    warn_eval_mode_dropout,
)
from dropkit.schedules import DropoutSchedule
from dropkit.uncertainty import MCPrediction
from dropkit.uncertainty import mc_predict as _mc_predict_tensor
from dropkit.weights import MaxNorm

try:
    from transformers import (
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as error:
    raise missing_extra(
        "dropkit.integrations.transformers", "transformers", "transformers"
    ) from error

__all__ = ["DropoutCheckCallback", "DropoutScheduleCallback", "MaxNormCallback", "mc_predict"]


class DropoutScheduleCallback(TrainerCallback):
    """Set the dropout rates of a :class:`~dropkit.DropoutSchedule` as training goes.

    At the start of every optimizer step (``interval="step"``) or epoch (``interval="epoch"``)
    the schedule is moved to ``state.global_step`` or the epoch index, so gradient
    accumulation and resumed runs stay on schedule. At each logging step the current rate
    (the highest among the scheduled modules) is added under ``name`` to the logs the
    callbacks after this one receive and to ``trainer.state.log_history``.

    Args:
        schedule: the schedule, built on the model with ``total_steps`` in optimizer steps
            (``args.max_steps``, or batches per epoch × epochs / accumulation) or in epochs.
        interval: ``"step"`` (default) or ``"epoch"``: the unit of ``schedule.total_steps``.
        name: the logged key; None: not logged.

    Example::

        >>> schedule = DropoutSchedule(model, "early", total_steps=3, cutoff=0.34)
        >>> callback = DropoutScheduleCallback(schedule, interval="epoch")
    """

    def __init__(
        self, schedule: DropoutSchedule, *, interval: str = "step", name: str | None = "dropout_p"
    ) -> None:
        self.schedule = check_schedule(schedule)
        self.interval = check_interval(interval)
        self.name = name

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.interval == "step":
            sync_schedule(self.schedule, state.global_step)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.interval == "epoch":
            # state.epoch is a whole number at an epoch's start, fractional when resuming in it.
            sync_schedule(self.schedule, math.floor((state.epoch or 0.0) + 1e-9))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.name is None or logs is None:
            return
        rate = schedule_rate(self.schedule)
        logs[self.name] = rate
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1][self.name] = rate


class MaxNormCallback(TrainerCallback):
    """Apply the max-norm constraint (:func:`dropkit.max_norm_`) after every optimizer step.

    It runs in ``on_optimizer_step``, which the ``Trainer`` calls right after
    ``optimizer.step()`` (once per optimizer step under gradient accumulation), and once in
    ``on_train_begin`` so training starts within the bound.

    Args:
        max_norm: the bound ``c > 0`` on each unit's incoming weight norm.
        dim: the weight axis that indexes units, see :func:`dropkit.max_norm_`.

    Example::

        >>> callback = MaxNormCallback(3.0)
    """

    def __init__(self, max_norm: float, *, dim: int | None = None) -> None:
        self.constraint = MaxNorm(max_norm, dim=dim)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            self.constraint(model)

    def on_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None:
            self.constraint(model)


class DropoutCheckCallback(TrainerCallback):
    """Catch dropout mistakes: :func:`dropkit.check_model` when training begins, eval-mode dropout.

    At ``on_train_begin`` the model is checked (with ``example_input`` when given). Findings of
    severity ``"warning"`` raise a ``RuntimeError`` or are warned about, as ``on_error`` says;
    all findings are kept in :attr:`findings`. Before the first optimizer step it warns (a
    ``UserWarning``) if any dropout site with ``p > 0`` was in eval mode during that step's
    forward pass: the ``Trainer`` calls ``model.train()``, but a model whose ``train()`` is
    overridden, or a callback that puts submodules in eval mode, trains with that dropout off.

    Args:
        on_error: ``"raise"`` (default) or ``"warn"``.
        example_input: an input for :func:`dropkit.check_model` (a dict is passed as keyword
            arguments), on the model's device; None: the checks read the module structure only.

    Example::

        >>> callback = DropoutCheckCallback(on_error="warn")
    """

    def __init__(self, on_error: str = "raise", *, example_input: Any = None) -> None:
        self.on_error = check_on_error(on_error)
        self.example_input = example_input
        self.findings: list[Finding] = []
        self._mode_checked = False

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        self._mode_checked = False
        if model is not None:
            self.findings = report_findings(model, self.example_input, self.on_error)

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is not None and not self._mode_checked:
            self._mode_checked = True
            warn_eval_mode_dropout(model, stacklevel=2)


class _Indexed(nn.Module):
    """``model(**batch)`` on the rows of ``batch`` named by an index tensor; returns the logits.

    :func:`dropkit.mc_predict` repeats one input tensor to compute many samples per pass; the
    index tensor is that input, so every tensor of the batch is repeated alike.
    """

    def __init__(self, model: nn.Module, batch: Mapping[str, Any], rows: int) -> None:
        super().__init__()
        self.model = model
        self.rows = rows
        self.batch = dict(batch)

    def forward(self, index: Tensor) -> Tensor:
        inputs = {
            key: value[index]
            if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == self.rows
            else value
            for key, value in self.batch.items()
        }
        output = self.model(**inputs)
        logits = getattr(output, "logits", None)
        if isinstance(logits, Tensor):
            return logits
        if isinstance(output, Tensor):
            return output
        raise TypeError(
            f"mc_predict needs model outputs with a `logits` tensor, got {type(output).__name__}"
        )


def mc_predict(
    model: nn.Module,
    batch: Mapping[str, Any],
    *,
    n_samples: int = 50,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    task: str = "classification",
) -> MCPrediction:
    """:func:`dropkit.mc_predict` for a model called as ``model(**batch)``.

    ``batch`` is what a tokenizer or a data collator returns (``input_ids``,
    ``attention_mask``, ``pixel_values`` …). ``labels`` is left out, so no loss is computed.
    The model's output must have a ``logits`` tensor (every ``...For...Classification`` model
    has) or be a tensor. Dropout is switched on for the passes (Hugging Face attention's
    ``dropout=0.0 if not self.training`` included), every other module evaluates, and all modes
    are restored afterwards.

    Args:
        model: the model, e.g. ``AutoModelForSequenceClassification``; any mode.
        batch: a mapping of keyword arguments; the tensors whose first axis is the batch size
            (that of the first tensor) are repeated per sample, the rest are passed as is.
        n_samples: the number of Monte Carlo samples (>= 1). Default: 50.
        generator: makes the result reproducible, see :func:`dropkit.mc_predict`.
        batch_size: samples per forward pass; None: all at once (lower it to save memory).
        task: ``"classification"`` (softmax of the logits) or ``"regression"``.

    Returns:
        An :class:`~dropkit.MCPrediction`: ``mean`` and ``std`` of shape ``(N, num_labels)``.

    Example::

        >>> inputs = tokenizer(["good", "bad"], return_tensors="pt", padding=True)
        >>> pred = mc_predict(model, inputs, n_samples=20)  # doctest: +SKIP
        >>> pred.mean.shape, pred.mutual_info.shape  # doctest: +SKIP
        (torch.Size([2, 2]), torch.Size([2]))
    """
    check_module(model, "model")
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"`batch` must be a mapping of model keyword arguments, got {type(batch).__name__}"
        )
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
    tensors = [v for v in inputs.values() if isinstance(v, Tensor) and v.ndim > 0]
    if not tensors:
        raise ValueError(f"`batch` has no tensor with a batch axis, got keys {sorted(inputs)}")
    rows = tensors[0].shape[0]
    index = torch.arange(rows, device=tensors[0].device)
    return _mc_predict_tensor(
        _Indexed(model, inputs, rows),
        index,
        n_samples=n_samples,
        generator=generator,
        batch_size=batch_size,
        task=task,
    )
