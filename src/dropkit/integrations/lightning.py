"""PyTorch Lightning callbacks for dropkit's training-time tools (``dropkit[lightning]``).

* :class:`DropoutScheduleCallback`: drives a :class:`~dropkit.DropoutSchedule` (early, late,
  linear dropout) from the trainer's step or epoch counter and logs the rate.
* :class:`MaxNormCallback`: the max-norm constraint after every optimizer step.
* :class:`DropoutCheckCallback`: :func:`dropkit.check_model` at fit start, and a warning when
  training runs with dropout modules in eval mode (since Lightning 2.2 ``fit`` keeps the modes
  the model had, so a model put in eval mode trains with its dropout off).
* :class:`MCDropoutPredictor`: a ``LightningModule`` mixin whose ``predict_step`` returns
  :class:`~dropkit.MCPrediction`\\ s. ``Trainer.predict`` puts the model in eval mode; the
  mixin switches dropout back on for the Monte Carlo passes only (:func:`dropkit.mc_dropout`).

Example::

    >>> trainer = L.Trainer(max_epochs=20, callbacks=[
    ...     DropoutScheduleCallback(DropoutSchedule(net, "early", total_steps=20, cutoff=0.25),
    ...                             interval="epoch"),
    ...     MaxNormCallback(3.0),
    ...     DropoutCheckCallback(),
    ... ])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dropkit.checks import Finding
from dropkit.integrations._common import (
    check_interval,
    check_on_error,
    check_schedule,
    missing_extra,
    report_findings,
    sync_schedule,
    warn_eval_mode_dropout,
)
from dropkit.schedules import DropoutSchedule
from dropkit.uncertainty import MCPrediction, mc_predict
from dropkit.weights import MaxNorm

try:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.apply_func import move_data_to_device
except ImportError as error:
    raise missing_extra("dropkit.integrations.lightning", "Lightning", "lightning") from error

__all__ = [
    "DropoutCheckCallback",
    "DropoutScheduleCallback",
    "MCDropoutPredictor",
    "MaxNormCallback",
]


class DropoutScheduleCallback(pl.Callback):
    """Set the dropout rates of a :class:`~dropkit.DropoutSchedule` as training goes.

    Before every training batch (``interval="step"``) or epoch (``interval="epoch"``) the
    schedule is moved to ``trainer.global_step`` (optimizer steps done) or
    ``trainer.current_epoch``, so gradient accumulation and resumed runs stay on schedule.
    The current rate (the highest among the scheduled modules) is logged with
    ``pl_module.log(name, ...)``.

    Args:
        schedule: the schedule, built on the ``LightningModule`` (or its network) with
            ``total_steps`` in optimizer steps (``trainer.estimated_stepping_batches``) or in
            epochs (``max_epochs``).
        interval: ``"step"`` (default) or ``"epoch"``: the unit of ``schedule.total_steps``.
        name: the logged metric's name; None: not logged.

    Example::

        >>> schedule = DropoutSchedule(model, "early", total_steps=10, cutoff=0.3)
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[
        ...     DropoutScheduleCallback(schedule, interval="epoch")])  # doctest: +SKIP
    """

    def __init__(
        self, schedule: DropoutSchedule, *, interval: str = "step", name: str | None = "dropout_p"
    ) -> None:
        self.schedule = check_schedule(schedule)
        self.interval = check_interval(interval)
        self.name = name

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            rate = sync_schedule(self.schedule, trainer.global_step)
            if self.name is not None:
                pl_module.log(self.name, rate, on_step=True, on_epoch=False)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            rate = sync_schedule(self.schedule, trainer.current_epoch)
            if self.name is not None:
                pl_module.log(self.name, rate, on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict)


class MaxNormCallback(pl.Callback):
    """Apply the max-norm constraint (:func:`dropkit.max_norm_`) after every optimizer step.

    At ``on_train_start`` a step post-hook (:meth:`dropkit.MaxNorm.attach`) is registered on
    each of the trainer's optimizers, so the constraint follows every real ``optimizer.step()``:
    with manual optimization, gradient accumulation and steps that AMP's scaler skips
    alike. (Lightning's ``on_before_zero_grad`` runs inside the closure, *before* the step of its
    batch.) The constraint is also applied once when training starts; the hooks are removed
    when training ends.

    Args:
        max_norm: the bound ``c > 0`` on each unit's incoming weight norm (3–4 in Srivastava et
            al. 2014).
        dim: the weight axis that indexes units, see :func:`dropkit.max_norm_`.

    Example::

        >>> trainer = L.Trainer(max_epochs=5, callbacks=[MaxNormCallback(3.0)])  # doctest: +SKIP
    """

    def __init__(self, max_norm: float, *, dim: int | None = None) -> None:
        self.constraint = MaxNorm(max_norm, dim=dim)
        self._handles: list[RemovableHandle] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove()
        self.constraint(pl_module)  # start within the bound
        self._handles = [self.constraint.attach(opt, pl_module) for opt in trainer.optimizers]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class DropoutCheckCallback(pl.Callback):
    """Catch dropout mistakes: :func:`dropkit.check_model` at fit start, eval-mode dropout.

    At ``on_fit_start`` the model is checked, with ``pl_module.example_input_array`` as the
    example input when it is set (moved to the model's device). Findings of severity
    ``"warning"`` raise a ``RuntimeError`` or are warned about, as ``on_error`` says; notes are
    kept in :attr:`findings`. After the first backward pass of each ``fit``, it warns (a
    ``UserWarning``) if any dropout site with ``p > 0`` was in eval mode during that training
    step: Lightning 2.2 and later keep the modes the model had before ``fit``.

    Args:
        on_error: ``"raise"`` (default) or ``"warn"``.

    Example::

        >>> trainer = L.Trainer(callbacks=[DropoutCheckCallback(on_error="warn")])  # doctest: +SKIP
    """

    def __init__(self, on_error: str = "raise") -> None:
        self.on_error = check_on_error(on_error)
        self.findings: list[Finding] = []
        self._mode_checked = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mode_checked = False
        example = pl_module.example_input_array
        if example is not None:
            example = move_data_to_device(example, pl_module.device)
        self.findings = report_findings(pl_module, example, self.on_error)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._mode_checked:
            self._mode_checked = True
            warn_eval_mode_dropout(pl_module, stacklevel=2)


class _MovableMCPrediction(MCPrediction):
    """An :class:`~dropkit.MCPrediction` with ``.to(device)``, which returns a plain one.

    ``Trainer.predict`` moves every prediction to the CPU; it refuses frozen dataclasses
    unless they have a ``to`` method.
    """

    def to(self, device: torch.device | str, **kwargs: Any) -> MCPrediction:
        moved: dict[str, Any] = {
            f.name: None if value is None else value.to(device, **kwargs)
            for f in dataclasses.fields(self)
            for value in [getattr(self, f.name)]
        }
        return MCPrediction(**moved)


class MCDropoutPredictor:
    """A ``LightningModule`` mixin: ``predict_step`` returns Monte Carlo dropout predictions.

    Put it before ``LightningModule`` in the bases. ``predict_step`` calls
    :func:`dropkit.mc_predict` on the module (its ``forward`` must return logits, or outputs
    for ``mc_task = "regression"``) with the input :meth:`mc_input` takes from the batch.
    ``Trainer.predict`` runs in eval mode; :func:`dropkit.mc_dropout` turns dropout (only
    dropout) back on for the passes and restores every mode afterwards.

    Attributes:
        mc_samples: the number of Monte Carlo samples per input (default 50).
        mc_task: ``"classification"`` (default) or ``"regression"``.
        mc_batch_size: samples per forward pass; None: all at once.
        mc_generator: a ``torch.Generator`` for reproducible masks; None: the global RNG.

    Example::

        >>> class Net(MCDropoutPredictor, L.LightningModule):
        ...     mc_samples = 100
        ...     ...
        >>> predictions = trainer.predict(Net(), loader)  # doctest: +SKIP
        >>> predictions[0].std  # doctest: +SKIP
    """

    mc_samples: int = 50
    mc_task: str = "classification"
    mc_batch_size: int | None = None
    mc_generator: torch.Generator | None = None

    def mc_input(self, batch: Any) -> Tensor:
        """The model input in ``batch``: the batch itself, or its first item (``(x, y)``)."""
        if isinstance(batch, (tuple, list)):
            return batch[0]  # type: ignore[no-any-return]
        if not isinstance(batch, Tensor):
            raise TypeError(
                f"MCDropoutPredictor cannot find the input in a {type(batch).__name__} batch: "
                "override mc_input(batch) to return it"
            )
        return batch

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> MCPrediction:
        """:func:`dropkit.mc_predict` of this module on :meth:`mc_input` of ``batch``."""
        if not isinstance(self, nn.Module):
            raise TypeError("MCDropoutPredictor must be mixed into a LightningModule")
        prediction = mc_predict(
            self,
            self.mc_input(batch),
            n_samples=self.mc_samples,
            generator=self.mc_generator,
            batch_size=self.mc_batch_size,
            task=self.mc_task,
        )
        fields = {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}
        return _MovableMCPrediction(**fields)
