"""The command line: exit codes, --json, one-line usage errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dropkit import __version__
from dropkit.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_demo_states_the_case_study() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "make_circles" in result.output and "Dropout(p)" in result.output


def test_demo_json_is_one_object() -> None:
    result = runner.invoke(app, ["demo", "--json", "--seeds", "3", "--p", "0.25"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["seeds"] == 3 and plan["runs"] == 6 and plan["arms"] == ["none", "dropout(p=0.25)"]


def test_bad_rate_is_a_usage_error() -> None:
    result = runner.invoke(app, ["demo", "--p", "40"])
    assert result.exit_code == 2
    assert "percentage" in result.output


def test_bad_seeds_is_a_usage_error() -> None:
    result = runner.invoke(app, ["demo", "--seeds", "0"])
    assert result.exit_code == 2
    assert "must be >= 1" in result.output
