r"""Variational LSTM and GRU: Gal & Ghahramani's recurrent dropout (Keras' ``dropout`` and
``recurrent_dropout``).

Each layer and direction of :class:`LSTM` and :class:`GRU` multiplies its inputs ``x_t`` by a
mask ``m_x`` (rate ``dropout``) and its recurrent state ``h_{t-1}`` by a mask ``m_h`` (rate
``recurrent_dropout``). Both masks are drawn **once per sequence** (one row per batch row) and
reused at every time step; a new pair is drawn for every layer and direction at every forward
pass in training. Inverted scaling: kept units are multiplied by ``1 / (1 - p)``, so inference
uses the plain network, and an eval-mode module computes exactly what ``torch.nn.LSTM`` /
``torch.nn.GRU`` with the same weights computes.

The parameters are named like ``torch.nn.LSTM`` / ``torch.nn.GRU`` (``weight_ih_l0``,
``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``), so ``load_state_dict``
works both ways between a torch module and a dropkit one.

Speed: without ``recurrent_dropout`` (or in eval) each layer runs through PyTorch's fused RNN
kernel (``torch.lstm`` / ``torch.gru``). With ``recurrent_dropout`` in training the recurrence
must see the mask at every step, so it runs as a loop over time: the input projection of all
time steps is one matrix product, then one fused ``addmm`` per step for ``h_{t-1}·W_hh``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropkit._validation import (
    check_generator,
    check_ndim,
    check_positive_int,
    check_probability,
    check_shape,
    check_tensor,
)

__all__ = ["GRU", "LSTM", "RNNMasks", "VariationalRNN"]

RNNMasks = list[tuple[Tensor | None, Tensor | None]]
"""Masks of one forward pass: for each layer and direction, in the order ``layer * D +
direction`` (``D = 2`` when bidirectional), the pair ``(input_mask, hidden_mask)`` of shapes
``(N, input features of that layer)`` and ``(N, hidden_size)``, already scaled by ``1 / (1 - p)``;
``None`` where the rate is 0."""


def _draw_mask(
    rows: int,
    features: int,
    p: float,
    generator: torch.Generator | None,
    device: torch.device | None,
    dtype: torch.dtype,
) -> Tensor | None:
    """One Bernoulli(1 - p) mask of shape ``(rows, features)`` scaled by ``1 / (1 - p)``."""
    if p == 0.0:
        return None
    if p == 1.0:  # exact zeros, never 0 · inf
        return torch.zeros(rows, features, device=device, dtype=dtype)
    mask = torch.empty(rows, features, device=device, dtype=dtype)
    return mask.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)


def _lstm_loop(
    gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, m_h: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM recurrence over time-major precomputed input gates ``gi`` (T, N, 4H), with the
    recurrent state masked by ``m_h`` (N, H) at every step. Gate order i, f, g, o like torch."""
    hidden = h.shape[-1]
    w = w_hh.t()
    outputs = []
    # unbind, not gi[t]: the backward of one select per step would build a full-size
    # zero gradient of gi at every step (quadratic in the sequence length).
    for gi_t in gi.unbind(0):
        gates = torch.addmm(gi_t, h * m_h, w)
        ifo = torch.sigmoid(gates)
        g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
        c = ifo[:, hidden : 2 * hidden] * c + ifo[:, :hidden] * g
        h = ifo[:, 3 * hidden :] * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


def _gru_loop(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, m_h: Tensor
) -> tuple[Tensor, Tensor]:
    """GRU recurrence over time-major precomputed input gates ``gi`` (T, N, 3H), with the
    recurrent state masked by ``m_h`` (N, H) inside ``h_{t-1}·W_hh`` (the interpolation
    ``z·h_{t-1}`` keeps the unmasked state, as in Keras). Gate order r, z, n like torch."""
    hidden = h.shape[-1]
    w = w_hh.t()
    outputs = []
    for git in gi.unbind(0):
        hm = h * m_h
        gh = torch.mm(hm, w) if b_hh is None else torch.addmm(b_hh, hm, w)
        rz = torch.sigmoid(git[:, : 2 * hidden] + gh[:, : 2 * hidden])
        n = torch.tanh(git[:, 2 * hidden :] + rz[:, :hidden] * gh[:, 2 * hidden :])
        h = n + rz[:, hidden:] * (h - n)
        outputs.append(h)
    return torch.stack(outputs), h


@contextlib.contextmanager
def _one_layer_of_the_buffer(x: Tensor) -> Iterator[None]:
    """Silence cuDNN's warning about weights outside one buffer, for one layer's call.

    One layer's weights are a slice of the whole stack's cuDNN buffer (see
    ``VariationalRNN.flatten_parameters``), so cuDNN copies them into a buffer of their own at
    each call, and says so; that copy is the price of masks between layers.
    """
    if not x.is_cuda:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "RNN module weights are not part of single")
        yield


class VariationalRNN(nn.Module):
    """Shared parameters, masks and layer loop of :class:`LSTM` and :class:`GRU`."""

    _mode: ClassVar[Literal["LSTM", "GRU"]]
    _gates: ClassVar[int]
    _dropout: float
    _recurrent_dropout: float

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        batch_first: bool = True,
        bidirectional: bool = False,
        bias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.bias = bool(bias)
        check_generator(generator)
        self.generator = generator
        self._flat_names: list[str] = []
        gate_size = self._gates * self.hidden_size
        for layer in range(self.num_layers):
            layer_input = self._layer_inputs(layer)
            for direction in range(self.directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes: list[tuple[int, ...]] = [
                    (gate_size, layer_input),
                    (gate_size, self.hidden_size),
                ]
                names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
                if self.bias:
                    shapes += [(gate_size,), (gate_size,)]
                    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
                for name, shape in zip(names, shapes, strict=True):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape)))
                self._flat_names += names
        self.reset_parameters()

    @property
    def directions(self) -> int:
        """2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def dropout(self) -> float:
        """Drop probability of each layer's inputs (Keras' ``dropout``)."""
        return self._dropout

    @dropout.setter
    def dropout(self, value: float) -> None:
        self._dropout = check_probability(value, "dropout")

    @property
    def recurrent_dropout(self) -> float:
        """Drop probability of the recurrent state ``h_{t-1}`` (Keras' ``recurrent_dropout``)."""
        return self._recurrent_dropout

    @recurrent_dropout.setter
    def recurrent_dropout(self, value: float) -> None:
        self._recurrent_dropout = check_probability(value, "recurrent_dropout")

    def reset_parameters(self) -> None:
        """Uniform(-1/√H, 1/√H) for every weight and bias, like ``torch.nn.LSTM``."""
        bound = 1.0 / self.hidden_size**0.5
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Lay the weights out as one cuDNN buffer, as ``torch.nn.LSTM.flatten_parameters`` does.

        cuDNN's fused RNN wants every weight of the stack as a view into one buffer; otherwise
        it copies them into one at every call (and warns). Called after ``.to()`` / ``.cuda()``
        and after copying or unpickling; a no-op off CUDA or where cuDNN cannot take them.
        """
        weights = [getattr(self, name) for name in self._flat_names]
        first = weights[0]
        if not all(
            w.is_cuda and w.dtype == first.dtype and torch.backends.cudnn.is_acceptable(w)  # type: ignore[no-untyped-call]
            for w in weights
        ):
            return
        if len({w.data_ptr() for w in weights}) != len(weights):  # shared weights: leave them
            return
        if not torch._use_cudnn_rnn_flatten_weight():
            return
        from torch.backends.cudnn import rnn

        with torch.cuda.device(first.device), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(
                weights,
                4 if self.bias else 2,
                self.input_size,
                rnn.get_cudnn_mode(self._mode),  # type: ignore[no-untyped-call]
                self.hidden_size,
                0,  # no projection
                self.num_layers,
                False,  # the buffer's layout does not depend on batch_first
                self.bidirectional,
            )

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        result = super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        self.flatten_parameters()
        return result

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        self.flatten_parameters()

    def _layer_inputs(self, layer: int) -> int:
        """Features of layer ``layer``'s input: the module's, then both directions' outputs."""
        return self.input_size if layer == 0 else self.hidden_size * self.directions

    def _weights(self, index: int) -> list[Tensor]:
        per = 4 if self.bias else 2
        names = self._flat_names[index * per : (index + 1) * per]
        return [getattr(self, name) for name in names]

    def draw_masks(
        self,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> RNNMasks:
        """Draw the masks of one training forward pass for ``batch_size`` sequences.

        ``forward`` draws them itself; call this to see them, or to keep the same masks over
        several calls (truncated backpropagation through time over chunks of one sequence,
        where Gal's masks should stay fixed), and pass them as ``forward(x, hx, masks=...)``.
        Drawn from ``self.generator`` in the order (layer, direction, input then hidden).
        """
        rows = check_positive_int(batch_size, "batch_size")
        weight = self._weights(0)[0]
        where = torch.device(device) if device is not None else weight.device
        kind = dtype if dtype is not None else weight.dtype
        if self.generator is not None:
            check_generator(self.generator, torch.empty(0, device=where))
        masks: RNNMasks = []
        for layer in range(self.num_layers):
            features = self._layer_inputs(layer)
            for _ in range(self.directions):
                m_x = _draw_mask(rows, features, self.dropout, self.generator, where, kind)
                m_h = _draw_mask(
                    rows, self.hidden_size, self.recurrent_dropout, self.generator, where, kind
                )
                masks.append((m_x, m_h))
        return masks

    def _check_masks(self, masks: RNNMasks, rows: int) -> None:
        expected = self.num_layers * self.directions
        if not isinstance(masks, list) or len(masks) != expected:
            raise ValueError(
                f"{self._mode} expects `masks` to be a list of {expected} (input_mask, "
                f"hidden_mask) pairs, one per layer and direction, as draw_masks returns"
            )
        for index, (m_x, m_h) in enumerate(masks):
            layer = index // self.directions
            features = self._layer_inputs(layer)
            if m_x is not None:
                check_shape(m_x, (rows, features), f"masks[{index}][0]", self._mode)
            if m_h is not None:
                check_shape(m_h, (rows, self.hidden_size), f"masks[{index}][1]", self._mode)

    def _run(
        self, x: Tensor, states: list[Tensor], masks: RNNMasks | None
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the stack on time-major ``x`` (T, N, F) from ``states`` (each (L·D, N, H))."""
        lstm = self._mode == "LSTM"
        if masks is None or all(m_x is None and m_h is None for m_x, m_h in masks):
            flat = [getattr(self, name) for name in self._flat_names]
            args = (self.bias, self.num_layers, 0.0, self.training, self.bidirectional, False)
            if lstm:
                out, h_n, c_n = torch.lstm(x, states, flat, *args)
                return out, [h_n, c_n]
            out, h_n = torch.gru(x, states[0], flat, *args)
            return out, [h_n]
        finals: list[list[Tensor]] = [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                m_x, m_h = masks[index]
                inp = x if m_x is None else x * m_x
                if direction == 1:
                    inp = inp.flip(0)
                init = [s[index] for s in states]
                out, last = self._layer(inp, init, self._weights(index), m_h)
                outputs.append(out.flip(0) if direction == 1 else out)
                for store, value in zip(finals, last, strict=True):
                    store.append(value)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return x, [torch.stack(values) for values in finals]

    def _layer(
        self, x: Tensor, init: list[Tensor], weights: list[Tensor], m_h: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        """One layer in one direction on time-major ``x``; ``init`` holds (N, H) states."""
        lstm = self._mode == "LSTM"
        if m_h is None:  # PyTorch's fused kernel
            states = [s.unsqueeze(0) for s in init]
            args = (self.bias, 1, 0.0, self.training, False, False)
            with _one_layer_of_the_buffer(x):
                if lstm:
                    out, h_n, c_n = torch.lstm(x, states, weights, *args)
                    return out, [h_n[0], c_n[0]]
                out, h_n = torch.gru(x, states[0], weights, *args)
                return out, [h_n[0]]
        w_ih, w_hh = weights[0], weights[1]
        b_ih = weights[2] if self.bias else None
        b_hh = weights[3] if self.bias else None
        if lstm:
            # Both biases are added once to the input projection of all time steps.
            bias = None if b_ih is None or b_hh is None else b_ih + b_hh
            gi = F.linear(x, w_ih, bias)
            out, h, c = _lstm_loop(gi, init[0], init[1], w_hh, m_h)
            return out, [h, c]
        gi = F.linear(x, w_ih, b_ih)
        out, h = _gru_loop(gi, init[0], w_hh, b_hh, m_h)
        return out, [h]

    def _forward(
        self, input: Tensor, hx: list[Tensor] | None, masks: RNNMasks | None
    ) -> tuple[Tensor, list[Tensor]]:
        x = check_tensor(input, "input")
        layout = "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"
        check_ndim(
            x,
            (2, 3),
            self._mode,
            f"{layout}, or (L, H_in) for one unbatched sequence",
            hint="batch_first=True means (N, L, H_in)." if self.batch_first else "",
        )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{self._mode} expects inputs with input_size={self.input_size} features on the "
                f"last axis, got shape {tuple(x.shape)}"
            )
        batched = x.ndim == 3
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        rows = x.shape[1]
        state_shape = (self.num_layers * self.directions, rows, self.hidden_size)
        if hx is None:
            zeros = torch.zeros(state_shape, dtype=x.dtype, device=x.device)
            states = [zeros] * (2 if self._mode == "LSTM" else 1)
        else:
            names = ["h_0", "c_0"] if self._mode == "LSTM" else ["h_0"]
            states = []
            for name, state in zip(names, hx, strict=True):
                state = check_tensor(state, name)
                expected = state_shape if batched else (state_shape[0], state_shape[2])
                check_shape(state, expected, name, self._mode)
                states.append(state if batched else state.unsqueeze(1))
        if self.training:
            if masks is None:
                masks = self.draw_masks(rows, device=x.device, dtype=x.dtype)
            else:
                self._check_masks(masks, rows)
        else:
            masks = None
        out, finals = self._run(x, states, masks)
        if not batched:
            return out.squeeze(1), [f.squeeze(1) for f in finals]
        return (out.transpose(0, 1) if self.batch_first else out), finals

    def extra_repr(self) -> str:
        items = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_layers != 1:
            items.append(f"num_layers={self.num_layers}")
        items += [f"dropout={self.dropout}", f"recurrent_dropout={self.recurrent_dropout}"]
        if not self.batch_first:
            items.append("batch_first=False")
        if self.bidirectional:
            items.append("bidirectional=True")
        if not self.bias:
            items.append("bias=False")
        return ", ".join(items)


_COMMON_DOC = r"""
    With ``m_x ~ Bernoulli(1 - dropout)`` of shape (N, features) and ``m_h ~ Bernoulli(1 -
    recurrent_dropout)`` of shape (N, H), drawn once per sequence and per layer and direction
    and scaled by ``1 / (1 - p)``, every time step ``t`` of that layer computes the cell on
    ``x_t ⊙ m_x`` and ``h_{t-1} ⊙ m_h`` instead of ``x_t`` and ``h_{t-1}``.

    Masks are *tied*: one input mask and one recurrent mask per layer and direction, shared by
    all gates (Gal & Ghahramani's tied version; Keras draws one per gate). A mask that drops
    unit ``j`` of ``h_{t-1}`` then removes that unit from the whole recurrent step, which is
    exactly dropping the columns ``j`` of ``W_hh``; it also keeps ``x·W_ih`` and ``h·W_hh`` one
    matrix product each, which the fast paths need.

    ``dropout`` here masks the inputs of *every* layer, including the first (Keras'
    meaning); ``torch.nn.LSTM``'s ``dropout`` is a fresh per-element dropout on the outputs of
    every layer but the last. To drop the outputs of the last layer too, follow the module
    with :class:`dropkit.LockedDropout`.

    When to use: ``dropout`` 0.1–0.3 and ``recurrent_dropout`` 0.1–0.25 for language and
    sequence models (Gal & Ghahramani used 0.2–0.5 on a medium/large LSTM language model;
    large ``recurrent_dropout`` slows learning of long dependencies). ``recurrent_dropout`` is
    the costly one: in training it replaces the fused kernel by a loop over time.

    In eval mode, or with both rates 0, the output equals ``torch.nn.{mode}`` with the same
    weights. Parameters are named like ``torch.nn.{mode}``; ``load_state_dict`` works both ways.

    Args:
        input_size: features of the input ``H_in``.
        hidden_size: features of the hidden state ``H``.
        num_layers: stacked layers. Default: 1.
        dropout: drop probability of each layer's inputs, in [0, 1]. Default: 0.
        recurrent_dropout: drop probability of ``h_{t-1}``, in [0, 1]. Default: 0.
        batch_first: input and output are (N, L, features) when True (the default, unlike
            torch), (L, N, features) when False. States are (L·D, N, H) either way.
        bidirectional: run a second, reverse-time direction (D = 2). Default: False.
        bias: use ``bias_ih`` and ``bias_hh``. Default: True.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: (N, L, H_in) with ``batch_first=True``, (L, N, H_in) otherwise, or (L, H_in)
          for one unbatched sequence (then the states are (L·D, H)). Other ranks are refused.
        - Output: (N, L, D·H) (or (L, N, D·H), or (L, D·H)).

    Reference:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent
        Neural Networks", NeurIPS 2016. https://arxiv.org/abs/1512.05287
"""


class LSTM(VariationalRNN):
    __doc__ = (
        r"""LSTM with variational (per-sequence) dropout on inputs and recurrent state.

    Gal & Ghahramani's variational LSTM, Keras' ``LSTM(dropout=, recurrent_dropout=)``. The
    cell state ``c`` is never masked.
    """
        + _COMMON_DOC.replace("{mode}", "LSTM")
        + r"""
    Example::

        >>> rnn = LSTM(8, 16, num_layers=2, dropout=0.2, recurrent_dropout=0.2)
        >>> out, (h_n, c_n) = rnn(torch.randn(4, 10, 8))
        >>> out.shape, h_n.shape, c_n.shape
        (torch.Size([4, 10, 16]), torch.Size([2, 4, 16]), torch.Size([2, 4, 16]))
    """
    )

    _mode = "LSTM"
    _gates = 4

    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        masks: RNNMasks | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Return ``(output, (h_n, c_n))`` like ``torch.nn.LSTM``.

        Args:
            input: the sequences; see the class' Shape.
            hx: optional ``(h_0, c_0)``, each (L·D, N, H), zeros when None.
            masks: in training, masks from :meth:`draw_masks` to use instead of fresh ones.
                Ignored in eval mode.
        """
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(
                f"LSTM expects `hx` to be a tuple (h_0, c_0) or None, got {type(hx).__name__}"
            )
        out, (h_n, c_n) = self._forward(input, None if hx is None else list(hx), masks)
        return out, (h_n, c_n)


class GRU(VariationalRNN):
    __doc__ = (
        r"""GRU with variational (per-sequence) dropout on inputs and recurrent state.

    Gal & Ghahramani's variational GRU, Keras' ``GRU(dropout=, recurrent_dropout=)``. The
    recurrent mask applies inside ``h_{t-1}·W_hh``; the update ``z ⊙ h_{t-1}`` keeps the
    unmasked state, as in Keras.
    """
        + _COMMON_DOC.replace("{mode}", "GRU")
        + r"""
    Example::

        >>> rnn = GRU(8, 16, dropout=0.2, recurrent_dropout=0.2, bidirectional=True)
        >>> out, h_n = rnn(torch.randn(4, 10, 8))
        >>> out.shape, h_n.shape
        (torch.Size([4, 10, 32]), torch.Size([2, 4, 16]))
    """
    )

    _mode = "GRU"
    _gates = 3

    def forward(
        self, input: Tensor, hx: Tensor | None = None, *, masks: RNNMasks | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(output, h_n)`` like ``torch.nn.GRU``.

        Args:
            input: the sequences; see the class' Shape.
            hx: optional ``h_0`` of shape (L·D, N, H), zeros when None.
            masks: in training, masks from :meth:`draw_masks` to use instead of fresh ones.
                Ignored in eval mode.
        """
        states = None if hx is None else [check_tensor(hx, "hx")]
        out, (h_n,) = self._forward(input, states, masks)
        return out, h_n
