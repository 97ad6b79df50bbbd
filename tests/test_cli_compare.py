"""`dropkit compare` end to end on tiny settings: table, --json, files, resume, usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dropkit.cli import app

runner = CliRunner()
TINY = ["--epochs", "4", "--seeds", "2", "--hidden", "8", "--no-compile", "--quiet"]


def test_compare_json_files_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--data", "circles", "--arms", "none,dropout,l2+dropout,early_stopping"]
    args += [*TINY, "--l2", "0.01", "--patience", "2", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["command"] == "compare" and payload["epochs"] == 4
    assert payload["arms"] == ["none", "dropout", "dropout+l2", "early_stopping"]
    rows = {row["arm"]: row for row in payload["summary"]}
    assert set(rows) == {"none", "dropout", "dropout+l2", "early_stopping"}
    assert all(row["n_seeds"] == 2 for row in rows.values())
    assert rows["none"]["vs_baseline"] is None and rows["dropout"]["vs_baseline"] is not None
    assert json.loads((out / "summary.json").read_text())["summary"] == payload["summary"]
    for path in payload["files"].values():
        assert Path(path).is_file()

    from dropkit.lab.store import ResultsStore

    with ResultsStore(payload["store"]) as store:
        runs = store.runs()
        assert len(runs) == 8
        stopped = [r for r in runs if r.arm == "early_stopping"]
        assert all(1 <= r.info["stop_epoch"] <= 4 for r in stopped)
        assert all(store.state_dict(r.key) is not None for r in runs)  # small model: weights kept
        assert {r.config.strength("l2") for r in runs if r.arm == "dropout+l2"} == {0.01}

    again = runner.invoke(app, args[:-1])  # the table this time; nothing left to train
    assert again.exit_code == 0, again.output
    assert "8/8 runs already complete" in again.stdout
    assert "dropout+l2" in again.stdout and "vs none" in again.stdout


def test_every_mlp_arm_runs_in_one_command(tmp_path: Path) -> None:
    """The default arm list: every arm that applies to an MLP, stacked and looped together."""
    result = runner.invoke(
        app, ["compare", *TINY, "--epochs", "2", "--seeds", "1", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    from dropkit.lab.plan.arms import REGULARIZERS

    assert payload["arms"] == [name for name, r in REGULARIZERS.items() if "mlp" in r.kinds]
    assert len(payload["arms"]) == 16
    assert {row["arm"] for row in payload["summary"]} == set(payload["arms"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arms", "none,dropuot"], "unknown arm 'dropuot'"),
        (["--arms", "none,spatial_dropout"], "'spatial_dropout' does not apply to model 'mlp'"),
        (["--arms", "variational", "--model", "cnn"], "does not apply to model 'cnn'"),
        (["--l2", "-1"], "--l2 must be a finite number > 0"),
        (["--p", "1.5"], "--p must be in [0, 1]"),
        (["--model", "cnn"], "--model 'cnn' on circles"),
        (["--model", "gru"], "--model must be one of 'mlp', 'cnn', 'rnn'"),
        (["--data", "nope"], "unknown dataset 'nope'"),
        (["--seeds", "0"], "--seeds must be an int >= 1"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", *TINY, "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before anything was written
