"""The lab's batchable recurrent twins (``dropkit.lab.train.recurrent_twins``).

A twin is the original module with its class swapped: the same tensors, the same outputs where
no unit is dropped (eval, or rates 0), dropout from counter keys, and a forward pass that
``torch.vmap`` runs, so the batched trainer trains recurrent models together, each run as it
would alone.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import dropkit
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset
from dropkit.lab.train.counter_masks import CounterDropout
from dropkit.lab.train.recurrent_twins import (
    GRUTwin,
    LSTMTwin,
    VariationalGRUTwin,
    VariationalLSTMTwin,
    rewrite_recurrent,
)
from dropkit.lab.train.vmapped import train_custom
from dropkit.recurrent import GRU, LSTM
from dropkit.surgery import find_dropout_sites

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # float32: the twin sums the same products in another order than torch's kernel

KINDS = ["nn.LSTM", "nn.GRU", "dropkit.LSTM", "dropkit.GRU"]
INPUT, HIDDEN, STEPS, ROWS = 3, 4, 5, 2


def make(
    kind: str,
    p: float = 0.0,
    layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = True,
    **extra: Any,
) -> nn.Module:
    """A recurrent module of ``kind`` at rate ``p`` (dropkit's: both rates ``p``)."""
    shape: dict[str, Any] = {
        "num_layers": layers,
        "bidirectional": bidirectional,
        "batch_first": batch_first,
        **extra,
    }
    if kind == "nn.LSTM":
        return nn.LSTM(INPUT, HIDDEN, dropout=p, **shape)
    if kind == "nn.GRU":
        return nn.GRU(INPUT, HIDDEN, dropout=p, **shape)
    if kind == "nn.RNN":
        return nn.RNN(INPUT, HIDDEN, dropout=p, **shape)
    cls = LSTM if kind == "dropkit.LSTM" else GRU
    return cls(INPUT, HIDDEN, dropout=p, recurrent_dropout=p, **shape)


def twin_of(module: nn.Module, seed: int = 0, step: int = 0) -> nn.Module:
    """A rewritten deep copy of ``module``, its masks at optimizer step ``step``."""
    twin = copy.deepcopy(module)
    assert rewrite_recurrent(twin, seed, itertools.count(1)) == [""]
    set_step(twin, step)
    return twin


def set_step(module: nn.Module, step: int) -> None:
    for m in module.modules():
        if isinstance(m, CounterDropout):
            m.step = step


def inputs(batch_first: bool, rows: int = ROWS) -> Tensor:
    return torch.randn((rows, STEPS, INPUT) if batch_first else (STEPS, rows, INPUT))


def flat(value: object) -> list[Tensor]:
    """The tensors of an RNN's return value, in order (a PackedSequence's data and sizes)."""
    if isinstance(value, PackedSequence):
        return [value.data, value.batch_sizes]
    if isinstance(value, Tensor):
        return [value]
    assert isinstance(value, tuple | list)
    return [t for item in value for t in flat(item)]


def assert_same(mine: object, theirs: object, atol: float = ATOL) -> None:
    a, b = flat(mine), flat(theirs)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


# --- the same module -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_twin_keeps_the_state_dict_and_the_outputs(
    kind: str, layers: int, bidirectional: bool, batch_first: bool
) -> None:
    p = 0.4 if layers > 1 or kind.startswith("dropkit") else 0.0  # torch warns otherwise
    original = make(kind, p, layers, bidirectional, batch_first)
    twin = twin_of(original)
    assert list(twin.state_dict()) == list(original.state_dict())
    for key, value in original.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value)
    x = inputs(batch_first)
    one = x[0] if batch_first else x[:, 0]  # an unbatched sequence (T, F)
    for training in (False, True):  # eval at rate p, then training at rate 0
        if training:
            set_rate(original, 0.0)
            set_rate(twin, 0.0)
        original.train(training)
        twin.train(training)
        assert_same(twin(x), original(x))
        _, states = original(x)
        assert_same(twin(x, states), original(x, states))  # from a given state
        assert_same(twin(one), original(one))


def set_rate(module: nn.Module, p: float) -> None:
    """Every rate of an original module (its float attributes) or of a twin (its masks)."""
    for m in module.modules():
        if isinstance(m, CounterDropout):
            m.p.fill_(p)
        elif isinstance(m, nn.RNNBase | LSTM | GRU):
            m.dropout = p
            if isinstance(m, LSTM | GRU):
                m.recurrent_dropout = p


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("nn.LSTM", {"proj_size": 2}),
        ("nn.RNN", {"nonlinearity": "tanh"}),
        ("nn.RNN", {"nonlinearity": "relu"}),
        ("nn.GRU", {"bias": False}),
        ("dropkit.LSTM", {"bias": False}),
    ],
)
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_projection_relu_and_no_bias_keep_the_outputs(kind: str, extra: dict[str, Any]) -> None:
    original = make(kind, 0.0, 2, True, **extra)
    twin = twin_of(original)
    x = inputs(True)
    for training in (False, True):
        original.train(training)
        twin.train(training)
        assert_same(twin(x), original(x))


@pytest.mark.parametrize("kind", ["nn.LSTM", "nn.GRU", "nn.RNN"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_packed_sequences_give_torchs_packed_output_and_states(
    kind: str, batch_first: bool
) -> None:
    original = make(kind, 0.0, 2, True, batch_first)
    twin = twin_of(original)
    x = inputs(batch_first, rows=3)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), batch_first, enforce_sorted=False)
    for training in (False, True):
        original.train(training)
        twin.train(training)
        mine, theirs = twin(packed), original(packed)
        assert isinstance(mine[0], PackedSequence)
        assert mine[0].sorted_indices is not None and packed.sorted_indices is not None
        assert torch.equal(mine[0].sorted_indices, packed.sorted_indices)
        assert_same(mine, theirs)
        assert_same(twin(packed, theirs[1]), original(packed, theirs[1]))


def test_wrong_inputs_are_refused_as_torch_refuses_them() -> None:
    twin = twin_of(nn.LSTM(INPUT, HIDDEN, batch_first=True))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D"):
        twin(torch.randn(2, 3, 4, INPUT))
    with pytest.raises(RuntimeError, match="input_size. Expected 3, got 5"):
        twin(torch.randn(2, 4, 5))
    state = torch.zeros(1, 9, HIDDEN)
    with pytest.raises(RuntimeError, match=r"hidden\[0\] size \(1, 2, 4\)"):
        twin(torch.randn(2, 4, INPUT), (state, state))


def test_repr_depends_on_neither_seed_nor_rate() -> None:
    for kind in KINDS:
        one = twin_of(make(kind, 0.2, 2), seed=1)
        other = twin_of(make(kind, 0.6, 2), seed=9)
        assert repr(one) == repr(other)
        assert "CounterDropout" in repr(one)


def test_isinstance_holds_for_dropkits_and_torch_compile_can_trace_torchs() -> None:
    # dynamo refuses every instance of nn.LSTM/GRU/RNN, so torch's twins are not ones
    lstm, gru = twin_of(make("nn.LSTM")), twin_of(make("nn.GRU"))
    assert isinstance(lstm, LSTMTwin) and not isinstance(lstm, nn.LSTM)
    assert isinstance(gru, GRUTwin) and not isinstance(gru, nn.GRU)
    variational = twin_of(make("dropkit.LSTM"))
    assert isinstance(variational, VariationalLSTMTwin) and isinstance(variational, LSTM)
    assert isinstance(twin_of(make("dropkit.GRU")), VariationalGRUTwin)
    assert not isinstance(twin_of(make("dropkit.GRU")), LSTM)


def test_subclasses_and_parametrized_modules_are_left_alone() -> None:
    class Custom(nn.LSTM):
        pass

    custom = Custom(INPUT, HIDDEN, num_layers=2, dropout=0.3)
    assert rewrite_recurrent(custom, 0, itertools.count(1)) == []
    assert type(custom) is Custom
    weighted = dropkit.DropConnect.apply(nn.GRU(INPUT, HIDDEN), 0.3, names="weight_hh_l0")
    kind = type(weighted)
    assert rewrite_recurrent(weighted, 0, itertools.count(1)) == []
    assert type(weighted) is kind


def test_rewrite_reaches_nested_modules_in_order_and_numbers_their_masks() -> None:
    model = nn.ModuleDict(
        {"encoder": nn.LSTM(INPUT, HIDDEN, num_layers=3, dropout=0.3), "decoder": GRU(4, 4)}
    )
    layers = itertools.count(5)
    assert rewrite_recurrent(model, 0, layers) == ["encoder", "decoder"]
    numbers = [m.layer for m in model.modules() if isinstance(m, CounterDropout)]
    assert numbers == [5, 6, 7, 8]  # two between the encoder's layers, the decoder's two masks
    assert next(layers) == 9
    assert rewrite_recurrent(model, 0, layers) == []  # twins stay as they are


@pytest.mark.parametrize("kind", ["nn.LSTM", "nn.GRU", "nn.RNN"])
def test_no_float_rate_site_is_left(kind: str) -> None:
    model = nn.Sequential(make(kind, 0.3, layers=2))
    assert [s.p for s in find_dropout_sites(model) if not s.is_module] == [0.3]
    rewrite_recurrent(model, 0, itertools.count(1))
    assert not [s for s in find_dropout_sites(model) if not s.is_module and s.p > 0]


def test_deepcopy_and_to_keep_a_working_twin() -> None:
    twin = twin_of(make("nn.LSTM", 0.3, 2))
    copied = copy.deepcopy(twin).to(torch.float64)
    x = inputs(True)
    copied.eval()
    twin.eval()
    out = copied(x.double())[0]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), twin(x)[0], atol=ATOL, rtol=0)
    assert not hasattr(twin, "_flat_weights")  # no tensors held outside the module's state
    assert isinstance(twin, LSTMTwin)
    twin.flatten_parameters()  # what models call in their forward still works
    twin.reset_parameters()
    assert not torch.equal(
        twin.state_dict()["weight_hh_l1"], copied.state_dict()["weight_hh_l1"].float()
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_twin_on_cuda_equals_the_cpu(kind: str) -> None:
    twin = twin_of(make(kind, 0.4, 2, True), seed=3, step=2)
    x = inputs(True)
    on_cpu = twin(x)
    on_gpu = copy.deepcopy(twin).cuda()(x.cuda())
    assert_same([t.cpu() for t in flat(on_gpu)], on_cpu, atol=1e-4)


# --- dropout, counter-based ----------------------------------------------------------------------


def keep_fraction_tolerance(p: float, units: int) -> float:
    """Five binomial standard errors of a kept fraction over ``units`` independent units: the
    fraction of kept units is Binomial(units, 1 − p) / units, of standard deviation
    sqrt(p (1 − p) / units); a correct mask misses by more once in ~1.7 million draws."""
    return 5 * math.sqrt(p * (1 - p) / units)


def assert_dropped_or_scaled(mask: Tensor, p: float) -> None:
    """Every value 0 (dropped) or 1 / (1 − p) (kept, inverted scaling), both present."""
    kept = mask[mask != 0]
    assert 0 < kept.numel() < mask.numel()
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_torch_dropout_drops_each_layers_output_but_the_last_with_fresh_masks() -> None:
    p = 0.4
    original = nn.LSTM(INPUT, HIDDEN, num_layers=3, dropout=p)
    twin = twin_of(original, seed=7, step=3)
    between = [m for m in twin.modules() if isinstance(m, CounterDropout)]
    assert [m.layer for m in between] == [1, 2]  # one per layer boundary
    # The twin equals the stack of one-layer LSTMs with its masks between them.
    x = inputs(False)
    h = x
    for layer in range(3):
        one = nn.LSTM(INPUT if layer == 0 else HIDDEN, HIDDEN)
        one.load_state_dict(
            {k.replace(f"_l{layer}", "_l0"): v for k, v in original.state_dict().items()
             if k.endswith(f"_l{layer}")}
        )  # fmt: skip
        h = one(h)[0]
        if layer < 2:
            h = between[layer](h)
    torch.testing.assert_close(twin(x)[0], h, atol=ATOL, rtol=0)
    # Masks: a fresh one per element and time step, per layer and per optimizer step.
    ones = torch.ones(200, 64, HIDDEN)
    first, second = between[0](ones), between[1](ones)
    assert_dropped_or_scaled(first, p)
    for mask in (first, second):
        kept = (mask > 0).double().mean().item()
        assert abs(kept - (1 - p)) < keep_fraction_tolerance(p, mask.numel())
    assert not torch.equal(first, second)
    assert not torch.equal(first[0], first[1])  # time steps
    set_step(twin, 4)
    assert not torch.equal(between[0](ones), first)


@pytest.mark.parametrize("kind", ["dropkit.LSTM", "dropkit.GRU"])
def test_variational_masks_are_drawn_from_counter_keys(kind: str) -> None:
    p, rows = 0.3, 500
    original = make(kind, p, layers=2, bidirectional=True)
    twin = twin_of(original, seed=5, step=2)
    masks = twin.draw_masks(rows)  # type: ignore[operator]
    assert len(masks) == 4  # per layer and direction
    shapes = [(tuple(m_x.shape), tuple(m_h.shape)) for m_x, m_h in masks]
    assert (
        shapes == [((rows, INPUT), (rows, HIDDEN))] * 2 + [((rows, 2 * HIDDEN), (rows, HIDDEN))] * 2
    )
    every = [m for pair in masks for m in pair]
    for mask in every:
        assert_dropped_or_scaled(mask, p)
        kept = (mask > 0).double().mean().item()
        assert abs(kept - (1 - p)) < keep_fraction_tolerance(p, mask.numel())
    for a, b in itertools.combinations(every[2:], 2):  # same shapes, different layers
        if a.shape == b.shape:
            assert not torch.equal(a, b)
    assert_same(twin.draw_masks(rows), masks)  # type: ignore[operator]  # fixed within a step
    set_step(twin, 3)
    assert not torch.equal(twin.draw_masks(rows)[0][0], masks[0][0])  # type: ignore[operator]
    # The forward pass uses these masks as dropkit's module uses masks: per sequence, tied
    # across gates, the same at every time step.
    x = inputs(True, rows=3)
    original.train()
    twin.train()
    assert_same(twin(x), original(x, masks=twin.draw_masks(3)))  # type: ignore[operator]
    own = original.draw_masks(3)  # type: ignore[operator]
    assert_same(twin(x, masks=own), original(x, masks=own))


def test_dropout_acts_in_training_only_and_rate_one_drops_everything() -> None:
    twin = twin_of(make("dropkit.GRU", 1.0), step=1)
    x = inputs(True)
    twin.train()
    out, h_n = twin(x)
    zero = make("dropkit.GRU", 0.0)
    zero.load_state_dict(twin.state_dict())
    # every input and recurrent unit dropped: the cell sees only its biases
    assert_same((out, h_n), zero(torch.zeros_like(x), masks=[(None, torch.zeros(ROWS, HIDDEN))]))
    twin.eval()
    zero.eval()
    assert_same(twin(x), zero(x))


# --- under vmap ----------------------------------------------------------------------------------


def stacked_call(
    runs: list[nn.Module],
) -> tuple[Callable[..., Any], dict[str, Tensor], dict[str, Tensor]]:
    params, buffers = stack_module_state(runs)
    template = copy.deepcopy(runs[0]).to("meta")

    def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        out, states = functional_call(template, (p, b), (x,))
        h_n = states[0] if isinstance(states, tuple) else states
        total: Tensor = out.sin().sum() + h_n.sum()
        return total

    def loss(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.vmap(one, randomness="error")(p, b, x).sum()

    template.train()
    return loss, params, buffers


@pytest.mark.parametrize("kind", [*KINDS, "nn.RNN"])
def test_vmapped_runs_with_different_rates_equal_each_run_alone(kind: str) -> None:
    runs = []
    for seed, p in [(1, 0.0), (2, 0.3), (3, 0.6)]:
        torch.manual_seed(seed)
        runs.append(twin_of(make(kind, p, layers=2, bidirectional=True), seed=seed, step=4))
    x = torch.randn(3, ROWS, STEPS, INPUT)
    loss, params, buffers = stacked_call(runs)
    grads, _ = torch.func.grad_and_value(loss)(params, buffers, x)
    for r, run in enumerate(runs):
        run.zero_grad()
        out, states = run(x[r])
        h_n = states[0] if isinstance(states, tuple) else states
        (out.sin().sum() + h_n.sum()).backward()
        for name, param in run.named_parameters():
            assert param.grad is not None
            torch.testing.assert_close(grads[name][r], param.grad, atol=ATOL, rtol=0)
    # the rates act: the run at 0.6 differs from its weights at rate 0
    without = copy.deepcopy(runs[2])
    for m in without.modules():
        if isinstance(m, CounterDropout):
            m.p.zero_()
    assert not torch.allclose(without(x[2])[0], runs[2](x[2])[0])


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # packing: no batching rule
def test_packed_input_under_vmap_equals_each_run_alone() -> None:
    runs = []
    for seed, p in [(1, 0.0), (2, 0.5)]:
        torch.manual_seed(seed)
        runs.append(twin_of(make("nn.LSTM", p, 2, True), seed=seed, step=1))
    params, buffers = stack_module_state(runs)
    for param in params.values():
        param.requires_grad_(True)
    template = copy.deepcopy(runs[0]).to("meta")
    lengths = torch.tensor([3, 5, 2])

    def packed_loss(module: nn.Module, x: Tensor, *state: dict[str, Tensor]) -> Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = functional_call(module, state, (packed,)) if state else module(packed)
        total: Tensor = out.data.sin().sum() + h_n.sum() + c_n.sum()
        return total

    x = torch.randn(2, 3, STEPS, INPUT)
    vmapped = torch.vmap(lambda p, b, xs: packed_loss(template, xs, p, b), randomness="error")
    vmapped(params, buffers, x).sum().backward()  # type: ignore[no-untyped-call]
    for r, run in enumerate(runs):
        packed_loss(run, x[r]).backward()  # type: ignore[no-untyped-call]
        for name, param in run.named_parameters():
            grad = params[name].grad
            assert grad is not None and param.grad is not None
            torch.testing.assert_close(grad[r], param.grad, atol=ATOL, rtol=0)


# --- the trainer ---------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Sequences (N, T·F) of floats → (N, classes): an RNN, then a Linear on the last step."""

    def __init__(self, rnn: nn.Module, width: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x.view(x.shape[0], STEPS, INPUT))
        logits: Tensor = self.head(out[:, -1])
        return logits


class Source:
    def __init__(self, make_rnn: Callable[[float], nn.Module], width: int = HIDDEN) -> None:
        self.make_rnn, self.width = make_rnn, width

    def build(self, p: float, seed: int) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Classifier(self.make_rnn(p), self.width)


def sequences() -> Dataset:
    """3 classes of noisy sequences: the class sets the sign of a drift on feature 0."""
    rng = np.random.default_rng(5)
    n = 60
    y = rng.integers(0, 3, n).astype(np.int64)
    x = 0.5 * rng.standard_normal((n, STEPS, INPUT)).astype(np.float32)
    x[:, :, 0] += (y[:, None] - 1) * np.linspace(0, 1, STEPS, dtype=np.float32)
    flat_x = x.reshape(n, -1)
    names = tuple(f"x{i}" for i in range(STEPS * INPUT))
    return Dataset("seq", flat_x[:44], y[:44], flat_x[44:], y[44:], 3, names)


SOURCES = {
    "nn.LSTM": Source(lambda p: nn.LSTM(INPUT, HIDDEN, num_layers=2, dropout=p, batch_first=True)),
    "dropkit.GRU": Source(
        lambda p: GRU(INPUT, HIDDEN, dropout=p, recurrent_dropout=p, bidirectional=True),
        width=2 * HIDDEN,
    ),
}


@pytest.mark.parametrize("name", list(SOURCES))
def test_trainer_batches_recurrent_models_with_the_results_of_each_run_alone(name: str) -> None:
    source = SOURCES[name]
    model = ModelSpec(hidden=(), kind="custom", name="rnn", fingerprint="0123456789abcdef")
    train = TrainSpec(epochs=2, batch_size=16)
    runs = [
        RunConfig(DataSpec("seq"), model, train, p=p, seed=s)
        for p, s in [(0.0, 0), (0.3, 1), (0.5, 2)]
    ]
    lines: list[str] = []
    together = train_custom(
        source, sequences(), runs, batched=True, compile=False, log=lines.append
    )
    assert not any("run by run" in line for line in lines), lines
    alone = train_custom(source, sequences(), runs, batched=False, compile=False)
    assert together.states is not None and alone.states is not None
    for mine, theirs in zip(together.states, alone.states, strict=True):
        assert mine.keys() == theirs.keys()
        assert "rnn.weight_hh_l0" in mine
        for key, value in theirs.items():
            torch.testing.assert_close(mine[key], value, atol=ATOL, rtol=0)
    for metric, curves in alone.curves.items():
        np.testing.assert_allclose(together.curves[metric], curves, atol=1e-4, rtol=0)
    assert not np.allclose(together.curves["train_loss"][0], together.curves["train_loss"][2])
