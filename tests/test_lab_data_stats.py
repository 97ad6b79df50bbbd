"""Data sets (shapes, splits, CSV parsing) and the statistics over seeds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, SweepSpec, TrainSpec
from dropkit.lab.plan.data import DataError, load_dataset
from dropkit.lab.results import (
    Diagnosis,
    best_rate,
    compare,
    diagnose,
    epochs_to_converge,
    group_label,
    holm,
    mean_ci,
    summarize,
    welch,
)
from dropkit.lab.store import StoredRun


class TestData:
    def test_circles_is_the_case_study(self) -> None:
        from sklearn.datasets import make_circles

        data = load_dataset(DataSpec("circles"))
        x, y = make_circles(n_samples=100, noise=0.1, random_state=1)
        np.testing.assert_array_equal(data.x_train, x[:30].astype(np.float32))
        np.testing.assert_array_equal(data.y_test, y[30:])
        assert (data.n_classes, data.n_features) == (2, 2)

    @pytest.mark.parametrize(
        ("name", "features", "classes", "samples"),
        [
            ("moons", 2, 2, 200),
            ("digits", 64, 10, 1797),
            ("breast_cancer", 30, 2, 569),
            ("wine", 13, 3, 178),
        ],
    )
    def test_builtins(self, name: str, features: int, classes: int, samples: int) -> None:
        data = load_dataset(DataSpec(name))
        assert data.n_features == features and data.n_classes == classes
        assert len(data.y_train) + len(data.y_test) == samples
        assert len(data.y_test) == math.ceil(0.3 * samples)
        assert data.x_train.dtype == np.float32
        if name != "moons":  # standardized with the training set's statistics
            np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-5)

    def test_split_is_seeded(self) -> None:
        a, b = load_dataset(DataSpec("wine")), load_dataset(DataSpec("wine"))
        np.testing.assert_array_equal(a.y_test, b.y_test)
        c = load_dataset(DataSpec("wine", split_seed=1))
        assert not np.array_equal(a.x_test, c.x_test)

    def test_csv_labels_and_bom(self, tmp_path: Path) -> None:
        path = tmp_path / "d.csv"
        rows = [f"{i},{i * 2},{'cat' if i % 3 else 'dog'}" for i in range(30)]
        path.write_text("\ufeffx, y ,kind\n" + "\n".join(rows) + "\n\n", encoding="utf-8")
        data = load_dataset(DataSpec(str(path), target="kind"))
        assert data.feature_names == ("x", "y") and data.n_classes == 2
        assert len(data.y_train) + len(data.y_test) == 30

    def test_csv_ragged_row(self, tmp_path: Path) -> None:
        path = tmp_path / "d.csv"
        path.write_text("a,b,y\n1,2,0\n1,2\n")
        with pytest.raises(DataError, match="line 3: 2 fields, the header has 3"):
            load_dataset(DataSpec(str(path), target="y"))

    def test_csv_needs_target(self, tmp_path: Path) -> None:
        path = tmp_path / "d.csv"
        path.write_text("a,y\n1,0\n")
        with pytest.raises(DataError, match="`target` is required"):
            load_dataset(DataSpec(str(path)))

    def test_single_class(self, tmp_path: Path) -> None:
        path = tmp_path / "d.csv"
        path.write_text("a,y\n1,0\n2,0\n3,0\n4,0\n")
        with pytest.raises(DataError, match="single class"):
            load_dataset(DataSpec(str(path), target="y"))


class TestConfig:
    def test_sweep_expands_rates_times_seeds(self) -> None:
        spec = SweepSpec(rates=(0.0, 0.2, 0.2), seeds=3)
        runs = list(spec.runs())
        assert len(runs) == 6 and {r.p for r in runs} == {0.0, 0.2}
        assert len({r.key() for r in runs}) == 6

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"seeds": 0}, "`seeds` must be an int >= 1"),
            ({"rates": (0.1, 2.0)}, "`rates` must be in"),
        ],
    )
    def test_sweep_validation(self, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
        with pytest.raises(ValueError, match=message):
            SweepSpec(**kwargs)

    def test_run_validation(self) -> None:
        with pytest.raises(ValueError, match="`input_p` must be in"):
            RunConfig(input_p=-0.1)
        with pytest.raises(ValueError, match="`max_norm` must be a finite number > 0"):
            RunConfig(max_norm=0.0)
        with pytest.raises(ValueError, match="`epochs` must be an int >= 1"):
            TrainSpec(epochs=0)
        with pytest.raises(ValueError, match="`hidden`"):
            ModelSpec(hidden=())


class TestStats:
    def test_mean_ci_matches_the_t_interval(self) -> None:
        values = [0.70, 0.75, 0.72, 0.78, 0.74]
        mean, low, high = mean_ci(values)
        expected = sps.t.interval(0.95, 4, loc=np.mean(values), scale=sps.sem(values))
        assert mean == pytest.approx(np.mean(values))
        assert (low, high) == pytest.approx(expected)

    def test_mean_ci_edge_cases(self) -> None:
        assert all(math.isnan(v) for v in mean_ci([]))
        mean, low, high = mean_ci([0.5, float("nan")])
        assert mean == 0.5 and math.isnan(low) and math.isnan(high)

    def test_welch_matches_scipy(self) -> None:
        a, b = [0.80, 0.82, 0.79, 0.81], [0.76, 0.77, 0.77, 0.78]
        result = welch(a, b, "none")
        reference = sps.ttest_ind(a, b, equal_var=False)
        assert result.p_value == pytest.approx(reference.pvalue)
        assert result.significant and result.difference == pytest.approx(0.035)

    def test_welch_constant_samples(self) -> None:
        """No spread in either sample: no test, and never a claim of significance."""
        for a, b in (([1.0, 1.0], [1.0, 1.0]), ([1.0, 1.0], [0.5, 0.5]), ([1.0], [0.5, 0.6])):
            result = welch(a, b, "none")
            assert math.isnan(result.p_value) and not result.significant

    @staticmethod
    def _run(p: float, seed: int, test: float, train: float = 1.0) -> StoredRun:
        config = RunConfig(p=p, seed=seed)
        return StoredRun(config.key(), config, train, test, 0.1, 0.5, test, 10, 1.0)

    def test_summarize_and_best_rate(self) -> None:
        jitter = [0.0, 0.01, -0.01, 0.005, 0.0, -0.005, 0.01, 0.0, -0.01, 0.0]  # mean 0
        runs = [self._run(0.0, s, 0.76 + 0.002 * s) for s in range(10)]
        runs += [self._run(0.4, s, 0.80 + 0.002 * s + jitter[s], train=0.97) for s in range(10)]
        summaries = summarize(runs)
        assert [(s.arm, s.p, s.n_seeds) for s in summaries] == [
            ("none", 0.0, 10),
            ("dropout", 0.4, 10),
        ]
        assert summaries[1].gap_mean == pytest.approx(0.97 - 0.809)
        assert summaries[1].vs_baseline is not None and summaries[1].vs_baseline.significant
        best = best_rate(summaries)
        assert best is not None and best.summary.p == 0.4
        assert "significant at 0.05" in best.evidence
        assert summaries[1].to_dict()["vs_baseline"]["significant"] is True

    def test_best_rate_not_significant(self) -> None:
        runs = [self._run(0.0, s, 0.76 + 0.02 * (s % 2)) for s in range(4)]
        runs += [self._run(0.2, s, 0.77 + 0.02 * (s % 2)) for s in range(4)]
        best = best_rate(summarize(runs))
        # Every seed gains exactly +0.01: the sign test (p = 2 · 0.5^4) cannot tell the two
        # apart, so they tie and the simpler (no dropout) is chosen, the top's test stated.
        assert best is not None and best.summary.name == "none" and best.top == "dropout p=0.2"
        assert best.tied == ("none", "dropout p=0.2") and best.provisional
        assert best.evidence.startswith("best: no dropout (p = 0), test accuracy 0.770")
        assert "the top, dropout p=0.2, +0.010 against none on test is NOT significant" in (
            best.evidence
        )
        assert "exact sign test p=0.12" in best.evidence
        assert "about 6 seeds per group would detect +0.010" in best.evidence

    def test_one_seed_has_no_interval(self) -> None:
        summaries = summarize([self._run(0.0, 0, 0.7), self._run(0.5, 0, 0.8)])
        best = best_rate(summaries)
        assert best is not None and "one seed" in best.evidence
        assert summaries[0].to_dict()["test_acc_ci95"] == [None, None]


def test_baseline_is_the_lowest_rate_without_a_none_group() -> None:
    def run(p: float, seed: int, test: float) -> StoredRun:
        config = RunConfig(p=p, input_p=0.2, seed=seed)
        return StoredRun(config.key(), config, 1.0, test, 0.1, 0.5, test, 10, 1.0)

    runs = [run(0.0, s, 0.70 + 0.01 * (s % 2)) for s in range(10)]
    runs += [run(0.4, s, 0.80 + 0.01 * (s % 3)) for s in range(10)]
    summaries = summarize(runs)
    assert summaries[0].arm == "input_dropout" and summaries[0].vs_baseline is None
    comparison = summaries[1].vs_baseline
    assert comparison is not None and comparison.baseline == "input_dropout input_p=0.2"
    best = best_rate(summaries)
    assert best is not None and "better than input_dropout input_p=0.2" in best.evidence


# -- comparisons, convergence and diagnosis ----------------------------------------------------


def _stored(
    config: RunConfig,
    test: float,
    train: float = 1.0,
    *,
    train_loss: float = 0.05,
    test_loss: float = 0.5,
    info: dict[str, float] | None = None,
) -> StoredRun:
    values = {
        "key": config.key(),
        "config": config,
        "train_acc": train,
        "test_acc": test,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "best_test_acc": test,
        "best_epoch": 10,
        "seconds": 1.0,
    }
    if info is not None:
        values["info"] = info
    return StoredRun(**values)


def _group(
    p: float, tests: list[float], train_acc: float = 1.0, seeds: range | None = None, **kwargs: Any
) -> list[StoredRun]:
    seeds = seeds if seeds is not None else range(len(tests))
    return [
        _stored(RunConfig(p=p, seed=seed, **kwargs), test, train_acc)
        for seed, test in zip(seeds, tests, strict=True)
    ]


class TestComparisons:
    def test_holm_textbook_example(self) -> None:
        """m = 4: sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005, 3·0.01, max(2·0.03, ·), max(1·0.04, ·)."""
        adjusted = holm([0.01, 0.04, 0.03, 0.005])
        assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
        nan_kept = holm([0.02, float("nan"), 0.5, 0.3])  # NaN is not counted: m = 3
        assert nan_kept[0] == pytest.approx(0.06) and math.isnan(nan_kept[1])
        assert nan_kept[2:] == pytest.approx([0.6, 0.6])
        assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
        assert holm([]) == []

    def test_paired_when_seeds_pair(self) -> None:
        base = [0.70, 0.74, 0.71, 0.77, 0.72]
        drop = [0.73, 0.76, 0.75, 0.78, 0.76]
        summaries = summarize(_group(0.0, base) + _group(0.4, drop))
        comparison = summaries[1].vs_baseline
        assert comparison is not None and comparison.test == "paired" and comparison.n == 5
        reference = sps.ttest_rel(drop, base)
        assert comparison.p_value == pytest.approx(reference.pvalue, rel=1e-12)
        assert comparison.t_statistic == pytest.approx(reference.statistic, rel=1e-12)
        assert comparison.p_adjusted == comparison.p_value  # one comparison: nothing to adjust
        assert comparison.difference == pytest.approx(np.mean(drop) - np.mean(base))

    def test_welch_when_seeds_differ(self) -> None:
        base = [0.70, 0.74, 0.71, 0.77, 0.72]
        drop = [0.73, 0.76, 0.75, 0.78]
        runs = _group(0.0, base) + _group(0.4, drop, seeds=range(10, 14))
        comparison = summarize(runs)[1].vs_baseline
        assert comparison is not None and comparison.test == "welch" and comparison.n == 9
        reference = sps.ttest_ind(drop, base, equal_var=False)
        assert comparison.p_value == pytest.approx(reference.pvalue, rel=1e-12)

    def test_paired_drops_diverged_pairs(self) -> None:
        base = [0.70, 0.74, 0.71, 0.77, 0.72]
        drop = [0.73, float("nan"), 0.75, 0.78, 0.76]
        comparison = compare(_group(0.4, drop), _group(0.0, base), "none")
        reference = sps.ttest_rel([0.73, 0.75, 0.78, 0.76], [0.70, 0.71, 0.77, 0.72])
        assert comparison.test == "paired" and comparison.n == 4
        assert comparison.p_value == pytest.approx(reference.pvalue, rel=1e-12)

    def test_holm_over_all_groups_decides_significance(self) -> None:
        base = [0.70, 0.72, 0.71, 0.73, 0.70, 0.72]
        groups = {
            0.2: [0.72, 0.72, 0.71, 0.75, 0.71, 0.74],  # raw p 0.034, adjusted 2 · 0.034
            0.4: [0.74, 0.76, 0.75, 0.76, 0.73, 0.75],
            0.6: [0.70, 0.73, 0.72, 0.72, 0.71, 0.73],
        }
        runs = _group(0.0, base)
        for p, tests in groups.items():
            runs += _group(p, tests)
        summaries = summarize(runs)
        raw = [sps.ttest_rel(tests, base).pvalue for tests in groups.values()]
        expected = holm(raw)
        got = [s.vs_baseline for s in summaries[1:]]
        assert [c.p_value for c in got if c] == pytest.approx(raw, rel=1e-12)
        assert [c.p_adjusted for c in got if c] == pytest.approx(expected, rel=1e-12)
        # One group is significant before the correction and not after it: the adjusted p rules.
        crossing = [c for c in got if c and c.p_value < 0.05 <= c.p_adjusted]
        assert crossing and not any(c.significant for c in crossing)
        assert [c.significant for c in got if c] == [p < 0.05 for p in expected]

    def test_nan_runs_are_counted_and_left_out(self) -> None:
        runs = _group(0.0, [0.70, 0.72, 0.74]) + _group(0.4, [0.80, float("nan"), 0.82])
        runs += _group(0.8, [float("nan"), float("nan"), float("nan")])
        summaries = summarize(runs)
        middle, dead = summaries[1], summaries[2]
        assert (middle.n_seeds, middle.n_nan, middle.n_valid) == (3, 1, 2)
        assert middle.test_acc_mean == pytest.approx(0.81)
        assert middle.train_acc_mean == pytest.approx(1.0)  # the diverged run's train acc too
        assert dead.n_nan == 3 and math.isnan(dead.test_acc_mean)
        assert dead.vs_baseline is not None and math.isnan(dead.vs_baseline.p_value)
        best = best_rate(summaries)
        # Two usable pairs (+0.10, +0.08): t = 9 on 1 degree of freedom, p ≈ 0.07, a tie.
        assert best is not None and best.top == "dropout p=0.4" and best.summary.p == 0.0
        findings = [f for f in diagnose(summaries) if f.rule == "diverged"]
        assert [f.group for f in findings] == ["dropout p=0.4", "dropout p=0.8"]
        assert "1 of 3 runs" in findings[0].message and "left out" in findings[0].message
        rows = [s.to_dict() for s in summaries]
        json.dumps(rows, allow_nan=False)  # raises if a NaN was left in
        assert rows[2]["test_acc_mean"] is None and rows[2]["vs_baseline"]["p_value"] is None

    def test_groups_are_configs_without_the_seed(self) -> None:
        runs = _group(0.4, [0.8, 0.81]) + _group(0.4, [0.7, 0.72], regularizers=(("l2", 1e-4),))
        runs += _group(0.0, [0.75, 0.76])
        names = [s.name for s in summarize(runs)]
        assert names == ["none", "dropout p=0.4", "dropout+l2=0.0001 p=0.4"]


class TestLabels:
    @pytest.mark.parametrize(
        ("kwargs", "label"),
        [
            ({}, "none"),
            ({"p": 0.4}, "dropout p=0.4"),
            ({"max_norm": 3.0}, "max_norm=3"),  # not "max_norm max_norm=3"
            ({"p": 0.4, "max_norm": 3.0}, "dropout+max_norm=3 p=0.4"),
            ({"input_p": 0.2}, "input_dropout input_p=0.2"),
            ({"p": 0.4, "input_p": 0.2}, "dropout+input_dropout p=0.4 input_p=0.2"),
            ({"regularizers": (("l2", 1e-4),)}, "l2=0.0001"),
            (
                {"p": 0.4, "max_norm": 2.5, "regularizers": (("l2", 1e-4),)},
                "dropout+max_norm=2.5+l2=0.0001 p=0.4",
            ),
            ({"regularizers": (("batchnorm", 1.0),)}, "batchnorm"),  # on/off: no number
            ({"p": 0.5, "regularizers": (("batchnorm", 1.0),)}, "bn_dropout p=0.5"),
        ],
    )
    def test_each_strength_is_shown_once(self, kwargs: dict[str, Any], label: str) -> None:
        assert group_label(RunConfig(**kwargs)) == label

    def test_summaries_carry_the_label(self) -> None:
        runs = _group(0.0, [0.75, 0.76]) + _group(0.0, [0.77, 0.78], max_norm=3.0)
        assert [s.name for s in summarize(runs)] == ["none", "max_norm=3"]


class TestConvergence:
    def test_linear_rise_then_plateau(self) -> None:
        curve = np.minimum(np.arange(1, 201) / 100, 0.8)
        # Without smoothing: the first epoch with acc >= 0.8 - 0.01 is epoch 79.
        assert epochs_to_converge(curve, window=1) == 79
        # Default window ceil(0.02 · 200) = 4: the mean of epochs 78..81 is 0.7925 >= 0.79,
        # that of 77..80 is 0.785.
        assert epochs_to_converge(curve) == 81

    def test_overfitting_curve_converges_at_its_peak(self) -> None:
        epochs = np.arange(1, 101)
        curve = np.where(epochs <= 30, 0.5 + 0.01 * epochs, 0.8 - 0.005 * (epochs - 30))
        assert epochs_to_converge(curve, window=1) == 29  # 0.79 is within 0.01 of 0.80

    def test_nan_epochs(self) -> None:
        assert math.isnan(epochs_to_converge([float("nan")] * 5))
        assert epochs_to_converge([0.5, float("nan"), 0.9, 0.9], window=1) == 3


class TestDiagnosis:
    @staticmethod
    def _rules(findings: list[Diagnosis]) -> list[str]:
        return [f.rule for f in findings]

    @staticmethod
    def _diagnose(runs: list[StoredRun], curves: Any = None) -> list[Diagnosis]:
        """The findings but the three-seed note (these fixtures have 3 or 4 seeds)."""
        return [f for f in diagnose(summarize(runs, curves)) if f.rule != "few_seeds"]

    def test_quiet_when_nothing_is_wrong(self) -> None:
        runs = _group(0.0, [0.90, 0.91, 0.90], train_acc=0.95)
        runs += _group(0.3, [0.91, 0.92, 0.91], train_acc=0.94)
        findings = diagnose(summarize(runs))
        # Nothing is wrong but the number of seeds, and one rate says nothing of the others.
        assert [(f.rule, f.severity) for f in findings] == [
            ("few_seeds", "warning"),
            ("single_rate", "info"),
        ]
        assert findings[0].numbers["fewest_seeds"] == 3

    def test_capacity(self) -> None:
        runs = _group(0.0, [0.64, 0.65, 0.66], train_acc=0.70)
        runs += _group(0.5, [0.60, 0.61, 0.60], train_acc=0.62)
        findings = self._diagnose(runs)
        assert self._rules(findings) == ["capacity", "single_rate"]
        message = findings[0].message
        assert "0.700" in message and "0.90" in message and "dropout will not fix" in message
        assert findings[0].numbers["train_acc"] == pytest.approx(0.70)

    def test_large_gap(self) -> None:
        runs = _group(0.0, [0.76, 0.77, 0.76], train_acc=1.0)
        runs += _group(0.2, [0.79, 0.80, 0.79], train_acc=0.99)
        runs += _group(0.4, [0.80, 0.82, 0.81], train_acc=0.97)
        findings = self._diagnose(runs)
        assert [(f.rule, f.group) for f in findings] == [
            ("large_gap", "none"),
            ("rate_curve", "dropout p=0.4"),  # the best at the grid's top edge
        ]
        assert "0.237" in findings[0].message and "threshold 0.10" in findings[0].message
        assert "extend the grid upward" in findings[1].message

    def test_a_single_rate_is_not_told_which_way_to_go(self) -> None:
        # The demo's shape: the baseline and one dropout rate, both with a large gap.
        runs = _group(0.0, [0.76, 0.77, 0.76], train_acc=1.0)
        runs += _group(0.4, [0.79, 0.80, 0.79], train_acc=0.97)
        findings = self._diagnose(runs)
        assert [(f.rule, f.group) for f in findings] == [
            ("large_gap", "none"),
            ("single_rate", "dropout p=0.4"),
        ]
        assert "sweep several rates" in findings[1].message
        assert not any("raise the rate" in f.message for f in findings)

    def test_no_convergence_under_too_much_dropout(self) -> None:
        runs = _group(0.0, [0.85, 0.86, 0.85], train_acc=0.99)
        runs += _group(0.2, [0.86, 0.87, 0.86], train_acc=0.95)
        runs += _group(0.8, [0.70, 0.71, 0.69], train_acc=0.60)
        findings = [f for f in self._diagnose(runs) if f.rule == "no_convergence"]
        assert [f.group for f in findings] == ["dropout p=0.8"]
        assert "0.600" in findings[0].message and "lower the rate" in findings[0].message

    def test_underfit_group_is_told_to_lower_the_rate_only(self) -> None:
        # p=0.5 still has a gap of 0.18 but trains 0.12 below the baseline and tests worse:
        # "raise the rate" would contradict "lower the rate".
        runs = _group(0.0, [0.83, 0.83, 0.83], train_acc=0.98)
        runs += _group(0.5, [0.68, 0.68, 0.69], train_acc=0.86)
        findings = self._diagnose(runs)
        by_group = {(f.rule, f.group) for f in findings}
        assert ("no_convergence", "dropout p=0.5") in by_group
        assert ("large_gap", "dropout p=0.5") not in by_group
        assert ("large_gap", "none") in by_group

    def test_more_epochs_and_not_converged(self) -> None:
        epochs = np.arange(1, 101)
        hundred = TrainSpec(epochs=100)
        runs = _group(0.0, [0.80, 0.80, 0.80], train=hundred)
        runs += _group(0.5, [0.85, 0.85, 0.85], train=hundred)
        fast = np.minimum(epochs / 20, 1.0) * 0.8  # reaches 0.79 at epoch 20
        slow = np.minimum(epochs / 60, 1.0) * 0.85  # reaches 0.84 at epoch 60
        curves = {
            r.key: {"test_acc": fast if r.config.p == 0 else slow} for r in runs
        }  # only the test accuracy is read
        summaries = summarize(runs, curves)  # type: ignore[arg-type]
        # Window ceil(0.02 · 100) = 2: fast's mean first reaches 0.79 at epoch 21 (0.78, 0.80),
        # slow's 0.84 at epoch 60 (0.8358, 0.85): a ratio of 60 / 21 ≈ 2.9.
        base_epoch = epochs_to_converge(fast)
        slow_epoch = epochs_to_converge(slow)
        assert (base_epoch, slow_epoch) == (21, 60)
        assert summaries[0].converge_epoch_mean == base_epoch
        assert summaries[1].converge_epoch_mean == slow_epoch
        findings = diagnose(summaries)
        slower = [f for f in findings if f.rule == "more_epochs"]
        assert len(slower) == 1
        assert slower[0].numbers["ratio"] == pytest.approx(slow_epoch / base_epoch)
        assert 2.5 < slower[0].numbers["ratio"] < 3.5
        assert "not_converged" not in self._rules(findings)
        late = {r.key: {"test_acc": epochs / 100} for r in runs}  # still rising at the end
        findings = diagnose(summarize(runs, late))  # type: ignore[arg-type]
        assert "not_converged" in self._rules(findings)

    def test_bn_order(self) -> None:
        base = _group(0.0, [0.80, 0.81, 0.80, 0.82], regularizers=(("batchnorm", 1.0),))
        after = _group(0.5, [0.86, 0.87, 0.85, 0.86], regularizers=(("batchnorm", 1.0),))
        before = _group(0.5, [0.78, 0.78, 0.78, 0.78], regularizers=(("dropout_bn", 1.0),))
        findings = [f for f in diagnose(summarize(base + after + before)) if f.rule == "bn_order"]
        assert len(findings) == 1 and findings[0].severity == "warning"
        assert "0.860" in findings[0].message and "0.780" in findings[0].message
        reference = sps.ttest_rel([0.86, 0.87, 0.85, 0.86], [0.78, 0.78, 0.78, 0.78])
        assert findings[0].numbers["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
        better = _group(0.5, [0.90, 0.91, 0.92, 0.90], regularizers=(("dropout_bn", 1.0),))
        findings = [f for f in diagnose(summarize(base + after + better)) if f.rule == "bn_order"]
        assert findings[0].severity == "info" and "did better here" in findings[0].message
        same = _group(0.5, [0.85, 0.87, 0.86, 0.86], regularizers=(("dropout_bn", 1.0),))
        findings = [f for f in diagnose(summarize(base + after + same)) if f.rule == "bn_order"]
        assert len(findings) == 1 and findings[0].severity == "info"
        assert "no significant order effect" in findings[0].message

    def test_stop_epoch(self) -> None:
        config = RunConfig(regularizers=(("early_stopping", 10.0),))
        runs = [
            _stored(dataclasses.replace(config, seed=s), 0.8, info={"stop_epoch": 40.0 + s})
            for s in range(3)
        ]
        summary = summarize(runs)[0]
        assert summary.n_stopped == 3 and summary.stop_epoch_mean == pytest.approx(41.0)
