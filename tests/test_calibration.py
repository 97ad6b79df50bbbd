"""dropkit.calibration against independent references: scikit-learn, torch, torchmetrics and
loops written here from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

import dropkit
from dropkit import calibration as cal

TOL = 1e-6
SEEDS = (0, 1, 2)
CASES = [(c, n) for c in (2, 3, 10) for n in (1, 2, 7, 100, 1000)]


def _random(seed: int, c: int, n: int, *, sharp: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """float64 softmax probabilities (N, C) and labels drawn from them (so partly calibrated)."""
    rng = np.random.default_rng(seed)
    logits = sharp * rng.standard_normal((n, c))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in probs])
    return probs, labels


def _edge_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probs (N, C), labels): exact 0s and 1s, uniform rows, one class, one row, ties."""
    eye = np.eye(3)
    return [
        ("perfect and right", eye[[0, 1, 2, 1]], np.array([0, 1, 2, 1])),
        ("perfect and wrong", eye[[0, 1, 2, 1]], np.array([1, 2, 0, 0])),
        ("uniform", np.full((5, 4), 0.25), np.array([0, 1, 2, 3, 3])),
        ("all one class", _random(3, 3, 20)[0], np.zeros(20, dtype=np.int64)),
        ("single row", np.array([[0.2, 0.5, 0.3]]), np.array([2])),
        ("zeros and ones", np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]), np.array([0, 0, 1])),
        (
            "tied confidences",
            np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2], [0.4, 0.6]]),
            np.array([1, 1, 0, 0, 0]),
        ),
        (
            "on the bin edges",
            np.array([[0.2, 0.2, 0.6], [0.4, 0.6, 0.0], [0.0, 0.0, 1.0]]),
            np.array([2, 0, 2]),
        ),
    ]


def _all_inputs() -> list[tuple[np.ndarray, np.ndarray]]:
    inputs = [_random(seed, c, n) for seed in SEEDS for c, n in CASES]
    return inputs + [(p, y) for _, p, y in _edge_cases()]


# -- references written from the definitions, with explicit loops ------------------------------


def _top(probs: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    conf, correct = [], []
    for row, label in zip(probs.tolist(), labels.tolist(), strict=True):
        best = 0
        for c in range(1, len(row)):
            if row[c] > row[best]:  # the first of equal maxima
                best = c
        conf.append(row[best])
        correct.append(1.0 if best == label else 0.0)
    return conf, correct


def _ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int, adaptive: bool) -> float:
    conf, correct = _top(probs, labels)
    n = len(conf)
    if adaptive:
        order = sorted(range(n), key=lambda i: conf[i])  # Python's sort is stable
        bins: list[list[int]] = []
        start = 0
        for b in range(n_bins):
            size = n // n_bins + (1 if b < n % n_bins else 0)
            bins.append(order[start : start + size])
            start += size
    else:
        bins = [[] for _ in range(n_bins)]
        for i, c in enumerate(conf):
            for b in range(n_bins):
                lo, hi = b / n_bins, (b + 1) / n_bins
                if lo < c <= hi or (b == 0 and c == 0.0):
                    bins[b].append(i)
                    break
    total = 0.0
    for members in bins:
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            total += len(members) / n * abs(acc - mean_conf)
    return total


def _ranked_errors_reference(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    conf, correct = _top(probs, labels)
    order = sorted(range(len(conf)), key=lambda i: -conf[i])  # stable: ties by index
    return [1.0 - correct[i] for i in order]


def _aurc_reference(probs: np.ndarray, labels: np.ndarray) -> float:
    errors = _ranked_errors_reference(probs, labels)
    rates = []
    for k in range(1, len(errors) + 1):
        rates.append(sum(errors[:k]) / k)
    return sum(rates) / len(rates)


# -- nll ------------------------------------------------------------------------------------------


def test_nll_matches_sklearn_log_loss() -> None:
    for probs, labels in _all_inputs():
        c = probs.shape[1]
        expected = log_loss(labels, probs, labels=list(range(c)))
        assert cal.nll(torch.from_numpy(probs), torch.from_numpy(labels)) == pytest.approx(
            expected, abs=TOL
        )
        assert cal.nll(probs, labels) == pytest.approx(expected, abs=TOL)  # NumPy in


def test_nll_binary_form_matches_sklearn() -> None:
    for seed in SEEDS:
        probs, labels = _random(seed, 2, 50)
        positive = probs[:, 1]
        expected = log_loss(labels, positive, labels=[0, 1])
        assert cal.nll(positive, labels) == pytest.approx(expected, abs=TOL)
        assert cal.nll(positive, labels) == pytest.approx(cal.nll(probs, labels), abs=TOL)


def test_nll_of_a_zero_probability_is_large_but_finite() -> None:
    probs, labels = np.array([[1.0, 0.0]]), np.array([1])
    assert cal.nll(probs, labels) == pytest.approx(-math.log(np.finfo(np.float64).eps))
    float32 = torch.tensor([[1.0, 0.0]])
    assert cal.nll(float32, torch.tensor([1])) == pytest.approx(
        -math.log(torch.finfo(torch.float32).eps)
    )


# -- brier ----------------------------------------------------------------------------------------


def test_binary_brier_matches_sklearn() -> None:
    for seed in SEEDS:
        for n in (1, 2, 100, 1000):
            probs, labels = _random(seed, 2, n)
            positive = probs[:, 1]
            expected = brier_score_loss(labels, positive, labels=[0, 1])
            assert cal.brier_score(positive, labels) == pytest.approx(expected, abs=TOL)
            # the (N, 2) form is Brier's two-class sum: twice the positive-class score
            assert cal.brier_score(probs, labels) == pytest.approx(2 * expected, abs=TOL)
    edges = np.array([0.0, 1.0, 1.0, 0.0, 0.5])
    truth = np.array([0, 1, 0, 1, 1])
    assert cal.brier_score(edges, truth) == pytest.approx(brier_score_loss(truth, edges), abs=TOL)


def test_multiclass_brier_matches_the_formula() -> None:
    for probs, labels in _all_inputs():
        onehot = np.eye(probs.shape[1])[labels]
        expected = np.mean(np.sum((probs - onehot) ** 2, axis=1))
        assert cal.brier_score(torch.from_numpy(probs), labels) == pytest.approx(expected, abs=TOL)


# -- ece and reliability bins ----------------------------------------------------------------------


@pytest.mark.parametrize("binning", ["equal_width", "adaptive"])
def test_ece_matches_a_loop_reference(binning: str) -> None:
    for probs, labels in _all_inputs():
        for n_bins in (1, 5, 15, 40):
            expected = _ece_reference(probs, labels, n_bins, adaptive=binning == "adaptive")
            got = cal.ece(torch.from_numpy(probs), torch.from_numpy(labels), n_bins, binning)
            assert got == pytest.approx(expected, abs=TOL), (probs.shape, n_bins)


def test_ece_binary_form_is_the_two_column_form() -> None:
    probs, labels = _random(4, 2, 300)
    for binning in cal.BINNINGS:
        assert cal.ece(probs[:, 1], labels, 10, binning) == pytest.approx(
            cal.ece(probs, labels, 10, binning), abs=TOL
        )


def test_ece_matches_torchmetrics() -> None:
    functional = pytest.importorskip("torchmetrics.functional.classification")
    for seed in SEEDS:
        for c in (2, 3, 10):
            for n in (1, 50, 1000):
                probs, labels = _random(seed, c, n)
                # float32 in (torchmetrics computes in float32), so both see the same numbers;
                # random confidences fall on no bin edge, where torchmetrics uses [lo, hi)
                p32 = torch.from_numpy(probs).float()
                y = torch.from_numpy(labels)
                expected = functional.multiclass_calibration_error(
                    p32, y, num_classes=c, n_bins=15, norm="l1"
                )
                assert cal.ece(p32, y, 15) == pytest.approx(float(expected), abs=TOL)


def test_ece_edge_values() -> None:
    eye = np.eye(3)
    assert cal.ece(eye, np.array([0, 1, 2])) == 0.0  # certain and right
    assert cal.ece(eye, np.array([1, 2, 0])) == 1.0  # certain and wrong
    # uniform rows over 4 classes: confidence 1/4, the prediction is class 0
    assert cal.ece(np.full((4, 4), 0.25), np.array([0, 0, 1, 2])) == pytest.approx(0.25)


def test_reliability_bins() -> None:
    probs = np.array([[0.0, 1.0], [0.7, 0.3], [0.5, 0.5], [0.45, 0.55]])
    labels = np.array([1, 1, 0, 0])
    bins = cal.reliability_bins(probs, labels, n_bins=4)
    # confidences 1.0, 0.7, 0.5, 0.55: 0.5 sits on an edge and goes to the bin (0.25, 0.5]
    assert bins.counts.tolist() == [0, 1, 2, 1]
    assert bins.confidence[1:].tolist() == pytest.approx([0.5, 0.625, 1.0])
    assert bins.accuracy[1:].tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert torch.isnan(bins.confidence[0]) and torch.isnan(bins.accuracy[0])
    adaptive = cal.reliability_bins(probs, labels, n_bins=3, binning="adaptive")
    assert adaptive.counts.tolist() == [2, 1, 1]  # 4 rows: sizes 2, 1, 1
    assert adaptive.confidence.tolist() == pytest.approx([0.525, 0.7, 1.0])
    many = cal.reliability_bins(probs, labels, n_bins=6, binning="adaptive")
    assert many.counts.tolist() == [1, 1, 1, 1, 0, 0]
    assert int(cal.reliability_bins(*_random(0, 3, 1000), 15).counts.sum()) == 1000


# -- regression -----------------------------------------------------------------------------------


def test_gaussian_nll_matches_torch() -> None:
    for seed in SEEDS:
        g = torch.Generator().manual_seed(seed)
        for shape in ((1,), (7,), (1000,), (20, 3)):
            mean = torch.randn(shape, generator=g, dtype=torch.float64)
            targets = mean + torch.randn(shape, generator=g, dtype=torch.float64)
            # variances above torch's clamp at 1e-6, which this metric does not apply
            var = torch.rand(shape, generator=g, dtype=torch.float64) * 3 + 1e-3
            expected = torch.nn.functional.gaussian_nll_loss(mean, targets, var, full=True)
            assert cal.gaussian_nll(mean, var, targets) == pytest.approx(float(expected), abs=TOL)
            assert cal.gaussian_nll(mean.numpy(), var.numpy(), targets.numpy()) == pytest.approx(
                float(expected), abs=TOL
            )


def test_interval_coverage_on_draws_from_the_stated_normal() -> None:
    # n = 20_000 draws from N(μ, σ²): the covered count is Binomial(n, level), so the share has
    # standard error sqrt(level (1 - level) / n), 0.0015 at level 0.95 and at most 0.0036
    # (level 0.5); 4 standard errors leave a chance of about 6e-5 of a false failure, and the
    # fixed seed makes the test deterministic besides.
    n = 20_000
    g = torch.Generator().manual_seed(11)
    mean = torch.randn(n, generator=g, dtype=torch.float64) * 5
    std = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.1
    targets = mean + std * torch.randn(n, generator=g, dtype=torch.float64)
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        tolerance = 4 * math.sqrt(level * (1 - level) / n)
        assert abs(cal.interval_coverage(mean, std, targets, level) - level) < tolerance, level


def test_interval_coverage_ends_are_inside() -> None:
    z = 1.959963984540054  # norm.ppf(0.975)
    mean, std = np.zeros(4), np.ones(4)
    targets = np.array([0.0, z * (1 - 1e-12), -z * (1 - 1e-12), 3.0])
    assert cal.interval_coverage(mean, std, targets) == 0.75


# -- selective classification -----------------------------------------------------------------------


def test_aurc_and_selective_accuracy_match_a_loop_reference() -> None:
    for probs, labels in _all_inputs():
        assert cal.aurc(probs, labels) == pytest.approx(_aurc_reference(probs, labels), abs=TOL)
        errors = _ranked_errors_reference(probs, labels)
        n = len(errors)
        for coverage in (0.1, 0.25, 0.5, 0.7, 1.0):
            k = max(1, math.ceil(round(coverage * n, 9)))
            expected = 1 - sum(errors[:k]) / k
            got = cal.selective_accuracy(probs, labels, coverage)
            assert got == pytest.approx(expected, abs=TOL), (n, coverage)


def test_selective_accuracy_at_full_coverage_is_accuracy() -> None:
    for probs, labels in _all_inputs():
        accuracy = float(np.mean(probs.argmax(axis=1) == labels))
        assert cal.selective_accuracy(probs, labels, 1.0) == pytest.approx(accuracy, abs=TOL)


def test_ties_in_confidence_are_ranked_by_index() -> None:
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1]])
    # ranked: row 2 (right), then row 0 (wrong) before row 1 (right)
    labels = np.array([1, 0, 0])
    assert cal.selective_accuracy(probs, labels, 2 / 3) == 0.5
    assert cal.aurc(probs, labels) == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)


# -- the package -------------------------------------------------------------------------------------


def test_the_module_is_reachable_from_the_package() -> None:
    assert dropkit.calibration is cal
    assert "calibration" in dropkit.__all__


def test_tensors_on_any_float_dtype_give_floats() -> None:
    probs = torch.tensor([[0.25, 0.75], [0.9, 0.1]], dtype=torch.float32)
    labels = torch.tensor([1, 1])
    for value in (
        cal.nll(probs, labels),
        cal.brier_score(probs, labels),
        cal.ece(probs, labels),
        cal.aurc(probs, labels),
        cal.selective_accuracy(probs, labels, 0.5),
    ):
        assert type(value) is float


# -- errors ------------------------------------------------------------------------------------------

GOOD_P = np.array([[0.3, 0.7], [0.5, 0.5]])
GOOD_Y = np.array([1, 0])
ONE = np.ones(2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: cal.nll([[0.3, 0.7]], GOOD_Y[:1]), TypeError, "`probs` must be a torch.Tensor"),
        (lambda: cal.nll(GOOD_P.astype(np.int64), GOOD_Y), TypeError, "`probs` must be floating"),
        (
            lambda: cal.nll(np.ones((2, 2, 2)) / 2, GOOD_Y),
            ValueError,
            r"`probs` must be of shape \(N, C\)",
        ),
        (
            lambda: cal.nll(np.ones((2, 1)), GOOD_Y),
            ValueError,
            r"`probs` must be of shape \(N, C\) with C >= 2",
        ),
        (lambda: cal.nll(np.zeros((0, 2)), GOOD_Y[:0]), ValueError, "`probs` must not be empty"),
        (
            lambda: cal.nll(np.array([[np.nan, 1.0]]), GOOD_Y[:1]),
            ValueError,
            "`probs` must be finite",
        ),
        (
            lambda: cal.nll(np.array([[-0.5, 1.5]]), GOOD_Y[:1]),
            ValueError,
            r"`probs` must hold probabilities in \[0, 1\]",
        ),
        (
            lambda: cal.nll(np.array([[0.3, 0.3]]), GOOD_Y[:1]),
            ValueError,
            "`probs` rows must sum to 1",
        ),
        (lambda: cal.nll(GOOD_P, GOOD_Y.astype(float)), TypeError, "`labels` must be integer"),
        (
            lambda: cal.nll(GOOD_P, np.array([1, 0, 1])),
            ValueError,
            r"`labels` must be of shape \(2,\)",
        ),
        (
            lambda: cal.nll(GOOD_P, np.array([2, 0])),
            ValueError,
            r"`labels` must be class indices in \[0, 1\]",
        ),
        (
            lambda: cal.brier_score(GOOD_P, np.array([-1, 0])),
            ValueError,
            "`labels` must be class indices",
        ),
        (lambda: cal.ece(GOOD_P, GOOD_Y, n_bins=0), ValueError, "`n_bins` must be an int >= 1"),
        (lambda: cal.ece(GOOD_P, GOOD_Y, n_bins=2.0), TypeError, "`n_bins` must be an int >= 1"),
        (
            lambda: cal.ece(GOOD_P, GOOD_Y, binning="quantile"),
            ValueError,
            "`binning` must be one of",
        ),
        (
            lambda: cal.reliability_bins(GOOD_P, GOOD_Y, binning="x"),
            ValueError,
            "`binning` must be one of",
        ),
        (
            lambda: cal.selective_accuracy(GOOD_P, GOOD_Y, 0.0),
            ValueError,
            r"`coverage` must be in \(0, 1\]",
        ),
        (
            lambda: cal.selective_accuracy(GOOD_P, GOOD_Y, 1.5),
            ValueError,
            r"`coverage` must be in \[0, 1\]",
        ),
        (
            lambda: cal.selective_accuracy(GOOD_P, GOOD_Y, "all"),
            TypeError,
            "`coverage` must be a real number",
        ),
        (lambda: cal.aurc(GOOD_P, "labels"), TypeError, "`labels` must be a torch.Tensor"),
        (lambda: cal.gaussian_nll(ONE, np.array([1.0, 0.0]), ONE), ValueError, "`var` must be > 0"),
        (
            lambda: cal.gaussian_nll(ONE, ONE, np.ones(3)),
            ValueError,
            "`mean`, `var`, `targets` must have one shape",
        ),
        (
            lambda: cal.gaussian_nll(ONE, ONE, np.array([1.0, np.inf])),
            ValueError,
            "`targets` must be finite",
        ),
        (
            lambda: cal.gaussian_nll(np.array([1, 2]), ONE, ONE),
            TypeError,
            "`mean` must be floating",
        ),
        (lambda: cal.interval_coverage(ONE, -ONE, ONE), ValueError, "`std` must be > 0"),
        (
            lambda: cal.interval_coverage(ONE, ONE, ONE, level=1.0),
            ValueError,
            r"`level` must be in \(0, 1\)",
        ),
        (
            lambda: cal.interval_coverage(ONE, ONE, ONE, level=0.0),
            ValueError,
            r"`level` must be in \(0, 1\)",
        ),
        (lambda: cal.interval_coverage(ONE, ONE, ONE, level=95), ValueError, "`level` must be in"),
        (
            lambda: cal.interval_coverage(ONE, ONE, ONE[:1]),
            ValueError,
            "`mean`, `std`, `targets` must have one shape",
        ),
    ],
)
def test_errors_name_the_argument(call: object, error: type[Exception], match: str) -> None:
    assert callable(call)
    with pytest.raises(error, match=match):
        call()
