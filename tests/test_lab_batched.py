"""Batched training: masks, batched == alone, and a plain autograd loop as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dropkit.lab.plan.config import DataSpec, ModelSpec, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.train import stacked as B
from dropkit.lab.train.contract import METRICS, BatchResult, EpochTicker

Z = 5.0  # tolerances in standard errors, see test_statistics.py


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_dataset(DataSpec("wine"))


def _factors(
    seeds: list[int], rates: list[float], rows: int, width: int, epoch: int = 0, site: int = 1
) -> torch.Tensor:
    keys = B.mask_keys(seeds, epoch, site)
    return B.keep_factors(keys, B.unit_index(rows, width), *B.rate_tensors(rates))


class TestMasks:
    @pytest.mark.parametrize("p", [0.1, 0.4, 0.8])
    def test_drop_fraction_and_scale(self, p: float) -> None:
        factors = _factors([0, 1, 2, 3], [p] * 4, 250, 1000)
        n = factors.numel()
        fraction = (factors == 0).double().mean().item()
        # p is quantized to 2**-16; the binomial se over n draws bounds the rest.
        quantized = round(p * 65536) / 65536
        assert abs(fraction - quantized) < Z * math.sqrt(p * (1 - p) / n)
        values = factors.unique().tolist()
        assert values[0] == 0.0
        assert values[1:] == [pytest.approx(1 / (1 - p), rel=1e-6)]

    def test_rates_zero_and_one(self) -> None:
        factors = _factors([0, 1], [0.0, 1.0], 10, 10)
        assert torch.equal(factors[0], torch.ones(10, 10))
        assert torch.equal(factors[1], torch.zeros(10, 10))

    def test_hash_matches_exact_integer_arithmetic(self) -> None:
        """The int32 tensor hash (wrapping) equals the exact unsigned 32-bit Python one."""
        values = torch.randint(-(2**31), 2**31 - 1, (2000,), dtype=torch.int32)
        expected = [B._signed32(B._mix32_int(v)) for v in values.tolist()]
        assert B._mix32(values).tolist() == expected
        compiled = torch.compile(B._mix32, dynamic=False, fullgraph=True)
        assert compiled(values).tolist() == expected

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ((0, 0), (0, 1)),  # neighbouring units would be caught below; here: next epoch
            ((0, 0), (1, 0)),  # another seed, same epoch
        ],
    )
    def test_masks_independent_across_seeds_and_epochs(
        self, a: tuple[int, int], b: tuple[int, int]
    ) -> None:
        first = (_factors([a[0]], [0.5], 1000, 1000, epoch=a[1]) > 0).double().flatten()
        second = (_factors([b[0]], [0.5], 1000, 1000, epoch=b[1]) > 0).double().flatten()
        correlation = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
        assert abs(correlation) < Z / math.sqrt(first.numel())

    def test_neighbouring_units_independent(self) -> None:
        keep = (_factors([9], [0.5], 1000, 1000) > 0).double().flatten()
        for lag in (1, 2, 1000):  # along a row, next-but-one, and the next sample
            correlation = torch.corrcoef(torch.stack([keep[:-lag], keep[lag:]]))[0, 1].item()
            assert abs(correlation) < Z / math.sqrt(keep.numel())


def _final(result: BatchResult, run: int) -> dict[str, np.ndarray]:
    return {k: v[run] for k, v in result.curves.items()}


RUNS = [
    B.RunSettings(seed=3, p=0.4, input_p=0.2, max_norm=1.0),
    B.RunSettings(seed=5, p=0.0),
    B.RunSettings(seed=7, p=0.5),
]


@pytest.mark.parametrize("dataset", ["circles", "wine"])
def test_batched_run_equals_the_run_alone(dataset: str, request: pytest.FixtureRequest) -> None:
    """Same numbers to float rounding: each run draws from its own generator in the same order,
    and Adam is element-wise; only the BLAS summation order may differ between batch sizes."""
    data = request.getfixturevalue(dataset)
    model, train = ModelSpec(hidden=(16, 8)), TrainSpec(epochs=40, batch_size=16)
    together = B.train_batch(data, model, train, RUNS, compile=False)
    for index, run in enumerate(RUNS):
        alone = B.train_batch(data, model, train, [run], compile=False)
        for metric in METRICS:
            np.testing.assert_allclose(
                alone.curves[metric][0], together.curves[metric][index], rtol=0, atol=1e-5
            )


def _oracle(
    data: Dataset, model: ModelSpec, train: TrainSpec, run: B.RunSettings
) -> dict[str, list[float]]:
    """The same run written the plain way: autograd, torch.optim.Adam, the same random draws."""
    g = torch.Generator().manual_seed(run.seed)
    widths = [data.n_features, *model.hidden, 1 if data.n_classes == 2 else data.n_classes]
    weights, biases = B._init_weights(widths, [g])
    params = [
        t[0].clone().requires_grad_(True)
        for pair in zip(weights, biases, strict=True)
        for t in pair
    ]
    optimizer = torch.optim.Adam(params, lr=train.lr, betas=train.betas, eps=train.eps)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    n = x.shape[0]
    batch = min(train.batch_size, n)
    history: dict[str, list[float]] = {m: [] for m in METRICS}

    def forward(inputs: torch.Tensor, factors: list[torch.Tensor | None]) -> torch.Tensor:
        a = inputs if factors[0] is None else inputs * factors[0]
        for layer in range(len(widths) - 2):
            a = torch.relu(a @ params[2 * layer] + params[2 * layer + 1][0])
            if factors[layer + 1] is not None:
                a = a * factors[layer + 1]
        return a @ params[-2] + params[-1][0]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        if data.n_classes == 2:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits[:, 0], target.float(), reduction="mean" if reduce else "none"
            )
        return torch.nn.functional.cross_entropy(
            logits, target, reduction="mean" if reduce else "none"
        )

    for epoch in range(train.epochs):
        order = torch.randperm(n, generator=g) if batch < n else torch.arange(n)
        xe, ye = x[order], y[order]
        site_rates = [run.input_p] + [run.p] * len(model.hidden)
        factors = [
            _factors([run.seed], [rate], n, width, epoch=epoch, site=site)[0] if rate > 0 else None
            for site, (rate, width) in enumerate(zip(site_rates, widths[:-1], strict=True))
        ]
        for begin in range(0, n, batch):
            rows = slice(begin, begin + batch)
            optimizer.zero_grad()
            loss_fn(
                forward(xe[rows], [f if f is None else f[rows] for f in factors]), ye[rows]
            ).backward()
            optimizer.step()
            if run.max_norm is not None:
                with torch.no_grad():
                    for layer in range(len(widths) - 2):
                        w = params[2 * layer]  # (in, out): a unit's incoming weights are a column
                        w.mul_((run.max_norm / w.norm(dim=0, keepdim=True)).clamp(max=1.0))
        with torch.no_grad():
            for split, (xs, ys) in {"train": (x, y), "test": (xt, yt)}.items():
                logits = forward(xs, [None] * len(factors))
                predicted = (logits[:, 0] > 0).long() if data.n_classes == 2 else logits.argmax(-1)
                history[f"{split}_acc"].append((predicted == ys).float().mean().item())
                history[f"{split}_loss"].append(loss_fn(logits, ys, reduce=False).mean().item())
    return history


@pytest.mark.parametrize("dataset", ["circles", "wine"])
def test_matches_a_plain_autograd_loop(dataset: str, request: pytest.FixtureRequest) -> None:
    """The hand-written backward pass, stacked Adam and max-norm against autograd + torch.optim.

    Float32 tolerance: the two compute the same sums in different orders; over 25 epochs the
    losses agree to ~1e-6 relative, far below any real difference.
    """
    data = request.getfixturevalue(dataset)
    model, train = ModelSpec(hidden=(12, 6)), TrainSpec(epochs=25, batch_size=32)
    result = B.train_batch(data, model, train, RUNS, compile=False)
    for index, run in enumerate(RUNS):
        expected = _oracle(data, model, train, run)
        for metric in METRICS:
            np.testing.assert_allclose(
                result.curves[metric][index], expected[metric], rtol=1e-4, atol=1e-5, err_msg=metric
            )


def test_learns_the_case_study(circles: Dataset) -> None:
    """Without dropout, 500 hidden units fit the 30 training points within 1000 epochs."""
    result = B.train_batch(
        circles, ModelSpec(), TrainSpec(epochs=1000), [B.RunSettings(1)], compile=False
    )
    assert result.curves["train_acc"][0, -1] == 1.0
    assert result.curves["test_acc"][0, -1] > 0.65


@pytest.mark.slow
def test_compiled_equals_eager(circles: Dataset) -> None:
    model, train = ModelSpec(hidden=(32,)), TrainSpec(epochs=30)
    eager = B.train_batch(circles, model, train, RUNS, compile=False)
    compiled = B.train_batch(circles, model, train, RUNS, compile=True)
    for metric in METRICS:
        np.testing.assert_allclose(
            compiled.curves[metric], eager.curves[metric], rtol=1e-4, atol=1e-5
        )


def test_epoch_callback_and_shapes(circles: Dataset) -> None:
    seen: list[int] = []
    result = B.train_batch(
        circles,
        ModelSpec(hidden=(8,)),
        TrainSpec(epochs=7),
        RUNS,
        compile=False,
        on_epoch=seen.append,
    )
    assert seen == list(range(1, 8))
    assert all(v.shape == (3, 7) for v in result.curves.values())


class TestNoise:
    def test_normal_noise_is_standard_normal(self) -> None:
        keys = (B.mask_keys([0, 1], 0, 64), B.mask_keys([0, 1], 0, 65))
        z = B.normal_noise(keys, B.unit_index(500, 1000)).double()
        n = z.numel()
        # Standard errors of N(0, 1) draws: mean 1/sqrt(n), variance sqrt(2/n).
        assert abs(z.mean().item()) < Z / math.sqrt(n)
        assert abs(z.var().item() - 1.0) < Z * math.sqrt(2.0 / n)
        tail = (z.abs() > 2).double().mean().item()  # P(|z| > 2) = 0.0455
        assert abs(tail - 0.0455) < Z * math.sqrt(0.0455 * 0.9545 / n)
        # the two runs draw independent noise
        correlation = torch.corrcoef(z.view(2, -1))[0, 1].item()
        assert abs(correlation) < Z / math.sqrt(n / 2)

    def test_noise_depends_on_seed_epoch_and_site_only(self) -> None:
        index = B.unit_index(4, 5)
        draw = lambda seeds, epoch, site: B.normal_noise(  # noqa: E731
            (B.mask_keys(seeds, epoch, site), B.mask_keys(seeds, epoch, site + 1)), index
        )
        assert torch.equal(draw([7, 9], 3, 64)[1], draw([9], 3, 64)[0])  # batch-independent
        assert not torch.equal(draw([7], 3, 64), draw([7], 4, 64))
        assert not torch.equal(draw([7], 3, 64), draw([7], 3, 66))


def test_early_stopping_trains_on_the_split_and_validates_on_its_rows_only() -> None:
    """Early-stopping runs hold out exactly the rows of :func:`validation_split` (its own
    properties: tests/test_lab_trainers.py). With one batch per epoch, the run's ``train_*``
    and ``test_*`` curves are those of a plain run on the fit rows alone; and its best epoch is
    the lowest loss of that plain run measured on the held-out rows, not on the test set."""
    from dropkit.lab.plan.splits import validation_split

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3)).astype(np.float32)
    y = (x[:, 0] + 0.8 * rng.standard_normal(60) > 0).astype(np.int64)
    names = ("a", "b", "c")
    data = Dataset("toy", x[:30], y[:30], x[30:], y[30:], 2, names)
    fit, held = validation_split(data.y_train)
    xf, yf = x[:30][fit], y[:30][fit]
    on_fit = Dataset("toy", xf, yf, x[30:], y[30:], 2, names)
    on_held = Dataset("toy", xf, yf, x[:30][held], y[:30][held], 2, names)
    model, train = ModelSpec((32,)), TrainSpec(epochs=60, batch_size=64, lr=0.05)
    run, plain = B.RunSettings(4, patience=1000), B.RunSettings(4)
    stopping = B.train_batch(data, model, train, [run], compile=False)
    reference = B.train_batch(on_fit, model, train, [plain], compile=False)
    validation = B.train_batch(on_held, model, train, [plain], compile=False)
    for metric in METRICS:  # the last point is the restored best model: compare the others
        np.testing.assert_allclose(
            stopping.curves[metric][0, :-1], reference.curves[metric][0, :-1], atol=1e-6
        )
    assert stopping.info is not None
    best = int(stopping.info[0]["best_epoch"])
    assert best == int(np.argmin(validation.curves["test_loss"][0])) + 1
    test_best = int(np.argmin(reference.curves["test_loss"][0])) + 1
    assert 1 < best < 60 and best != test_best  # the test would tell them apart


def test_early_stopping_beside_a_validation_split_needs_rows_of_its_own(
    circles: Dataset,
) -> None:
    """With ``validation``, early-stopping runs need ``stopping`` (carved from the fit rows):
    the trainer never falls back to watching the validation rows."""
    from dropkit.lab.plan.config import DataSpec
    from dropkit.lab.plan.splits import stopping_rows, validation_rows

    spec = DataSpec("circles", validation=0.3)
    Rows = dict[int | None, tuple[np.ndarray, np.ndarray]]
    validation: Rows = {None: validation_rows(circles.y_train, spec, None)}
    model, train = ModelSpec((8,)), TrainSpec(epochs=3)
    runs = [B.RunSettings(0), B.RunSettings(1, patience=2)]
    with pytest.raises(ValueError, match=r"`stopping` must hold .* missing fold None"):
        B.train_batch(circles, model, train, runs, compile=False, validation=validation)
    fit, stop, _ = stopping_rows(circles.y_train, spec, None)
    stopping: Rows = {None: (fit, stop)}
    result = B.train_batch(
        circles, model, train, runs, compile=False, validation=validation, stopping=stopping
    )
    assert result.info is not None
    assert {"val_acc", "val_loss", "stop_epoch"} <= result.info[1].keys()


def test_epoch_ticker_reports_each_batch_epoch_once() -> None:
    seen: list[int] = []
    ticker = EpochTicker(runs=5, epochs=4, on_epoch=seen.append)
    first, second = ticker.part(3), ticker.part(2)
    for epoch in range(4):
        first(epoch + 1)
    assert seen == [1, 2]  # 12 of 20 run-epochs
    second(1)
    assert seen == [1, 2]  # 14 of 20
    second(2)
    assert seen == [1, 2, 3]  # 16 of 20
    ticker.finish()  # the second part stopped early
    assert seen == [1, 2, 3, 4]


def test_every_epoch_is_reported_once_when_early_stopping_ends_a_batch(circles: Dataset) -> None:
    """All runs stop long before the last epoch: the remaining epochs are still reported."""
    seen: list[int] = []
    runs = [B.RunSettings(0, patience=1), B.RunSettings(1, patience=1)]
    result = B.train_batch(
        circles, ModelSpec((8,)), TrainSpec(epochs=300), runs, compile=False, on_epoch=seen.append
    )
    assert result.info is not None and all(i["stop_epoch"] < 300 for i in result.info)
    assert seen == list(range(1, 301))


@pytest.mark.slow
def test_compiled_equals_eager_with_every_knob(circles: Dataset) -> None:
    """Penalties, jitter, hidden noise, a dropout schedule and early stopping, compiled."""
    runs = [
        B.RunSettings(1, p=0.3, l1=1e-3, l2=1e-2, dropout_epochs=(0, 10)),
        B.RunSettings(2, augment=0.2, noise=0.3, max_norm=2.0),
        B.RunSettings(3, p=0.2, dropout_epochs=(10, 20), patience=4),
    ]
    model, train = ModelSpec(hidden=(16,)), TrainSpec(epochs=20)
    eager = B.train_batch(circles, model, train, runs, compile=False)
    compiled = B.train_batch(circles, model, train, runs, compile=True)
    assert compiled.info == eager.info
    for metric in METRICS:
        np.testing.assert_allclose(
            compiled.curves[metric], eager.curves[metric], rtol=1e-4, atol=1e-5
        )
