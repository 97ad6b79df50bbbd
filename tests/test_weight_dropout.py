"""Weight-level dropout: drop_connect, DropConnect, DropConnectLinear, WeightDrop, EmbeddingDropout."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

from dropkit.functional import drop_connect
from dropkit.weights import (
    DropConnect,
    DropConnectLinear,
    EmbeddingDropout,
    WeightDrop,
    max_norm_,
)

# ---- drop_connect ---------------------------------------------------------------------------


def test_drop_connect_values_and_gradients_are_exact() -> None:
    w = torch.randn(64, 32, requires_grad=True)
    y = drop_connect(w, 0.25)
    kept = y != 0
    assert torch.equal(y[kept], w[kept] * (1 / 0.75))
    y.sum().backward()
    assert w.grad is not None
    assert torch.equal(w.grad, kept.float() * (1 / 0.75))  # 0 exactly for dropped weights


def test_drop_connect_trivial_cases() -> None:
    w = torch.randn(5, 4, requires_grad=True)
    assert drop_connect(w, 0.0) is w
    assert drop_connect(w, 0.7, training=False) is w
    w_inf = w.detach().clone()
    w_inf[0, 0] = float("inf")
    w_inf.requires_grad_(True)
    y = drop_connect(w_inf, 1.0)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert w_inf.grad is not None and torch.equal(w_inf.grad, torch.zeros_like(w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_drop_connect_keeps_dtype(dtype: torch.dtype) -> None:
    assert drop_connect(torch.randn(3, 3, dtype=dtype), 0.5).dtype == dtype


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_drop_connect_refuses_bad_rates(p: float) -> None:
    with pytest.raises(ValueError, match="`p` must be in"):
        drop_connect(torch.ones(2), p)


def test_drop_connect_generator_reproducible() -> None:
    w = torch.randn(10, 10)

    def run(seed: int) -> torch.Tensor:
        return drop_connect(w, 0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


# ---- DropConnect parametrization ------------------------------------------------------------


def test_dropconnect_keeps_parameters_and_state_dict_keys() -> None:
    plain = nn.Linear(6, 4)
    keys, count = set(plain.state_dict()), len(list(plain.parameters()))
    layer = DropConnect.apply(copy.deepcopy(plain), 0.5)
    assert set(layer.state_dict()) == keys
    assert len(list(layer.parameters())) == count
    assert torch.equal(layer.state_dict()["weight"], plain.weight)


def test_dropconnect_checkpoints_load_both_ways() -> None:
    plain, other = nn.Linear(6, 4), nn.Linear(6, 4)
    dropped = DropConnect.apply(nn.Linear(6, 4), 0.5)
    dropped.load_state_dict(plain.state_dict())  # strict: plain -> DropConnect
    assert torch.equal(dropped.parametrizations.weight.original, plain.weight)
    other.load_state_dict(dropped.state_dict())  # strict: DropConnect -> plain
    assert torch.equal(other.weight, plain.weight)
    # a checkpoint with parametrize's own key also loads
    raw = {"parametrizations.weight.original": other.weight * 2, "bias": other.bias}
    dropped.load_state_dict(raw)
    assert torch.equal(dropped.parametrizations.weight.original, other.weight * 2)


def test_dropconnect_in_a_model_keeps_model_keys() -> None:
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    keys = set(model.state_dict())
    DropConnect.apply(model[0], 0.5)
    assert set(model.state_dict()) == keys
    copy.deepcopy(model).load_state_dict(model.state_dict())


def test_dropconnect_gradients_zero_for_dropped_weights() -> None:
    layer = DropConnect.apply(nn.Linear(8, 6, bias=False), 0.5)
    x = torch.randn(16, 8)
    with torch.nn.utils.parametrize.cached():  # the weight read below is the one used
        w = layer.weight
        layer(x).sum().backward()
    dropped = w == 0
    assert dropped.any() and (~dropped).any()
    grad = layer.parametrizations.weight.original.grad
    assert grad is not None
    assert torch.equal(grad[dropped], torch.zeros_like(grad[dropped]))
    expected = x.sum(0).expand(6, 8) / 0.5
    torch.testing.assert_close(grad[~dropped], expected[~dropped])


def test_dropconnect_eval_uses_full_weights_via_model_eval() -> None:
    model = nn.Sequential(DropConnect.apply(nn.Linear(4, 4), 0.9))
    model.eval()
    param = model[0].parametrizations.weight
    assert not param[0].training
    assert model[0].weight is param.original
    model.train()
    assert param[0].training
    assert not torch.equal(model[0].weight, param.original)


def test_dropconnect_one_mask_per_read_and_cached() -> None:
    layer = DropConnect.apply(nn.Linear(20, 20), 0.5)
    assert not torch.equal(layer.weight, layer.weight)
    with torch.nn.utils.parametrize.cached():
        assert layer.weight is layer.weight


def test_dropconnect_apply_does_not_consume_rng() -> None:
    layer = nn.Linear(3, 3)
    state = torch.get_rng_state()
    DropConnect.apply(layer, 0.5)
    assert torch.equal(torch.get_rng_state(), state)


def test_dropconnect_instances_keep_module_apply() -> None:
    model = nn.Sequential(DropConnect.apply(nn.Linear(2, 2), 0.5))
    seen: list[str] = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert "DropConnect" in seen


def test_dropconnect_remove_restores_plain_module() -> None:
    layer = DropConnect.apply(nn.Linear(3, 2), 0.5)
    original = layer.parametrizations.weight.original
    DropConnect.remove(layer)
    assert type(layer) is nn.Linear
    assert isinstance(layer.weight, nn.Parameter) and torch.equal(layer.weight, original)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_dropconnect_max_norm_bounds_the_raw_weight() -> None:
    layer = DropConnect.apply(nn.Linear(4, 2), 0.5)
    with torch.no_grad():
        layer.parametrizations.weight.original.fill_(10.0)
    max_norm_(layer, 3.0)
    norms = layer.parametrizations.weight.original.norm(dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 3.0))


def test_dropconnect_errors() -> None:
    with pytest.raises(ValueError, match=r"valid: 'weight', 'bias'"):
        DropConnect.apply(nn.Linear(2, 2), 0.5, ("kernel",))
    with pytest.raises(ValueError, match="`p` must be in"):
        DropConnect.apply(nn.Linear(2, 2), 2.0)
    with pytest.raises(TypeError, match="`module` must be a torch.nn.Module"):
        DropConnect.apply("linear", 0.5)
    layer = DropConnect.apply(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match="already have DropConnect"):
        DropConnect.apply(layer, 0.5)
    with pytest.raises(ValueError, match="tensors with DropConnect"):
        DropConnect.remove(layer, "bias")
    assert repr(DropConnect(0.3)) == "DropConnect(p=0.3)"


# ---- DropConnectLinear ----------------------------------------------------------------------


def test_dropconnect_linear_state_dict_is_linears() -> None:
    plain = nn.Linear(5, 3)
    layer = DropConnectLinear(5, 3, 0.5)
    assert list(layer.state_dict()) == list(plain.state_dict())
    layer.load_state_dict(plain.state_dict())
    plain.load_state_dict(layer.state_dict())
    pickle.loads(pickle.dumps(layer))
    assert "p=0.5" in repr(layer)


def test_dropconnect_linear_eval_and_trivial_rates() -> None:
    layer = DropConnectLinear(5, 3, 0.5)
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer.eval()(x), nn.functional.linear(x, layer.weight, layer.bias))
    zero = DropConnectLinear(5, 3, 1.0, bias=False, per_sample=True)
    assert torch.equal(zero(x), torch.zeros(4, 3))


def test_dropconnect_linear_per_batch_mask_is_shared() -> None:
    layer = DropConnectLinear(6, 4, 0.5, bias=False, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 6).expand(8, 6)
    y = layer(x)
    assert torch.equal(y, y[:1].expand(8, 4))  # identical samples, one mask


def test_dropconnect_linear_per_sample_matches_the_definition() -> None:
    layer = DropConnectLinear(
        6, 4, 0.5, per_sample=True, generator=torch.Generator().manual_seed(5)
    )
    x = torch.randn(3, 2, 6)
    y = layer(x)
    # Redraw the same masks: y_n = (W ⊙ M_n) x_n / (1 - p) + b.
    g = torch.Generator().manual_seed(5)
    keep = torch.empty(3, 4, 6).uniform_(generator=g) >= 0.5
    for n in range(3):
        expected = x[n] @ (layer.weight * keep[n] / 0.5).T + layer.bias
        torch.testing.assert_close(y[n], expected)
    same = layer(torch.randn(1, 2, 6).expand(8, 2, 6))
    assert not all(torch.equal(same[0], same[n]) for n in range(1, 8))


# ---- WeightDrop -----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 5, num_layers=2), lambda: nn.GRU(3, 5)])
def test_weight_drop_state_dict_keys_are_the_rnns(make: type[nn.RNNBase]) -> None:
    plain = make()
    wrapped = WeightDrop(make(), 0.5)
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict())  # plain -> wrapped
    assert torch.equal(wrapped.rnn.weight_hh_l0, plain.weight_hh_l0)
    fresh = make()
    fresh.load_state_dict(wrapped.state_dict())  # wrapped -> plain
    assert torch.equal(fresh.weight_hh_l0, plain.weight_hh_l0)
    nested = {f"rnn.{k}": v for k, v in plain.state_dict().items()}
    wrapped.load_state_dict(nested)  # keys with the wrapper's level load too


def test_weight_drop_inside_a_model_keeps_keys() -> None:
    model = nn.Sequential(nn.Embedding(10, 3), nn.LSTM(3, 4))
    keys = list(model.state_dict())
    model[1] = WeightDrop(model[1], 0.5)
    model[0] = EmbeddingDropout(model[0], 0.1)
    assert list(model.state_dict()) == keys
    copy.deepcopy(model).load_state_dict(model.state_dict())


def test_weight_drop_masks_hidden_weights_once_per_forward() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(2, 3, bias=False, nonlinearity="relu")
    wd = WeightDrop(rnn, 0.5, generator=torch.Generator().manual_seed(9))
    x = torch.randn(6, 4, 2)
    y, _ = wd(x)
    # Reproduce with one mask for the whole sequence and batch.
    keep = torch.empty(3, 3).uniform_(generator=torch.Generator().manual_seed(9)) >= 0.5
    w_hh = rnn.weight_hh_l0 * keep / 0.5
    h = torch.zeros(4, 3)
    for t in range(6):
        h = torch.relu(x[t] @ rnn.weight_ih_l0.T + h @ w_hh.T)
        torch.testing.assert_close(y[t], h)


def test_weight_drop_gradients_and_eval() -> None:
    lstm = nn.LSTM(3, 4)
    wd = WeightDrop(lstm, 0.5)
    x = torch.randn(5, 2, 3)
    gen = torch.Generator().manual_seed(1)
    wd.generator = gen
    out, _ = wd(x)
    out.sum().backward()
    keep = torch.empty(16, 4).uniform_(generator=torch.Generator().manual_seed(1)) >= 0.5
    grad = lstm.weight_hh_l0.grad
    assert grad is not None
    assert torch.equal(grad[~keep], torch.zeros_like(grad[~keep]))
    assert isinstance(lstm.weight_hh_l0, nn.Parameter)  # never replaced
    wd.eval()
    torch.testing.assert_close(wd(x)[0], lstm(x)[0])


def test_weight_drop_pickle_deepcopy_and_no_warnings() -> None:
    wd = WeightDrop(nn.LSTM(3, 4, batch_first=True), 0.5)
    for clone in (pickle.loads(pickle.dumps(wd)), copy.deepcopy(wd)):
        assert list(clone.state_dict()) == list(wd.state_dict())
        out, (_h, _c) = clone(torch.randn(2, 5, 3))  # pytest runs with -W error
        assert out.shape == (2, 5, 4)
    assert repr(wd).startswith("WeightDrop(\n  p=0.5, names=('weight_hh_l0',)")


def test_weight_drop_errors() -> None:
    with pytest.raises(TypeError, match=r"`rnn` must be a torch.nn.RNNBase"):
        WeightDrop(nn.Linear(2, 2), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"valid: 'weight_ih_l0', 'weight_hh_l0'.*weight_hh_l1"):
        WeightDrop(nn.LSTM(2, 2), 0.5, ("weight_hh_l1",))
    with pytest.raises(ValueError, match="`p` must be in"):
        WeightDrop(nn.LSTM(2, 2), -1)


# ---- EmbeddingDropout -----------------------------------------------------------------------


def test_embedding_dropout_drops_a_word_everywhere() -> None:
    emb = nn.Embedding(50, 4)
    layer = EmbeddingDropout(emb, 0.5, generator=torch.Generator().manual_seed(2))
    # 20 words, each three times (shuffled): each word is dropped everywhere or nowhere.
    tokens = torch.arange(20).repeat(3)[
        torch.randperm(60, generator=torch.Generator().manual_seed(0))
    ]
    tokens = tokens.view(6, 10)
    y = layer(tokens)
    dropped = []
    for token in range(20):
        rows = y[tokens == token]
        # every occurrence is either all dropped or all kept and scaled by 2
        if torch.equal(rows, torch.zeros_like(rows)):
            dropped.append(token)
        else:
            assert torch.equal(rows, emb.weight[token].expand_as(rows) * 2), token
    # Both outcomes occur (seeded; each of 20 words is dropped with p = 0.5): a layer that
    # never drops, or drops everything, fails here.
    assert 0 < len(dropped) < 20, dropped
    assert layer.eval()(tokens).equal(emb(tokens))


def test_embedding_dropout_row_fraction_is_p() -> None:
    vocab, p = 20_000, 0.1
    layer = EmbeddingDropout(nn.Embedding(vocab, 2), p)
    y = layer(torch.arange(vocab))
    dropped = (y == 0).all(dim=1).float().mean().item()
    # Each row is dropped independently with probability p: the fraction has standard error
    # sqrt(p(1 - p) / vocab) ≈ 0.0021; allow 5 of them (a false failure is ~6e-7 likely).
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / vocab)


def test_embedding_dropout_respects_padding_and_max_norm() -> None:
    emb = nn.Embedding(10, 3, padding_idx=0, max_norm=1.0)
    with torch.no_grad():
        emb.weight.mul_(10)
    layer = EmbeddingDropout(emb, 0.5)
    tokens = torch.tensor([0, 1, 2, 3, 4, 5])
    y = layer(tokens)
    norms = emb.weight[1:6].norm(dim=1)
    assert torch.all(norms <= 1.0 + 1e-5)  # the stored weight was renormalized
    y.sum().backward()
    assert emb.weight.grad is not None
    assert torch.equal(emb.weight.grad[0], torch.zeros(3))  # padding_idx gets no gradient


def test_embedding_dropout_trivial_rates_and_errors() -> None:
    emb = nn.Embedding(5, 2)
    tokens = torch.tensor([1, 2])
    assert torch.equal(EmbeddingDropout(emb, 0.0)(tokens), emb(tokens))
    y = EmbeddingDropout(emb, 1.0)(tokens)
    assert torch.equal(y, torch.zeros(2, 2))
    y.sum().backward()
    assert emb.weight.grad is not None and torch.equal(emb.weight.grad, torch.zeros(5, 2))
    assert list(EmbeddingDropout(emb, 0.1).state_dict()) == ["weight"]
    with pytest.raises(TypeError, match="`embedding` must be a torch.nn.Embedding"):
        EmbeddingDropout(nn.Linear(2, 2), 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sparse=True"):
        EmbeddingDropout(nn.Embedding(5, 2, sparse=True), 0.1)(tokens)
    assert repr(EmbeddingDropout(emb, 0.1)).startswith("EmbeddingDropout(\n  p=0.1")
