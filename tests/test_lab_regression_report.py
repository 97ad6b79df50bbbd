"""Summaries, the best choice, the diagnosis and the report for regression, validation and folds.

Runs are made by hand (no training): their final scores are chosen so that the validation split
and the test set disagree on the best group, and the expected statistics are computed here from
the same numbers with SciPy (t-intervals, paired t-tests), so every check is exact up to float
rounding.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from dropkit import lab
from dropkit.cli import app
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.results.analysis import analyze
from dropkit.lab.results.diagnosis import Thresholds, diagnose
from dropkit.lab.results.report import write_report
from dropkit.lab.results.summary import (
    ArmSummary,
    best_rate,
    chosen_on,
    compare,
    score_name,
    seed_curves,
    seed_runs,
    summarize,
)
from dropkit.lab.store import ResultsStore, RunRecord, StoredRun

EPOCHS = 20
SEEDS = range(5)
# Per-seed offsets of the scores: a spread, so intervals and tests exist.
JITTER = (0.0, 0.01, -0.01, 0.02, -0.02)
IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')

HOUSES = DataSpec("houses.csv", target="price", task="regression", validation=0.2)
TRAIN = TrainSpec(epochs=EPOCHS)
MODEL = ModelSpec((8,))
# (validation R², test R²) by rate: validation prefers p=0.2, the test set p=0.5.
SCORES = {0.0: (0.65, 0.60), 0.2: (0.80, 0.70), 0.5: (0.75, 0.74)}


def _info(val: float | None, test: float, train: float) -> dict[str, float]:
    """The info of a regression run whose target has unit variance: RMSE = sqrt(1 - R²)."""
    info = {
        "test_rmse": math.sqrt(1 - test),
        "test_mae": 0.8 * math.sqrt(1 - test),
        "train_rmse": math.sqrt(1 - train),
        "train_mae": 0.8 * math.sqrt(1 - train),
    }
    if val is not None:
        info |= {"val_acc": val, "val_loss": 1 - val, "val_rmse": math.sqrt(1 - val)}
        info["val_mae"] = 0.8 * info["val_rmse"]
    return info


def _curves(train: float, test: float) -> dict[str, Any]:
    """Rising scores that end at ``train`` / ``test`` (their best epoch is the last)."""
    ramp = np.linspace(0.2, 1.0, EPOCHS)
    return {
        "train_acc": train * ramp,
        "test_acc": test * ramp,
        "train_loss": 1 - train * ramp,
        "test_loss": 1 - test * ramp,
    }


def _stored(config: RunConfig, train: float, test: float, info: dict[str, float]) -> StoredRun:
    return StoredRun(
        config.key(), config, train, test, 1 - train, 1 - test, test, EPOCHS, 1.0, info
    )


def _validation_runs(with_validation: bool = True) -> list[StoredRun]:
    runs = []
    for p, (val, test) in SCORES.items():
        for seed in SEEDS:
            config = RunConfig(HOUSES, MODEL, TRAIN, p=p, seed=seed)
            shift = {0.0: 0, 0.2: 1, 0.5: 3}[p]  # each group its own order of offsets
            t, v = test + JITTER[(seed + shift) % 5], val + JITTER[(seed + 2 + shift) % 5]
            info = _info(v if with_validation else None, t, 0.95)
            runs.append(_stored(config, 0.95, t, info))
    return runs


def _records(runs: list[StoredRun]) -> list[RunRecord]:
    return [RunRecord(r.config, _curves(r.train_acc, r.test_acc), 1.0, r.info) for r in runs]


class TestRegressionSummary:
    def test_task_fields_and_intervals(self) -> None:
        summaries = summarize(_validation_runs())
        assert [s.name for s in summaries] == ["none", "dropout p=0.2", "dropout p=0.5"]
        for s, (val, test) in zip(summaries, SCORES.values(), strict=True):
            data = s.to_dict()
            assert (data["task"], data["score_name"], s.score_name) == ("regression", "R²", "R²")
            assert data["validation"] == 0.2 and data["folds"] == 0 and s.n_seeds == 5
            tests = [test + j for j in JITTER]  # the same offsets, in another seed order
            rmse = [math.sqrt(1 - t) for t in tests]
            mae = [0.8 * r for r in rmse]
            for values, mean, interval in (
                (rmse, s.test_rmse_mean, s.test_rmse_ci95),
                (mae, s.test_mae_mean, s.test_mae_ci95),
                (tests, s.test_acc_mean, s.test_acc_ci95),
            ):
                expected = sps.t.interval(0.95, 4, loc=np.mean(values), scale=sps.sem(values))
                assert mean == pytest.approx(np.mean(values))
                assert interval == pytest.approx(expected)
            assert s.val_acc_mean == pytest.approx(val)  # the jitter sums to zero
            assert s.val_loss_mean == pytest.approx(1 - val)
            assert data["val_r2_ci95"][0] < val < data["val_r2_ci95"][1]
            assert data["test_r2_mean"] == pytest.approx(test)
            assert data["val_rmse_mean"] == pytest.approx(s.val_rmse_mean)
        # regression keys say what they hold: R², RMSE and MAE, no accuracy
        keys = {"name", "arm", "p", "n_seeds", "train_r2_mean", "test_r2_mean", "test_r2_ci95",
                "gap_mean", "vs_baseline", "best_test_r2_mean", "val_r2_mean", "test_rmse_mean",
                "test_mae_mean", "val_rmse_mean", "val_mae_mean", "train_rmse_mean"}  # fmt: skip
        assert keys <= set(summaries[0].to_dict())
        assert not any("_acc" in key for key in summaries[0].to_dict())

    def test_classification_without_validation_has_no_new_numbers(self) -> None:
        config = RunConfig(seed=0)
        (s,) = summarize([_stored(config, 1.0, 0.8, {})])
        data = s.to_dict()
        assert (data["task"], data["score_name"]) == ("classification", "accuracy")
        for key in ("val_acc_mean", "val_loss_mean", "test_rmse_mean", "test_mae_mean"):
            assert data[key] is None
        # the keys of earlier releases are all still there
        old_keys = {"name", "arm", "p", "n_seeds", "train_acc_mean", "test_acc_mean",
                    "test_acc_ci95", "gap_mean", "vs_baseline", "best_test_acc_mean"}  # fmt: skip
        assert old_keys <= set(data)
        json.dumps(data, allow_nan=False)

    def test_score_names(self) -> None:
        assert (score_name("classification"), score_name("regression")) == ("accuracy", "R²")
        with pytest.raises(ValueError, match=r"`task` must be one of .* got 'ranking'"):
            score_name("ranking")


class TestBestChoice:
    def test_validation_chooses_when_every_group_has_it(self) -> None:
        summaries = summarize(_validation_runs())
        best = best_rate(summaries)
        assert best is not None and best.chosen_on == "validation" == chosen_on(summaries)
        assert best.summary.name == "dropout p=0.2"  # the test set would pick p=0.5
        s = best.summary
        assert best.evidence.startswith(
            f"best: dropout p=0.2, chosen on validation R² {s.val_acc_mean:.3f} 95% CI ["
        )
        assert best.evidence.count("test R²") == 1  # the winner's test score, once
        assert f"test R² {s.test_acc_mean:.3f}" in best.evidence
        assert f"RMSE {s.test_rmse_mean:.4g}" in best.evidence
        assert "better than none on validation" in best.evidence
        assert "doubles" not in best.evidence
        assert best.choice.startswith("chosen on validation R² over seeds (20% of the training")
        assert best.held_out is not None and best.held_out.compared_on == "test"
        assert "on the held-out test set better than none on test by" in best.evidence
        assert best.tied == ("dropout p=0.2",) and best.top == "dropout p=0.2"

    def test_the_test_set_chooses_without_validation(self) -> None:
        best = best_rate(summarize(_validation_runs(with_validation=False)))
        assert best is not None and best.chosen_on == "test"
        assert best.summary.name == "dropout p=0.5"
        assert best.evidence.startswith("best: dropout p=0.5, test R² 0.740 95% CI [")
        assert "; chosen on the test set, which doubles as validation" in best.evidence
        assert best.evidence.endswith("below the 10 a claim needs, so treat this as provisional")
        assert "not every group has a validation R²" in best.choice  # the data asked for one

    def test_one_group_without_validation_scores_means_the_test_set_chooses(self) -> None:
        runs = _validation_runs()
        runs = [
            _stored(r.config, r.train_acc, r.test_acc, {})
            if r.config.p == 0.5 and r.config.seed < 5
            else r
            for r in runs
        ]
        best = best_rate(summarize(runs))
        assert best is not None and best.chosen_on == "test"

    def test_the_case_study_says_the_test_set_doubles_as_validation(self) -> None:
        runs = [_stored(RunConfig(p=p, seed=s), 1.0, 0.76 + 0.1 * p + JITTER[(s + 4 * p) % 5], {})
                for p in (0, 1) for s in SEEDS]  # fmt: skip
        runs = [_stored(RunConfig(p=0.4 * r.config.p, seed=r.config.seed), 1.0, r.test_acc, {})
                for r in runs]  # fmt: skip
        best = best_rate(summarize(runs))
        assert best is not None and best.chosen_on == "test"
        assert best.evidence.startswith("best: dropout p=0.4, test accuracy 0.860 95% CI [")
        assert best.choice.startswith(
            "chosen on the test set: there is no validation split, so the test set doubles as "
            "validation (as in the published tutorial) and the chosen group's test accuracy is "
            "optimistic; the groups whose mean score is not significantly below the highest"
        )


FOLDS = DataSpec("houses.csv", target="price", task="regression", folds=3)


def _fold_score(p: float, seed: int, fold: int) -> float:
    """Fold effects larger than the seed effects: averaging over the folds first matters."""
    return 0.6 + 0.1 * p + 0.01 * seed * (1 + p) + 0.05 * (fold - 1) + 0.002 * (seed % 2) * fold


def _fold_runs(diverged: tuple[int, int] | None = None) -> list[StoredRun]:
    runs = []
    for p in (0.0, 0.3):
        for seed in range(4):
            for fold in range(3):
                config = RunConfig(FOLDS, MODEL, TRAIN, p=p, seed=seed, fold=fold)
                test = _fold_score(p, seed, fold)
                if diverged == (seed, fold) and p == 0.3:
                    test = math.nan
                info = _info(test - 0.01, test, 0.9) if math.isfinite(test) else {}
                runs.append(_stored(config, 0.9, test, info))
    return runs


class TestFolds:
    def test_one_observation_per_seed(self) -> None:
        runs = _fold_runs()
        summaries = summarize(runs)
        assert [s.name for s in summaries] == ["none", "dropout p=0.3"]  # folds do not split
        per_seed = {
            p: [np.mean([_fold_score(p, s, f) for f in range(3)]) for s in range(4)]
            for p in (0.0, 0.3)
        }
        for s, p in zip(summaries, (0.0, 0.3), strict=True):
            assert (s.n_seeds, s.seeds, s.folds, len(s.keys)) == (4, (0, 1, 2, 3), 3, 12)
            values = per_seed[p]
            expected = sps.t.interval(0.95, 3, loc=np.mean(values), scale=sps.sem(values))
            assert s.test_acc_mean == pytest.approx(np.mean(values))
            assert s.test_acc_ci95 == pytest.approx(expected)  # over 4 seeds, not 12 runs
            assert s.val_acc_mean == pytest.approx(np.mean(values) - 0.01)
        comparison = summaries[1].vs_baseline
        assert comparison is not None and (comparison.test, comparison.n) == ("paired", 4)
        reference = sps.ttest_rel(per_seed[0.3], per_seed[0.0])
        assert comparison.p_value == pytest.approx(reference.pvalue)
        direct = compare(runs[12:], runs[:12], "none")
        assert direct.p_value == pytest.approx(reference.pvalue)
        best = best_rate(summaries)
        assert best is not None and best.chosen_on == "validation"
        assert "each seed's 3 cross-validation folds averaged" in best.choice

    def test_seed_runs_average_the_folds(self) -> None:
        runs = _fold_runs()[:12]
        merged = seed_runs(runs)
        assert [r.config.seed for r in merged] == [0, 1, 2, 3]
        first = merged[0]
        assert first.test_acc == pytest.approx(np.mean([_fold_score(0.0, 0, f) for f in range(3)]))
        assert first.info["val_acc"] == pytest.approx(first.test_acc - 0.01)
        assert first.seconds == 3.0
        plain = _validation_runs()[:5]
        assert seed_runs(plain) == plain  # without folds: each run unchanged

    def test_a_diverged_fold_makes_a_diverged_seed(self) -> None:
        summaries = summarize(_fold_runs(diverged=(2, 1)))
        dropout = summaries[1]
        assert (dropout.n_seeds, dropout.n_nan, dropout.n_valid) == (4, 1, 3)
        (finding,) = [f for f in diagnose(summaries) if f.rule == "diverged"]
        assert "1 of 4 seeds have a fold run that ended with NaN/inf" in finding.message

    def test_curves_are_averaged_per_seed(self) -> None:
        runs = _fold_runs()[:12]
        curves = {r.key: _curves(r.train_acc, r.test_acc) for r in runs}
        per_seed = seed_curves(runs, curves)
        assert len(per_seed) == 4
        expected = np.mean([curves[r.key]["test_acc"] for r in runs[:3]], axis=0)
        np.testing.assert_allclose(per_seed[0]["test_acc"], expected)
        longer = dict(curves)
        longer[runs[0].key] = {m: np.append(v, 0.5) for m, v in curves[runs[0].key].items()}
        padded = seed_curves(runs[:3], longer)[0]["test_acc"]
        assert padded.shape == (EPOCHS + 1,) and padded[-1] == 0.5  # one fold has that epoch


def _regression_summary(name: str, p: float = 0.0, **values: Any) -> ArmSummary:
    fields: dict[str, Any] = {
        "arm": "dropout" if p > 0 else "none",
        "p": p,
        "input_p": 0.0,
        "max_norm": None,
        "n_seeds": 10,
        "train_acc_ci95": (math.nan, math.nan),
        "test_acc_ci95": (math.nan, math.nan),
        "test_acc_std": 0.01,
        "vs_baseline": None,
        "name": name,
        "epochs": 100,
        "train_loss_mean": 0.3,
        "task": "regression",
    }
    fields |= values
    fields.setdefault("best_test_acc_mean", fields["test_acc_mean"])
    fields.setdefault("gap_mean", fields["train_acc_mean"] - fields["test_acc_mean"])
    return ArmSummary(**fields)


class TestRegressionDiagnosis:
    @pytest.mark.parametrize(
        ("summaries", "rules"),
        [
            ([_regression_summary("none", train_acc_mean=0.4, test_acc_mean=0.35)], {"capacity"}),
            (
                [
                    _regression_summary("none", train_acc_mean=1.0, test_acc_mean=0.8),
                    _regression_summary("dropout p=0.2", 0.2, train_acc_mean=1, test_acc_mean=0.85),
                    _regression_summary("dropout p=0.5", 0.5, train_acc_mean=1, test_acc_mean=0.86),
                ],
                {"large_gap", "rate_curve"},
            ),
            (
                [
                    _regression_summary("none", train_acc_mean=1.0, test_acc_mean=0.8),
                    _regression_summary("dropout p=0.5", 0.5, train_acc_mean=1, test_acc_mean=0.8),
                ],
                {"large_gap", "single_rate"},
            ),
            (
                [
                    _regression_summary(
                        "none", train_acc_mean=1.0, test_acc_mean=0.8, converge_epoch_mean=10.0
                    ),
                    _regression_summary(
                        "dropout p=0.5",
                        0.5,
                        train_acc_mean=0.7,
                        test_acc_mean=0.75,
                        converge_epoch_mean=95.0,
                    ),
                    _regression_summary(
                        "dropout p=0.2",
                        0.2,
                        train_acc_mean=0.95,
                        test_acc_mean=0.85,
                        converge_epoch_mean=40.0,
                    ),
                ],
                {"large_gap", "rate_curve", "no_convergence", "more_epochs", "not_converged"},
            ),
        ],
    )
    def test_messages_name_r2_not_accuracy(
        self, summaries: list[ArmSummary], rules: set[str]
    ) -> None:
        findings = diagnose(summaries, Thresholds())
        assert {f.rule for f in findings} == rules
        for finding in findings:
            assert "accuracy" not in finding.message, finding.message
            if finding.rule in {
                "capacity",
                "no_convergence",
                "more_epochs",
                "single_rate",
                "rate_curve",
            }:
                assert "R²" in finding.message, finding.message
            if finding.rule in {"large_gap", "single_rate"}:
                assert "R² gap" in finding.message

    def test_capacity_wording(self) -> None:
        (finding,) = diagnose(
            [_regression_summary("none", train_acc_mean=0.4, test_acc_mean=0.35)], Thresholds()
        )
        assert finding.message.startswith(
            "the baseline (none) reaches only a train R² of 0.400 (below 0.50: it explains "
            "little of its own training targets; train–test R² gap 0.050 < 0.10), and no "
            "regularizer scored significantly better: the model cannot fit its data"
        )


# -- the store, the report, the Experiment and the CLI -----------------------------------------


@pytest.fixture(scope="module")
def regression_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("regression") / "runs.sqlite"
    with ResultsStore(path) as store:
        store.add_runs(_records(_validation_runs()))
    return path


@pytest.fixture(scope="module")
def folds_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("folds") / "runs.sqlite"
    with ResultsStore(path) as store:
        store.add_runs(_records(_fold_runs()))
    return path


def _page(store_path: Path, out: Path) -> str:
    with ResultsStore(store_path) as store:
        return write_report(store, out).read_text(encoding="utf-8")


class TestRegressionReport:
    def test_the_page_speaks_r2_and_rmse(self, regression_store: Path, tmp_path: Path) -> None:
        page = _page(regression_store, tmp_path / "r.html")
        with ResultsStore(regression_store) as store:
            (experiment,) = analyze(store)
        assert "accurac" not in page.lower()
        for text in ("<th>validation R²</th>", "<th>validation RMSE</th>",
                     "<th>validation MAE</th>", "<th>gap (train − validation)</th>",
                     "regression: scores are R²", "validation split: 20% of the training split",
                     "Test R², read once after the choice", "<th>test R²</th>",
                     "<th>test RMSE</th>", "<th>test MAE</th>", "after the choice",
                     "the chosen group&#x27;s held-out estimate"):  # fmt: skip
            assert text in page, text
        assert "<th>test MSE</th>" not in page  # the test set does not lead
        best = experiment.best
        assert best is not None and best.chosen_on == "validation"
        assert html.escape(best.evidence) in page and html.escape(best.choice) in page
        s = experiment.summaries[1]
        assert f"<td>{s.test_rmse_mean:.4f}</td>" in page
        images = {alt for alt, _ in IMG.findall(page)}
        assert images == {"arm comparison chart", "rate vs R²", "learning curves"}
        for _, data in IMG.findall(page):
            assert base64.b64decode(data).startswith(b"\x89PNG")
        assert "Decision boundaries" not in page  # no class regions for a numeric target
        again = _page(regression_store, tmp_path / "again.html")
        assert again == page

    def test_the_folds_page(self, folds_store: Path, tmp_path: Path) -> None:
        page = _page(folds_store, tmp_path / "f.html")
        assert "accurac" not in page.lower()
        assert "3-fold cross-validation over the training split" in page
        assert "a set of runs identical except for their seed and fold" in page
        assert "<td class=l>none</td><td>4</td>" in page  # 4 seeds, not 12 runs
        assert "chosen on validation" in page

    def test_experiment(self, folds_store: Path, regression_store: Path) -> None:
        e = lab.load(folds_store)
        assert (e.task, e.score_name) == ("regression", "R²")
        assert e.best is not None and e.best.chosen_on == "validation"
        assert e.to_dict()["best"]["chosen_on"] == "validation"
        curves = e.curves("none")["none"]
        assert curves["test_acc"].shape == (4, EPOCHS)  # one row per seed: folds averaged
        final = [np.mean([_fold_score(0.0, s, f) for f in range(3)]) for s in range(4)]
        np.testing.assert_allclose(curves["test_acc"][:, -1], final)
        text = lab.load(regression_store)._repr_html_()
        assert "accurac" not in text.lower()
        assert "<th>test R²</th>" in text and "<th>test RMSE</th>" in text
        assert "chosen on validation" in text
        for figure in (
            e.plot_arms(),
            e.plot_rates(),
            e.plot_curves(),
            e.plot_curves(metrics="all"),
        ):
            labels = [a.get_xlabel() + a.get_ylabel() + a.get_title() for a in figure.axes]
            assert not any("accuracy" in label for label in labels), labels
        arm_labels = [a.get_xlabel() for a in lab.load(regression_store).plot_arms().axes]
        # validation chose: the chart shows the choosing split, not the test set
        assert arm_labels == ["final R² (mean, 95% CI)", "final validation RMSE (mean, 95% CI)"]

    def test_cli(self, regression_store: Path, tmp_path: Path) -> None:
        runner = CliRunner()
        args = ["report", "--store", str(regression_store), "--out", str(tmp_path / "r.html")]
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "Validation R² over seeds" in result.stdout and "val RMSE" in result.stdout
        assert "val R²" in result.stdout and "test RMSE" in result.stdout  # read after the choice
        assert "chosen on validation R² over seeds" in result.stdout
        assert "accuracy" not in result.stdout
        result = runner.invoke(app, [*args, "--json"])
        (experiment,) = json.loads(result.stdout)["experiments"]
        assert experiment["best"]["chosen_on"] == "validation"
        assert experiment["best"]["name"] == "dropout p=0.2"
        assert experiment["summary"][0]["score_name"] == "R²"


def test_learning_curves_show_r2_from_a_floor() -> None:
    """An untrained network's R² of -50 would flatten every later epoch: panels start at -1."""
    from dropkit.lab.results.plots import R2_FLOOR, accuracy_curves_figure, learning_curves_figure

    ramp = np.linspace(-50.0, 0.8, EPOCHS)[None, :]
    curves = {"train_acc": ramp, "test_acc": ramp - 0.1, "train_loss": -ramp, "test_loss": -ramp}
    figure = learning_curves_figure([("none", curves)], title="t", task="regression")
    titles = {a.get_title(): a.get_ylim()[0] for a in figure.axes if a.get_visible()}
    assert titles["test R² (from -1)"] == R2_FLOOR and titles["train R² (from -1)"] == R2_FLOOR
    assert titles["test MSE"] < 0  # losses are not floored (here negative by construction)
    (axis,) = accuracy_curves_figure([("none", curves)], title="t", task="regression").axes
    assert axis.get_ylim()[0] == R2_FLOOR and axis.get_ylabel() == "R²"
    figure = learning_curves_figure([("none", curves)], title="t")  # classification: as drawn
    assert all(a.get_ylim()[0] < -40 for a in list(figure.axes)[:2])
