"""The diagnosis rules one at a time, on groups built directly (no runs, no training)."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from dropkit import checks
from dropkit.lab import results
from dropkit.lab.results import diagnosis
from dropkit.lab.results.diagnosis import (
    RULES,
    Diagnosis,
    Thresholds,
    check_baseline_gap,
    check_bn_order,
    check_capacity,
    check_diverged,
    check_more_epochs,
    check_no_convergence,
    check_not_converged,
    check_rate_curve,
    check_seeds,
    diagnose,
)
from dropkit.lab.results.summary import ArmSummary, compare_scores

T = Thresholds()
SEEDS = tuple(range(10))


def _scores(name: str, mean: float, sd: float, n: int) -> tuple[float, ...]:
    """``n`` per-seed scores with exactly this mean and sample standard deviation: a fixed
    normal draw per group name, standardized (so two groups' differences vary by seed)."""
    if n == 1:
        return (mean,)
    z = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(n)
    z = (z - z.mean()) / z.std(ddof=1)
    return tuple(float(v) for v in mean + sd * z)


def group(
    name: str,
    p: float = 0.0,
    *,
    train: float = 1.0,
    test: float = 0.8,
    val: float = math.nan,
    sd: float = 0.01,
    **kw: Any,
) -> ArmSummary:
    """A group summary with only what the rules read; ``arm`` follows ``p`` unless given.

    Its per-seed test (and, with ``val``, validation) scores have mean ``test`` (``val``) and
    standard deviation ``sd`` over ``n_seeds`` seeds (10 unless given).
    """
    n = kw.get("n_seeds", 10)
    values: dict[str, Any] = {
        "arm": ("dropout" if p > 0 else "none"),
        "p": p,
        "input_p": 0.0,
        "max_norm": None,
        "n_seeds": n,
        "train_acc_mean": train,
        "train_acc_ci95": (math.nan, math.nan),
        "test_acc_mean": test,
        "test_acc_ci95": (math.nan, math.nan),
        "test_acc_std": sd,
        "best_test_acc_mean": test,
        "gap_mean": train - test,
        "vs_baseline": None,
        "name": name,
        "epochs": 100,
        "train_loss_mean": 0.05,
        "seeds": SEEDS[:n],
        "test_scores": _scores(name, test, sd, n),
        "val_acc_mean": val,
        "val_gap_mean": train - val,
        "val_scores": _scores(name + "/val", val, sd, n) if math.isfinite(val) else (math.nan,) * n,
    }
    values.update(kw)
    return ArmSummary(**values)


def versus(s: ArmSummary, base: ArmSummary, on: str = "test") -> ArmSummary:
    """``s`` with its comparison against ``base`` filled in, as summarize does."""
    return replace(s, vs_baseline=compare_scores(s, base, on))


BASE = group("none", train=1.0, test=0.80)  # fits, gap 0.20


class TestDiagnosisType:
    def test_to_dict_keys_are_the_json_contract(self) -> None:
        finding = Diagnosis("large_gap", "warning", "m", {"gap": math.nan, "p": 0.4}, "g")
        data = finding.to_dict()
        assert list(data) == ["rule", "severity", "message", "numbers", "group"]
        assert data["numbers"] == {"gap": None, "p": 0.4}
        json.dumps(data, allow_nan=False)  # raises on a NaN left in

    def test_names(self) -> None:
        assert results.Finding is Diagnosis and results.Diagnosis is Diagnosis
        assert results.diagnose is diagnose and results.Thresholds is Thresholds
        assert checks.Finding is not Diagnosis  # the model checks' finding is another type

    def test_diagnose_runs_every_rule_in_order(self) -> None:
        summaries = [
            group("none", train=1.0, test=0.7, n_nan=1),
            group("dropout p=0.2", 0.2, train=0.99, test=0.75),
            group("dropout p=0.4", 0.4, train=0.98, test=0.76, n_seeds=1),
        ]
        expected = [f for rule in RULES for f in rule(summaries, T)]
        assert diagnose(summaries) == expected
        rules = ["diverged", "one_seed", "few_seeds", "large_gap", "rate_curve"]
        assert [f.rule for f in expected] == rules
        assert diagnose([]) == []

    def test_every_rule_is_public_and_listed(self) -> None:
        listed = {rule.__name__ for rule in RULES}
        assert listed == {name for name in diagnosis.__all__ if name.startswith("check_")}


class TestDiverged:
    def test_one_warning_per_group_with_its_counts(self) -> None:
        findings = check_diverged(
            [group("none", n_nan=2), group("dropout p=0.5", 0.5), group("l2", n_nan=10)], T
        )
        assert [(f.group, f.numbers) for f in findings] == [
            ("none", {"n_nan": 2, "n_runs": 10}),
            ("l2", {"n_nan": 10, "n_runs": 10}),
        ]
        assert "2 of 10 runs" in findings[0].message
        assert findings[0].message.endswith("lower the learning rate")  # no rate to lower

    def test_a_dropout_group_may_lower_its_rate(self) -> None:
        (finding,) = check_diverged([group("dropout p=0.9", 0.9, n_nan=1)], T)
        assert finding.message.endswith("lower the learning rate or the rate")


class TestSeeds:
    def test_groups_without_two_usable_seeds(self) -> None:
        summaries = [group("none", n_seeds=1), group("a", n_seeds=3, n_nan=2), group("b")]
        (finding,) = check_seeds(summaries, T)
        assert (finding.rule, finding.severity, finding.group) == ("one_seed", "info", None)
        assert "none (1), a (1)" in finding.message
        assert finding.numbers == {"groups": 2, "minimum": 10}

    def test_below_the_minimum_for_a_claim(self) -> None:
        (finding,) = check_seeds([group("none", n_seeds=2), group("d", 0.5, n_seeds=5)], T)
        assert (finding.rule, finding.severity) == ("few_seeds", "warning")
        assert finding.numbers == {"groups": 2, "fewest_seeds": 2, "minimum": 10}
        assert "only 2 or more usable seeds, below the 10 a claim needs" in finding.message
        assert check_seeds([group("none"), group("d", 0.5)], T) == []  # 10 seeds each


class TestBaselineGap:
    def test_overfitting_baseline(self) -> None:
        (finding,) = check_baseline_gap([BASE], T)
        assert (finding.rule, finding.group) == ("large_gap", "none")
        assert finding.numbers == pytest.approx(
            {"gap": 0.2, "train_acc": 1.0, "test_acc": 0.8, "threshold": 0.1}
        )
        assert "regularize it" in finding.message

    def test_a_large_gap_is_overfitting_whatever_the_train_score(self) -> None:
        # A classifier that fits 0.88 of its rows and tests at chance: overfitting, not capacity.
        at_chance = [group("none", train=0.88, test=0.5)]
        assert [f.rule for f in diagnose(at_chance)] == ["large_gap"]
        # The regression of the diabetes data: train R² 0.81, test R² 0.27.
        diabetes = [group("none", train=0.81, test=0.27, task="regression")]
        (finding,) = diagnose(diabetes)
        assert finding.rule == "large_gap" and "train–test R² gap 0.540" in finding.message

    def test_the_gap_to_the_choosing_split(self) -> None:
        # Validation chooses: the gap is train − validation, whatever the test score.
        summaries = [group("none", train=1.0, test=0.95, val=0.8)]
        (finding,) = check_baseline_gap(summaries, T)
        assert "train–validation gap 0.200" in finding.message
        assert finding.numbers["validation_acc"] == pytest.approx(0.8)
        assert check_baseline_gap([group("none", train=1.0, test=0.7, val=0.95)], T) == []

    def test_silent_below_the_threshold(self) -> None:
        assert check_baseline_gap([group("none", train=1.0, test=0.95)], T) == []
        assert check_baseline_gap([BASE], Thresholds(large_gap=0.25)) == []


class TestCapacity:
    def test_a_baseline_that_cannot_fit(self) -> None:
        (finding,) = check_capacity([group("none", train=0.7, test=0.65, train_loss_mean=0.6)], T)
        assert finding.numbers == pytest.approx(
            {
                "train_acc": 0.7,
                "gap": 0.05,
                "train_loss": 0.6,
                "threshold": 0.9,
                "gap_threshold": 0.1,
            }
        )
        assert "0.700" in finding.message and "dropout will not fix" in finding.message

    @pytest.mark.parametrize("train", [0.9, 1.0, math.nan])
    def test_silent_when_it_fits_or_is_unknown(self, train: float) -> None:
        assert check_capacity([group("none", train=train, test=0.85)], T) == []

    def test_silent_when_the_gap_is_large(self) -> None:
        assert check_capacity([group("none", train=0.8, test=0.5)], T) == []

    def test_silent_when_a_regularizer_helps_significantly(self) -> None:
        base = group("none", train=0.7, test=0.65)
        helped = versus(group("dropout p=0.3", 0.3, train=0.68, test=0.7), base)
        assert helped.vs_baseline is not None and helped.vs_baseline.significant
        assert check_capacity([base, helped], T) == []
        same = versus(group("dropout p=0.3", 0.3, train=0.68, test=0.651), base)
        assert [f.rule for f in check_capacity([base, same], T)] == ["capacity"]

    def test_thresholds_per_task(self) -> None:
        assert check_capacity([group("none", train=0.95, test=0.9)], Thresholds(fit_train_acc=0.99))
        # R² of 0.6 with a small gap fits (above 0.5); 0.4 explains too little.
        assert check_capacity([group("none", train=0.6, test=0.55, task="regression")], T) == []
        (finding,) = check_capacity([group("none", train=0.4, test=0.35, task="regression")], T)
        assert finding.numbers["threshold"] == 0.5 and "train R² of 0.400" in finding.message


def family(*scores: tuple[float, float], base_test: float | None = None) -> list[ArmSummary]:
    """A rate grid: ``(p, test score)`` pairs, the rate-0 group first as the baseline."""
    groups = []
    for p, test in scores:
        name = "none" if p == 0 else f"dropout p={p:g}"
        groups.append(group(name, p, train=0.99 - p / 10, test=test))
    return groups


class TestRateCurve:
    def test_best_at_the_largest_rate_extends_the_grid_upward(self) -> None:
        summaries = family((0, 0.77), (0.2, 0.78), (0.4, 0.80))
        (finding,) = check_rate_curve(summaries, T)
        assert (finding.rule, finding.severity, finding.group) == (
            "rate_curve",
            "warning",
            "dropout p=0.4",
        )
        assert "extend the grid upward (e.g. to p=0.6)" in finding.message
        assert finding.numbers["best_p"] == 0.4 and finding.numbers["highest_p"] == 0.4

    def test_the_case_study_grid_never_raises_above_the_best(self) -> None:
        # The case-study shape: the best rate inside the grid, the worst at its top edge.
        scores = [0.767, 0.775, 0.785, 0.79, 0.787, 0.78, 0.772, 0.76, 0.731]
        summaries = family(*((i / 10, s) for i, s in enumerate(scores)))
        findings = diagnose(summaries)
        assert not any("raise" in f.message or "upward" in f.message for f in findings)
        (curve,) = [f for f in findings if f.rule == "rate_curve"]
        assert curve.group == "dropout p=0.3" and "has found its optimum" in curve.message
        assert "(within noise of it: p=0.2, 0.4)" in curve.message  # named, not chosen

    def test_no_rate_beats_zero(self) -> None:
        (finding,) = check_rate_curve(family((0, 0.8), (0.2, 0.78), (0.5, 0.75)), T)
        assert finding.group == "none" and "dropout does not help at these rates" in finding.message
        assert "rates below p=0.2" in finding.message

    def test_best_at_the_smallest_positive_rate(self) -> None:
        summaries = [BASE, *family((0.1, 0.85), (0.3, 0.8), (0.5, 0.7))]
        summaries = [s for s in summaries if s.p > 0 or s is BASE][1:]  # no rate 0 in the grid
        (finding,) = check_rate_curve(
            [group("l2", arm="l2", regularizers=(("l2", 1e-4),)), *summaries], T
        )
        assert "smallest rate tried" in finding.message and "downward" in finding.message

    def test_a_single_rate_suggests_a_sweep(self) -> None:
        summaries = [BASE, group("dropout p=0.4", 0.4, train=0.97, test=0.79)]
        (finding,) = check_rate_curve(summaries, T)
        assert (finding.rule, finding.severity, finding.group) == (
            "single_rate",
            "info",
            "dropout p=0.4",
        )
        assert finding.numbers == pytest.approx(
            {"p": 0.4, "test_acc": 0.79, "gap": 0.18, "train_acc": 0.97}
        )
        message = finding.message
        assert "the only dropout rate tried" in message and "sweep several rates" in message
        assert "raise the rate" not in message and "lower the rate" not in message

    def test_families_are_judged_apart(self) -> None:
        l2 = (("l2", 1e-4),)
        summaries = [
            BASE,
            group("dropout p=0.2", 0.2, train=0.99, test=0.8),
            group("dropout p=0.4", 0.4, train=0.98, test=0.83),
            group("dropout+l2 p=0.4", 0.4, arm="dropout+l2", regularizers=l2, test=0.78),
        ]
        findings = check_rate_curve(summaries, T)
        assert [(f.rule, f.group) for f in findings] == [
            ("rate_curve", "dropout p=0.4"),
            ("single_rate", "dropout+l2 p=0.4"),
        ]

    def test_a_flat_curve_is_no_measurable_difference(self) -> None:
        # Every rate within noise of the top (sd 0.03 over 10 seeds): no edge advice.
        summaries = family((0, 0.800), (0.2, 0.802), (0.5, 0.805))
        summaries = [replace(s, test_scores=_scores(s.name, s.test_acc_mean, 0.03, 10))
                     for s in summaries]  # fmt: skip
        (finding,) = check_rate_curve(summaries, T)
        assert finding.severity == "info" and "does not differ measurably" in finding.message
        assert "upward" not in finding.message and finding.group == "dropout p=0.5"

    def test_silent_without_a_rate(self) -> None:
        assert check_rate_curve([BASE, group("l2", arm="l2", test=0.7)], T) == []

    def test_on_validation_when_it_chooses(self) -> None:
        # Validation peaks inside the grid; the test set (not the chooser) peaks at the edge.
        summaries = [
            group("none", test=0.70, val=0.70),
            group("dropout p=0.2", 0.2, test=0.72, val=0.80),
            group("dropout p=0.4", 0.4, test=0.90, val=0.72),
        ]
        (finding,) = check_rate_curve(summaries, T)
        assert finding.group == "dropout p=0.2" and "validation accuracy" in finding.message


class TestNoConvergence:
    def test_a_group_that_cannot_fit_what_the_baseline_fits(self) -> None:
        summaries = [BASE, group("dropout p=0.8", 0.8, train=0.6, test=0.7)]
        (finding,) = check_no_convergence(summaries, T)
        assert finding.numbers == pytest.approx(
            {
                "train_acc": 0.6,
                "baseline_train_acc": 1.0,
                "test_acc": 0.7,
                "baseline_test_acc": 0.8,
                "threshold": 0.1,
            }
        )
        assert "0.400 below" in finding.message and finding.message.endswith("lower the rate")

    def test_a_strength_when_there_is_no_rate(self) -> None:
        summaries = [BASE, group("l2=0.1", arm="l2", train=0.7, test=0.7)]
        (finding,) = check_no_convergence(summaries, T)
        assert finding.message.endswith("lower the strength")

    def test_silent_when_it_tests_better_or_the_baseline_cannot_fit(self) -> None:
        better = [BASE, group("dropout p=0.8", 0.8, train=0.6, test=0.81)]
        assert check_no_convergence(better, T) == []
        small_drop = [BASE, group("dropout p=0.5", 0.5, train=0.91, test=0.7)]
        assert check_no_convergence(small_drop, T) == []
        incapable = [group("none", train=0.85), group("d", 0.8, train=0.6, test=0.5)]
        assert check_no_convergence(incapable, T) == []


class TestMoreEpochs:
    def test_the_best_dropout_group_against_the_baseline(self) -> None:
        summaries = [
            group("none", converge_epoch_mean=20.0),
            group("dropout p=0.2", 0.2, test=0.82, converge_epoch_mean=90.0),
            group("dropout p=0.4", 0.4, test=0.85, converge_epoch_mean=50.0),
        ]
        (finding,) = check_more_epochs(summaries, T)
        assert finding.group == "dropout p=0.4"  # the best test accuracy, not the slowest
        assert finding.numbers == pytest.approx(
            {"ratio": 2.5, "epochs": 50.0, "baseline_epochs": 20.0, "threshold": 1.5}
        )
        assert "2.5×" in finding.message

    def test_silent_below_the_ratio_or_without_curves(self) -> None:
        fast = [group("none", converge_epoch_mean=40.0), group("d", 0.4, converge_epoch_mean=50.0)]
        assert check_more_epochs(fast, T) == []
        assert check_more_epochs(fast, Thresholds(slower_ratio=1.2))
        unknown = [group("none"), group("d", 0.4, converge_epoch_mean=50.0)]
        assert check_more_epochs(unknown, T) == []


class TestNotConverged:
    def test_groups_converging_in_their_last_epochs(self) -> None:
        summaries = [
            group("none", converge_epoch_mean=95.0),
            group("a", 0.4, converge_epoch_mean=50.0),
            group("b", 0.5, converge_epoch_mean=90.0),
        ]
        (finding,) = check_not_converged(summaries, T)
        assert "none (95), b (90)" in finding.message and "last 10% of the 100" in finding.message
        assert finding.numbers == {"groups": 2, "epochs": 100, "threshold": 0.9}
        assert check_not_converged([group("none", converge_epoch_mean=89.0)], T) == []


class TestBnOrder:
    @staticmethod
    def pair(after: float, before: float, *, n: int = 10) -> list[ArmSummary]:
        bn, bn_first = (("batchnorm", 1.0),), (("dropout_bn", 1.0),)
        return [
            group("batchnorm", regularizers=bn),
            group("bn_dropout p=0.5", 0.5, test=after, regularizers=bn, n_seeds=n),
            group("dropout_bn p=0.5", 0.5, test=before, regularizers=bn_first, n_seeds=n),
        ]

    def test_paired_by_seed(self) -> None:
        summaries = self.pair(0.86, 0.80)
        (finding,) = check_bn_order(summaries, T)
        reference = compare_scores(summaries[1], summaries[2], "test")
        assert reference.test == "paired"
        assert finding.numbers["p_value"] == pytest.approx(reference.p_value, rel=1e-12)
        assert finding.numbers["difference"] == pytest.approx(0.06)
        assert finding.severity == "warning" and "put dropout after BN" in finding.message

    def test_no_effect_and_no_test(self) -> None:
        (same,) = check_bn_order(self.pair(0.801, 0.80), T)
        assert same.severity == "info" and "no significant order effect" in same.message
        assert same.numbers["difference"] == pytest.approx(0.001)
        (few,) = check_bn_order(self.pair(0.86, 0.80, n=1), T)
        assert "not enough seeds" in few.message and math.isnan(few.numbers["p_value"])

    def test_only_at_a_rate_both_orders_ran(self) -> None:
        summaries = self.pair(0.86, 0.80)
        other_rate = [
            summaries[0],
            summaries[1],
            group("d", 0.3, regularizers=(("dropout_bn", 1.0),)),
        ]
        assert check_bn_order(other_rate, T) == []


class TestClassificationWording:
    """Classification messages pinned word for word (the report's text)."""

    def test_messages(self) -> None:
        summaries = [
            group("none", train=1.0, test=0.8, converge_epoch_mean=10.0),
            group("dropout p=0.5", 0.5, train=0.7, test=0.75, converge_epoch_mean=95.0),
            group("dropout p=0.2", 0.2, train=0.95, test=0.85, converge_epoch_mean=40.0),
        ]
        messages = {f.rule: f.message for f in diagnose(summaries)}
        assert messages["no_convergence"] == (
            "dropout p=0.5: training does not converge: train accuracy 0.700 is 0.300 below the "
            "baseline's 1.000 (threshold 0.10) and its test accuracy 0.750 is no better than the "
            "baseline's 0.800: lower the rate"
        )
        assert messages["more_epochs"] == (
            "dropout p=0.2 takes 4.0× the baseline's epochs to converge (40 vs 10 epochs to come "
            "within 0.01 of the best smoothed test accuracy; reported from 1.5×, dropout "
            "typically needs 2–3×): budget more epochs"
        )
        assert messages["rate_curve"] == (
            "the grid has found its optimum: the test accuracy peaks inside it, at p=0.2 (test "
            "accuracy 0.850); rates tried: 0, 0.2, 0.5: a finer grid around it is all that is "
            "left to try; the train–test gap goes from 0.200 at p=0 to 0.100 at p=0.2"
        )
        (capacity,) = diagnose([group("none", train=0.5, test=0.45)])
        assert capacity.message == (
            "the baseline (none) fits only 0.500 of its training set (mean final train accuracy "
            "< 0.90; train–test gap 0.050 < 0.10; train loss 0.050), and no regularizer scored "
            "significantly better: the model cannot fit its data, a capacity (or optimization) "
            "problem that dropout will not fix: widen or deepen the model, or train longer"
        )
        single = diagnose([BASE, group("dropout p=0.5", 0.5, train=1.0, test=0.8)])
        assert [f.message for f in single] == [
            "the baseline (none) overfits: train–test gap 0.200 (train 1.000, test 0.800; "
            "threshold 0.10): regularize it, e.g. with dropout",
            "dropout p=0.5: p=0.5 is the only dropout rate tried (test accuracy 0.800, "
            "train–test gap 0.200); one rate cannot show which way to move it (a higher rate "
            "may close a gap or stop the model fitting, a lower one may score better or overfit "
            "more): sweep several rates, e.g. 0.1 to 0.7, to see where the test accuracy peaks",
        ]
