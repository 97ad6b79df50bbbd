"""dropkit.recurrent: variational LSTM / GRU against torch.nn.LSTM / GRU."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

from dropkit.recurrent import GRU, LSTM

PAIRS = [(LSTM, nn.LSTM), (GRU, nn.GRU)]
IDS = ["LSTM", "GRU"]


def _pair(cls, tcls, batch_first=True, **kwargs):  # type: ignore[no-untyped-def]
    """A dropkit module and a torch module of the same shape with the same weights."""
    model = cls(5, 7, 2, bidirectional=True, batch_first=batch_first, **kwargs)
    torch_model = tcls(5, 7, 2, bidirectional=True, batch_first=batch_first)
    torch_model.load_state_dict(model.state_dict())
    return model, torch_model


def _states(out):  # type: ignore[no-untyped-def]
    """The final states as a tuple of tensors, for LSTM ((h, c)) and GRU (h)."""
    return tuple(out[1]) if isinstance(out[1], tuple) else (out[1],)


def _assert_same(a, b, atol: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=0 if atol == 0 else 1e-5)
    for x, y in zip(_states(a), _states(b), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0 if atol == 0 else 1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(("cls", "tcls"), PAIRS, ids=IDS)
def test_eval_and_zero_rates_equal_torch(cls, tcls, batch_first) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(3, 4, 5)
    model, ref = _pair(cls, tcls, batch_first, dropout=0.5, recurrent_dropout=0.5)
    expected = ref(x)
    _assert_same(model.eval()(x), expected)  # eval: PyTorch's fused kernel, bit for bit
    zero, _ = _pair(cls, tcls, batch_first)
    zero.load_state_dict(ref.state_dict())
    _assert_same(zero.train()(x), expected)


@pytest.mark.parametrize(("cls", "tcls"), PAIRS, ids=IDS)
def test_loop_path_with_all_ones_masks_equals_torch(cls, tcls) -> None:  # type: ignore[no-untyped-def]
    # Masks of ones force the per-step loop (recurrent mask set) without dropping anything.
    x = torch.randn(3, 6, 5)
    model, ref = _pair(cls, tcls, dropout=0.3, recurrent_dropout=0.3)
    masks = [
        (torch.ones_like(m_x), torch.ones_like(m_h))  # type: ignore[arg-type]
        for m_x, m_h in model.draw_masks(3)
    ]
    _assert_same(model(x, masks=masks), ref(x), atol=1e-6)


@pytest.mark.parametrize(("cls", "tcls"), PAIRS, ids=IDS)
def test_state_dict_round_trip(cls, tcls) -> None:  # type: ignore[no-untyped-def]
    model = cls(5, 7, 2, bidirectional=True, bias=True)
    ref = tcls(5, 7, 2, bidirectional=True)
    assert list(model.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(model.state_dict())  # dropkit -> torch
    back = cls(5, 7, 2, bidirectional=True)
    back.load_state_dict(ref.state_dict())  # torch -> dropkit
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)
    no_bias = cls(5, 7, bias=False)
    assert list(no_bias.state_dict()) == list(tcls(5, 7, bias=False).state_dict())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(("cls", "tcls"), PAIRS, ids=IDS)
def test_shapes_and_initial_state(cls, tcls, batch_first) -> None:  # type: ignore[no-untyped-def]
    model, ref = _pair(cls, tcls, batch_first, dropout=0.2, recurrent_dropout=0.2)
    x = torch.randn(3, 4, 5)
    rows = 3 if batch_first else 4
    h0 = torch.randn(4, rows, 7)
    hx = (h0, torch.randn(4, rows, 7)) if cls is LSTM else h0
    out = model(x, hx)
    assert out[0].shape == (3, 4, 14)
    assert all(s.shape == (4, rows, 7) for s in _states(out))
    _assert_same(model.eval()(x, hx), ref(x, hx))
    # unbatched (L, H_in) input and (L·D, H) states, like torch
    single = x[0]
    hx1 = (h0[:, 0], hx[1][:, 0]) if cls is LSTM else h0[:, 0]
    _assert_same(model(single, hx1), ref(single, hx1))
    assert model.train()(single, hx1)[0].shape == (4, 14)


def test_input_mask_shared_over_time_exact() -> None:
    # Every use of x[b, t, j] goes through x * m_x[b, j]; the gradient of the output with
    # respect to x is exactly 0 where a feature was dropped and (generically) nonzero where it
    # was kept. A per-sequence mask gives the same zero pattern at every time step and
    # different patterns across rows.
    model = LSTM(20, 8, dropout=0.5, recurrent_dropout=0.3)
    x = torch.randn(6, 9, 20, requires_grad=True)
    model(x)[0].sum().backward()
    assert x.grad is not None
    dropped = x.grad == 0
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    assert 0 < dropped.sum() < dropped.numel()
    assert not torch.equal(dropped[0, 0], dropped[1, 0])


@pytest.mark.parametrize(("cls", "tcls"), PAIRS, ids=IDS)
def test_recurrent_dropout_one_removes_recurrence(cls, tcls) -> None:  # type: ignore[no-untyped-def]
    # recurrent_dropout=1 zeroes h_{t-1} inside the recurrent product at every step: the
    # output must equal torch's with W_hh = 0 (biases kept). Exact up to float rounding.
    x = torch.randn(3, 5, 5)
    model, ref = _pair(cls, tcls, recurrent_dropout=1.0)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if name.startswith("weight_hh"):
                param.zero_()
    _assert_same(model.train()(x), ref(x), atol=1e-6)
    # dropout=1 zeroes every layer's input: equals torch with W_ih = 0 in every layer.
    model2, ref2 = _pair(cls, tcls, dropout=1.0)
    with torch.no_grad():
        for name, param in ref2.named_parameters():
            if name.startswith("weight_ih"):
                param.zero_()
    _assert_same(model2.train()(x), ref2(x), atol=1e-6)


@pytest.mark.parametrize(("cls", "tcls"), PAIRS, ids=IDS)
def test_forward_uses_draw_masks_and_matches_reference_loop(cls, tcls) -> None:  # type: ignore[no-untyped-def]
    # The module's own draws equal draw_masks from the same generator state, and a plain
    # cell-by-cell reference with the same masks at every step gives the same output.
    x = torch.randn(3, 6, 5)
    model = cls(5, 7, dropout=0.4, recurrent_dropout=0.4, generator=torch.Generator())
    model.generator.manual_seed(7)  # type: ignore[union-attr]
    out = model(x)
    model.generator.manual_seed(7)  # type: ignore[union-attr]
    masks = model.draw_masks(3)
    _assert_same(model(x, masks=masks), out)
    (m_x, m_h) = masks[0]
    assert m_x is not None and m_h is not None
    cell = (nn.LSTMCell if cls is LSTM else nn.GRUCell)(5, 7)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in model.state_dict().items()})
    h = torch.zeros(3, 7)
    c = torch.zeros(3, 7)
    for t in range(6):
        if cls is LSTM:
            h_new, c = cell(x[:, t] * m_x, (h * m_h, c))
            h = h_new
        else:
            # torch's GRUCell uses one h for both W_hh·h and z·h; rebuild Keras' form:
            # gates from the masked state, interpolation with the unmasked one.
            w_ih, w_hh, b_ih, b_hh = (
                getattr(cell, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            gi = (x[:, t] * m_x) @ w_ih.T + b_ih
            gh = (h * m_h) @ w_hh.T + b_hh
            r = torch.sigmoid(gi[:, :7] + gh[:, :7])
            z = torch.sigmoid(gi[:, 7:14] + gh[:, 7:14])
            n = torch.tanh(gi[:, 14:] + r * gh[:, 14:])
            h = (1 - z) * n + z * h
        torch.testing.assert_close(out[0][:, t], h, atol=1e-6, rtol=1e-5)


def test_mask_statistics() -> None:
    # Each entry of a mask is 0 with probability p, independently, so the dropped count of n
    # entries is Binomial(n, p): its fraction has standard error sqrt(p(1-p)/n). With
    # n = 2000 rows x 50 features = 1e5 and p = 0.3, se = 0.00145; 5 se = 0.0072.
    p, rows = 0.3, 2000
    model = LSTM(50, 50, 2, dropout=p, recurrent_dropout=p, bidirectional=True)
    masks = model.draw_masks(rows)
    assert len(masks) == 4
    se = math.sqrt(p * (1 - p) / (rows * 50))
    for m_x, m_h in masks:
        assert m_x is not None and m_h is not None
        assert m_h.shape == (rows, 50)
        assert m_x.shape[0] == rows
        first = m_x[:, :50]
        assert abs((first == 0).float().mean().item() - p) < 5 * se
        assert abs((m_h == 0).float().mean().item() - p) < 5 * se
        assert torch.unique(m_x).tolist() == pytest.approx([0.0, 1 / (1 - p)])
    # independent per layer and direction
    assert not torch.equal(masks[0][1], masks[1][1])  # type: ignore[arg-type]
    assert masks[2][0] is not None and masks[2][0].shape == (rows, 100)


@pytest.mark.parametrize("cls", [LSTM, GRU], ids=IDS)
def test_generator_reproducible(cls) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(3, 6, 5)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = cls(5, 7, dropout=0.3, recurrent_dropout=0.3)
        model.generator = torch.Generator().manual_seed(seed)
        return model(x)[0]

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_gradients_flow_and_zero_not_nan() -> None:
    model = LSTM(5, 7, dropout=1.0, recurrent_dropout=1.0)
    x = torch.randn(2, 4, 5, requires_grad=True)
    model(x)[0].sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\]"):
        LSTM(5, 7, dropout=1.5)
    with pytest.raises(ValueError, match="Did you pass a percentage"):
        GRU(5, 7, recurrent_dropout=25)
    with pytest.raises(TypeError, match="`recurrent_dropout` must be a real number"):
        LSTM(5, 7, recurrent_dropout="0.2")  # type: ignore[arg-type]
    model = LSTM(5, 7)
    with pytest.raises(ValueError, match="NaN"):
        model.recurrent_dropout = float("nan")
    with pytest.raises(ValueError, match="`hidden_size` must be an int >= 1"):
        GRU(5, 0)
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        LSTM(5, 7, generator=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expects a 2-D or 3-D input \(N, L, H_in\)"):
        model(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="input_size=5"):
        model(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"`h_0` of shape \(1, 2, 7\)"):
        model(torch.randn(2, 3, 5), (torch.zeros(1, 3, 7), torch.zeros(1, 2, 7)))
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
        model(torch.randn(2, 3, 5), torch.zeros(1, 2, 7))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list of 1"):
        LSTM(5, 7, recurrent_dropout=0.2)(torch.randn(2, 3, 5), masks=[])
    assert "recurrent_dropout=0.0" in repr(model)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_flatten_parameters_off_cuda_changes_nothing(cls) -> None:  # type: ignore[no-untyped-def]
    """cuDNN's one-buffer layout is a CUDA matter (tests/test_cuda.py); on a CPU
    ``flatten_parameters``, ``.to()`` and copies leave the weights and outputs as they were."""
    torch.manual_seed(0)
    rnn = cls(3, 4, 2, dropout=0.2, bidirectional=True)
    before = {name: (w.data_ptr(), w.detach().clone()) for name, w in rnn.named_parameters()}
    rnn.flatten_parameters()
    for name, w in rnn.named_parameters():
        assert w.data_ptr() == before[name][0] and torch.equal(w, before[name][1])
    x = torch.randn(2, 5, 3)
    expected = rnn.eval()(x)[0]
    for other in (copy.deepcopy(rnn), pickle.loads(pickle.dumps(rnn)), rnn.double().float()):
        torch.testing.assert_close(other.eval()(x)[0], expected)
