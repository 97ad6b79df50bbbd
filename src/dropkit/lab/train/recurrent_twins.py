r"""Batchable twins of recurrent modules: LSTM, GRU and RNN that ``torch.vmap`` can run, with
counter-based dropout.

``torch.nn.LSTM`` / ``GRU`` / ``RNN`` run through fused kernels (``aten::lstm``, ``aten::gru``,
…) that ``vmap`` has no batching rule for, and apply their inter-layer ``dropout`` inside that
kernel from torch's RNG; dropkit's variational :class:`~dropkit.recurrent.LSTM` and
:class:`~dropkit.recurrent.GRU` call the same kernels and draw their masks from torch's RNG. A
model holding one therefore trained run by run in the lab. :func:`rewrite_recurrent` turns each
such module, in place, into its *twin*: the same instance, its class swapped for one defined
here, the same parameters and buffers under the same names (its ``state_dict`` unchanged, so a
run's weights load into the original module), a forward pass written with ops that ``vmap``,
``torch.func.grad`` and ``torch.compile`` all take, and dropout drawn from
:class:`~dropkit.lab.train.counter_masks.CounterDropout` children (non-persistent buffers, so
the ``state_dict`` keeps its keys), so that a run's masks are a function of its seed, the
optimizer step and the layer alone: the same run gives the same result alone or in a batch.

The cells, with torch's gate order and biases (``x_t`` the input, ``h`` the state):

- LSTM (Hochreiter & Schmidhuber 1997), gates ``i, f, g, o``:
  ``[i, f, g, o] = σ, σ, tanh, σ(x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh)``,
  ``c_t = f ⊙ c_{t−1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)`` (times ``W_hrᵀ`` with ``proj_size``).
  The tanh of ``g`` is computed as ``2σ(2a) − 1`` (its rows of the weights doubled), so one
  sigmoid serves all four gates.
- GRU (Cho et al. 2014), gates ``r, z, n``: ``r, z = σ(x_t W_{ir,iz}ᵀ + h W_{hr,hz}ᵀ + b)``,
  ``n = tanh(x_t W_inᵀ + b_in + r ⊙ (h W_hnᵀ + b_hn))``, ``h_t = (1 − z) ⊙ n + z ⊙ h``.
- RNN: ``h_t = tanh(x_t W_ihᵀ + b_ih + h W_hhᵀ + b_hh)`` (or ReLU).

Speed: per layer and direction the input projections of all time steps are one matrix product
(``x W_ihᵀ`` over the whole sequence), then a loop over time does one product ``h W_hhᵀ`` and a
few element-wise ops per step, and stacks the outputs once. Under ``vmap`` each op runs once for
all runs (a batched product); under ``torch.compile`` the loop unrolls (so compiling takes
time in proportion to the sequence length and the number of layers) and each step's element-wise
ops fuse. On a CPU the matrix products bound the work, as they bound torch's oneDNN kernel: one
training step of 20 runs of a 1-layer LSTM(32→64) on 64 sequences of 20 steps, on one thread,
took about 1.7× (eager) and 1.2× (compiled) the time of 20 steps of ``nn.LSTM`` one after the
other; batching pays off through the rest of the model, and where a small run's step is bound
by per-op overhead rather than arithmetic.

Dropout, as the originals define it:

- ``nn.LSTM/GRU/RNN(dropout=p)``: the outputs of every layer but the last, in training, a fresh
  mask per element and time step: one ``CounterDropout(p)`` per layer boundary (child
  ``between``).
- dropkit's variational LSTM/GRU (Gal & Ghahramani 2016): per layer and direction and forward
  pass, one input mask ``(N, features)`` (rate ``dropout``) and one recurrent mask ``(N, H)``
  (rate ``recurrent_dropout``), tied across gates, reused at every time step, scaled by
  ``1 / (1 − p)``: drawn with :func:`~dropkit.lab.train.counter_masks.key_keep_mask` from the
  keys of the children ``input_masks`` and ``hidden_masks`` (``draw_masks`` returns them, and
  ``forward(..., masks=)`` still takes masks of one's own).

Every twin has its dropout children whatever its rates (a rate of 0 keeps everything), and its
``repr`` shows neither rate nor seed, so runs that differ only in rate or seed share one
structure and stack. The float attributes ``dropout`` / ``recurrent_dropout`` keep the rates the
module was built with; the twin reads its children's ``p`` buffers instead (per run in the lab).

Covered: exact ``nn.LSTM`` (``proj_size`` included), ``nn.GRU``, ``nn.RNN`` (tanh and ReLU),
dropkit's ``LSTM`` and ``GRU``; any number of layers, ``batch_first`` either way, bidirectional,
with or without an initial state, unbatched (2-D) input, and for the torch modules
``PackedSequence`` input (run padded, each sequence's state frozen past its end; ``vmap`` has no
batching rule for packing and unpacking, so it loops over the runs for those two ops, and
``torch.func.grad`` cannot differentiate them: a compiled training step of such a model fails
and the trainer trains it eagerly). The twins of torch's modules are not instances of
``nn.LSTM`` / ``GRU`` / ``RNN`` any more (``torch.compile`` refuses to trace those); dropkit's
stay instances of its classes. Left alone, so trained run by run as before: subclasses of these
classes (their ``forward`` may differ) and modules whose weights are not tensors of the expected
names (parametrized ones).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from dropkit._validation import check_positive_int
from dropkit.lab.train.counter_masks import CounterDropout, key_keep_mask
from dropkit.recurrent import GRU, LSTM, RNNMasks, VariationalRNN

__all__ = [
    "GRUTwin",
    "LSTMTwin",
    "RNNTwin",
    "VariationalGRUTwin",
    "VariationalLSTMTwin",
    "rewrite_recurrent",
]

_Weights = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]
"""One layer and direction: ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``, ``w_hr`` (None: absent)."""

_Masks = Sequence[tuple[Tensor | None, Tensor | None]]


# --- the recurrences --------------------------------------------------------------------------


def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _projected(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x Wᵀ + b`` for every time step at once: ``x`` (T, N, F) → (T, N, G)."""
    steps, rows = x.shape[0], x.shape[1]
    # 2-D, so that vmap makes one batched product of (T·N, F) rows per run, not T small ones
    return F.linear(x.reshape(steps * rows, x.shape[2]), weight, bias).view(steps, rows, -1)


def _g_doubled(t: Tensor) -> Tensor:
    """``t`` (4H, …) with the rows of the cell gate ``g`` times 2: ``tanh(a) = 2σ(2a) − 1``."""
    i, f, g, o = t.chunk(4, 0)
    return torch.cat((i, f, g * 2.0, o), 0)


_Cell = Callable[[Tensor, list[Tensor]], list[Tensor]]
"""One time step: the input projection of the step ``(N, G)`` and the state → the new state,
whose first tensor is the step's output."""


def _scan(
    cell: _Cell,
    gi: Sequence[Tensor],
    state: Sequence[Tensor],
    reverse: bool,
    valid: Sequence[Tensor] | None,
) -> tuple[Tensor, list[Tensor]]:
    """``cell`` over the steps of ``gi`` (backwards when ``reverse``): the outputs (T, N, ·) in
    time order and the final state. In a packed batch (``valid``: (N, 1) per step) a sequence
    past its end keeps its state."""
    current = list(state)
    outputs = []
    for t in _order(len(gi), reverse):
        new = cell(gi[t], current)
        outputs.append(new[0])
        if valid is not None:
            new = [torch.where(valid[t], n, c) for n, c in zip(new, current, strict=True)]
        current = new
    if reverse:
        outputs.reverse()
    return torch.stack(outputs), current


def _lstm(
    x: Tensor,
    state: Sequence[Tensor],
    weights: _Weights,
    m_h: Tensor | None,
    reverse: bool,
    valid: Sequence[Tensor] | None,
) -> tuple[Tensor, list[Tensor]]:
    """One LSTM layer in one direction: ``x`` (T, N, F), ``state`` ``(h, c)`` ((N, P), (N, H))
    → outputs (T, N, P) and the final ``[h, c]``; ``m_h`` (N, P) masks ``h`` in ``h W_hhᵀ``."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    bias = None if b_ih is None or b_hh is None else _g_doubled(b_ih + b_hh)
    gi = _projected(x, _g_doubled(w_ih), bias).unbind(0)
    w = _g_doubled(w_hh).t()

    def cell(g: Tensor, state: list[Tensor]) -> list[Tensor]:
        h, c = state
        i, f, g2, o = torch.sigmoid(g + (h if m_h is None else h * m_h) @ w).chunk(4, -1)
        c_t = torch.addcmul(f * c - i, i, g2, value=2.0)  # f·c + i·(2σ(2a) − 1)
        h_t = o * torch.tanh(c_t)
        return [h_t if w_hr is None else h_t @ w_hr.t(), c_t]

    return _scan(cell, gi, state, reverse, valid)


def _gru(
    x: Tensor,
    state: Sequence[Tensor],
    weights: _Weights,
    m_h: Tensor | None,
    reverse: bool,
    valid: Sequence[Tensor] | None,
) -> tuple[Tensor, list[Tensor]]:
    """One GRU layer in one direction: ``x`` (T, N, F), ``state`` ``(h,)`` (N, H) → outputs
    (T, N, H) and ``[h]``; ``m_h`` (N, H) masks ``h`` inside ``h W_hhᵀ`` only (the update
    ``z ⊙ h`` keeps the unmasked state)."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    hidden = w_hh.shape[1]
    gi = _projected(x, w_ih, b_ih).unbind(0)

    def cell(g: Tensor, state: list[Tensor]) -> list[Tensor]:
        (h,) = state
        gh_rz, gh_n = F.linear(h if m_h is None else h * m_h, w_hh, b_hh).split_with_sizes(
            [2 * hidden, hidden], -1
        )
        gi_rz, gi_n = g.split_with_sizes([2 * hidden, hidden], -1)
        r, z = torch.sigmoid(gi_rz + gh_rz).chunk(2, -1)
        n = torch.tanh(torch.addcmul(gi_n, r, gh_n))
        return [torch.lerp(n, h, z)]  # n + z·(h − n)

    return _scan(cell, gi, state, reverse, valid)


def _rnn(
    x: Tensor,
    state: Sequence[Tensor],
    weights: _Weights,
    m_h: Tensor | None,
    reverse: bool,
    valid: Sequence[Tensor] | None,
    relu: bool,
) -> tuple[Tensor, list[Tensor]]:
    """One Elman RNN layer in one direction: ``x`` (T, N, F), ``state`` ``(h,)`` (N, H)."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    bias = None if b_ih is None or b_hh is None else b_ih + b_hh
    gi = _projected(x, w_ih, bias).unbind(0)
    w = w_hh.t()

    def cell(g: Tensor, state: list[Tensor]) -> list[Tensor]:
        (h,) = state
        pre = g + (h if m_h is None else h * m_h) @ w
        return [torch.relu(pre) if relu else torch.tanh(pre)]

    return _scan(cell, gi, state, reverse, valid)


def _stack(
    mode: str,
    x: Tensor,
    states: Sequence[Tensor],
    weights: Sequence[_Weights],
    directions: int,
    masks: _Masks | None = None,
    between: Sequence[nn.Module] = (),
    valid: Sequence[Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Run a stack of layers on time-major ``x`` (T, N, F).

    Args:
        mode: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
        states: the initial states, each (L·D, N, ·): ``[h_0]``, or ``[h_0, c_0]`` (LSTM).
        weights: per layer and direction, in the order ``layer·D + direction``.
        directions: D, 2 when bidirectional.
        masks: per layer and direction, the variational ``(input mask (N, F_l), recurrent
            mask (N, H))`` (None: no mask).
        between: modules applied to the outputs (T, N, D·H) of the first layers.
        valid: per time step, (N, 1) bool: the sequences still running (packed input).

    Returns:
        The last layer's outputs (T, N, D·H) and the final states, each (L·D, N, ·).
    """
    layers = len(weights) // directions
    finals: list[list[Tensor]] = [[] for _ in states]
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            m_x, m_h = (None, None) if masks is None else masks[index]
            inp = x if m_x is None else x * m_x
            init = [s[index] for s in states]
            reverse = direction == 1
            if mode == "LSTM":
                out, last = _lstm(inp, init, weights[index], m_h, reverse, valid)
            elif mode == "GRU":
                out, last = _gru(inp, init, weights[index], m_h, reverse, valid)
            else:
                relu = mode == "RNN_RELU"
                out, last = _rnn(inp, init, weights[index], m_h, reverse, valid, relu)
            outputs.append(out)
            for store, value in zip(finals, last, strict=True):
                store.append(value)
        x = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if layer < len(between):
            x = between[layer](x)
    return x, [torch.stack(values) for values in finals]


# --- weights and masks --------------------------------------------------------------------------


def _weight_names(
    layers: int, directions: int, bias: bool, proj: bool
) -> list[tuple[str, str, str | None, str | None, str | None]]:
    """The parameter names of each layer and direction, torch's (and dropkit's) naming."""
    names = []
    for layer in range(layers):
        for direction in range(directions):
            s = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            names.append(
                (
                    f"weight_ih{s}",
                    f"weight_hh{s}",
                    f"bias_ih{s}" if bias else None,
                    f"bias_hh{s}" if bias else None,
                    f"weight_hr{s}" if proj else None,
                )
            )
    return names


def _weights(module: nn.Module, names: Sequence[tuple[str | None, ...]]) -> list[_Weights]:
    """The tensors behind ``names``, read at each call (``functional_call`` swaps them)."""

    def get(name: str | None) -> Tensor | None:
        return None if name is None else cast(Tensor, getattr(module, name))

    return [
        cast(_Weights, (get(w_ih), get(w_hh), get(b_ih), get(b_hh), get(w_hr)))
        for w_ih, w_hh, b_ih, b_hh, w_hr in names
    ]


def _has_weights(module: nn.Module, names: Sequence[tuple[str | None, ...]]) -> bool:
    return all(
        isinstance(getattr(module, name, None), Tensor)
        for entry in names
        for name in entry
        if name is not None
    )


def _scaled_mask(
    counter: CounterDropout, shape: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A variational mask of ``shape`` from ``counter``'s key and rate: ``1 / (1 − p)`` where
    kept, 0 where dropped (all 0 at ``p = 1``)."""
    keep = key_keep_mask(counter.key, counter.p, counter.draw_shape(shape), device)
    p = counter.p.to(dtype)
    scale = torch.where(p < 1.0, 1.0 / torch.where(p < 1.0, 1.0 - p, 1.0), 0.0)
    return torch.where(keep, scale, 0.0)


_RATES = re.compile(r", (?:recurrent_)?dropout=[^,]*")


def _without_rates(text: str) -> str:
    """An ``extra_repr`` without its rates: runs that differ in rate share one structure."""
    return _RATES.sub("", text)


# --- torch's modules ------------------------------------------------------------------------------


class _TorchTwin(nn.Module):
    """What the twins of ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` share: the forward pass of
    :func:`_stack` behind torch's input handling, and ``between``, the counter-based dropout
    between layers.

    Not an ``nn.RNNBase`` any more: ``torch.compile`` refuses to trace any instance of
    ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (``torch._dynamo.config.allow_rnn``). The instance
    keeps torch's attributes (``mode``, ``input_size``, ``hidden_size``, ``num_layers``,
    ``bias``, ``batch_first``, ``bidirectional``, ``proj_size``, ``dropout``, …) and
    parameters; the list of weight tensors torch keeps for its kernels is dropped."""

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int
    between: nn.ModuleList
    _twin_names: list[tuple[str, str, str | None, str | None, str | None]]

    @classmethod
    def adopt(cls, module: nn.Module, seed: int, layers: Iterator[int]) -> bool:
        """Turn ``module`` (an ``nn.RNNBase``) into this twin (False, and nothing changed, if
        it cannot be)."""
        rnn = cast(nn.RNNBase, module)
        directions = 2 if rnn.bidirectional else 1
        proj = rnn.mode == "LSTM" and rnn.proj_size > 0
        names = _weight_names(rnn.num_layers, directions, rnn.bias, proj)
        if not _has_weights(rnn, names):
            return False
        between = [
            CounterDropout(rnn.dropout, seed, next(layers), name=f"{rnn.mode} dropout")
            for _ in range(rnn.num_layers - 1)
        ]
        for cached in ("_flat_weights", "_flat_weight_refs"):  # tensors outside the state
            rnn.__dict__.pop(cached, None)
        module.__class__ = cls
        twin = cast(_TorchTwin, module)
        twin._twin_names = names
        for counter in between:  # they drop the (T, N, D·H) outputs: rows on axis 1
            counter.batch_axis = 1
        twin.between = nn.ModuleList(between)
        return True

    def flatten_parameters(self) -> None:
        """Nothing (models often call it in their forward): the twin reads its weights one by
        one, never as cuDNN's flat buffer."""

    def reset_parameters(self) -> None:
        """torch's initialization: every weight and bias uniform in ``±1/√hidden_size``."""
        nn.RNNBase.reset_parameters(cast(nn.RNNBase, self))

    def extra_repr(self) -> str:
        """torch's, without the rate."""
        items = [f"{self.input_size}, {self.hidden_size}"]
        if self.proj_size != 0:
            items.append(f"proj_size={self.proj_size}")
        if self.num_layers != 1:
            items.append(f"num_layers={self.num_layers}")
        if self.mode == "RNN_RELU":
            items.append("nonlinearity='relu'")
        if self.bias is not True:
            items.append(f"bias={self.bias}")
        if self.batch_first is not False:
            items.append(f"batch_first={self.batch_first}")
        if self.bidirectional is not False:
            items.append(f"bidirectional={self.bidirectional}")
        return ", ".join(items)

    def _sizes(self) -> list[int]:
        hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        return [hidden, self.hidden_size] if self.mode == "LSTM" else [hidden]

    def _check_input(self, x: Tensor) -> None:
        weight = cast(Tensor, self.weight_ih_l0)
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: "
                f"model.to({x.dtype})"
            )
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[-1]}"
            )

    def _run(
        self, input: Tensor | PackedSequence, hx: Sequence[Tensor] | None
    ) -> tuple[Tensor | PackedSequence, list[Tensor]]:
        """torch's input conventions around :func:`_stack`: ``input`` (N, T, F) with
        ``batch_first``, (T, N, F), (T, F) unbatched, or packed; ``hx`` each (L·D, N, ·) (or
        (L·D, ·) unbatched). Returns the output in the input's form and the final states."""
        packed = input if isinstance(input, PackedSequence) else None
        lengths = None
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input)  # (T, N, F), the caller's row order
            batched = True
        else:
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(
                    f"{self.mode.split('_')[0]}: Expected input to be 2D or 3D, "
                    f"got {x.dim()}D instead"
                )
            batched = x.dim() == 3
            if not batched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
        self._check_input(x)
        rows = x.shape[1]
        stacked = self.num_layers * (2 if self.bidirectional else 1)
        shapes = [(stacked, rows, size) for size in self._sizes()]
        if hx is None:
            states = [x.new_zeros(shape) for shape in shapes]
        else:
            rank = 3 if batched else 2
            if any(h.dim() != rank for h in hx):
                ranks = ", ".join(f"{h.dim()}-D" for h in hx)
                kind = "batched 3-D" if batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, the states should also be {rank}-D but got {ranks}"
                )
            states = [h if batched else h.unsqueeze(1) for h in hx]
            for index, (h, shape) in enumerate(zip(states, shapes, strict=True)):
                if tuple(h.shape) != shape:
                    raise RuntimeError(
                        f"Expected hidden[{index}] size {shape}, got {list(h.shape)}"
                    )
        valid = None
        if lengths is not None:
            steps = torch.arange(x.shape[0]).unsqueeze(1)
            valid = (steps < lengths).unsqueeze(-1).to(x.device).unbind(0)
        out, finals = _stack(
            self.mode,
            x,
            states,
            _weights(self, self._twin_names),
            2 if self.bidirectional else 1,
            between=list(self.between),
            valid=valid,
        )
        if packed is not None and lengths is not None:
            return _repacked(out, lengths, packed), finals
        if not batched:
            return out.squeeze(1), [f.squeeze(1) for f in finals]
        return (out.transpose(0, 1) if self.batch_first else out), finals


def _repacked(out: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Padded outputs (T, N, ·) in the caller's row order, packed as ``like`` is."""
    order = like.sorted_indices
    if order is not None:
        out, lengths = out.index_select(1, order), lengths[order.cpu()]
    data = pack_padded_sequence(out, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTMTwin(_TorchTwin):
    """``nn.LSTM`` that ``vmap`` runs, its inter-layer dropout counter-based (see the module
    docstring); returns ``(output, (h_n, c_n))`` like ``nn.LSTM``."""

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor | PackedSequence, tuple[Tensor, Tensor]]:
        out, (h_n, c_n) = self._run(input, hx)
        return out, (h_n, c_n)


class _OneStateTwin(_TorchTwin):
    """A twin whose module keeps one state (``nn.GRU``, ``nn.RNN``): ``(output, h_n)``."""

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        out, (h_n,) = self._run(input, None if hx is None else [hx])
        return out, h_n


class GRUTwin(_OneStateTwin):
    """``nn.GRU`` that ``vmap`` runs; returns ``(output, h_n)`` like ``nn.GRU``."""


class RNNTwin(_OneStateTwin):
    """``nn.RNN`` (tanh or ReLU) that ``vmap`` runs; returns ``(output, h_n)``."""


# --- dropkit's variational modules --------------------------------------------------------------


class _VariationalTwin(VariationalRNN):
    """What the twins of dropkit's LSTM and GRU share: masks from counter keys
    (``input_masks`` and ``hidden_masks``, one child per layer and direction) and the stack of
    :func:`_stack`; input checks, states and layouts stay dropkit's (``_forward``)."""

    input_masks: nn.ModuleList
    hidden_masks: nn.ModuleList
    _twin_names: list[tuple[str, str, str | None, str | None, str | None]]

    @classmethod
    def adopt(cls, module: nn.Module, seed: int, layers: Iterator[int]) -> bool:
        """Turn dropkit's ``module`` into this twin (False, and nothing changed, if it cannot
        be). Layers are numbered per layer and direction, input mask then recurrent mask."""
        rnn = cast(VariationalRNN, module)
        names = _weight_names(rnn.num_layers, rnn.directions, rnn.bias, False)
        if not _has_weights(rnn, names):
            return False
        inputs, hiddens = [], []
        for _ in range(rnn.num_layers * rnn.directions):
            inputs.append(CounterDropout(rnn.dropout, seed, next(layers), name="input mask"))
            hiddens.append(
                CounterDropout(rnn.recurrent_dropout, seed, next(layers), name="recurrent mask")
            )
        module.__class__ = cls
        twin = cast(_VariationalTwin, module)
        twin._twin_names = names
        twin.input_masks = nn.ModuleList(inputs)
        twin.hidden_masks = nn.ModuleList(hiddens)
        return True

    def flatten_parameters(self) -> None:
        """Nothing: the twin reads its weights one by one, never as cuDNN's flat buffer."""

    def extra_repr(self) -> str:
        return _without_rates(super().extra_repr())

    def draw_masks(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNMasks:
        """The masks of one training forward pass at the current step for ``batch_size``
        sequences: per layer and direction ``(input mask (N, F_l), recurrent mask (N, H))``,
        scaled by ``1 / (1 − p)``, from the counter keys (the same at every call until the
        keys change)."""
        rows = check_positive_int(batch_size, "batch_size")
        weight = cast(Tensor, self.weight_ih_l0)
        where = torch.device(device) if device is not None else weight.device
        kind = dtype if dtype is not None else weight.dtype
        masks: RNNMasks = []
        for index, (m_x, m_h) in enumerate(zip(self.input_masks, self.hidden_masks, strict=True)):
            layer = index // self.directions
            features = self._layer_inputs(layer)
            masks.append(
                (
                    _scaled_mask(cast(CounterDropout, m_x), (rows, features), where, kind),
                    _scaled_mask(cast(CounterDropout, m_h), (rows, self.hidden_size), where, kind),
                )
            )
        return masks

    def _run(
        self, x: Tensor, states: list[Tensor], masks: RNNMasks | None
    ) -> tuple[Tensor, list[Tensor]]:
        """The stack on time-major ``x`` (T, N, F) from ``states`` (each (L·D, N, H))."""
        weights = _weights(self, self._twin_names)
        return _stack(self._mode, x, states, weights, self.directions, masks)


class VariationalLSTMTwin(_VariationalTwin, LSTM):
    """dropkit's variational ``LSTM`` that ``vmap`` runs, its masks counter-based."""


class VariationalGRUTwin(_VariationalTwin, GRU):
    """dropkit's variational ``GRU`` that ``vmap`` runs, its masks counter-based."""


# --- the rewrite ----------------------------------------------------------------------------------

_TWINS: dict[type[nn.Module], type[_TorchTwin] | type[_VariationalTwin]] = {
    nn.LSTM: LSTMTwin,
    nn.GRU: GRUTwin,
    nn.RNN: RNNTwin,
    LSTM: VariationalLSTMTwin,
    GRU: VariationalGRUTwin,
}
"""Exact class → twin (a subclass may have a ``forward`` of its own: it is left alone)."""


def rewrite_recurrent(model: nn.Module, seed: int, layers: Iterator[int]) -> list[str]:
    """Turn every ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and dropkit ``LSTM`` / ``GRU`` of
    ``model`` into its batchable twin, in place and in registration order.

    Args:
        model: the model (changed in place).
        seed: the run's seed, for the twins' counter-based masks.
        layers: the dropout layer numbers still free; each new mask takes the next.

    Returns:
        The qualified names of the modules rewritten (``""`` for ``model`` itself).
    """
    rewritten = []
    for name, module in list(model.named_modules()):
        twin = _TWINS.get(type(module))
        if twin is not None and twin.adopt(module, seed, layers):
            rewritten.append(name)
    return rewritten
