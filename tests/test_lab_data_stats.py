"""Data sets (shapes, splits, CSV parsing) and the statistics over seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from dropkit.lab.config import DataSpec, ModelSpec, RunConfig, SweepSpec, TrainSpec
from dropkit.lab.data import DataError, load_dataset
from dropkit.lab.stats import best_rate, mean_ci, summarize, welch
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
        with pytest.raises(DataError, match="--target is required"):
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
        runs = [self._run(0.0, s, 0.76 + 0.002 * s) for s in range(5)]
        runs += [self._run(0.4, s, 0.80 + 0.002 * s, train=0.97) for s in range(5)]
        summaries = summarize(runs)
        assert [(s.arm, s.p, s.n_seeds) for s in summaries] == [
            ("none", 0.0, 5),
            ("dropout", 0.4, 5),
        ]
        assert summaries[1].gap_mean == pytest.approx(0.97 - 0.804)
        assert summaries[1].vs_baseline is not None and summaries[1].vs_baseline.significant
        best = best_rate(summaries)
        assert best is not None and best.summary.p == 0.4
        assert "significant at 0.05" in best.evidence
        assert summaries[1].to_dict()["vs_baseline"]["significant"] is True

    def test_best_rate_not_significant(self) -> None:
        runs = [self._run(0.0, s, 0.76 + 0.02 * (s % 2)) for s in range(4)]
        runs += [self._run(0.2, s, 0.77 + 0.02 * (s % 2)) for s in range(4)]
        best = best_rate(summarize(runs))
        assert best is not None and "NOT significant" in best.evidence

    def test_one_seed_has_no_interval(self) -> None:
        summaries = summarize([self._run(0.0, 0, 0.7), self._run(0.5, 0, 0.8)])
        best = best_rate(summaries)
        assert best is not None and "one seed" in best.evidence
        assert summaries[0].to_dict()["test_acc_ci95"] == [None, None]


def test_baseline_is_the_lowest_rate_without_a_none_group() -> None:
    def run(p: float, seed: int, test: float) -> StoredRun:
        config = RunConfig(p=p, input_p=0.2, seed=seed)
        return StoredRun(config.key(), config, 1.0, test, 0.1, 0.5, test, 10, 1.0)

    runs = [run(0.0, s, 0.70 + 0.01 * (s % 2)) for s in range(4)]
    runs += [run(0.4, s, 0.80 + 0.01 * (s % 2)) for s in range(4)]
    summaries = summarize(runs)
    assert summaries[0].arm == "input_dropout" and summaries[0].vs_baseline is None
    comparison = summaries[1].vs_baseline
    assert comparison is not None and comparison.baseline == "input_dropout p=0"
    best = best_rate(summaries)
    assert best is not None and "better than input_dropout p=0" in best.evidence
