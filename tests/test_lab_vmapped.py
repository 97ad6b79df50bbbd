"""The batched trainer for user models (``dropkit.lab.train.vmapped``) and its counter-based masks.

The central property: a run trained in a batch gives what it gives alone. Each test builds small
models from a factory, trains a few runs together and each run alone, and compares the final
weights (``ATOL``) and the curves. Plain autograd loops written here check the functional
machinery itself (stacking, ``functional_call``, ``vmap``, one Adam).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dropkit
import dropkit.lab.train.counter_masks as counter_masks
import dropkit.lab.train.vmapped as vmapped
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.splits import stopping_rows, validation_rows
from dropkit.lab.train.contract import make_adam
from dropkit.lab.train.counter_masks import (
    CounterDropout,
    counter_bits,
    counter_fields,
    counter_module,
    counter_uniform,
    keep_mask,
    key_keep_mask,
    mask_key,
)
from dropkit.lab.train.stacked import compiler_available
from dropkit.lab.train.vmapped import train_custom

# Two computations of the same float32 numbers (a batched GEMM may sum in another order than a
# single one): a few epochs of Adam keep the weights within ~1e-7; 1e-5 leaves room.
ATOL = 1e-5

MODEL = ModelSpec(hidden=(), kind="custom", name="test", fingerprint="0123456789abcdef")


pytestmark = pytest.mark.usefixtures("one_thread")


class Factory:
    """A model source: ``build(p, seed)`` calls ``make(p)`` under torch's RNG seeded with
    ``seed`` (restored afterwards)."""

    def __init__(self, make: Callable[[float], nn.Module]) -> None:
        self.make = make

    def build(self, p: float, seed: int) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.make(p)


def table(task: str = "classification", n_classes: int = 3, n: int = 90) -> Dataset:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n + 40, 5)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] ** 2 - x[:, 2]
    if task == "regression":
        y: np.ndarray = (score + 0.1 * rng.standard_normal(len(x))).astype(np.float32)
        n_classes = 0
    else:
        edges = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
        y = np.searchsorted(edges, score).astype(np.int64)
    names = tuple(f"f{i}" for i in range(5))
    return Dataset("table", x[:n], y[:n], x[n:], y[n:], n_classes, names, task=task)


def images(n: int = 96) -> Dataset:
    """3-class 1x6x6 images: a bright bar in the top, middle or bottom rows, plus noise; the
    first two thirds of the ``n`` train."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, n).astype(np.int64)
    x = 0.3 * rng.standard_normal((n, 1, 6, 6)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, 2 * label : 2 * label + 2, :] += 1.0
    flat = x.reshape(n, -1)
    names = tuple(f"px{i}" for i in range(36))
    fit = 2 * n // 3
    return Dataset("img", flat[:fit], y[:fit], flat[fit:], y[fit:], 3, names, input_shape=(1, 6, 6))


def configs(
    settings: list[dict[str, object]],
    epochs: int = 4,
    batch_size: int = 16,
    data: DataSpec | None = None,
) -> list[RunConfig]:
    train = TrainSpec(epochs=epochs, batch_size=batch_size)
    return [RunConfig(data or DataSpec("table"), MODEL, train, **s) for s in settings]  # type: ignore[arg-type]


def mlp(width: int = 3) -> Factory:
    return Factory(
        lambda p: nn.Sequential(
            nn.Linear(5, 24), nn.ReLU(), nn.Dropout(p), nn.Linear(24, 16), nn.Tanh(),
            dropkit.Dropout(p), nn.Linear(16, width),
        )
    )  # fmt: skip


needs_compiler = pytest.mark.skipif(
    not compiler_available(), reason="torch.compile needs a C++ compiler on the CPU"
)


def assert_same_runs(source: Factory, data: Dataset, runs: list[RunConfig], **kw: object) -> None:
    """Trained together (as one vmapped group) == each trained alone: final weights, curves
    and info."""
    lines: list[str] = []
    together = train_custom(source, data, runs, log=lines.append, **kw)  # type: ignore[arg-type]
    assert not any("run by run" in line for line in lines), lines
    assert together.states is not None and together.info is not None
    for i, config in enumerate(runs):
        alone = train_custom(source, data, [config], **kw)  # type: ignore[arg-type]
        assert alone.states is not None and alone.info is not None
        for key, value in alone.states[0].items():
            torch.testing.assert_close(together.states[i][key], value, atol=ATOL, rtol=0)
        for name, curve in alone.curves.items():
            np.testing.assert_allclose(together.curves[name][i], curve[0], atol=1e-4, rtol=0)
        assert together.info[i].keys() == alone.info[0].keys()
        for key, number in alone.info[0].items():
            assert together.info[i][key] == pytest.approx(number, abs=1e-4, nan_ok=True)


# --- counter masks ---------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_fraction_within_five_binomial_standard_errors(p: float) -> None:
    n = 200_000
    keep = keep_mask(torch.tensor(11), torch.tensor(p), 3, 2, (n,))
    dropped = 1.0 - keep.double().mean().item()
    # Binomial(n, p) / n has standard error sqrt(p(1-p)/n); 5 of them: a false alarm < 1e-6.
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_uniforms_are_uniform_and_in_range() -> None:
    u = counter_uniform(torch.tensor(5), 0, 0, (100_000,))
    assert u.dtype == torch.float32 and u.min() >= 0.0 and u.max() < 1.0
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    # Each decile count is Binomial(1e5, 0.1): sd = sqrt(1e5·0.1·0.9) ≈ 95; 5 sd = 474.
    assert (counts - 10_000).abs().max() < 5 * math.sqrt(100_000 * 0.1 * 0.9)


def test_masks_repeat_for_the_same_inputs_and_differ_otherwise() -> None:
    n = 40_000
    base = keep_mask(torch.tensor(1), torch.tensor(0.5), 10, 1, (n,))
    assert torch.equal(base, keep_mask(torch.tensor(1), torch.tensor(0.5), 10, 1, (n,)))
    others = {
        "seed": keep_mask(torch.tensor(2), torch.tensor(0.5), 10, 1, (n,)),
        "large seed": keep_mask(torch.tensor(1 + 2**40), torch.tensor(0.5), 10, 1, (n,)),
        "negative seed": keep_mask(torch.tensor(-1), torch.tensor(0.5), 10, 1, (n,)),
        "step": keep_mask(torch.tensor(1), torch.tensor(0.5), 11, 1, (n,)),
        "layer": keep_mask(torch.tensor(1), torch.tensor(0.5), 10, 2, (n,)),
    }
    for what, other in others.items():
        agree = (base == other).double().mean().item()
        # Independent masks at p = 0.5 agree on half the units: sd sqrt(0.25/n) = 0.0025.
        assert abs(agree - 0.5) < 5 * math.sqrt(0.25 / n), what


def test_counter_bits_are_32_bit_and_index_dependent() -> None:
    index = torch.arange(1000)
    bits = counter_bits(torch.tensor(3), 0, 0, index)
    assert bits.min() >= 0 and bits.max() < 2**32
    assert len(torch.unique(bits)) == 1000  # a bijection of the index for fixed keys
    shifted = counter_bits(torch.tensor(3), 0, 0, index + 2**32)
    assert not torch.equal(bits, shifted)


def reference_fields(seed: int, step: int, layer: int, numel: int) -> Tensor:
    """Unit ``i``'s 16-bit field from the int64 reference :func:`counter_bits`."""
    bits = counter_bits(torch.tensor(seed), step, layer, torch.arange((numel + 1) // 2))
    return torch.stack((bits & 0xFFFF, bits >> 16), -1).flatten()[:numel]


@pytest.mark.parametrize("int32_words", [1 << 31, 3])  # 3: masks of > 6 units hash in int64
def test_int32_words_equal_the_int64_reference(
    int32_words: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counter_masks, "_INT32_WORDS", int32_words)
    for seed, step, layer, numel in [(0, 0, 0, 1), (7, 3, 1, 7), (-5, 2**33 + 1, 4, 1000)]:
        fields = counter_fields(torch.tensor(seed), step, layer, (numel,))
        assert torch.equal(fields, reference_fields(seed, step, layer, numel))


@pytest.mark.parametrize("little_endian", [True, False])  # False: the halves interleaved
def test_keep_decisions_equal_the_reference_fields_at_every_edge(
    little_endian: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counter_masks, "_LITTLE_ENDIAN", little_endian)
    # thresholds 0, 1, 2**15 - 1, 2**15, 2**15 + 1, 2**16 - 1 and 2**16 (p = 1: none kept)
    thresholds = [0, 1, 2**15 - 1, 2**15, 2**15 + 1, 2**16 - 1, 2**16]
    rates = torch.tensor(thresholds, dtype=torch.float64) / 2**16
    for numel in (1, 7, 4096):
        fields = reference_fields(6, 4, 2, numel)
        key = mask_key(torch.tensor(6), 4, 2)
        for p, threshold in zip(rates, thresholds, strict=True):
            assert torch.equal(key_keep_mask(key, p, (numel,)), fields >= threshold)
        batched = torch.vmap(lambda q, key=key, numel=numel: key_keep_mask(key, q, (numel,)))
        expected = torch.stack([fields >= t for t in thresholds])
        assert torch.equal(batched(rates), expected)


def test_mask_keys_of_many_steps_and_runs_at_once() -> None:
    seeds = torch.tensor([0, 9, -3, 2**40 + 1])
    steps = [0, 1, 2**33 + 5]
    keys = mask_key(seeds, torch.tensor(steps).view(-1, 1), 2)
    assert keys.shape == (3, 4, 2) and keys.dtype == torch.int32
    for i, step in enumerate(steps):
        for r, seed in enumerate(seeds.tolist()):
            assert torch.equal(keys[i, r], mask_key(torch.tensor(seed), step, 2))


def test_setting_the_step_sets_the_key_of_its_masks() -> None:
    layer = CounterDropout(0.5, seed=4, layer=3)
    layer.step = 11
    assert layer.step == 11 and torch.equal(layer.key, mask_key(torch.tensor(4), 11, 3))
    out = layer(torch.ones(6, 7))
    keep = keep_mask(torch.tensor(4), torch.tensor(0.5), 11, 3, (6, 7))
    assert torch.equal(out != 0, keep)


@needs_compiler
def test_compiled_masks_and_dropout_equal_eager() -> None:
    key, p = mask_key(torch.tensor(5), 9, 1), torch.tensor(0.3)
    compiled = torch.compile(lambda k, q: key_keep_mask(k, q, (3, 5, 7)), dynamic=False)
    assert torch.equal(compiled(key, p), key_keep_mask(key, p, (3, 5, 7)))  # odd unit count
    x = torch.randn(4, 6, 5)
    for module in (nn.Dropout(0.3), nn.AlphaDropout(0.3), nn.Dropout1d(0.3)):
        counter = counter_module(module, seed=2, layer=1)
        assert counter is not None
        counter.step = 5
        torch.testing.assert_close(torch.compile(counter, dynamic=False)(x), counter(x))


def test_counter_dropout_rates_zero_and_one_and_eval() -> None:
    x = torch.randn(8, 50)
    layer = CounterDropout(0.0, seed=3, layer=1)
    assert torch.equal(layer(x), x)
    layer.p.fill_(1.0)
    out = layer(x)
    assert torch.equal(out, torch.zeros_like(x))
    layer.p.fill_(0.4)
    out = layer(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.6)
    layer.eval()
    assert torch.equal(layer(x), x)
    classic = CounterDropout(0.4, seed=3, layer=1, scaling="classic").eval()
    torch.testing.assert_close(classic(x), 0.6 * x)


def test_counter_dropout_gradient_at_rate_one_is_zero() -> None:
    x = torch.randn(4, 6, requires_grad=True)
    CounterDropout(1.0, seed=0, layer=1)(x).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_channel_masks_drop_whole_channels() -> None:
    x = torch.ones(16, 8, 5, 5)
    out = counter_module(nn.Dropout2d(0.5), seed=1, layer=1)(x)  # type: ignore[misc]
    per_channel = out.flatten(2)
    assert torch.equal(per_channel.amax(-1), per_channel.amin(-1))  # constant over H, W
    assert set(per_channel.unique().tolist()) <= {0.0, 2.0}
    spatial = counter_module(dropkit.SpatialDropout1d(0.5), seed=1, layer=1)
    assert spatial is not None
    with pytest.raises(ValueError, match=r"SpatialDropout1d takes a 3-D input"):
        spatial(torch.ones(4, 5))


@pytest.mark.parametrize(
    "module",
    [
        nn.Dropout(0.3),
        nn.Dropout1d(0.3),
        nn.Dropout2d(0.3),
        nn.Dropout3d(0.3),
        nn.AlphaDropout(0.3),
        nn.FeatureAlphaDropout(0.3),
        dropkit.Dropout(0.3),
        dropkit.Dropout(0.3, scaling="classic"),
        dropkit.SpatialDropout1d(0.3),
        dropkit.SpatialDropout2d(0.3),
        dropkit.SpatialDropout3d(0.3),
        dropkit.AlphaDropout(0.3),
        dropkit.FeatureAlphaDropout(0.3),
        dropkit.DropPath(0.3),
        dropkit.LockedDropout(0.3),
    ],
    ids=lambda m: f"{type(m).__module__.split('.')[0]}.{type(m).__name__}",
)
def test_covered_modules_keep_their_rate_and_mean(module: nn.Module) -> None:
    counter = counter_module(module, seed=5, layer=2)
    assert counter is not None and counter.p.item() == pytest.approx(0.3)
    shapes = {
        nn.Dropout1d: (64, 8, 6), nn.Dropout2d: (64, 8, 3, 3), nn.Dropout3d: (64, 8, 2, 2, 2),
        dropkit.SpatialDropout1d: (64, 8, 6), dropkit.SpatialDropout2d: (64, 8, 3, 3),
        dropkit.SpatialDropout3d: (64, 8, 2, 2, 2), dropkit.LockedDropout: (64, 6, 8),
    }  # fmt: skip
    x = torch.randn(shapes.get(type(module), (64, 96)))
    out = counter(x)
    assert out.shape == x.shape
    reference = module(x)  # torch's RNG: another mask, the same law
    # Means over ~6000 units of N(0, 1)-ish values: both within a few 1/sqrt(n) of x's mean.
    assert abs(out.mean().item() - reference.mean().item()) < 0.2
    assert abs(out.std().item() - reference.std().item()) < 0.2


def test_uncovered_modules_have_no_counter_equivalent() -> None:
    assert counter_module(dropkit.GaussianDropout(0.3), seed=0, layer=1) is None
    assert counter_module(dropkit.DropBlock2d(0.3, block_size=3), seed=0, layer=1) is None


# --- batched == alone ------------------------------------------------------------------------


def test_mlp_batched_equals_alone() -> None:
    runs = configs([{"p": p, "seed": s} for p, s in [(0.0, 0), (0.3, 1), (0.5, 2), (0.3, 3)]])
    assert_same_runs(mlp(), table(), runs)


def test_binary_mlp_with_input_dropout_batched_equals_alone() -> None:
    settings: list[dict[str, object]] = [
        {"p": 0.2, "seed": 1, "input_p": 0.2},
        {"p": 0.4, "seed": 2},
    ]
    assert_same_runs(mlp(1), table(n_classes=2), configs(settings))


def test_two_logits_for_two_classes_with_label_smoothing_batched_equals_alone() -> None:
    settings: list[dict[str, object]] = [
        {"p": 0.2, "seed": 1, "regularizers": (("label_smoothing", 0.1),)},
        {"p": 0.4, "seed": 2},
    ]
    assert_same_runs(mlp(2), table(n_classes=2), configs(settings))


def cnn(p: float) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(p),
        nn.Flatten(), nn.Dropout(p), nn.Linear(4 * 36, 3),
    )  # fmt: skip


def test_cnn_batched_equals_alone() -> None:
    runs = configs([{"p": p, "seed": s} for p, s in [(0.1, 0), (0.3, 1), (0.5, 2)]], epochs=3)
    assert_same_runs(Factory(cnn), images(), runs)


class Residual(nn.Module):
    """SELU with alpha dropout, channel dropout and a DropPath branch: every mask shape."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.spatial = dropkit.SpatialDropout2d(p)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.path = dropkit.DropPath(p)
        self.hidden = nn.Linear(4 * 36, 16)
        self.alpha = nn.AlphaDropout(p)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.spatial(torch.relu(self.conv(x)))
        h = h + self.path(torch.relu(self.branch(h)))
        out: Tensor = self.head(self.alpha(F.selu(self.hidden(h.flatten(1)))))
        return out


def test_alpha_channel_and_path_dropout_batched_equals_alone() -> None:
    runs = configs([{"p": p, "seed": s} for p, s in [(0.1, 0), (0.3, 1)]], epochs=2)
    assert_same_runs(Factory(Residual), images(), runs)


def plain_loop(source: Factory, data: Dataset, config: RunConfig) -> dict[str, Tensor]:
    """The textbook autograd loop: one module, one Adam, the run's generator for the order."""
    model = source.build(config.p, config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_adam(list(model.parameters()), config.train)
    x = torch.from_numpy(data.x_train).view(-1, *data.sample_shape)
    y = torch.from_numpy(data.y_train)
    for _ in range(config.train.epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for begin in range(0, len(y), config.train.batch_size):
            rows = order[begin : begin + config.train.batch_size]
            out = model(x[rows])
            if data.task == "regression":
                loss = F.mse_loss(out.squeeze(-1), y[rows])
            else:
                loss = F.cross_entropy(out, y[rows])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_rate_zero_equals_plain_autograd_loop(kind: str) -> None:
    source, data = (mlp(), table()) if kind == "mlp" else (Factory(cnn), images())
    runs = configs([{"p": 0.0, "seed": 4}, {"p": 0.0, "seed": 9}], epochs=3)
    result = train_custom(source, data, runs)
    assert result.states is not None
    for state, config in zip(result.states, runs, strict=True):
        for key, value in plain_loop(source, data, config).items():
            torch.testing.assert_close(state[key], value, atol=ATOL, rtol=0)


def bn_net(p: float) -> nn.Module:
    # No bias before the BatchNorm: BatchNorm removes it, so its gradient is rounding noise
    # that Adam normalizes to steps of size lr, different for any two summation orders.
    return nn.Sequential(
        nn.Linear(5, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(p),
        nn.Linear(16, 3),
    )  # fmt: skip


def test_batchnorm_trains_batched_with_per_run_running_statistics() -> None:
    lines: list[str] = []
    runs = configs([{"p": 0.0, "seed": 1}, {"p": 0.3, "seed": 2}, {"p": 0.0, "seed": 3}])
    result = train_custom(Factory(bn_net), table(), runs, log=lines.append)
    assert not any("run by run" in line for line in lines), lines
    assert result.states is not None
    assert_same_runs(Factory(bn_net), table(), runs)
    # vmap updates each run's running statistics in place: the same as the plain module
    # (the loop skips no batch: 90 rows in batches of 16 leave a last batch of 10).
    for i in (0, 2):
        for key, value in plain_loop(Factory(bn_net), table(), runs[i]).items():
            torch.testing.assert_close(result.states[i][key], value, atol=ATOL, rtol=0)


class ItemNet(nn.Module):
    """A model vmap cannot run: ``.item()`` and data-dependent control flow."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(p))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if h.mean().item() > 1e6:  # never true, but vmap cannot know that
            h = h * 0
        out: Tensor = self.head(h)
        return out


def test_model_vmap_cannot_run_falls_back_run_by_run() -> None:
    lines: list[str] = []
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}])
    result = train_custom(Factory(ItemNet), table(), runs, log=lines.append)
    assert any("run by run" in line and "vmap cannot run" in line for line in lines), lines
    assert result.states is not None
    # Run by run uses the same counter masks: the same result as a batched-equivalent model
    # (the same layers without the .item() branch) trained batched.
    plain = Factory(
        lambda p: nn.Sequential(
            nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(p)), nn.Linear(16, 3)
        )
    )
    batched = train_custom(plain, table(), runs)
    assert batched.states is not None
    for mine, theirs in zip(result.states, batched.states, strict=True):
        for key, value in mine.items():
            index = key.replace("body.", "0.").replace("head.", "1.")
            torch.testing.assert_close(value, theirs[index], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"batched=True.*vmap cannot run"):
        train_custom(Factory(ItemNet), table(), runs, batched=True)


class LoopedNet(nn.Module):
    """A model with an op that vmap has no batching rule for (``renorm``: torch loops over the
    runs for it, and warns), with a warning of its own; ``item``: one that vmap cannot run."""

    def __init__(self, p: float, item: bool) -> None:
        super().__init__()
        self.item = item
        self.body = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(p))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        warnings.warn("LoopedNet's own warning", UserWarning, stacklevel=1)
        h = self.body(x)
        h = h + 0.0 * torch.renorm(h, 2, 0, 1.0)
        if self.item and h.mean().item() > 1e6:
            h = h * 0
        out: Tensor = self.head(h)
        return out


@pytest.mark.parametrize("item", [False, True])
def test_vmaps_warnings_become_one_line(item: bool) -> None:
    """torch's warnings of ops without a batching rule become one line of the log (the
    fallback's, when vmap then fails), never a wall of UserWarnings; other warnings pass."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.vmap(lambda t: torch.renorm(t, 2, 0, 1.0))(torch.ones(2, 3, 4))
    if not any("batching rule" in str(w.message) for w in caught):
        pytest.skip("this torch has a batching rule for renorm")
    lines: list[str] = []
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_custom(
            Factory(lambda p: LoopedNet(p, item)), table(), runs, log=lines.append
        )
    assert result.states is not None
    assert not [w for w in caught if "batching rule" in str(w.message)]
    assert any("LoopedNet's own warning" in str(w.message) for w in caught)
    (said,) = [line for line in lines if "aten::renorm" in line]
    if item:
        assert said.startswith("training run by run: torch.vmap cannot run the model")
    else:
        assert "2 runs vmapped" in said and "no batching rule for aten::renorm" in said


def test_batched_false_trains_alone_with_the_same_results() -> None:
    runs = configs([{"p": 0.3, "seed": 1}, {"p": 0.5, "seed": 2}])
    lines: list[str] = []
    alone = train_custom(mlp(), table(), runs, batched=False, log=lines.append)
    together = train_custom(mlp(), table(), runs)
    assert any("batched=False" in line for line in lines)
    assert alone.states is not None and together.states is not None
    for a, b in zip(alone.states, together.states, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0)


class OwnRate(nn.Module):
    """Dropout at a float rate in the module's own code: no counter-based equivalent."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.attn_drop = p
        self.body = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(torch.tanh(self.body(x)), self.attn_drop, self.training)
        out: Tensor = self.head(h)
        return out


def test_a_float_rate_of_the_models_own_code_trains_run_by_run_on_seeded_torch_rng() -> None:
    lines: list[str] = []
    runs = configs([{"p": 0.3, "seed": 1}, {"p": 0.3, "seed": 2}], epochs=2)
    first = train_custom(Factory(OwnRate), table(), runs, log=lines.append)
    again = train_custom(Factory(OwnRate), table(), runs)
    assert any("attn_drop" in line and "torch's RNG" in line for line in lines), lines
    assert first.states is not None and again.states is not None
    for a, b in zip(first.states, again.states, strict=True):  # seeded: reproducible
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    # the run's RNG is torch's, seeded with its seed: the plain loop under that seed agrees
    for state, config in zip(first.states, runs, strict=True):
        with torch.random.fork_rng():
            model_seeded = Factory(OwnRate)
            torch.manual_seed(config.seed)
            expected = plain_loop_seeded(model_seeded, table(), config)
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, atol=ATOL, rtol=0)
    assert not torch.allclose(first.states[0]["head.weight"], first.states[1]["head.weight"])
    with pytest.raises(ValueError, match=r"batched=True.*attn_drop"):
        train_custom(Factory(OwnRate), table(), runs, batched=True)


def test_dropout_without_counter_equivalent_trains_run_by_run() -> None:
    lines: list[str] = []
    noisy = Factory(
        lambda p: nn.Sequential(
            nn.Linear(5, 16), nn.ReLU(), dropkit.GaussianDropout(p), nn.Linear(16, 3)
        )
    )
    runs = configs([{"p": 0.3, "seed": 1}, {"p": 0.0, "seed": 2}], epochs=2)
    first = train_custom(noisy, table(), runs, log=lines.append)
    again = train_custom(noisy, table(), runs)
    reasons = [line for line in lines if "run by run" in line]
    assert len(reasons) == 1 and "GaussianDropout" in reasons[0], lines  # p = 0 draws nothing
    assert first.states is not None and again.states is not None
    for a, b in zip(first.states, again.states, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def plain_loop_seeded(source: Factory, data: Dataset, config: RunConfig) -> dict[str, Tensor]:
    """:func:`plain_loop` with torch's RNG seeded after the module is built (as the trainer)."""
    model = source.build(config.p, config.seed)
    torch.manual_seed(config.seed)
    state = plain_loop(Factory(lambda _p: model), data, config)
    return state


# --- tasks, errors, regularizers ---------------------------------------------------------------


def test_regression_trains_on_mse_and_reports_r2_rmse_mae() -> None:
    data = table("regression")
    spec = DataSpec("table", task="regression", validation=0.25)
    runs = configs([{"p": 0.1, "seed": 1}, {"p": 0.3, "seed": 2}], epochs=6, data=spec)
    result = train_custom(mlp(1), data, runs)
    assert result.states is not None and result.info is not None
    assert_same_runs(mlp(1), data, runs)
    model = mlp(1).build(0.1, 1)
    model.load_state_dict(result.states[0])
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).squeeze(-1).double()
    y = torch.from_numpy(data.y_test).double()
    sse = (pred - y).pow(2).sum().item()
    r2 = 1 - sse / (y - y.mean()).pow(2).sum().item()
    assert result.curves["test_acc"][0, -1] == pytest.approx(r2, abs=1e-5)
    assert result.curves["test_loss"][0, -1] == pytest.approx(sse / len(y), rel=1e-5)
    info = result.info[0]
    assert info["test_rmse"] == pytest.approx(math.sqrt(sse / len(y)), rel=1e-5)
    assert info["test_mae"] == pytest.approx((pred - y).abs().mean().item(), rel=1e-5)
    assert {"train_rmse", "train_mae", "val_rmse", "val_mae", "val_acc", "val_loss"} <= set(info)
    assert result.curves["train_loss"][0, -1] < result.curves["train_loss"][0, 0]


def test_regression_accepts_flat_output() -> None:
    flat = Factory(
        lambda p: nn.Sequential(nn.Linear(5, 8), nn.Dropout(p), nn.Linear(8, 1), nn.Flatten(0))
    )
    runs = configs([{"p": 0.2, "seed": 1}], epochs=2, data=DataSpec("table", task="regression"))
    result = train_custom(flat, table("regression"), runs)
    assert np.isfinite(result.curves["test_loss"]).all()


def test_wrong_output_shape_names_expected_and_received() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3\).*got \(2, 2\)"):
        train_custom(mlp(2), table(), configs([{"p": 0.1, "seed": 0}]))


def test_unsupported_regularizer_is_named() -> None:
    runs = configs([{"p": 0.1, "seed": 0, "regularizers": (("batchnorm", 1.0),)}])
    with pytest.raises(ValueError, match="'batchnorm'"):
        train_custom(mlp(), table(), runs)


def test_early_stopping_max_norm_l2_smoothing_schedules_batched_equals_alone() -> None:
    settings: list[dict[str, object]] = [
        {"p": 0.3, "seed": 1, "regularizers": (("early_stopping", 2.0),)},
        {"p": 0.3, "seed": 2, "max_norm": 0.5},
        {"p": 0.2, "seed": 3, "regularizers": (("l1", 1e-3), ("l2", 1e-2))},
        {"p": 0.4, "seed": 4, "regularizers": (("label_smoothing", 0.1),)},
        {"p": 0.4, "seed": 5, "regularizers": (("early_dropout", 0.5), ("augment", 0.1))},
    ]
    runs = configs(settings, epochs=8)
    result = train_custom(mlp(), table(), runs)
    assert result.info is not None and result.states is not None
    assert {"stop_epoch", "best_epoch"} <= set(result.info[0])
    assert "stop_epoch" not in result.info[1]
    for key in ("0.weight", "3.weight", "6.weight"):
        norms = result.states[1][key].norm(dim=1)
        assert (norms <= 0.5 + 1e-5).all(), key
    assert_same_runs(mlp(), table(), runs)


def test_early_stopping_stops_and_restores_the_best_epoch() -> None:
    spec = DataSpec("table", validation=0.3)
    train = TrainSpec(epochs=30, batch_size=8, lr=0.03)  # overfits 28 rows within a few epochs
    runs = [
        RunConfig(spec, MODEL, train, p=0.0, seed=s, regularizers=(("early_stopping", 2.0),))
        for s in (1, 2, 3)
    ]
    source = Factory(lambda p: nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 3)))
    result = train_custom(source, table(n=40), runs)
    assert result.info is not None
    stops = [int(info["stop_epoch"]) for info in result.info]
    assert max(stops) < 30 and len(set(stops)) > 1  # runs of one batch stop at different epochs
    for i, info in enumerate(result.info):
        best, stop = int(info["best_epoch"]), stops[i]
        assert stop - best == 2 and "val_loss" in info and "val_acc" in info
        # after the stop, every epoch records the restored model: the best epoch's metrics
        curve = result.curves["test_loss"][i]
        np.testing.assert_allclose(curve[stop:], curve[best - 1], rtol=1e-12)
    assert_same_runs(source, table(n=40), runs)


def test_folds_of_different_sizes_train_and_match_alone() -> None:
    spec = DataSpec("table", folds=4)  # 90 rows: fit sizes 67 and 68
    runs = configs([{"p": 0.3, "seed": 1, "fold": f} for f in range(4)], epochs=2, data=spec)
    lines: list[str] = []
    result = train_custom(mlp(), table(), runs, log=lines.append)
    assert result.info is not None
    assert all("val_acc" in info for info in result.info)
    assert_same_runs(mlp(), table(), runs)


def test_memory_budget_splits_into_groups_with_the_same_results() -> None:
    runs = configs([{"p": p, "seed": s} for p, s in [(0.1, 0), (0.3, 1), (0.5, 2)]])
    lines: list[str] = []
    split = train_custom(mlp(), table(), runs, max_batch_memory=1, log=lines.append)
    whole = train_custom(mlp(), table(), runs, max_batch_memory=1 << 30)
    assert any("3 runs in 3 group(s) of at most 1" in line for line in lines), lines
    assert split.states is not None and whole.states is not None
    for a, b in zip(split.states, whole.states, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0)


def test_on_epoch_hears_every_epoch_once_and_states_keep_the_layout() -> None:
    heard: list[int] = []
    runs = configs([{"p": 0.3, "seed": 1}, {"p": 0.0, "seed": 2}], epochs=3)
    result = train_custom(mlp(), table(), runs, on_epoch=heard.append)
    assert heard == [1, 2, 3]
    assert result.states is not None
    assert list(result.states[0]) == list(mlp().build(0.3, 1).state_dict())
    assert result.curves["train_acc"].shape == (2, 3)


def test_one_batch_epochs_share_their_rows_and_equal_alone() -> None:
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], batch_size=128)
    assert_same_runs(mlp(), table(), runs)


def test_evaluation_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], epochs=2)
    whole = train_custom(mlp(), table(), runs)
    monkeypatch.setattr(vmapped, "EVAL_CHUNK", 7)  # 90 + 40 rows: 19 chunks of 7 and one of 4
    chunked = train_custom(mlp(), table(), runs)
    for name, curve in whole.curves.items():
        np.testing.assert_allclose(chunked.curves[name], curve, atol=1e-6, rtol=0)


def test_validation_metrics_are_those_of_the_final_weights() -> None:
    spec = DataSpec("table", validation=0.25)
    data = table()
    runs = configs([{"p": 0.3, "seed": 1}, {"p": 0.1, "seed": 2}], epochs=3, data=spec)
    result = train_custom(mlp(), data, runs)
    assert result.states is not None and result.info is not None
    _, val = validation_rows(data.y_train, spec, None)
    x, y = torch.from_numpy(data.x_train[val]), torch.from_numpy(data.y_train[val])
    for config, state, info in zip(runs, result.states, result.info, strict=True):
        model = mlp().build(config.p, config.seed)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        accuracy = (logits.argmax(1) == y).double().mean().item()
        assert info["val_acc"] == pytest.approx(accuracy, abs=1e-12)
        assert info["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_early_stopping_beside_folds_stops_on_fit_rows_and_equals_alone() -> None:
    """Early-stopping runs of each fold train on the fit rows they did not carve out to stop on
    (:func:`dropkit.lab.plan.splits.stopping_rows`) and report the fold's validation rows with
    their restored weights; they train apart from the fold's other runs (fewer fit rows), and
    in a batch as alone."""
    spec = DataSpec("table", folds=3)
    data = table()
    stopping = (("early_stopping", 1.0),)
    settings: list[dict[str, object]] = [
        {"p": 0.2, "seed": s, "fold": f, "regularizers": r}
        for f in (0, 1)
        for s, r in ((1, stopping), (2, stopping), (3, ()))
    ]
    runs = configs(settings, epochs=6, data=spec)
    result = train_custom(mlp(), data, runs)
    assert result.states is not None and result.info is not None
    for config, state, info, curve in zip(
        runs, result.states, result.info, result.curves["train_acc"], strict=True
    ):
        fit, stop, val = stopping_rows(data.y_train, spec, config.fold)
        if not config.regularizers:  # no early stopping: all of the fold's fit rows
            fit = np.union1d(fit, stop)
        model = mlp().build(config.p, config.seed)
        model.load_state_dict(state)
        model.eval()
        for rows, accuracy in ((fit, curve[-1]), (val, info["val_acc"])):
            with torch.no_grad():
                logits = model(torch.from_numpy(data.x_train[rows]))
            y = torch.from_numpy(data.y_train[rows])
            assert (logits.argmax(1) == y).double().mean().item() == pytest.approx(accuracy)
    assert_same_runs(mlp(), data, runs)


def test_adam_steps_parameters_laid_out_as_their_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # small gradients are copied into the parameter's layout (cheaper than a retrace)
    param = torch.zeros(2, 3, 4, requires_grad=True)
    small = torch.randn(2, 4, 3).transpose(1, 2)
    vmapped._DenseAdam({"w": param}, TrainSpec()).step({"w": small})
    assert param.is_contiguous()
    torch.testing.assert_close(param.detach(), -1e-3 * small.sign(), atol=1e-6, rtol=0)
    monkeypatch.setattr(vmapped, "RELAYOUT_BYTES", 0)  # from here on, every size moves
    torch.manual_seed(0)
    grad = torch.randn(2, 3, 4)
    transposed = grad.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major
    start = torch.randn(2, 3, 4)
    for given in (grad, transposed):
        param = start.clone().requires_grad_()
        adam = vmapped._DenseAdam({"w": param}, TrainSpec())
        adam.step({"w": given})
        # the parameter now has the gradient's layout, its values unchanged by the move
        assert param.stride() == given.stride() and param.grad is None
        # Adam's first step moves every weight by lr against the sign of its gradient
        torch.testing.assert_close(param.detach(), start - 1e-3 * grad.sign(), atol=1e-6, rtol=0)
        # a later gradient in another layout is copied into the parameter's
        other = grad.contiguous() if given is transposed else transposed
        reference = start.clone().requires_grad_()
        plain = make_adam([reference], TrainSpec())
        for g in (grad, other):
            reference.grad = g.clone(memory_format=torch.contiguous_format)
            plain.step()
        adam.step({"w": other})
        torch.testing.assert_close(param.detach(), reference.detach(), atol=0, rtol=0)
    # autograd's gradients (None: read from .grad) take the same path
    param = start.clone().requires_grad_()
    (param * grad).sum().backward()  # type: ignore[no-untyped-call]
    vmapped._DenseAdam({"w": param}, TrainSpec()).step(None)
    torch.testing.assert_close(param.detach(), start - 1e-3 * grad.sign(), atol=1e-6, rtol=0)


def failing_compile(function: Callable[..., object], **_options: object) -> Callable[..., object]:
    def fails(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("no kernels here")

    return fails


def test_a_step_that_fails_to_compile_trains_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], epochs=2)
    eager = train_custom(mlp(), table(), runs, compile=False)
    monkeypatch.setattr(vmapped.torch, "compile", failing_compile)
    lines: list[str] = []
    fallen = train_custom(mlp(), table(), runs, compile=True, log=lines.append)
    assert sum("torch.compile failed (RuntimeError: no kernels here)" in x for x in lines) == 1
    assert eager.states is not None and fallen.states is not None
    for a, b in zip(eager.states, fallen.states, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])


def small_cnn(p: float) -> nn.Module:
    # convolutions with few weights per output (unrolled when evaluating compiled), with and
    # without bias; BatchNorm (its running statistics updated inside the compiled step; no
    # bias before it, see bn_net); two dropout shapes
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Dropout2d(p), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Flatten(),
        nn.Dropout(p), nn.Linear(36, 3),
    )  # fmt: skip


def assert_compiled_equals_eager(
    source: Factory, data: Dataset, runs: list[RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = train_custom(source, data, runs, compile=False)
    monkeypatch.setattr(vmapped, "EVAL_CHUNK", 25)  # several chunks, the last one padded
    lines: list[str] = []
    compiled = train_custom(source, data, runs, compile=True, log=lines.append)
    assert any("compiling" in line for line in lines), lines
    assert not any("failed" in line or "run by run" in line for line in lines), lines
    assert eager.states is not None and compiled.states is not None
    assert eager.info is not None and compiled.info is not None
    for a, b in zip(eager.states, compiled.states, strict=True):
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=0)
    for name, curve in eager.curves.items():
        np.testing.assert_allclose(compiled.curves[name], curve, atol=1e-5, rtol=0)
    for a_info, b_info in zip(eager.info, compiled.info, strict=True):
        assert b_info.keys() == a_info.keys()
        for key, number in a_info.items():
            assert b_info[key] == pytest.approx(number, abs=1e-5)


@pytest.mark.slow
@needs_compiler
def test_compiled_cnn_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 rows in batches of 24: two full batches and a smaller one (eager: few epochs)
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], epochs=3, batch_size=24)
    assert_compiled_equals_eager(Factory(small_cnn), images(), runs, monkeypatch)


@pytest.mark.slow
@needs_compiler
def test_compiled_regression_with_validation_and_penalties_equals_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one batch per epoch (rows shared by the runs), L1/L2 in the compiled loss, max-norm after
    spec = DataSpec("table", task="regression", validation=0.25)
    settings: list[dict[str, object]] = [
        {"p": 0.2, "seed": 1, "regularizers": (("l1", 1e-3), ("l2", 1e-2))},
        {"p": 0.1, "seed": 2, "max_norm": 0.5, "input_p": 0.1},
    ]
    runs = configs(settings, epochs=4, batch_size=128, data=spec)
    assert_compiled_equals_eager(mlp(1), table("regression"), runs, monkeypatch)


# --- integer inputs and options ----------------------------------------------------------------


def tokens(n: int = 120, length: int = 6, vocab: int = 12) -> Dataset:
    """Token-id sequences (integer features): class 1 when token 3 occurs."""
    from dropkit.lab.plan.user_data import from_user_data

    rng = np.random.default_rng(5)
    x = rng.integers(0, vocab, size=(n, length))
    y = (x == 3).any(1).astype(np.int64)
    _, data = from_user_data((x, y), validation=0.0, name="tokens")
    return data


class Bag(nn.Module):
    """Token ids ``(N, T)`` int64 → an embedding bag with dropout → two logits."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: Tensor) -> Tensor:
        assert ids.dtype == torch.int64, ids.dtype
        out: Tensor = self.head(self.drop(self.embed(ids)).mean(1))
        return out


def test_integer_features_reach_a_model_as_int64_and_batch() -> None:
    data = tokens()
    assert data.integer_inputs and data.x_train.dtype == np.float32
    runs = configs(
        [{"p": 0.0, "seed": 1}, {"p": 0.3, "seed": 1}, {"p": 0.3, "seed": 2}],
        epochs=3,
        data=DataSpec("tokens"),
    )
    assert_same_runs(Factory(Bag), data, runs)


def test_integer_features_a_model_refuses_as_int64_reach_it_as_floats() -> None:
    data = tokens()
    lines: list[str] = []
    runs = configs([{"p": 0.2, "seed": 1}], epochs=2, data=DataSpec("tokens"))
    net = Factory(
        lambda p: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(p), nn.Linear(8, 2))
    )
    result = train_custom(net, data, runs, log=lines.append)
    assert any("integer inputs reach the model as float32: it refused int64" in x for x in lines)
    assert np.isfinite(result.curves["test_acc"]).all()


@pytest.mark.parametrize("compile", [False, True])
def test_compile_option_reaches_the_custom_model_trainer(compile: bool) -> None:
    from dropkit.lab.train.dispatch import train_configs

    if compile and not compiler_available():
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    lines: list[str] = []
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], epochs=1)
    train_configs(table(), runs, model=mlp(), compile=compile, log=lines.append)
    assert any("compiling" in line for line in lines) == compile, lines


def test_eval_every_measures_every_kth_epoch_and_the_last() -> None:
    runs = configs([{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}], epochs=7)
    every = train_custom(mlp(), table(), runs, eval_every=1)
    thinned = train_custom(mlp(), table(), runs, eval_every=3)
    measured = [2, 5, 6]  # 0-based epochs 3, 6 and the last
    for name, curve in thinned.curves.items():
        assert np.isfinite(curve[:, measured]).all()
        assert np.isnan(np.delete(curve, measured, axis=1)).all()
        # the same training: the measured points are those of a run measured every epoch
        np.testing.assert_array_equal(curve[:, measured], every.curves[name][:, measured])
    assert every.states is not None and thinned.states is not None
    for a, b in zip(every.states, thinned.states, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])
    with pytest.raises(ValueError, match="eval_every"):
        train_custom(mlp(), table(), runs, eval_every=0)


def test_early_stopping_runs_are_measured_every_epoch() -> None:
    runs = configs([{"p": 0.2, "seed": 1, "regularizers": (("early_stopping", 2.0),)}], epochs=6)
    result = train_custom(mlp(), table(), runs, eval_every=4)
    assert np.isfinite(result.curves["test_acc"]).all()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("train_s", "eval_s", "epochs", "every"),
    [
        (1.0, 0.05, 1000, 1),  # evaluating is cheap: every epoch
        (1.0, 0.35, 1000, 4),  # 0.35 / (0.1 * 1.0) -> every 4th
        (1.0, 5.0, 1000, 40),  # 5 / 0.1 = 50, capped at 1000 // 25 = 40 points' spacing
        (1.0, 5.0, 20, 1),  # a short training keeps every point
    ],
)
def test_the_automatic_curve_resolution_keeps_evaluation_a_small_share(
    monkeypatch: pytest.MonkeyPatch, train_s: float, eval_s: float, epochs: int, every: int
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(vmapped.time, "perf_counter", clock)
    schedule = vmapped._EvalSchedule(None, epochs)
    due = []
    for epoch in range(epochs):
        with schedule.training():
            clock.now += train_s * (20 if epoch == 0 else 1)  # the first epoch compiles
        due.append(schedule.due(epoch))
        if due[-1]:
            with schedule.evaluating():
                clock.now += eval_s
    assert schedule.every == every
    assert all(due[:3]) and due[-1]
    assert sum(due) == 3 + len([e for e in range(3, epochs - 1) if (e + 1) % every == 0]) + 1


class Tied(nn.Module):
    """Tied weights: the output layer is the embedding's transpose (as language models)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.drop = nn.Dropout(p)
        self.out = nn.Linear(8, 12, bias=False)
        self.out.weight = self.embed.weight
        self.head = nn.Linear(12, 2)

    def forward(self, ids: Tensor) -> Tensor:
        logits: Tensor = self.head(self.out(self.drop(self.embed(ids))).mean(1))
        return logits


def test_tied_weights_stay_tied_in_a_batch() -> None:
    data = tokens()
    runs = configs(
        [{"p": 0.0, "seed": 1}, {"p": 0.3, "seed": 2}], epochs=3, data=DataSpec("tokens")
    )
    assert_same_runs(Factory(Tied), data, runs)
    # and a batch computes the plain model: with a step too small to move a weight, the first
    # epoch's test loss is the untrained model's
    still = [
        RunConfig(
            DataSpec("tokens"), MODEL, TrainSpec(epochs=1, batch_size=16, lr=1e-30), p=0.0, seed=s
        )
        for s in (1, 2)
    ]
    result = train_custom(Factory(Tied), data, still)
    for r, config in enumerate(still):
        model = Factory(Tied).build(0.0, config.seed).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(data.x_test).long())
            loss = F.cross_entropy(logits, torch.from_numpy(data.y_test)).item()
        assert result.curves["test_loss"][r, 0] == pytest.approx(loss, rel=1e-5)


class Padded(nn.Module):
    """Token ids with a padding id (0): its embedding row never learns."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8, padding_idx=0)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(8, 2)

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.head(self.drop(self.embed(ids)).mean(1))
        return out


def test_an_embeddings_padding_row_stays_out_of_every_runs_gradient() -> None:
    data = tokens()
    runs = configs([{"p": 0.1, "seed": s} for s in (1, 2, 3)], epochs=2, data=DataSpec("tokens"))
    assert_same_runs(Factory(Padded), data, runs)
    result = train_custom(Factory(Padded), data, runs)
    assert result.states is not None
    for state, config in zip(result.states, runs, strict=True):
        start = Factory(Padded).build(config.p, config.seed).embed.weight
        assert torch.equal(state["embed.weight"][0], start[0].detach())  # zeros, untouched
        assert not torch.equal(state["embed.weight"][1:], start[1:].detach())


class SdpaAttention(nn.Module):
    """Attention that passes its dropout module's rate to torch's fused kernel (as timm's
    ``Attention`` does): the rate must stay a float, so its runs fall back, not fail."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 8)
        self.qkv = nn.Linear(8, 24)
        self.attn_drop = nn.Dropout(p)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.embed(x.unsqueeze(-1))).chunk(3, dim=-1)
        drop = self.attn_drop.p if self.training else 0.0
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out: Tensor = self.head(h.mean(1))
        return out


def test_a_dropout_rate_its_parent_applies_itself_falls_back_to_seeded_runs() -> None:
    lines: list[str] = []
    runs = configs([{"p": 0.3, "seed": 1}, {"p": 0.0, "seed": 2}], epochs=2)
    first = train_custom(Factory(SdpaAttention), table(), runs, log=lines.append)
    again = train_custom(Factory(SdpaAttention), table(), runs)
    said = [line for line in lines if "run by run" in line]
    assert len(said) == 1 and "attn_drop" in said[0] and "parent" in said[0], lines
    assert first.states is not None and again.states is not None
    for a, b in zip(first.states, again.states, strict=True):  # seeded: reproducible
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
