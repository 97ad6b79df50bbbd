"""`dropkit check MODULE:FACTORY`: findings printed, exit 1 on warnings, 2 on bad targets."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from dropkit.cli import app

runner = CliRunner()

MODELS = """
import torch
from torch import nn
import dropkit


def clean():
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), dropkit.Dropout(0.5), nn.Linear(32, 2))


def dropout_after_output():
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2), nn.Dropout(0.5))


def not_a_model():
    return 42
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


def test_clean_model_exits_0(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", f"{_write(tmp_path)}:clean", "--input-shape", "3,4"])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output


def test_warning_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", f"{_write(tmp_path)}:dropout_after_output"])
    assert result.exit_code == 1, result.output
    assert "output" in result.output.lower()


def test_dotted_module_from_the_current_folder(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = runner.invoke(app, ["check", "models:clean"])
    assert result.exit_code == 0, result.output


def test_bad_targets_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path)
    cases = {
        "no-colon": "expected MODULE:FACTORY",
        f"{tmp_path / 'missing.py'}:f": "no such file",
        "surely_not_a_module_xyz:f": "cannot import",
        f"{path}:missing": "has no callable 'missing'",
        f"{path}:not_a_model": "returned int, not a torch.nn.Module",
    }
    for target, message in cases.items():
        result = runner.invoke(app, ["check", target])
        assert result.exit_code == 2, (target, result.output)
        assert message in result.stderr, (target, result.stderr)
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    result = runner.invoke(app, ["check", f"{broken}:f"])
    assert (
        result.exit_code == 2
        and "cannot import" in result.stderr
        and "SyntaxError" in result.stderr
    )
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('boom')\n")
    result = runner.invoke(app, ["check", f"{raising}:f"])
    assert result.exit_code == 2 and "RuntimeError: boom" in result.stderr
    result = runner.invoke(app, ["check", f"{path}:clean", "--input-shape", "a,b"])
    assert result.exit_code == 2 and "--input-shape" in result.stderr
