"""``dropkit sweep/compare --model MODULE:FACTORY --data MODULE:FUNCTION``, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dropkit.cli import app
from helpers import stored_runs

runner = CliRunner()

MODULE = """
import torch
from torch import nn


def make_mlp(p):
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))


def make_regressor(p):
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))


def load():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(90, 2, generator=generator)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def load_regression():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(90, 2, generator=generator)
    return x, (x[:, 0] - 2 * x[:, 1]).float()


def broken():
    raise RuntimeError("disk on fire")
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the user's module, as the current directory."""
    name = f"usermodels_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    return tmp_path / name


def test_sweep_your_model_and_data(project: Path) -> None:
    module = project.name
    args = [
        "sweep",
        "--model",
        f"{module}:make_mlp",
        "--data",
        f"{module}:load",
        "--rates",
        "0,0.3",
        "--seeds",
        "2",
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--out",
        str(project.parent / "out"),
        "--json",
        "--no-compile",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [row["p"] for row in payload["summary"]] == [0.0, 0.3]
    assert payload["best"]["chosen_on"] == "validation"
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["summary"] == payload["summary"]
    assert stored_runs(project.parent / "out" / "runs.sqlite") == 4


def test_regression_and_folds(project: Path) -> None:
    module = project.name
    result = runner.invoke(
        app,
        [
            "sweep",
            "--model",
            f"{module}:make_regressor",
            "--data",
            f"{module}:load_regression",
            "--rates",
            "0,0.2",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--folds",
            "2",
            "--out",
            str(project.parent / "out"),
            "--json",
            "--no-compile",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["summary"][0]["score_name"] == "R²"
    assert stored_runs(project.parent / "out" / "runs.sqlite") == 2 * 2 * 2


def test_compare_arms_on_your_model(project: Path) -> None:
    module = project.name
    result = runner.invoke(
        app,
        [
            "compare",
            "--model",
            f"{module}:make_mlp",
            "--data",
            f"{module}:load",
            "--arms",
            "none,dropout,l2",
            "--seeds",
            "2",
            "--epochs",
            "2",
            "--out",
            str(project.parent / "out"),
            "--json",
            "--no-compile",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {row["arm"] for row in json.loads(result.stdout)["summary"]} == {"none", "dropout", "l2"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "{m}:nothing"], "has no callable 'nothing'"),
        (["--data", "{m}:broken"], "broken() raised RuntimeError: disk on fire"),
        (["--task", "ranking"], "--task"),
        (["--validation", "1.5"], "--validation"),
        (["--folds", "1"], "--folds"),
        (["--device", "tpu"], "--device"),
        (["--hidden", "8"], "--hidden"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    project: Path, extra: list[str], message: str
) -> None:
    module = project.name
    base = {"--model": f"{module}:make_mlp", "--data": f"{module}:load"}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value.format(m=module)
    args = ["sweep", *[part for pair in base.items() for part in pair]]
    args += ["--rates", "0,0.3", "--seeds", "2", "--epochs", "2"]
    args += ["--out", str(project.parent / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert stored_runs(project.parent / "out" / "runs.sqlite") == 0
