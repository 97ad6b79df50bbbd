"""``evaluate=`` end to end: the lab's calibration answer from the CLI and from Python, for the
built-in MLP, a user's model on tensors and regression, stored and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dropkit import lab
from dropkit.cli import app
from dropkit.lab.store import ResultsStore

runner = CliRunner()
TINY = ["--epochs", "4", "--seeds", "3", "--hidden", "8", "--no-compile", "--quiet"]


def test_compare_evaluate_both_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--data", "circles", "--arms", "none,dropout", *TINY]
    args += ["--evaluate", "both", "--mc-samples", "5", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["evaluate"] == "both" and payload["mc_samples"] == 5
    groups = {g["name"]: g for g in payload["calibration"]}
    assert set(groups) == {"none", "dropout p=0.5"}
    html = Path(payload["files"]["report"]).read_text()
    assert "Calibration" in html and "reliability" in html.lower()
    with ResultsStore(payload["store"]) as store:
        runs = store.runs()
        assert len(runs) == 6
        assert all({"det_nll", "mc_nll", "mc_ece", "mc_bin00_n"} <= set(r.info) for r in runs)
    again = runner.invoke(app, args)  # stored: nothing measured again; the tables printed
    assert again.exit_code == 0, again.output
    assert "6/6 runs already complete" in again.stdout
    assert "Calibration on the test set: MC dropout (5 passes)" in again.stdout


def test_evaluation_options_are_checked_before_training(tmp_path: Path) -> None:
    base = ["compare", "--data", "circles", "--arms", "none", *TINY, "--out", str(tmp_path)]
    for extra, words in (
        (["--evaluate", "sometimes"], "evaluate"),
        (["--mc-samples", "10"], "mc_samples"),
        (["--evaluate", "mc", "--mc-samples", "1"], "mc_samples"),
        (["--choose-by", "accuracy"], "choose_by"),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert words.replace("_", "-") in result.output or words in result.output
    assert not (tmp_path / "runs.sqlite").exists()


def test_a_plain_run_keeps_its_key_and_evaluate_makes_a_new_one() -> None:
    plain = lab.plan_compare("circles", arms="none", seeds=1, epochs=2)
    again = lab.plan_compare("circles", arms="none", seeds=1, epochs=2, evaluate=None)
    measured = lab.plan_compare("circles", arms="none", seeds=1, epochs=2, evaluate="mc")
    assert plain.keys == again.keys and plain.keys != measured.keys
    assert "evaluate" not in plain.settings and measured.settings["evaluate"] == "mc"


def _factory(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))


def test_user_model_regression_on_tensors_chooses_by_nll(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 5, generator=g)
    y = x[:, 0] - 0.5 * x[:, 1] + 0.3 * torch.randn(160, generator=g)
    e = lab.sweep(
        (x, y),
        model=_factory,
        rates=[0.0, 0.3],
        seeds=3,
        epochs=5,
        task="regression",
        evaluate="both",
        mc_samples=6,
        choose_by="nll",
        store=tmp_path / "runs.sqlite",
    )
    assert e.settings["choose_by"] == "nll"
    rows = {row["name"]: row for row in e.calibration}
    assert set(rows) == {"none", "dropout p=0.3"}
    best = e.best
    assert best is not None and "NLL" in best.choice
    # the group with the lowest mean validation NLL of MC dropout (the mode measured) wins
    # unless tied with a simpler one; here: compare with the per-seed numbers
    means = {
        s.name: float(np.mean([r.info["val_mc_nll"] for r in e.runs if r.config.p == s.p]))
        for s in e.summaries
    }
    assert best.top == min(means, key=means.__getitem__)
    again = lab.load(tmp_path / "runs.sqlite", choose_by="rmse")
    assert again.best is not None and "RMSE" in again.best.choice
    with pytest.raises(ValueError, match="choose_by"):
        lab.load(tmp_path / "runs.sqlite", choose_by="ece")  # a classification metric


@pytest.mark.slow
def test_compare_on_mnist_with_both_evaluations(tmp_path: Path) -> None:
    """The issue's command: dropout against none on MNIST, MC against deterministic."""
    args = ["compare", "--data", "mnist", "--arms", "none,dropout", "--evaluate", "both"]
    args += ["--epochs", "1", "--seeds", "3", "--no-compile", "--quiet", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    dropout = next(g for g in payload["calibration"] if g["name"] != "none")
    assert dropout["mc_vs_det"]  # MC against deterministic, paired over seeds
    assert "Calibration" in Path(payload["files"]["report"]).read_text()
