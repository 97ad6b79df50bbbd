"""The results of runs that recorded calibration metrics: statistics, tests, choice, report.

Runs are made by hand (no training): each seed's ``info`` holds calibration values given by a
formula (:func:`_value`), and the expected means, intervals and paired tests are computed here
from the same numbers with SciPy, so every check is exact up to float rounding.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.results import check_choose_by, choose_by_names
from dropkit.lab.results.analysis import analyze
from dropkit.lab.results.calibration_metrics import (
    N_BINS,
    bin_key,
    parse_choose_by,
    recorded_modes,
)
from dropkit.lab.results.calibration_stats import PooledBins, summarize_calibration
from dropkit.lab.results.diagnosis import RULES, Thresholds, check_calibration, diagnose
from dropkit.lab.results.experiment import Experiment
from dropkit.lab.results.report import write_report
from dropkit.lab.results.significance import holm
from dropkit.lab.results.summary import best_rate, summarize
from dropkit.lab.results.tables import calibration_tables
from dropkit.lab.store import ResultsStore, RunRecord, StoredRun

EPOCHS = 5
SEEDS = tuple(range(6))
RATES = (0.0, 0.2, 0.5)
MODEL = ModelSpec((8,))
TRAIN = TrainSpec(epochs=EPOCHS)
CIRCLES = DataSpec("circles")
CIRCLES_VAL = DataSpec("circles", validation=0.2)
HOUSES = DataSpec("houses.csv", target="price", task="regression")

# Per-seed offsets: a spread, so intervals and tests exist, different per metric and mode.
BRIER = (0.99, 1.0, 0.97, 1.0, 0.95, 0.99)  # near the top of the binary range
JITTER = {
    "det": np.array([0.0, 0.011, -0.009, 0.021, -0.018, 0.004]),
    "mc": np.array([0.006, -0.004, 0.013, -0.011, 0.002, -0.007]),
}
# Test means by mode, metric and rate: MC dropout lowers NLL and ECE the more, the higher p.
BASE = {
    ("det", "acc"): (0.85, 0.86, 0.86),
    ("det", "nll"): (0.40, 0.40, 0.41),
    ("det", "brier"): (0.12, 0.12, 0.12),
    ("det", "ece"): (0.05, 0.05, 0.055),
    ("mc", "acc"): (0.85, 0.86, 0.87),
    ("mc", "nll"): (0.40, 0.37, 0.30),
    ("mc", "brier"): (0.12, 0.11, 0.10),
    ("mc", "ece"): (0.05, 0.04, 0.02),
    ("mc", "mi"): (0.0, 0.01, 0.03),
    ("mc", "entropy"): (0.30, 0.32, 0.35),
}
# Validation means of mc_nll: validation prefers p=0.2, the test set p=0.5.
VAL_MC_NLL = (0.40, 0.25, 0.33)
REGRESSION_BASE = {
    ("det", "rmse"): (0.60, 0.58, 0.57),
    ("det", "nll"): (-0.20, -0.25, -0.22),
    ("det", "cover90"): (0.80, 0.82, 0.83),
    ("mc", "rmse"): (0.60, 0.57, 0.55),
    ("mc", "nll"): (-0.20, -0.30, -0.40),
    ("mc", "cover90"): (0.80, 0.86, 0.89),
    ("mc", "sd"): (0.0, 0.1, 0.2),
}


def _value(base: float, mode: str, seed: int, metric: str, p_index: int = 1) -> float:
    """A seed's value: the base plus that mode's jitter, scaled per metric. At rate 0 (index 0)
    MC dropout is the network with dropout off: both take the deterministic jitter; a zero
    base stays zero."""
    scale = {"ece": 0.2, "brier": 0.3, "mi": 0.1}.get(metric, 1.0)
    jitter = JITTER["det" if p_index == 0 else mode][seed]
    return base + (scale * jitter if base else 0.0)


def _bins(mode: str, p_index: int) -> dict[str, float]:
    """Reliability bins: 4 rows in each bin from 8 up, correct rows rising with confidence."""
    info = {}
    for b in range(N_BINS):
        n = 4.0 if b >= 8 else 0.0
        info[bin_key(mode, b, "n")] = n
        info[bin_key(mode, b, "conf")] = n * (b + 0.5) / N_BINS
        info[bin_key(mode, b, "hit")] = float(min(n, round(n * (b + 0.5) / N_BINS) + p_index))
    return info


def _classification_info(
    p_index: int, seed: int, *, modes: Sequence[str] = ("det", "mc"), validation: bool = False
) -> dict[str, float]:
    info: dict[str, float] = {}
    for (mode, metric), bases in BASE.items():
        if mode in modes:
            info[f"{mode}_{metric}"] = _value(bases[p_index], mode, seed, metric, p_index)
    for mode in modes:
        info |= _bins(mode, p_index)
    if validation:
        info["val_acc"] = 0.8 + JITTER["det"][seed]
        info["val_loss"] = 0.45
        for mode in modes:
            for metric in ("acc", "nll", "brier", "ece"):
                info[f"val_{mode}_{metric}"] = info[f"{mode}_{metric}"]
        if "mc" in modes:
            info["val_mc_nll"] = _val_mc_nll(p_index, seed)
    return info


def _val_mc_nll(p_index: int, seed: int) -> float:
    """Validation MC NLL: its own per-group order of the offsets."""
    return VAL_MC_NLL[p_index] + JITTER["mc"][(seed + 2 + p_index) % 6]


def _stored(config: RunConfig, info: dict[str, float], *, test: float = 0.85) -> StoredRun:
    return StoredRun(config.key(), config, 0.95, test, 0.1, 0.4, test, EPOCHS, 1.0, info)


def _runs(
    data: DataSpec = CIRCLES,
    *,
    modes: Sequence[str] = ("det", "mc"),
    calibrated: bool = True,
) -> list[StoredRun]:
    runs = []
    for p_index, p in enumerate(RATES):
        for seed in SEEDS:
            config = RunConfig(data, MODEL, TRAIN, p=p, seed=seed)
            info = (
                _classification_info(p_index, seed, modes=modes, validation=data.validation > 0)
                if calibrated
                else {}
            )
            if not calibrated and data.validation:
                info = {"val_acc": 0.8 + JITTER["det"][seed], "val_loss": 0.45}
            runs.append(_stored(config, info, test=0.85 + 0.01 * JITTER["mc"][seed]))
    return runs


def _regression_runs(calibrated: bool = True) -> list[StoredRun]:
    runs = []
    for p_index, p in enumerate(RATES):
        for seed in SEEDS:
            config = RunConfig(HOUSES, MODEL, TRAIN, p=p, seed=seed)
            rmse = REGRESSION_BASE[("det", "rmse")][p_index] + JITTER["det"][seed]
            info = {"test_rmse": rmse, "test_mae": 0.8 * rmse, "train_rmse": 0.3}
            if calibrated:
                info["noise_sd"] = 0.5 + 0.01 * seed
                for (mode, metric), bases in REGRESSION_BASE.items():
                    info[f"{mode}_{metric}"] = _value(bases[p_index], mode, seed, metric, p_index)
            runs.append(_stored(config, info, test=0.6 + 0.01 * JITTER["mc"][seed]))
    return runs


def _expected(values: Sequence[float], low: float, high: float) -> tuple[float, float, float]:
    """Mean and Student's t-interval by hand (scipy.stats.t), clipped to [low, high]."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    half = float(sps.t.ppf(0.975, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return mean, max(low, mean - half), min(high, mean + half)


def _seed_values(p_index: int, mode: str, metric: str) -> list[float]:
    return [_value(BASE[(mode, metric)][p_index], mode, s, metric, p_index) for s in SEEDS]


def _curves(run: StoredRun) -> dict[str, Any]:
    ramp = np.linspace(0.2, 1.0, EPOCHS)
    return {
        "train_acc": run.train_acc * ramp,
        "test_acc": run.test_acc * ramp,
        "train_loss": 1 - 0.5 * ramp,
        "test_loss": 1 - 0.4 * ramp,
    }


def _store(path: Path, runs: Sequence[StoredRun]) -> Path:
    with ResultsStore(path) as store:
        store.add_runs([RunRecord(r.config, _curves(r), 1.0, r.info) for r in runs])
    return path


# -- the metrics' names ------------------------------------------------------------------------


class TestNames:
    def test_choose_by_names(self) -> None:
        assert choose_by_names("classification") == (
            "score", "nll", "brier", "ece", "det_nll", "det_brier", "det_ece",
            "mc_nll", "mc_brier", "mc_ece",
        )  # fmt: skip
        assert "rmse" in choose_by_names("regression") and "ece" not in choose_by_names(
            "regression"
        )
        assert parse_choose_by("mc_nll", "classification") == ("mc", "nll")
        assert parse_choose_by("brier", "classification") == (None, "brier")
        assert parse_choose_by("score", "regression") == (None, None)
        assert check_choose_by("det_rmse", "regression") == "det_rmse"

    @pytest.mark.parametrize("bad", ["rmse", "accuracy", "NLL", "mc_mi", 3, None])
    def test_bad_names_list_the_choices(self, bad: object) -> None:
        with pytest.raises(ValueError, match=r"one of score, nll, brier, ece, det_nll.*mc_ece"):
            check_choose_by(bad, "classification")

    def test_modes_come_from_every_run(self) -> None:
        full = _classification_info(1, 0)
        det_only = _classification_info(1, 1, modes=("det",))
        assert recorded_modes([full, full]) == ("det", "mc")
        assert recorded_modes([full, det_only]) == ("det",)
        assert recorded_modes([]) == () and recorded_modes([{}]) == ()


# -- statistics over seeds ---------------------------------------------------------------------


class TestStatistics:
    def test_means_and_intervals_equal_scipy(self) -> None:
        calibration = summarize_calibration(summarize(_runs()))
        assert [c.name for c in calibration] == ["none", "dropout p=0.2", "dropout p=0.5"]
        for p_index, group in enumerate(calibration):
            assert group.modes == ("det", "mc") and group.n_valid == 6
            for mode, metric in BASE:
                stats = group.stats(mode, metric)
                assert stats is not None
                values = _seed_values(p_index, mode, metric)
                assert stats.values == pytest.approx(values)
                if np.ptp(values) == 0:  # MC dropout's MI at rate 0: no spread, no interval
                    assert math.isnan(stats.ci95[0]) and stats.mean == values[0]
                    continue
                high = {"acc": 1.0, "ece": 1.0, "brier": 1.0}.get(metric, math.inf)
                mean, low, up = _expected(values, 0.0, high)
                assert stats.mean == pytest.approx(mean)
                assert stats.ci95 == pytest.approx((low, up))
                assert stats.n == 6
            # the deterministic network has no MI
            assert group.stats("det", "mi") is None

    def test_intervals_are_kept_in_range(self) -> None:
        runs = []
        for seed in SEEDS:  # an ECE near 0 with a wide spread, a Brier near 1
            config = RunConfig(CIRCLES, MODEL, TRAIN, seed=seed)
            info = {"det_nll": 0.4, "det_ece": [0.0, 0.02, 0.0, 0.04, 0.0, 0.01][seed]}
            info["det_brier"] = BRIER[seed]
            runs.append(_stored(config, info))
        (group,) = summarize_calibration(summarize(runs))
        ece, brier = group.stats("det", "ece"), group.stats("det", "brier")
        assert ece is not None and brier is not None
        assert ece.ci95[0] == 0.0  # clipped at the bottom of the range
        assert brier.ci95[1] == 1.0  # binary data: the Brier score is at most 1
        values = list(BRIER)
        assert brier.ci95 == pytest.approx(_expected(values, 0.0, 1.0)[1:])
        # on multi-class data the same values keep their upper end (range [0, 2])
        digits = [
            _stored(RunConfig(DataSpec("digits"), MODEL, TRAIN, seed=r.config.seed), r.info)
            for r in runs
        ]
        (other,) = summarize_calibration(summarize(digits))
        brier_multi = other.stats("det", "brier")
        assert brier_multi is not None
        assert brier_multi.ci95 == pytest.approx(_expected(values, 0.0, 2.0)[1:])
        assert brier_multi.ci95[1] > 1.0
        # data that is not a built-in binary set (a CSV, the user's tensors) is binary when its
        # measured runs recorded two classes, and multi-class when they recorded more
        csv = DataSpec("labels.csv", target="y")
        for classes, high in ((2.0, 1.0), (3.0, 2.0)):
            recorded = [
                _stored(
                    RunConfig(csv, MODEL, TRAIN, seed=r.config.seed),
                    {**r.info, "classes": classes},
                )
                for r in runs
            ]
            (group,) = summarize_calibration(summarize(recorded))
            brier = group.stats("det", "brier")
            assert brier is not None
            assert brier.ci95 == pytest.approx(_expected(values, 0.0, high)[1:])

    def test_mc_against_deterministic_is_ttest_rel(self) -> None:
        calibration = summarize_calibration(summarize(_runs()))
        for metric in ("acc", "nll", "brier", "ece"):
            baseline = calibration[0].mc_vs_det[metric]  # rate 0: the two modes agree
            assert (baseline.test, baseline.difference, baseline.p_value) == ("sign", 0.0, 1.0)
            raw = [baseline.p_value]
            for p_index, group in list(enumerate(calibration))[1:]:
                c = group.mc_vs_det[metric]
                mc, det = _seed_values(p_index, "mc", metric), _seed_values(p_index, "det", metric)
                expected = sps.ttest_rel(mc, det)
                assert c.test == "paired" and c.baseline == "deterministic" and c.n == 6
                assert c.difference == pytest.approx(np.mean(np.subtract(mc, det)))
                assert c.t_statistic == pytest.approx(expected.statistic)
                assert c.p_value == pytest.approx(expected.pvalue)
                raw.append(c.p_value)
            adjusted = holm(raw)  # Holm over the groups, per metric
            assert [g.mc_vs_det[metric].p_adjusted for g in calibration] == pytest.approx(adjusted)
        assert calibration[2].mc_vs_det["nll"].significant
        assert "mi" not in calibration[0].mc_vs_det  # recorded by MC dropout only

    def test_groups_against_the_baseline(self) -> None:
        calibration = summarize_calibration(summarize(_runs()))
        base = calibration[0]
        assert base.is_baseline and all(s.vs_baseline is None for s in base.test["mc"].values())
        for mode, metric in (("mc", "nll"), ("det", "ece"), ("mc", "mi")):
            raw = []
            for p_index in (1, 2):
                stats = calibration[p_index].stats(mode, metric)
                assert stats is not None and stats.vs_baseline is not None
                group = _seed_values(p_index, mode, metric)
                baseline = _seed_values(0, mode, metric)
                c = stats.vs_baseline
                assert c.baseline == "none" and c.compared_on == "test"
                assert c.difference == pytest.approx(np.mean(group) - np.mean(baseline))
                if np.ptp(np.subtract(group, baseline)) > 1e-12:
                    assert c.test == "paired"
                    assert c.p_value == pytest.approx(sps.ttest_rel(group, baseline).pvalue)
                raw.append(c.p_value)
            found = [calibration[i].stats(mode, metric) for i in (1, 2)]
            adjusted = [s.vs_baseline.p_adjusted for s in found if s and s.vs_baseline]
            assert adjusted == pytest.approx(holm(raw))

    def test_sign_test_when_every_difference_is_the_same(self) -> None:
        runs = []
        for p_index, p in enumerate((0.0, 0.5)):
            for seed in SEEDS:
                config = RunConfig(CIRCLES, MODEL, TRAIN, p=p, seed=seed)
                nll = 0.4 + JITTER["det"][seed]
                info = {"det_nll": nll, "mc_nll": nll - 0.05 * p_index}
                runs.append(_stored(config, info))
        calibration = summarize_calibration(summarize(runs))
        c = calibration[1].mc_vs_det["nll"]
        assert c.test == "sign" and c.p_value == pytest.approx(2 * 0.5**6)
        assert "sign test" in c.note
        same = calibration[0].mc_vs_det["nll"]
        assert same.test == "sign" and same.difference == 0 and same.p_value == 1.0

    def test_rounding_is_not_a_difference(self) -> None:
        """MC dropout at rate 0 repeats the deterministic prediction: the mean of its T
        passes may differ in the last bit, which must not read as a (sign-test) difference."""
        runs = []
        for seed in SEEDS:
            config = RunConfig(CIRCLES, MODEL, TRAIN, seed=seed)
            det = 0.4 + JITTER["det"][seed]
            runs.append(_stored(config, {"det_nll": det, "mc_nll": det * (1 + 1e-15)}))
        (group,) = summarize_calibration(summarize(runs))
        c = group.mc_vs_det["nll"]
        assert (c.test, c.difference, c.p_value, c.significant) == ("sign", 0.0, 1.0, False)
        assert check_calibration(summarize(runs), Thresholds()) == []

    def test_pooled_bins(self) -> None:
        calibration = summarize_calibration(summarize(_runs()))
        bins = calibration[1].bins["det"]
        assert isinstance(bins, PooledBins)
        expected_n = [0.0] * 8 + [24.0] * 7  # 4 rows a bin, 6 seeds
        assert list(bins.counts) == expected_n
        confidence = bins.confidence
        assert math.isnan(confidence[0])
        assert confidence[9] == pytest.approx(9.5 / 15)
        hits = [min(4.0, round(4 * (b + 0.5) / 15) + 1) * 6 for b in range(8, 15)]
        assert list(bins.hits[8:]) == hits
        gaps = [abs(h / 24 - (b + 0.5) / 15) * 24 for h, b in zip(hits, range(8, 15), strict=True)]
        assert bins.ece == pytest.approx(sum(gaps) / (24 * 7))
        data = bins.to_dict()
        assert data["n"] == expected_n and data["accuracy"][0] is None

    def test_folds_are_averaged_and_diverged_seeds_left_out(self) -> None:
        data = DataSpec("circles", folds=2)
        runs = []
        for seed in SEEDS:
            for fold in (0, 1):
                config = RunConfig(data, MODEL, TRAIN, p=0.5, seed=seed, fold=fold)
                info = {"mc_nll": 0.3 + JITTER["mc"][seed] + 0.02 * fold, "det_nll": 0.4}
                info["val_acc"] = 0.8
                run = _stored(config, info)
                if seed == 5 and fold == 1:  # a diverged fold: the seed is left out
                    run = dataclasses.replace(run, train_acc=math.nan)
                runs.append(run)
        (group,) = summarize_calibration(summarize(runs))
        stats = group.stats("mc", "nll")
        assert stats is not None and group.n_valid == 5 and stats.n == 5
        values = [0.31 + JITTER["mc"][s] for s in SEEDS[:5]]
        assert math.isnan(stats.values[5])
        assert (stats.mean, *stats.ci95) == pytest.approx(_expected(values, 0.0, math.inf))

    def test_regression(self) -> None:
        calibration = summarize_calibration(summarize(_regression_runs()))
        group = calibration[2]
        assert group.task == "regression" and group.modes == ("det", "mc") and not group.bins
        nll = group.stats("mc", "nll")
        assert nll is not None
        values = [_value(-0.40, "mc", s, "nll", 2) for s in SEEDS]
        # the Gaussian NLL is unbounded: a negative interval is kept as it is
        assert (nll.mean, *nll.ci95) == pytest.approx(_expected(values, -math.inf, math.inf))
        assert nll.ci95[1] < 0
        cover = group.stats("mc", "cover90")
        assert cover is not None and cover.mean == pytest.approx(0.89, abs=1e-3)
        assert group.noise_sd == pytest.approx(0.525)
        assert set(group.mc_vs_det) == {"rmse", "nll", "cover90"}
        assert group.to_dict()["noise_sd"] == pytest.approx(0.525)

    def test_to_dict_is_json(self) -> None:
        calibration = summarize_calibration(summarize(_runs()))
        data = calibration[1].to_dict()
        text = json.dumps(data, allow_nan=False)
        assert json.loads(text) == data
        assert data["modes"] == ["det", "mc"] and data["n_seeds"] == 6
        assert set(data["test"]["mc"]) == {"acc", "nll", "brier", "ece", "mi", "entropy"}
        versus = data["test"]["mc"]["nll"]["vs_baseline"]
        assert versus["baseline"] == "none" and isinstance(versus["significant"], bool)
        assert data["mc_vs_det"]["nll"]["test"] == "paired"

    def test_nothing_without_calibration_metrics(self) -> None:
        assert summarize_calibration(summarize(_runs(calibrated=False))) == []
        assert calibration_tables([]) == []


# -- choosing by a metric ------------------------------------------------------------------------


class TestChooseBy:
    def test_lowest_validation_nll_is_chosen(self) -> None:
        summaries = summarize(_runs(CIRCLES_VAL))
        best = best_rate(summaries, "nll")
        assert best is not None
        assert (best.summary.name, best.chosen_on, best.choose_by) == (
            "dropout p=0.2",
            "validation",
            "mc_nll",
        )
        assert best.top == "dropout p=0.2" and best.tied == ("dropout p=0.2",)
        assert "chosen on validation NLL (MC dropout) 0.250" in best.evidence
        assert "held-out test NLL (MC dropout) 0.370" in best.evidence
        assert best.choice.startswith("chosen on validation NLL (MC dropout) over seeds")
        assert "not significantly above the lowest" in best.rule and "lower mean" in best.rule
        assert best.held_out is not None and best.held_out.compared_on == "test"
        group = [_val_mc_nll(1, s) for s in SEEDS]
        baseline = [_val_mc_nll(0, s) for s in SEEDS]
        p_value = sps.ttest_rel(group, baseline).pvalue
        assert f"paired t-test p={p_value:.2g}" in best.evidence
        assert best.to_dict()["choose_by"] == "mc_nll"
        # on the test set the lowest NLL is p=0.5's: the validation split decided
        assert best_rate(summaries, "det_nll").chosen_on == "validation"  # type: ignore[union-attr]

    def test_test_split_when_there_is_no_validation(self) -> None:
        summaries = summarize(_runs())
        best = best_rate(summaries, "mc_nll")
        assert best is not None
        assert (best.summary.name, best.chosen_on) == ("dropout p=0.5", "test")
        assert best.evidence.startswith("best: dropout p=0.5, test NLL (MC dropout) 0.300")
        assert best.evidence.endswith("treat this as provisional")
        assert "which doubles as validation" in best.evidence
        assert "there is no validation split" in best.choice and "test NLL" in best.choice
        assert best.held_out is None
        ece = best_rate(summaries, "ece")
        assert ece is not None and ece.choose_by == "mc_ece" and "ECE (MC dropout)" in ece.evidence

    def test_unprefixed_uses_the_deterministic_mode_without_mc(self) -> None:
        best = best_rate(summarize(_runs(modes=("det",))), "brier")
        assert best is not None and best.choose_by == "det_brier"
        assert "Brier (deterministic)" in best.evidence

    def test_a_tie_goes_to_the_simplest(self) -> None:
        runs = []
        offsets = (JITTER["det"], JITTER["mc"], np.roll(JITTER["mc"], 3))  # one order a group
        for p, shift, jitter in zip((0.0, 0.2, 0.5), (0.0, -0.004, -0.008), offsets, strict=True):
            for seed in SEEDS:
                config = RunConfig(CIRCLES, MODEL, TRAIN, p=p, seed=seed)
                nll = 0.4 + shift + jitter[seed]
                runs.append(_stored(config, {"mc_nll": nll, "det_nll": 0.4}))
        summaries = summarize(runs)
        best = best_rate(summaries, "mc_nll")
        assert best is not None
        # p=0.5 has the lowest mean, none is not significantly worse: the simplest wins
        assert best.top == "dropout p=0.5"
        assert best.summary.name == "none" and best.tied[0] == "none"
        assert set(best.tied) == {"none", "dropout p=0.2", "dropout p=0.5"}
        assert "not significantly worse than the top, dropout p=0.5" in best.evidence
        # a clearly lower NLL is not a tie
        clear = [
            _stored(r.config, {**r.info, "mc_nll": r.info["mc_nll"] - 0.2 * r.config.p})
            for r in runs
        ]
        best = best_rate(summarize(clear), "mc_nll")
        assert best is not None and best.summary.name == "dropout p=0.5"
        assert best.tied == ("dropout p=0.5",)

    def test_bad_or_missing_metric(self) -> None:
        summaries = summarize(_runs())
        with pytest.raises(ValueError, match="one of score, nll, brier, ece"):
            best_rate(summaries, "rmse")
        with pytest.raises(ValueError, match="one of score"):
            best_rate([], "bogus")
        with pytest.raises(ValueError, match="no group's runs recorded det_nll or mc_nll"):
            best_rate(summarize(_runs(calibrated=False)), "nll")
        with pytest.raises(ValueError, match="one of score, nll, rmse"):
            best_rate(summarize(_regression_runs()), "ece")

    def test_score_is_the_default_and_unchanged(self) -> None:
        summaries = summarize(_runs(CIRCLES_VAL))
        default, named = best_rate(summaries), best_rate(summaries, "score")
        assert default == named and default is not None
        assert set(default.to_dict()) == {
            "name", "arm", "p", "evidence", "chosen_on", "choice", "top", "tied", "rule",
            "held_out", "provisional",
        }  # fmt: skip
        assert default.choose_by == "score"

    def test_regression_rmse(self) -> None:
        best = best_rate(summarize(_regression_runs()), "rmse")
        assert best is not None and best.choose_by == "mc_rmse"
        mean = np.mean([_value(0.55, "mc", s, "rmse") for s in SEEDS])
        assert best.summary.name == "dropout p=0.5"
        assert f"test RMSE (MC dropout) {mean:.4g}" in best.evidence
        plain = best_rate(summarize(_regression_runs(calibrated=False)), "rmse")
        assert plain is not None and plain.choose_by == "rmse"
        assert "test RMSE 0.57" in plain.evidence
        with pytest.raises(ValueError, match="no group's runs recorded"):
            best_rate(summarize(_regression_runs(calibrated=False)), "nll")

    def test_analyze_chooses_by(self, tmp_path: Path) -> None:
        path = _store(tmp_path / "runs.sqlite", _runs(CIRCLES_VAL))
        with ResultsStore(path) as store:
            (analysis,) = analyze(store, choose_by="nll")
            (plain,) = analyze(store)
            with pytest.raises(ValueError, match="`choose_by` must be one of"):
                analyze(store, choose_by="rmse")
        assert analysis.best is not None and analysis.best.summary.name == "dropout p=0.2"
        assert analysis.to_dict()["best"]["choose_by"] == "mc_nll"
        assert plain.best is not None and "choose_by" not in plain.to_dict()["best"]


# -- diagnosis -----------------------------------------------------------------------------------


class TestDiagnosis:
    def test_the_rule_runs_last(self) -> None:
        assert RULES[-1] is check_calibration
        assert [r.__name__ for r in RULES[:-1]][-1] == "check_bn_order"

    def test_significant_changes_and_no_measurable_difference(self) -> None:
        findings = {f.rule: f for f in check_calibration(summarize(_runs()), Thresholds())}
        mc = findings["mc_calibration"]
        det = _seed_values(2, "det", "nll")
        mc_values = _seed_values(2, "mc", "nll")
        test = sps.ttest_rel(mc_values, det)
        assert "; dropout p=0.5: MC dropout" in mc.message
        assert (
            f"MC dropout lowers NLL from {np.mean(det):.3f} to {np.mean(mc_values):.3f} "
            f"(paired t-test p={test.pvalue:.2g}"
        ) in mc.message
        assert mc.numbers["dropout p=0.5: mc_nll"] == pytest.approx(np.mean(mc_values))
        # MC dropout at rate 0 equals the deterministic network on every seed: nothing said
        assert "none:" not in mc.message
        versus = findings["calibration_vs_baseline"]
        assert "dropout p=0.5, MC dropout: NLL is lower than none's" in versus.message
        assert "dropout p=0.2, deterministic: no measurable difference in NLL" in versus.message

    def test_no_statement_when_nothing_differs(self) -> None:
        runs = []
        for p in RATES:
            for seed in SEEDS:
                config = RunConfig(CIRCLES, MODEL, TRAIN, p=p, seed=seed)
                det = 0.4 + JITTER["det"][seed]
                mc = 0.4 + JITTER["mc"][seed] if p else det  # noise, no effect
                runs.append(_stored(config, {"det_nll": det, "mc_nll": mc}))
        findings = check_calibration(summarize(runs), Thresholds())
        messages = " ".join(f.message for f in findings)
        assert "lowers" not in messages and "raises" not in messages
        assert "is lower" not in messages and "is higher" not in messages
        assert "dropout p=0.5: no measurable difference in NLL" in messages

    def test_nothing_without_calibration(self) -> None:
        summaries = summarize(_runs(calibrated=False))
        assert check_calibration(summaries, Thresholds()) == []
        rules = {f.rule for f in diagnose(summaries)}
        assert not rules & {"mc_calibration", "calibration_vs_baseline"}


# -- tables, report, experiment ------------------------------------------------------------------


class TestOutputs:
    def test_tables(self) -> None:
        calibration = summarize_calibration(summarize(_runs()))
        det, mc = calibration_tables(calibration)
        assert det.title == "Calibration on the test set: deterministic"
        assert det.headers == (
            "group", "seeds", "accuracy", "NLL", "Brier", "ECE",
            "NLL vs none", "Brier vs none", "ECE vs none",
        )  # fmt: skip
        assert mc.headers[-4:] == ("MC−det accuracy", "MC−det NLL", "MC−det Brier", "MC−det ECE")
        assert "MI" in mc.headers and "entropy" not in mc.headers
        nll = calibration[2].stats("mc", "nll")
        assert nll is not None
        row = mc.rows[2]
        assert row[0] == "dropout p=0.5"
        assert row[3] == f"{nll.mean:.3f} [{nll.ci95[0]:.3f}, {nll.ci95[1]:.3f}]"
        assert row[mc.headers.index("NLL vs none")].endswith("*)")
        assert mc.rows[0][mc.headers.index("NLL vs none")] == "baseline"
        assert re.fullmatch(r"-0\.\d{3} \(adj\. p=[\d.e-]+\*\)", row[-3])
        regression = calibration_tables(summarize_calibration(summarize(_regression_runs())))
        assert regression[1].headers[2:6] == (
            "RMSE",
            "Gaussian NLL",
            "90% coverage",
            "predictive sd",
        )

    def test_report_has_a_calibration_section(self, tmp_path: Path) -> None:
        path = _store(tmp_path / "runs.sqlite", _runs())
        with ResultsStore(path) as store:
            text = write_report(store, tmp_path / "r.html").read_text(encoding="utf-8")
        assert "<h3>Calibration</h3>" in text
        assert "Calibration on the test set: MC dropout" in text
        assert re.search(r'<img alt="reliability diagram" src="data:image/png;base64,', text)
        assert "Houlsby et al. 2011" in text and "Brier 1950" in text

    def test_report_without_calibration_is_unchanged(self, tmp_path: Path) -> None:
        path = _store(tmp_path / "runs.sqlite", _runs(calibrated=False))
        with ResultsStore(path) as store:
            text = write_report(store, tmp_path / "r.html").read_text(encoding="utf-8")
            (analysis,) = analyze(store)
        assert "Calibration" not in text and "reliability" not in text
        assert "MC−det" not in text and "Houlsby" not in text
        assert analysis.calibration == ()
        assert list(analysis.to_dict()) == ["experiment", "runs", "summary", "findings", "best"]

    def test_regression_report_has_tables_but_no_reliability_diagram(self, tmp_path: Path) -> None:
        path = _store(tmp_path / "runs.sqlite", _regression_runs())
        with ResultsStore(path) as store:
            text = write_report(store, tmp_path / "r.html").read_text(encoding="utf-8")
        assert "<h3>Calibration</h3>" in text and "90% coverage" in text
        assert 'alt="reliability diagram"' not in text

    def test_experiment(self, tmp_path: Path) -> None:
        path = _store(tmp_path / "runs.sqlite", _runs())
        with ResultsStore(path) as store:
            (analysis,) = analyze(store)
        experiment = Experiment(path, analysis, command="load")
        assert [c["name"] for c in experiment.calibration] == [
            "none",
            "dropout p=0.2",
            "dropout p=0.5",
        ]
        assert len(experiment.calibration_tables()) == 2
        data = experiment.to_dict()
        assert data["calibration"] == experiment.calibration
        json.dumps(data, allow_nan=False)
        assert "Calibration on the test set" in experiment._repr_html_()
        # the existing keys are all there, in their order, the new one among them
        keys = list(data)
        assert keys.index("best") < keys.index("calibration") < keys.index("comparisons")

    def test_experiment_without_calibration(self, tmp_path: Path) -> None:
        path = _store(tmp_path / "runs.sqlite", _runs(calibrated=False))
        with ResultsStore(path) as store:
            (analysis,) = analyze(store)
        experiment = Experiment(path, analysis, command="load")
        assert experiment.calibration == [] and experiment.calibration_tables() == []
        assert "calibration" not in experiment.to_dict()
        assert "Calibration" not in experiment._repr_html_()
        for summary in experiment.summary:  # the hidden per-seed infos never reach JSON
            assert "seed_infos" not in summary and "binary" not in summary
