"""CUDA: dropkit's ops on a GPU dispatch to PyTorch's fused kernels with the same semantics,
and the lab's trainers train on ``device="cuda"`` what they train on the CPU.

Run with ``python3 -m pytest -m cuda`` on a machine with a GPU (``benchmarks/cuda_check.sh``);
skipped where CUDA is absent.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
import dropkit.functional as DF
from dropkit.lab.execute.engines import BatchJob, InProcessEngine
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.plan.user_model import model_source
from dropkit.lab.train.contract import BatchResult
from dropkit.lab.train.dispatch import resolve_device, train_configs
from dropkit.lab.train.stacked import (
    keep_factors,
    mask_keys,
    normal_noise,
    rate_tensors,
    unit_index,
)
from helpers import check_dropout_layer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]

CUDA = "cuda"


def _saved_bytes(fn: object, x: torch.Tensor) -> int:
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)  # type: ignore[operator]
    return sum(sizes)


def test_cuda_uses_torchs_kernels() -> None:
    assert DF.mask_source(torch.device(CUDA)) == "torch"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dropout_is_torchs_fused_dropout(dtype: torch.dtype) -> None:
    """Same seed: the same output and gradient as torch.nn.functional.dropout on a GPU."""
    x = torch.randn(256, 1000, device=CUDA, dtype=dtype)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(7)
    ours = DF.dropout(a, 0.3)
    torch.manual_seed(7)
    theirs = F.dropout(b, 0.3)
    assert ours.dtype == dtype and torch.equal(ours, theirs)
    g = torch.randn_like(x)
    ours.backward(g)
    theirs.backward(g)
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_exact_edges(p: float) -> None:
    x = torch.randn(64, 64, device=CUDA)
    x[0, 0] = float("inf")
    x.requires_grad_(True)
    y = DF.dropout(x, p)
    if p == 0.0:
        assert y is x
        return
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_save_mask_false_saves_nothing_and_replays_the_mask() -> None:
    x = (torch.rand(512, 300, device=CUDA) + 0.5).requires_grad_(True)
    assert _saved_bytes(lambda v: DF.dropout(v, 0.3, save_mask=False), x) == 0
    assert _saved_bytes(lambda v: DF.dropout(v, 0.3), x) == x.numel()  # the fused kernel's mask
    y = DF.dropout(x, 0.3, save_mask=False)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad * x.detach(), y.detach())
    assert torch.equal(x.grad == 0, y.detach() == 0)


def test_generator_on_cuda() -> None:
    x = torch.rand(128, 100, device=CUDA) + 0.5

    def run(seed: int) -> torch.Tensor:
        return DF.dropout(x, 0.5, generator=torch.Generator(device=CUDA).manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_layouts_kept() -> None:
    x = torch.randn(4, 6, 8, 10, device=CUDA).to(memory_format=torch.channels_last)
    for y in (DF.dropout(x, 0.3), DF.alpha_dropout(x, 0.3), DF.spatial_dropout(x, 0.3)):
        assert y.stride() == x.stride()
    permuted = torch.randn(8, 10, 4, 6, device=CUDA).permute(2, 3, 0, 1)
    assert DF.dropout(permuted, 0.3).stride() == permuted.stride()


def test_every_op_on_cuda() -> None:
    x = torch.rand(4, 6, 10, 10, device=CUDA) + 0.5
    for fn in (
        lambda v: DF.dropout(v, 0.5),
        lambda v: DF.dropout(v, 0.5, scaling="classic"),
        lambda v: DF.spatial_dropout(v, 0.5),
        lambda v: DF.locked_dropout(v[..., 0], 0.5),
        lambda v: DF.drop_path(v, 0.5),
        lambda v: DF.gaussian_dropout(v, 0.5),
        lambda v: DF.alpha_dropout(v, 0.5),
        lambda v: DF.feature_alpha_dropout(v, 0.5),
        lambda v: DF.drop_block(v, 0.3, block_size=3),
        lambda v: DF.drop_connect(v, 0.5),
    ):
        leaf = x.clone().requires_grad_(True)
        y = fn(leaf)
        y.sum().backward()
        assert y.device.type == CUDA and y.shape[0] == 4 and torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("cls", "shape"),
    [
        (dropkit.Dropout, (6, 5, 4)),
        (dropkit.SpatialDropout2d, (6, 5, 4, 3)),
        (dropkit.AlphaDropout, (6, 5, 4)),
    ],
)
def test_layer_modes_on_cuda(cls: type[torch.nn.Module], shape: tuple[int, ...]) -> None:
    layer = cls(0.3).to(CUDA)
    x = torch.randn(shape, device=CUDA)
    assert layer(x).device.type == CUDA
    assert layer.eval()(x) is x
    check_dropout_layer(cls, shape)  # the CPU contract still holds beside the GPU


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True)])
def test_variational_lstm_on_cuda_keeps_one_cudnn_buffer(layers: int, bidirectional: bool) -> None:
    """After ``.cuda()`` (and a deep copy) the weights are views into one cuDNN buffer, as
    ``torch.nn.LSTM.flatten_parameters`` makes them: no per-call copy and no warning (the
    suite turns warnings into errors), and eval output equal to ``torch.nn.LSTM``'s."""
    ours = dropkit.LSTM(5, 7, layers, dropout=0.3, bidirectional=bidirectional).cuda()
    theirs = nn.LSTM(5, 7, layers, batch_first=True, bidirectional=bidirectional).cuda()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 9, 5, device=CUDA)
    for module in (ours, copy.deepcopy(ours)):
        storages = {w.untyped_storage().data_ptr() for w in module.parameters()}
        assert len(storages) == 1
        torch.testing.assert_close(module.eval()(x)[0], theirs.eval()(x)[0])
        out, _ = module.train()(x)  # masks between layers: per-layer cuDNN calls
        out.sum().backward()
        assert torch.isfinite(out).all()


def test_compiled_dropout_on_cuda() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(lambda v: DF.dropout(v, 0.3), fullgraph=True)
    x = (torch.rand(256, 512, device=CUDA) + 0.5).requires_grad_(True)
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad * x.detach(), y.detach())
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.02


# --- the lab's trainers on CUDA ---------------------------------------------------------------
#
# The stacked trainer draws initial weights and data orders on the CPU and its masks and noise
# from a counter-based hash that gives the same integers on any device, so on CUDA it computes
# the CPU's numbers up to float rounding (other kernels sum in another order). So does the
# generic loop without random regularizers (its masks come from a CUDA generator). Rounding
# differences of ~1e-7 per operation grow over tens of Adam steps to ~1e-5 in the losses;
# the tolerances below leave a factor of 10 (losses) and let an accuracy differ by at most two
# samples (a sample on the decision boundary may fall either side).

LOSS_RTOL, LOSS_ATOL = 1e-3, 1e-4


def _close_to_cpu(gpu: BatchResult, cpu: BatchResult, data: Dataset) -> None:
    _assert_close(gpu, cpu, data)
    assert gpu.states is not None and cpu.states is not None
    for mine, theirs in zip(gpu.states, cpu.states, strict=True):
        for key, value in mine.items():
            assert value.device.type == "cpu", key
            torch.testing.assert_close(value, theirs[key], rtol=1e-2, atol=1e-3)


def _assert_close(mine: BatchResult, theirs: BatchResult, data: Dataset) -> None:
    """Curves equal to float rounding: losses within LOSS_RTOL/LOSS_ATOL, accuracies within
    two samples of the smaller split."""
    n = min(len(data.y_train), len(data.y_test))
    for name, values in theirs.curves.items():
        assert mine.curves[name].shape == values.shape
        if name.endswith("_acc"):
            assert np.abs(mine.curves[name] - values).max() <= 2 / n + 1e-6, name
        else:
            np.testing.assert_allclose(
                mine.curves[name], values, rtol=LOSS_RTOL, atol=LOSS_ATOL, err_msg=name
            )


def _lab_configs(
    spec: DataSpec, arms: list[dict[str, Any]], *, epochs: int = 20, p: float = 0.3
) -> list[RunConfig]:
    return [
        RunConfig(
            spec,
            ModelSpec((16,)),
            TrainSpec(epochs=epochs, batch_size=16, lr=1e-2),
            p=p,
            seed=seed,
            **fields,
        )
        for fields in arms
        for seed in range(2)
    ]


STACKED_ARMS: list[dict[str, Any]] = [
    {},
    {"max_norm": 1.0, "input_p": 0.1},
    {"regularizers": (("l2", 1e-3),)},
    {"regularizers": (("augment", 0.1),)},
    {"regularizers": (("gaussian_noise", 0.1),)},
    {"regularizers": (("early_dropout", 0.5),)},
]


def test_lab_auto_device_is_cuda() -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_stacked_masks_and_noise_are_the_cpus() -> None:
    def draw(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        seeds, rates = [0, 7, 123], [0.0, 0.3, 0.5]
        keys = mask_keys(seeds, 5, 1, device=device)
        index = unit_index(9, 11, device=device)
        factors = keep_factors(keys, index, *rate_tensors(rates, device=device))
        noise = normal_noise((keys, mask_keys(seeds, 5, 2, device=device)), index)
        return factors.cpu(), noise.cpu()

    (cpu_factors, cpu_noise), (factors, noise) = draw(torch.device("cpu")), draw(torch.device(CUDA))
    assert torch.equal(factors, cpu_factors)  # the same integers, hence the same masks
    torch.testing.assert_close(noise, cpu_noise, rtol=1e-5, atol=1e-5)  # log and cos round


@pytest.mark.parametrize("compile", [False, None])
def test_stacked_sweep_on_cuda_matches_the_cpu(compile: bool | None) -> None:
    """``compile=None`` compiles the step with Triton where it is installed."""
    spec = DataSpec("moons")
    data = load_dataset(spec)
    configs = _lab_configs(spec, STACKED_ARMS)
    cpu = train_configs(data, configs, compile=False, trainer="stacked", device="cpu")
    gpu = train_configs(data, configs, compile=compile, trainer="stacked", device="cuda")
    _close_to_cpu(gpu, cpu, data)


def test_stacked_validation_and_early_stopping_on_cuda() -> None:
    spec = DataSpec("moons", validation=0.25)
    data = load_dataset(spec)
    configs = _lab_configs(spec, [{}, {"regularizers": (("early_stopping", 3.0),)}])
    cpu = train_configs(data, configs, compile=False, trainer="stacked", device="cpu")
    gpu = train_configs(data, configs, compile=False, trainer="stacked", device="cuda")
    assert gpu.info is not None and cpu.info is not None
    for mine, theirs in zip(gpu.info, cpu.info, strict=True):
        assert mine.keys() == theirs.keys() and {"val_acc", "val_loss"} <= mine.keys()
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-2, abs=LOSS_ATOL)


def test_loop_on_cuda_without_masks_matches_the_cpu() -> None:
    spec = DataSpec("moons")
    data = load_dataset(spec)
    arms: list[dict[str, Any]] = [
        {},
        {"max_norm": 1.0},
        {"regularizers": (("l1", 1e-3),)},
    ]
    configs = _lab_configs(spec, arms, p=0.0)
    cpu = train_configs(data, configs, trainer="loop", device="cpu")
    gpu = train_configs(data, configs, trainer="loop", device="cuda")
    _close_to_cpu(gpu, cpu, data)


def test_loop_with_batchnorm_on_cuda_classifies_as_on_the_cpu() -> None:
    """The bias of the layer before BatchNorm gets a gradient that is zero in exact arithmetic,
    so what it gets is rounding noise, which Adam scales to steps of size ``lr``; the running
    mean follows that bias, so evaluation-mode losses differ at the 0.1-1% level between any
    two summation orders (on the CPU, 1 thread against 2 already moves a test accuracy by two
    samples). So the runs are compared as two trainings of one model: both learn, and their
    final accuracies agree within two binomial standard errors, sqrt(a(1 - a) / n)."""
    spec = DataSpec("moons")
    data = load_dataset(spec)
    configs = _lab_configs(spec, [{"regularizers": (("batchnorm", 1.0),)}], p=0.0)
    cpu = train_configs(data, configs, trainer="loop", device="cpu")
    gpu = train_configs(data, configs, trainer="loop", device="cuda")
    assert all(np.isfinite(values).all() for values in gpu.curves.values())
    assert (gpu.curves["train_loss"][:, -1] < gpu.curves["train_loss"][:, 0]).all()
    for name, n in (("train_acc", len(data.y_train)), ("test_acc", len(data.y_test))):
        ours, theirs = gpu.curves[name][:, -1], cpu.curves[name][:, -1]
        spread = np.sqrt(theirs * (1 - theirs) / n)
        assert (np.abs(ours - theirs) <= 2 * spread + 1e-6).all(), name


def test_loop_on_cuda_draws_reproducible_masks_on_the_device() -> None:
    """Masks, noise and augmentation from a CUDA generator seeded with the run's seed."""
    cases = [
        (DataSpec("moons"), ModelSpec((16,)), ("augment", 0.1)),
        (DataSpec("moons"), ModelSpec((16,)), ("concrete", 1e-3)),
        (DataSpec("moons"), ModelSpec((16,)), ("gaussian_noise", 0.1)),
        (DataSpec("digits"), ModelSpec((4,), kind="cnn"), ("augment", 1.0)),
        (DataSpec("digits"), ModelSpec((4,), kind="cnn"), ("dropblock", 2.0)),
        (DataSpec("sequence"), ModelSpec((8,), kind="rnn"), ("variational", 1.0)),
        (DataSpec("sequence"), ModelSpec((8,), kind="rnn"), ("recurrent_dropout", 1.0)),
    ]
    for spec, model, arm in cases:
        data = load_dataset(spec)
        train = TrainSpec(epochs=2, batch_size=32)
        configs = [
            RunConfig(spec, model, train, p=0.4, seed=seed, regularizers=(arm,))
            for seed in range(2)
        ]
        first = train_configs(data, configs, trainer="loop", device="cuda")
        again = train_configs(data, configs, trainer="loop", device="cuda")
        # The same masks from the same seeded CUDA generators; some CUDA backward kernels
        # (max-pooling's, cuDNN's convolutions) add in a nondeterministic order, so the two
        # agree to float rounding rather than bit for bit.
        assert all(np.isfinite(values).all() for values in first.curves.values()), arm
        _assert_close(again, first, data)
        assert first.states is not None
        assert {t.device.type for s in first.states for t in s.values()} == {"cpu"}


def test_regression_on_cuda_matches_the_cpu() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4)).astype(np.float32)
    y = (x @ np.array([1.5, -1.0, 0.5, 1.0]) + 0.1 * rng.standard_normal(120)).astype(np.float32)
    names = ("a", "b", "c", "d")
    data = Dataset("linear", x[:90], y[:90], x[90:], y[90:], 0, names, task="regression")
    spec = DataSpec("linear", task="regression", validation=0.2)
    configs = _lab_configs(spec, [{}, {"regularizers": (("l2", 1e-3),)}], p=0.0)
    cpu = train_configs(data, configs, device="cpu")
    gpu = train_configs(data, configs, device="cuda")
    for name, values in cpu.curves.items():  # R² and MSE: no counts, all within tolerance
        np.testing.assert_allclose(gpu.curves[name], values, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    assert gpu.info is not None and cpu.info is not None
    for mine, theirs in zip(gpu.info, cpu.info, strict=True):
        assert mine.keys() == theirs.keys() and "val_rmse" in mine
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, rel=LOSS_RTOL, abs=LOSS_ATOL), key


def test_in_process_engine_on_cuda() -> None:
    spec = DataSpec("circles")
    data = load_dataset(spec)
    configs = tuple(_lab_configs(spec, [{}]))
    engine = InProcessEngine(compile=False, device="cuda")
    (result,) = [r for _, r in engine.run_batches([BatchJob(data, configs)])]
    assert isinstance(result, BatchResult)
    _close_to_cpu(result, train_configs(data, configs, compile=False, device="cpu"), data)


def test_custom_model_on_cuda_matches_the_cpu() -> None:
    """Counter-based masks are the same integers on any device (dropkit.lab.train.counter_masks)."""
    source = model_source(
        lambda p: nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))
    )
    spec = DataSpec("moons")
    data = load_dataset(spec)
    configs = [
        RunConfig(spec, source.spec, TrainSpec(epochs=10, batch_size=16, lr=1e-2), p=p, seed=s)
        for p in (0.0, 0.3)
        for s in range(2)
    ]
    cpu = train_configs(data, configs, model=source, device="cpu")
    gpu = train_configs(data, configs, model=source, device="cuda")
    _close_to_cpu(gpu, cpu, data)
