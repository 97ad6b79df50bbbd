r"""Calibration and uncertainty metrics: how well predicted probabilities match the outcomes.

Plain functions of predictions and targets, for the outputs of a model, of Monte Carlo dropout
(:func:`dropkit.mc_predict`'s ``mean``) or of any other predictor. Arguments are
:class:`torch.Tensor`\ s or NumPy arrays; the metrics are computed in float64 and returned as
Python floats (:func:`reliability_bins` returns tensors).

Classification metrics take ``probs`` of shape ``(N, C)``, rows of probabilities that sum to 1
(``C >= 2``), or of shape ``(N,)``, the probability of class 1 of a binary problem (read as the
rows ``(1 - p, p)``), and integer ``labels`` of shape ``(N,)`` in ``[0, C)``. The predicted
class is the argmax of a row (the first class among equal maxima) and the confidence is its
probability, ``max_c p_c``.

* :func:`nll`, the negative log-likelihood of the true class, ``-(1/N) Σ_i log p_{i,y_i}``
  (probabilities clamped below at the machine epsilon of their dtype, as scikit-learn's
  ``log_loss`` does, so that a probability of 0 gives a large finite loss).
* :func:`brier_score`, ``(1/N) Σ_i Σ_c (p_{i,c} - 1[y_i = c])²`` (Brier 1950), between 0 and 2.
  For the binary ``(N,)`` form it is ``(1/N) Σ_i (p_i - y_i)²``, the positive class only, which
  is half of the two-class sum and equals scikit-learn's ``brier_score_loss``.
* :func:`ece`, the expected calibration error of the top-label confidence,
  ``Σ_b (|B_b| / N) · |acc(B_b) - conf(B_b)|`` over bins ``B_b`` of the confidences
  (Naeini et al. 2015; Guo et al. 2017), with ``acc`` the share of correct predictions of a bin
  and ``conf`` its mean confidence. Bins are of equal width on [0, 1] (bin b is
  ``(b/n_bins, (b+1)/n_bins]``, the first one also holding 0) or adaptive: of equal mass
  (Nixon et al. 2019). :func:`reliability_bins` gives the bins themselves, for a reliability
  diagram.
* :func:`gaussian_nll`, ``(1/N) Σ_i ½[log(2π σ_i²) + (y_i - μ_i)² / σ_i²]``, the negative
  log-likelihood of a regressor's predictive normal ``N(μ, σ²)`` (Lakshminarayanan et al. 2017).
* :func:`interval_coverage`, the share of targets inside the central normal interval
  ``μ ± z σ`` with ``z = Φ⁻¹((1 + level) / 2)``.
* :func:`selective_accuracy`, the accuracy of the most confident share of the rows, and
  :func:`aurc`, the area under the risk–coverage curve (Geifman & El-Yaniv 2017),
  ``(1/N) Σ_{k=1..N} (errors among the k most confident rows) / k``.

References:
    Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather
    Review 78(1), 1950.

    Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
    Binning", AAAI 2015.

    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
    https://arxiv.org/abs/1706.04599

    Nixon, Dusenberry, Zhang, Jerfel & Tran, "Measuring Calibration in Deep Learning", CVPR
    Workshops 2019. https://arxiv.org/abs/1904.01685

    Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017.
    https://arxiv.org/abs/1705.08500

    Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles", NeurIPS 2017. https://arxiv.org/abs/1612.01474
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dropkit._validation import check_one_of, check_positive_int, check_probability

__all__ = [
    "BINNINGS",
    "ReliabilityBins",
    "aurc",
    "brier_score",
    "ece",
    "gaussian_nll",
    "interval_coverage",
    "nll",
    "reliability_bins",
    "selective_accuracy",
]

BINNINGS: tuple[str, ...] = ("equal_width", "adaptive")
"""The values of ``binning=`` of :func:`ece` and :func:`reliability_bins`."""

_SUM_TOLERANCE = 1e-4
"""How far from 1 a row of probabilities may sum (or ``C`` times its dtype's epsilon, if more)."""


class ReliabilityBins(NamedTuple):
    """The bins of a reliability diagram, each field of shape ``(n_bins,)``, lowest bin first.

    Attributes:
        counts: the number of rows in each bin (int64).
        confidence: the mean top-label confidence of each bin (float64; NaN for an empty bin).
        accuracy: the share of correct predictions in each bin (float64; NaN for an empty bin).
    """

    counts: Tensor
    confidence: Tensor
    accuracy: Tensor


# -- argument checks -----------------------------------------------------------------------------


def _as_tensor(value: object, name: str) -> Tensor:
    """``value`` (a tensor or a NumPy array) as a detached tensor, on the CPU if it was on MPS
    (which lacks float64)."""
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise TypeError(
                f"`{name}` must be a torch.Tensor or a NumPy array of numbers, "
                f"got a NumPy array of dtype {value.dtype}"
            )
        return torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor or a NumPy array, got {type(value).__name__}"
        )
    value = value.detach()
    return value.cpu() if value.device.type == "mps" else value


def _floats(value: object, name: str) -> Tensor:
    """``value`` as a float64 tensor, after checking it is floating point and finite."""
    x = _as_tensor(value, name)
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be floating point, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    x64 = x.to(torch.float64)
    if not bool(torch.isfinite(x64).all()):
        raise ValueError(f"`{name}` must be finite, got NaN or infinite values")
    return x64


def _probabilities(probs: object) -> tuple[Tensor, float]:
    """``probs`` as float64 rows ``(N, C)`` (a binary ``(N,)`` becomes ``(1 - p, p)``), and the
    machine epsilon of the dtype it was given in."""
    x = _as_tensor(probs, "probs")
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[1] < 2):
        raise ValueError(
            "`probs` must be of shape (N, C) with C >= 2 (rows of class probabilities) or (N,) "
            f"(the probability of class 1 of a binary problem), got shape {tuple(x.shape)}"
        )
    p = _floats(x, "probs")
    eps = torch.finfo(x.dtype).eps
    low, high = float(p.min()), float(p.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"`probs` must hold probabilities in [0, 1], got values in [{low:g}, {high:g}] "
            "(logits? apply a softmax first)"
        )
    if p.ndim == 1:
        return torch.stack([1.0 - p, p], dim=1), eps
    tolerance = max(_SUM_TOLERANCE, p.shape[1] * eps)
    gap = (p.sum(dim=1) - 1.0).abs()
    if float(gap.max()) > tolerance:
        row = int(gap.argmax())
        raise ValueError(
            f"`probs` rows must sum to 1 (within {tolerance:g}), but row {row} sums to "
            f"{float(p[row].sum()):.6g}"
        )
    return p, eps


def _labels(labels: object, n: int, classes: int) -> Tensor:
    """``labels`` as an int64 tensor ``(n,)`` of classes in ``[0, classes)``."""
    y = _as_tensor(labels, "labels")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"`labels` must be integer class indices, got dtype {y.dtype}")
    if tuple(y.shape) != (n,):
        raise ValueError(
            f"`labels` must be of shape ({n},), one class index per row of `probs`, "
            f"got shape {tuple(y.shape)}"
        )
    y = y.to(torch.int64)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"`labels` must be class indices in [0, {classes - 1}] ({classes} classes in "
            f"`probs`), got values in [{low}, {high}]"
        )
    return y


def _classification(probs: object, labels: object) -> tuple[Tensor, Tensor, float]:
    p, eps = _probabilities(probs)
    y = _labels(labels, p.shape[0], p.shape[1]).to(p.device)
    return p, y, eps


def _top_label(probs: object, labels: object) -> tuple[Tensor, Tensor]:
    """The confidence ``max_c p_c`` (float64) and the correctness (float64, 0 or 1) of each row;
    the prediction is the first class among equal maxima."""
    p, y, _ = _classification(probs, labels)
    predicted = p.argmax(dim=1)  # torch documents it as the first maximal index
    confidence = p.gather(1, predicted[:, None]).squeeze(1)
    return confidence, (predicted == y).to(torch.float64)


def _same_shape(named: dict[str, Tensor]) -> None:
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"`{name}` {shape}" for name, shape in shapes.items())
        raise ValueError(f"{', '.join(f'`{n}`' for n in named)} must have one shape, got {listed}")


def _positive(x: Tensor, name: str, meaning: str) -> None:
    if float(x.min()) <= 0.0:
        raise ValueError(f"`{name}` must be > 0 ({meaning}), got a minimum of {float(x.min()):g}")


# -- classification ------------------------------------------------------------------------------


def nll(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Mean negative log-likelihood of the true class: ``-(1/N) Σ_i log p_{i, y_i}``.

    Probabilities are clamped below at the machine epsilon of their dtype (2.2e-16 for float64,
    1.2e-7 for float32), as scikit-learn's ``log_loss`` does: a true class given probability 0
    costs ``-log(eps)`` (36.0 in float64) instead of infinity.

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1, or ``(N,)`` probabilities of
            class 1 of a binary problem.
        labels: ``(N,)`` integer classes in ``[0, C)``.

    Returns:
        The mean NLL in nats, >= 0.
    """
    p, y, eps = _classification(probs, labels)
    true = p.gather(1, y[:, None]).squeeze(1).clamp(min=eps)
    return float(-true.log().mean())


def brier_score(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Multi-class Brier score: ``(1/N) Σ_i Σ_c (p_{i,c} - 1[y_i = c])²`` (Brier 1950).

    Between 0 (certain and right) and 2 (certain and wrong). For ``(N,)`` probabilities of
    class 1 it is ``(1/N) Σ_i (p_i - y_i)²``, the positive class only: half of the two-class
    sum, and equal to scikit-learn's ``brier_score_loss`` (which uses that form for binary
    problems). An ``(N, 2)`` input gives the two-class sum, Brier's original definition.

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1, or ``(N,)`` probabilities of
            class 1 of a binary problem.
        labels: ``(N,)`` integer classes in ``[0, C)``.

    Returns:
        The mean Brier score.
    """
    binary = _as_tensor(probs, "probs").ndim == 1
    p, y, _ = _classification(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    score = float(((p - onehot) ** 2).sum(dim=1).mean())
    return score / 2 if binary else score


def reliability_bins(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n_bins: int = 15,
    binning: str = "equal_width",
) -> ReliabilityBins:
    """The bins of the top-label confidences: count, mean confidence and accuracy of each.

    ``binning="equal_width"``: bin b (b = 0..n_bins-1) holds the confidences in
    ``(b/n_bins, (b+1)/n_bins]``, the first bin also holds 0 (a confidence on an edge goes to
    the bin below it). ``binning="adaptive"``: equal-mass bins (Nixon et al. 2019): the rows
    sorted by confidence (a stable sort: ties in the order of the rows) are cut into ``n_bins``
    runs of consecutive rows whose sizes differ by at most one, the larger ones first (the
    sizes of ``numpy.array_split``); equal confidences may fall on both sides of a cut, and
    with ``n_bins > N`` the last bins are empty.

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1, or ``(N,)`` probabilities of
            class 1 of a binary problem.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        n_bins: the number of bins, >= 1.
        binning: ``"equal_width"`` or ``"adaptive"``.

    Returns:
        A :class:`ReliabilityBins` of ``(n_bins,)`` tensors on the device of ``probs``; an
        empty bin has a count of 0 and NaN confidence and accuracy.
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    binning = check_one_of(binning, "binning", BINNINGS)
    confidence, correct = _top_label(probs, labels)
    n = confidence.shape[0]
    if binning == "equal_width":
        edges = torch.arange(n_bins + 1, dtype=torch.float64, device=confidence.device) / n_bins
        # searchsorted(right=False) gives i with edges[i-1] < c <= edges[i]: the bin (lo, hi]
        index = (torch.searchsorted(edges, confidence, right=False) - 1).clamp(0, n_bins - 1)
    else:
        order = torch.sort(confidence, stable=True).indices
        sizes = torch.full((n_bins,), n // n_bins, dtype=torch.int64, device=confidence.device)
        sizes[: n % n_bins] += 1
        index = torch.empty(n, dtype=torch.int64, device=confidence.device)
        index[order] = torch.repeat_interleave(
            torch.arange(n_bins, device=confidence.device), sizes
        )
    count = torch.zeros(n_bins, dtype=torch.int64, device=confidence.device)
    count.index_add_(0, index, torch.ones_like(index))
    sums = torch.zeros(2, n_bins, dtype=torch.float64, device=confidence.device)
    sums[0].index_add_(0, index, confidence)
    sums[1].index_add_(0, index, correct)
    means = sums / count.to(torch.float64)  # NaN where the count is 0
    return ReliabilityBins(counts=count, confidence=means[0], accuracy=means[1])


def ece(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    n_bins: int = 15,
    binning: str = "equal_width",
) -> float:
    """Expected calibration error of the top-label confidence.

    ``ECE = Σ_b (|B_b| / N) · |acc(B_b) - conf(B_b)|`` (Naeini et al. 2015; Guo et al. 2017),
    with ``acc`` the share of correct predictions in bin ``B_b`` and ``conf`` its mean
    confidence; empty bins add nothing. The bins are those of :func:`reliability_bins`:
    equal-width on [0, 1] (``(lo, hi]``, the first bin also holding 0) or adaptive, of equal
    mass (Nixon et al. 2019).

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1, or ``(N,)`` probabilities of
            class 1 of a binary problem.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        n_bins: the number of bins, >= 1 (15 as in Guo et al.).
        binning: ``"equal_width"`` or ``"adaptive"``.

    Returns:
        The ECE, in [0, 1].
    """
    bins = reliability_bins(probs, labels, n_bins, binning)
    filled = bins.counts > 0
    weight = bins.counts[filled].to(torch.float64) / bins.counts.sum()
    gap = (bins.accuracy[filled] - bins.confidence[filled]).abs()
    return float((weight * gap).sum())


def _ranked_errors(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> Tensor:
    """The errors (float64, 0 or 1) of the rows, most confident first, ties in row order."""
    confidence, correct = _top_label(probs, labels)
    order = torch.sort(confidence, descending=True, stable=True).indices
    return 1.0 - correct[order]


def selective_accuracy(
    probs: Tensor | np.ndarray, labels: Tensor | np.ndarray, coverage: float
) -> float:
    """Accuracy on the ``coverage`` share of the rows with the highest confidence.

    The ``k = ⌈coverage · N⌉`` rows (at least 1) of highest top-label confidence are kept; rows
    of equal confidence are ranked by their index (a stable sort: the earlier row first), so
    the result is deterministic. ``coverage=1`` gives the plain accuracy.

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1, or ``(N,)`` probabilities of
            class 1 of a binary problem.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        coverage: the share of rows kept, in (0, 1].

    Returns:
        The accuracy of the kept rows, in [0, 1].
    """
    share = check_probability(coverage, "coverage", description="the share of rows kept")
    if share == 0.0:
        raise ValueError("`coverage` must be in (0, 1] (the share of rows kept), got 0")
    errors = _ranked_errors(probs, labels)
    n = errors.shape[0]
    k = min(n, max(1, math.ceil(share * n - 1e-9)))  # the tolerance absorbs 0.7 * 10 = 7.0000001
    return float(1.0 - errors[:k].mean())


def aurc(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Area under the risk–coverage curve (Geifman & El-Yaniv 2017).

    ``AURC = (1/N) Σ_{k=1..N} (1/k) Σ_{i<=k} err_(i)``, the mean over k of the error rate of the
    k most confident rows (rows of equal confidence ranked by their index, as in
    :func:`selective_accuracy`). Lower is better; a classifier whose confidence ranks all its
    errors last has the least AURC its accuracy allows.

    Args:
        probs: ``(N, C)`` class probabilities, rows summing to 1, or ``(N,)`` probabilities of
            class 1 of a binary problem.
        labels: ``(N,)`` integer classes in ``[0, C)``.

    Returns:
        The AURC, in [0, 1].
    """
    errors = _ranked_errors(probs, labels)
    k = torch.arange(1, errors.shape[0] + 1, dtype=torch.float64, device=errors.device)
    return float((errors.cumsum(0) / k).mean())


# -- regression ----------------------------------------------------------------------------------


def gaussian_nll(
    mean: Tensor | np.ndarray, var: Tensor | np.ndarray, targets: Tensor | np.ndarray
) -> float:
    """Mean Gaussian negative log-likelihood: ``mean of ½[log(2π σ²) + (y - μ)² / σ²]``.

    The NLL of the targets under the predictive normals ``N(μ, σ²)`` of a regressor
    (Lakshminarayanan et al. 2017), averaged over every element; the constant ``½ log 2π`` is
    included (``torch.nn.functional.gaussian_nll_loss(mean, targets, var, full=True)``, which
    also clamps the variance at 1e-6; here it is not clamped).

    Args:
        mean: the predictive means μ, any shape.
        var: the predictive variances σ², the shape of ``mean``, every one > 0.
        targets: the observed values y, the shape of ``mean``.

    Returns:
        The mean NLL in nats.
    """
    mu, variance, y = _floats(mean, "mean"), _floats(var, "var"), _floats(targets, "targets")
    _same_shape({"mean": mu, "var": variance, "targets": y})
    _positive(variance, "var", "a variance")
    y = y.to(mu.device)
    variance = variance.to(mu.device)
    return float(0.5 * (torch.log(2 * math.pi * variance) + (y - mu) ** 2 / variance).mean())


def interval_coverage(
    mean: Tensor | np.ndarray,
    std: Tensor | np.ndarray,
    targets: Tensor | np.ndarray,
    level: float = 0.95,
) -> float:
    """Share of the targets inside the central normal interval ``μ ± z σ`` (ends included).

    ``z = Φ⁻¹((1 + level) / 2)`` (``scipy.stats.norm.ppf``; 1.95996 for ``level=0.95``). A
    calibrated predictive normal covers about ``level`` of the targets.

    Args:
        mean: the predictive means μ, any shape.
        std: the predictive standard deviations σ, the shape of ``mean``, every one > 0.
        targets: the observed values y, the shape of ``mean``.
        level: the interval's nominal coverage, in (0, 1).

    Returns:
        The share of targets with ``|y - μ| <= z σ``, in [0, 1].
    """
    share = check_probability(level, "level", description="the nominal coverage")
    if not 0.0 < share < 1.0:
        raise ValueError(
            f"`level` must be in (0, 1), ends excluded (the nominal coverage; the interval is "
            f"empty at 0 and infinite at 1), got {share:g}"
        )
    mu, sigma, y = _floats(mean, "mean"), _floats(std, "std"), _floats(targets, "targets")
    _same_shape({"mean": mu, "std": sigma, "targets": y})
    _positive(sigma, "std", "a standard deviation")
    from scipy.stats import norm  # imported here: only this metric needs SciPy

    z = float(norm.ppf((1.0 + share) / 2.0))
    inside = (y.to(mu.device) - mu).abs() <= z * sigma.to(mu.device)
    return float(inside.to(torch.float64).mean())
