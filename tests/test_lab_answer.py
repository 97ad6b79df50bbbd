"""The lab's answer as a reviewer would check it: interval coverage by simulation, the power
figures against simulated tests, the choice rule's independence of list order, rates the lab
refuses, and whole experiments whose truth is known (overfitting that dropout reduces, a model
that cannot fit, no effect)."""

from __future__ import annotations

import math
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps
from sklearn.datasets import load_diabetes, make_circles
from torch import nn
from typer.testing import CliRunner

from dropkit import lab
from dropkit.cli import app
from dropkit.lab.results.significance import (
    detectable_difference,
    holm_adjusted,
    mean_ci,
    paired,
    seeds_needed,
    t_test_power,
)
from dropkit.lab.results.summary import SCORE_RANGES, ArmSummary, best_rate

# -- intervals -------------------------------------------------------------------------------

EXPERIMENTS = 2000
"""Simulated experiments per setting. The coverage estimate of a method whose true coverage is
0.95 has a binomial standard error of sqrt(0.95 · 0.05 / 2000) = 0.0049, so the bound 0.93 is
4.1 standard errors below 0.95: a correct method fails it with probability ~2e-5 per setting,
while a method that truly covers 0.92 or less passes it with probability < 0.02."""
MIN_COVERAGE = 0.93


def _accuracies(
    rng: np.random.Generator, mean: float, sd: float, seeds: int, rows: int = 70
) -> np.ndarray:
    """``(EXPERIMENTS, seeds)`` test accuracies on ``rows`` test rows: each seed's true
    accuracy drawn from a beta distribution (mean ``mean``, seed-to-seed spread ``sd``), then
    the count of correct rows binomial, as a run's accuracy on a fixed test set is."""
    strength = mean * (1 - mean) / sd**2 - 1
    truth = rng.beta(mean * strength, (1 - mean) * strength, size=(EXPERIMENTS, seeds))
    # The mean over seeds of the expected accuracy is `mean`: what the interval estimates.
    return rng.binomial(rows, truth) / rows


def _coverage(samples: np.ndarray, truth: float, bounds: tuple[float, float]) -> float:
    covered = 0
    for sample in samples:
        _, low, high = mean_ci(sample.tolist(), bounds=bounds)
        assert bounds[0] <= low <= high <= bounds[1] or math.isnan(low)
        covered += bool(low <= truth <= high)  # no interval (no spread) counts as a miss
    return covered / len(samples)


@pytest.mark.parametrize("seeds", [3, 5, 10, 30])
@pytest.mark.parametrize(
    ("task", "mean", "sd"),
    [
        ("classification", 0.77, 0.01),  # the case study's spread over seeds
        ("classification", 0.77, 0.03),
        ("classification", 0.90, 0.02),
        ("regression", 0.40, 0.08),  # R² over seeds, normal: unbounded below
    ],
)
def test_intervals_cover_at_their_nominal_rate(
    task: str, mean: float, sd: float, seeds: int
) -> None:
    rng = np.random.default_rng(seeds * 1000 + round(mean * 100))
    if task == "classification":
        samples = _accuracies(rng, mean, sd, seeds)
    else:
        samples = rng.normal(mean, sd, size=(EXPERIMENTS, seeds))
    coverage = _coverage(samples, mean, SCORE_RANGES[task])
    assert coverage >= MIN_COVERAGE, f"{task} mean {mean} sd {sd}, {seeds} seeds: {coverage}"


def test_intervals_stay_in_the_metric_range_without_losing_coverage() -> None:
    # Near the top of the range: the plain t-interval crosses 1, the kept one does not, and
    # both cover exactly the same experiments (the truth lies inside the range).
    rng = np.random.default_rng(7)
    samples = _accuracies(rng, 0.97, 0.02, 3)
    plain = [mean_ci(s.tolist()) for s in samples]
    kept = [mean_ci(s.tolist(), bounds=(0.0, 1.0)) for s in samples]
    assert sum(high > 1 for _, _, high in plain) > EXPERIMENTS // 10
    assert all(high <= 1 for _, _, high in kept if math.isfinite(high))
    assert [lo <= 0.97 <= hi for _, lo, hi in plain] == [lo <= 0.97 <= hi for _, lo, hi in kept]
    # The cases of the field reports: three seeds near 1 and a wide interval of a few seeds.
    _, low, high = mean_ci([0.92, 0.95, 0.99], bounds=(0.0, 1.0))
    assert low > 0.8 and high == 1.0
    _, low, high = mean_ci([0.2, 0.9], bounds=(0.0, 1.0))
    assert (low, high) == (0.0, 1.0)


def test_no_spread_gives_no_interval() -> None:
    assert all(math.isnan(v) for v in mean_ci([1.0, 1.0, 1.0])[1:])
    assert mean_ci([1.0, 1.0, 1.0])[0] == 1.0


# -- power -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("difference", "spread"), [(0.02, 0.02), (0.01, 0.02), (0.05, 0.03)])
def test_seeds_needed_reach_the_power_in_simulation(difference: float, spread: float) -> None:
    n = seeds_needed(difference, spread)
    assert n is not None and n >= 2
    assert t_test_power(difference, spread, n) >= 0.8 > t_test_power(difference, spread, n - 1)
    # Simulated paired experiments at n seeds: the share of p < 0.05 is the power. 4000
    # experiments give a standard error of sqrt(0.8 · 0.2 / 4000) = 0.0063; 0.775 is four
    # of them below 0.8.
    rng = np.random.default_rng(n)
    differences = rng.normal(difference, spread, size=(4000, n))
    p_values = sps.ttest_1samp(differences, 0.0, axis=1).pvalue
    assert np.mean(p_values < 0.05) >= 0.775
    theory = t_test_power(difference, spread, n)
    assert abs(np.mean(p_values < 0.05) - theory) < 4 * math.sqrt(theory * (1 - theory) / 4000)


def test_detectable_difference_is_the_inverse_of_power() -> None:
    d = detectable_difference(0.02, 10)
    assert t_test_power(d, 0.02, 10) == pytest.approx(0.8, abs=1e-6)
    assert seeds_needed(d * 1.001, 0.02) == 10
    assert math.isnan(detectable_difference(0.02, 1)) and detectable_difference(0.0, 5) == 0.0


def test_seeds_needed_grows_with_the_comparisons_and_refuses_nonsense() -> None:
    one = seeds_needed(0.02, 0.02)
    assert one == lab.seeds_needed(0.02, 0.02) == 10
    assert seeds_needed(0.02, 0.02, comparisons=8) > one  # Holm's strictest step: α/8
    assert seeds_needed(0.02, 0.02, paired=False) > one  # unpaired: both groups' variance
    assert seeds_needed(0.0, 0.02) is None and seeds_needed(1e-9, 1.0, most=1000) is None
    with pytest.raises(ValueError, match="`spread` must be >= 0"):
        seeds_needed(0.02, -1.0)


def test_a_comparison_states_what_it_could_detect() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.77, 0.02, 5)
    gain = base + rng.normal(0.005, 0.01, 5)  # a small gain, not detectable with 5 seeds
    (c,) = holm_adjusted([paired(gain.tolist(), base.tolist(), "none")])
    assert not c.significant and c.test == "paired"
    d = (gain - base).std(ddof=1)
    assert c.spread == pytest.approx(d)
    assert c.detectable == pytest.approx(detectable_difference(d, 5))
    assert c.seeds_needed == seeds_needed(c.difference, d)


# -- the choice ------------------------------------------------------------------------------


def _group(name: str, p: float, val: list[float]) -> ArmSummary:
    n = len(val)
    return ArmSummary(
        arm="dropout" if p > 0 else "none",
        p=p,
        input_p=0.0,
        max_norm=None,
        n_seeds=n,
        train_acc_mean=1.0,
        train_acc_ci95=(math.nan, math.nan),
        test_acc_mean=0.9,
        test_acc_ci95=(math.nan, math.nan),
        test_acc_std=0.01,
        best_test_acc_mean=0.9,
        gap_mean=0.1,
        vs_baseline=None,
        name=name,
        seeds=tuple(range(n)),
        val_acc_mean=float(np.mean(val)),
        val_scores=tuple(val),
        test_scores=(0.9,) * n,
    )


def test_ties_are_reported_and_never_broken_by_list_order() -> None:
    # The breast-cancer case: every rate at the same validation accuracy.
    same = [0.9875, 0.975, 1.0, 0.9875, 0.9875]
    groups = [_group("none", 0.0, same)]
    groups += [_group(f"dropout p={p:g}", p, same) for p in (0.1, 0.3, 0.5)]
    for order in permutations(groups[1:]):
        best = best_rate([groups[0], *order])
        assert best is not None and best.summary.name == "none"
        assert set(best.tied) == {g.name for g in groups}
        assert best.evidence.startswith("best: no dropout (p = 0), chosen on validation")
        assert best.tied == ("none", "dropout p=0.1", "dropout p=0.3", "dropout p=0.5")
        assert "tied with dropout p=0.1, dropout p=0.3, dropout p=0.5" in best.evidence
    # Reversing the list (the baseline last) changes nothing either: the rule is the content.
    assert best_rate(groups[::-1]) is not None
    assert best_rate(groups[::-1]).summary.name == "none"  # type: ignore[union-attr]


def test_a_clear_winner_is_chosen_alone() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0.80, 0.01, 10)
    groups = [
        _group("none", 0.0, base.tolist()),
        _group("dropout p=0.3", 0.3, (base + 0.05 + rng.normal(0, 0.005, 10)).tolist()),
        _group("dropout p=0.5", 0.5, (base + 0.02 + rng.normal(0, 0.005, 10)).tolist()),
    ]
    best = best_rate(groups)
    assert best is not None and best.summary.name == best.top == "dropout p=0.3"
    assert best.tied == ("dropout p=0.3",) and not best.provisional


# -- rates the lab refuses --------------------------------------------------------------------


def test_a_rate_of_one_is_refused_with_its_reason() -> None:
    reason = r"must be in \[0, 1\) for the lab, got 1.0: p = 1 drops every unit"
    with pytest.raises(ValueError, match=f"`rates` {reason}"):
        lab.plan_sweep(rates=[0.0, 1.0], seeds=1, epochs=1)
    with pytest.raises(ValueError, match=f"`input_p` {reason}"):
        lab.plan_sweep(rates=[0.0], input_p=1.0, seeds=1, epochs=1)
    with pytest.raises(ValueError, match=f"`p` {reason}"):
        lab.plan_demo(p=1.0, seeds=1, epochs=1)
    with pytest.raises(ValueError, match=f"`p` {reason}"):
        lab.plan_compare(arms=["none", "dropout"], p=1.0, seeds=1, epochs=1)
    result = CliRunner().invoke(app, ["sweep", "--rates", "0,1", "--epochs", "1"])
    assert result.exit_code == 2 and "p = 1 drops every unit" in result.output
    # the layers keep torch's behaviour: p = 1 gives zeros
    assert torch.count_nonzero(nn.Dropout(1.0)(torch.ones(4))) == 0


# -- whole experiments whose truth is known ---------------------------------------------------


def _rules(e: lab.Experiment) -> set[str]:
    return {f.rule for f in e.findings}


def test_regression_that_overfits_is_overfitting_that_dropout_reduces(
    tmp_path: Path, one_thread: None
) -> None:
    # The field report: sklearn's diabetes data, an MLP 10-64-64-1, rates 0/0.3/0.5, 60 epochs.
    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    e = lab.sweep(
        data=(x, y),
        task="regression",
        hidden=(64, 64),
        rates=[0, 0.3, 0.5],
        seeds=5,
        epochs=60,
        store=tmp_path / "runs.sqlite",
    )
    assert e.best is not None and e.best.chosen_on == "validation"
    rules = _rules(e)
    assert "large_gap" in rules and "capacity" not in rules  # overfitting, not capacity
    (gap,) = [f for f in e.findings if f.rule == "large_gap"]
    assert "R² gap" in gap.message and "RMSE" in gap.message
    base, *dropout = e.summaries
    assert all(s.val_gap_mean < base.val_gap_mean for s in dropout)  # dropout narrows it
    assert all(s.test_acc_mean > base.test_acc_mean for s in dropout)
    row = e.summary[0]
    assert {"train_r2_mean", "val_r2_mean", "test_r2_mean", "val_rmse_mean"} <= set(row)
    assert not any(key.endswith("acc_mean") for key in row)
    assert "few_seeds" in rules and e.best.provisional  # 5 seeds: said so


@pytest.mark.slow
def test_the_case_study_grid_gives_no_advice_above_its_best(
    tmp_path: Path, one_thread: None
) -> None:
    # The case study (30 points, 500 units, 4000 epochs): dropout beats no dropout, and no
    # rate at or above the best is told to go higher.
    e = lab.sweep(rates=[0, 0.2, 0.4, 0.8], seeds=10, store=tmp_path / "runs.sqlite")
    assert e.best is not None and e.best.chosen_on == "test"
    base = e.summaries[0]
    assert "large_gap" in _rules(e) and "capacity" not in _rules(e)
    best_p = e.best.summary.p
    assert best_p > 0  # dropout helps the case study
    for finding in e.findings:
        if "upward" in finding.message or "raise" in finding.message:
            assert finding.numbers["best_p"] == max(s.p for s in e.summaries)
    chosen = e.best.summary
    assert chosen.vs_baseline is not None and chosen.vs_baseline.significant
    assert chosen.test_acc_mean > base.test_acc_mean


def test_a_model_that_cannot_fit_is_a_capacity_problem(tmp_path: Path, one_thread: None) -> None:
    # A linear classifier on concentric circles cannot fit them; dropout changes nothing.
    x, y = make_circles(600, noise=0.1, factor=0.5, random_state=0)

    def linear(p: float) -> nn.Module:
        return nn.Sequential(nn.Dropout(p), nn.Linear(2, 2))

    e = lab.sweep(
        data=(x.astype(np.float32), y),
        model=linear,
        rates=[0, 0.2, 0.5],
        seeds=5,
        epochs=30,
        store=tmp_path / "runs.sqlite",
    )
    assert "capacity" in _rules(e) and "large_gap" not in _rules(e)
    assert e.best is not None and e.best.summary.name == "none"
    (curve,) = [f for f in e.findings if f.rule == "rate_curve"]
    assert "upward" not in curve.message


def test_no_effect_is_a_tie_and_the_simplest_wins(tmp_path: Path, one_thread: None) -> None:
    # breast_cancer with a small MLP: the rates tie on validation, no dropout is chosen.
    e = lab.sweep(
        "breast_cancer",
        hidden=16,
        rates=[0, 0.2, 0.5],
        seeds=5,
        epochs=20,
        validation=0.2,
        store=tmp_path / "runs.sqlite",
    )
    assert e.best is not None and e.best.summary.name == "none"
    assert len(e.best.tied) >= 2 and e.best.evidence.startswith("best: no dropout (p = 0)")
    assert "large_gap" not in _rules(e) and "capacity" not in _rules(e)
    held = [c for c in e.comparisons if c["compared_on"] != "validation"]
    assert held == []  # the groups are compared on validation only
    assert e.best.held_out is None  # the baseline won: nothing to hold out against
