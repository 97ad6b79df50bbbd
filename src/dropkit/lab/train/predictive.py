r"""What a trained run predicts, measured: the deterministic network and Monte Carlo dropout.

After training, a run with ``TrainSpec.evaluate`` set (:class:`Evaluation`) is measured on the
test rows and, when it has them, its validation rows, in one of two modes or both:

- ``det``: the network in evaluation mode (dropout off), one pass;
- ``mc``: Monte Carlo dropout (Gal & Ghahramani 2016): ``T`` passes with dropout on (every
  other module, BatchNorm above all, in evaluation mode), whose predictive distribution is the
  mean of the ``T`` softmax outputs ``p̄ = (1/T) Σ_t p_t`` (classification) or the normal
  ``N(μ̄, σ̄² + σ²_noise)`` with ``μ̄, σ̄²`` the mean and variance (ddof 0) of the ``T`` outputs
  (regression).

The metrics (defined in :mod:`dropkit.calibration`, whose functions the tests check these
against): accuracy, NLL, Brier score (binary data: ``(p₁ − y)²``, scikit-learn's; more
classes: ``Σ_c (p_c − 1[y = c])²``), the top-label ECE over :data:`RELIABILITY_BINS`
equal-width bins ``(b/B, (b+1)/B]`` with the bins themselves (count, summed confidence,
correct rows: sums, so a group pools its runs by adding them), and for ``mc`` the mean
mutual information ``H[p̄] − (1/T) Σ_t H[p_t]`` (BALD, Houlsby et al. 2011) and predictive
entropy ``H[p̄]``. Regression: RMSE, the Gaussian NLL and the share of targets inside the
central 90% interval ``μ ± 1.645 σ``, ``σ²_noise`` being the deterministic network's mean
squared residual on the rows it fit (Gal's ``τ⁻¹`` estimated from the training fit; the same
noise term for both modes, so MC adds exactly its spread).

Batched over samples and runs. The trainer hands over a :class:`Predictor` of its ``R`` runs;
its :meth:`Predictor.samples` takes ``T`` mask steps and returns ``(R, T, n, k)`` in one call
(the lab's vmapped trainer nests a ``vmap`` over the samples inside the one over the runs, so
the work before the first dropout is done once per run, not once per sample). The masks are
counter-based (:mod:`dropkit.lab.train.counter_masks`): sample ``t`` of chunk ``c`` of split
``s`` draws with the step :data:`MC_STEP` ``+ ((s·2²⁴ + c)·T + t)``, far above any training
step, so the masks are a function of the run's seed and the rows' positions, the same alone or
batched; the rows are cut into chunks of the fixed size :data:`CHUNK_ROWS` (the masks do not
depend on the memory at hand). ``consistent`` masks (baal's ``ConsistentDropout``) are the
same for every row of a pass.

A classification run also records ``classes`` (its number of classes), so the results know
which form, and range, its Brier score has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from dropkit.lab.plan.config import TrainSpec

__all__ = [
    "CHUNK_ROWS",
    "COVERAGE",
    "MC_STEP",
    "RELIABILITY_BINS",
    "Evaluation",
    "Predictor",
    "Split",
    "measure",
]

RELIABILITY_BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. 2017)."""

COVERAGE = 0.90
"""The central interval whose coverage regression reports (``cover90``)."""

_Z = 1.6448536269514722  # Φ⁻¹(0.95): the half-width of the central 90% normal interval

MC_STEP = 1 << 40
"""The first mask step of Monte Carlo passes: above every training step."""

CHUNK_ROWS = 128
"""Rows per evaluation pass (fixed: Monte Carlo masks depend on a row's place in its chunk)."""

_SPLIT_STRIDE = 1 << 24
_VARIANCE_FLOOR = 1e-12  # a perfect fit's zero noise variance: a large finite Gaussian NLL


@dataclass(frozen=True)
class Evaluation:
    """What to measure after training (from :class:`~dropkit.lab.plan.config.TrainSpec`).

    Attributes:
        deterministic: the network with dropout off (``det_*``).
        monte_carlo: Monte Carlo dropout (``mc_*``).
        samples: stochastic passes ``T``.
        consistent: the same masks for every row of a pass.
    """

    deterministic: bool
    monte_carlo: bool
    samples: int
    consistent: bool = False

    @classmethod
    def of(cls, train: TrainSpec) -> Evaluation | None:
        """The evaluation a run's training settings ask for; None without ``evaluate``."""
        if train.evaluate is None:
            return None
        return cls(train.deterministic, train.monte_carlo, train.mc_samples, train.mc_consistent)


class Predictor(Protocol):
    """The outputs of ``runs`` trained runs, batched (the trainer's side of :func:`measure`).

    ``x`` is ``(n, *sample)`` for rows every run shares or ``(R, n, *sample)`` per run
    (``shared`` says which)."""

    runs: int

    def outputs(self, x: Tensor, shared: bool) -> Tensor:
        """Evaluation-mode outputs ``(R, n, k)``."""
        ...

    def samples(self, x: Tensor, shared: bool, steps: Tensor, consistent: bool) -> Tensor:
        """Outputs with dropout on ``(R, T, n, k)``, sample ``t`` drawn with mask step
        ``steps[t]`` (int64 ``(T,)``); ``consistent``: masks shared by the rows."""
        ...

    def part(self, start: int, stop: int) -> Predictor:
        """The predictor of runs ``start .. stop - 1``."""
        ...


@dataclass(frozen=True)
class Split:
    """Rows to measure: inputs ``x`` and targets ``y``, ``(n, …)`` / ``(n,)`` shared by every
    run or ``(R, n, …)`` / ``(R, n)`` per run; ``prefix`` of its ``info`` keys (``""`` test,
    ``"val_"`` validation); ``bins``: also store the reliability bins."""

    x: Tensor
    y: Tensor
    shared: bool
    prefix: str
    bins: bool = False


class _Sums:
    """Per-run sums over the rows of a split for one mode, float64 ``(R,)`` (the bins
    ``(R, B)``): ``n`` rows; classification: correct rows, NLL, Brier, the bins (rows, summed
    confidence, correct rows) and, Monte Carlo, entropy and mutual information; regression:
    NLL, squared errors, rows inside the interval and predictive standard deviations."""

    def __init__(self, runs: int, device: torch.device) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(runs, *shape, dtype=torch.float64, device=device)

        self.n = 0
        self.correct, self.nll, self.brier = zeros(), zeros(), zeros()
        self.entropy, self.mi = zeros(), zeros()
        self.squared_error, self.covered, self.sd = zeros(), zeros(), zeros()
        self.count = zeros(RELIABILITY_BINS)
        self.confidence = zeros(RELIABILITY_BINS)
        self.hits = zeros(RELIABILITY_BINS)


def _probabilities(outputs: Tensor, classes: int) -> Tensor:
    """Class probabilities ``(..., C)`` float64 of outputs ``(..., k)``: one logit is the
    binary ``(1 − σ(z), σ(z))``, more are a softmax."""
    z = outputs.double()
    if z.shape[-1] == 1:
        p = torch.sigmoid(z)
        return torch.cat((1.0 - p, p), -1)
    return z.softmax(-1)


def _entropy(p: Tensor) -> Tensor:
    """``−Σ_c p_c log p_c`` over the last axis (``0 log 0 = 0``)."""
    terms: Tensor = torch.special.xlogy(p, p)
    return -terms.sum(-1)


def _add_classification(sums: _Sums, p: Tensor, y: Tensor, binary: bool) -> None:
    """Add the rows of probabilities ``p`` ``(R, n, C)`` with labels ``y`` ``(R, n)``, their
    reliability bins included (the ECE reads them)."""
    eps = torch.finfo(torch.float64).eps
    confidence, predicted = p.max(-1)  # the first class among equal maxima
    correct = (predicted == y).double()
    truth = p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    sums.n += p.shape[1]
    sums.correct += correct.sum(-1)
    sums.nll -= truth.clamp_min(eps).log().sum(-1)
    if binary:
        brier = (p[..., 1] - y.double()).pow(2)
    else:
        brier = (p - torch.nn.functional.one_hot(y, p.shape[-1]).double()).pow(2).sum(-1)
    sums.brier += brier.sum(-1)
    edges = torch.arange(RELIABILITY_BINS + 1, dtype=torch.float64, device=p.device)
    edges = edges / RELIABILITY_BINS
    index = (torch.searchsorted(edges, confidence.contiguous()) - 1).clamp(0, RELIABILITY_BINS - 1)
    sums.count.scatter_add_(1, index, torch.ones_like(confidence))
    sums.confidence.scatter_add_(1, index, confidence)
    sums.hits.scatter_add_(1, index, correct)


def _add_regression(sums: _Sums, mean: Tensor, variance: Tensor, y: Tensor) -> None:
    """Add rows of predictive means and variances ``(R, n)`` for targets ``y`` ``(R, n)``."""
    variance = variance.clamp_min(_VARIANCE_FLOOR)
    error = y.double() - mean
    sums.n += mean.shape[1]
    sums.squared_error += error.pow(2).sum(-1)
    sums.nll += 0.5 * (torch.log(2 * math.pi * variance) + error.pow(2) / variance).sum(-1)
    sums.covered += (error.abs() <= _Z * variance.sqrt()).double().sum(-1)
    sums.sd += variance.sqrt().sum(-1)


def _chunks(split: Split) -> list[tuple[Tensor, Tensor]]:
    axis = 0 if split.shared else 1
    n = split.x.shape[axis]
    return [
        (
            split.x.narrow(axis, a, min(CHUNK_ROWS, n - a)),
            split.y.narrow(-1, a, min(CHUNK_ROWS, n - a)),
        )
        for a in range(0, n, CHUNK_ROWS)
    ]


def _targets(y: Tensor, shared: bool, runs: int) -> Tensor:
    return y.expand(runs, *y.shape) if shared else y


def _noise_variance(predictor: Predictor, rows: Split) -> Tensor:
    """The deterministic network's mean squared residual ``(R,)`` on its fit rows."""
    total = torch.zeros(predictor.runs, dtype=torch.float64, device=rows.x.device)
    count = 0
    for x, y in _chunks(rows):
        out = predictor.outputs(x, rows.shared)[..., 0].double()
        total += (out - _targets(y, rows.shared, predictor.runs)).pow(2).sum(-1)
        count += x.shape[0 if rows.shared else 1]
    return total / max(1, count)


def _measure_split(
    predictor: Predictor,
    evaluation: Evaluation,
    split: Split,
    index: int,
    classes: int,
    noise: Tensor | None,
) -> dict[str, _Sums]:
    runs = predictor.runs
    modes = {}
    device = split.x.device
    if evaluation.deterministic:
        modes["det"] = _Sums(runs, device)
    if evaluation.monte_carlo:
        modes["mc"] = _Sums(runs, device)
    binary = classes == 2
    for c, (x, y) in enumerate(_chunks(split)):
        y = _targets(y, split.shared, runs)
        if "det" in modes:
            out = predictor.outputs(x, split.shared)
            if noise is None:
                _add_classification(modes["det"], _probabilities(out, classes), y, binary)
            else:
                mean = out[..., 0].double()
                _add_regression(modes["det"], mean, noise.view(-1, 1).expand_as(mean), y)
        if "mc" in modes:
            t = evaluation.samples
            first = MC_STEP + (index * _SPLIT_STRIDE + c) * t
            steps = torch.arange(first, first + t, dtype=torch.int64)
            out = predictor.samples(x, split.shared, steps, evaluation.consistent)
            sums = modes["mc"]
            if noise is None:
                p = _probabilities(out, classes)  # (R, T, n, C)
                mean_p = p.mean(1)
                _add_classification(sums, mean_p, y, binary)
                entropy = _entropy(mean_p)
                sums.entropy += entropy.sum(-1)
                sums.mi += (entropy - _entropy(p).mean(1)).clamp_min(0.0).sum(-1)
            else:
                values = out[..., 0].double()  # (R, T, n)
                mean = values.mean(1)
                variance = values.var(1, correction=0) + noise.view(-1, 1)
                _add_regression(sums, mean, variance, y)
    return modes


def _info(
    modes: dict[str, _Sums], prefix: str, regression: bool, bins: bool
) -> list[dict[str, float]]:
    """Per run, the ``info`` entries of a split's sums."""
    infos: list[dict[str, float]] = []
    for mode, sums in modes.items():
        n = max(1, sums.n)
        if regression:
            values = {
                "rmse": (sums.squared_error / n).sqrt(),
                "nll": sums.nll / n,
                "cover90": sums.covered / n,
            }
            if mode == "mc":
                values["sd"] = sums.sd / n
        else:
            gaps = (sums.hits - sums.confidence).abs().sum(-1) / n
            values = {
                "acc": sums.correct / n,
                "nll": sums.nll / n,
                "brier": sums.brier / n,
                "ece": gaps,
            }
            if mode == "mc":
                values["mi"] = sums.mi / n
                values["entropy"] = sums.entropy / n
        lists = {name: value.cpu().tolist() for name, value in values.items()}
        if bins and not regression:
            for name, table in (
                ("n", sums.count),
                ("conf", sums.confidence),
                ("hit", sums.hits),
            ):
                rows = table.cpu().tolist()
                for b in range(RELIABILITY_BINS):
                    lists[f"bin{b:02d}_{name}"] = [row[b] for row in rows]
        for r in range(len(next(iter(lists.values())))):
            if len(infos) <= r:
                infos.append({})
            infos[r].update({f"{prefix}{mode}_{k}": float(v[r]) for k, v in lists.items()})
    return infos


@torch.no_grad()
def measure(
    predictor: Predictor,
    evaluation: Evaluation,
    splits: Sequence[Split],
    *,
    classes: int,
    fit: Split | None = None,
    runs_per_pass: int | None = None,
) -> list[dict[str, float]]:
    """Measure ``predictor``'s runs on ``splits``: per run, the ``info`` entries
    ``{prefix}{mode}_{metric}`` (see the module docstring).

    Args:
        predictor: the trained runs.
        evaluation: the modes and the Monte Carlo settings.
        splits: the rows to measure (a split with no rows adds nothing).
        classes: the number of classes (0: regression).
        fit: regression only: each run's fit rows, for the noise variance (``noise_sd``).
        runs_per_pass: the most runs per call of the predictor (memory); None: all.

    Returns:
        One dict per run, in the predictor's order.
    """
    regression = classes == 0
    if regression and fit is None:
        raise ValueError("regression needs the fit rows for the noise variance")
    step = predictor.runs if runs_per_pass is None else max(1, runs_per_pass)
    infos: list[dict[str, float]] = []
    for start in range(0, predictor.runs, step):
        stop = min(predictor.runs, start + step)
        part = predictor if (start, stop) == (0, predictor.runs) else predictor.part(start, stop)
        own: list[dict[str, float]] = [
            {} if regression else {"classes": float(classes)} for _ in range(stop - start)
        ]
        noise = None
        if fit is not None:
            rows = fit if fit.shared else Split(fit.x[start:stop], fit.y[start:stop], False, "")
            noise = _noise_variance(part, rows)
            for r, value in enumerate(noise.sqrt().cpu().tolist()):
                own[r]["noise_sd"] = float(value)
        for index, split in enumerate(splits):
            if split.x.shape[0 if split.shared else 1] == 0:
                continue
            rows = (
                split
                if split.shared
                else Split(
                    split.x[start:stop], split.y[start:stop], False, split.prefix, split.bins
                )
            )
            modes = _measure_split(part, evaluation, rows, index, classes, noise)
            for r, entries in enumerate(_info(modes, split.prefix, regression, split.bins)):
                own[r].update(entries)
        infos.extend(own)
    return infos
