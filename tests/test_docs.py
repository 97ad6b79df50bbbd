"""The documentation's Python examples run as written, and docs/api.md lists every public name."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

import dropkit
from dropkit import lab

DOCS = Path(__file__).parent.parent / "docs"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


@pytest.mark.slow
def test_lab_from_python_runs_cell_by_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/lab.md's notebook section, every block in one namespace, in order."""
    import dropkit.lab.train.stacked as batched

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(batched, "compiler_available", lambda *_: False)  # seconds, not a minute
    blocks = _python_blocks(_section(DOCS / "lab.md", "## From Python"))
    assert len(blocks) >= 5
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "docs/lab.md", "exec"), namespace)
    assert (tmp_path / "sweep.html").is_file() and (tmp_path / "runs.sqlite").is_file()
    experiment = namespace["e"]
    assert isinstance(experiment, lab.Experiment) and experiment.trained == 9


def test_api_page_lists_every_public_name() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for module, names in (("dropkit", dropkit.__all__), ("dropkit.lab", lab.__all__)):
        missing = [n for n in names if f"`{n}" not in text]
        assert not missing, f"docs/api.md lacks {module} names: {missing}"


def test_tools_calibration_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/tools.md's calibration example, and the output it shows."""
    section = _section(DOCS / "tools.md", "## Calibration metrics (`dropkit.calibration`)")
    (block,) = _python_blocks(section)
    exec(compile(block, "docs/tools.md", "exec"), {})
    shown = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)[0]
    printed = capsys.readouterr().out
    # the same CPU build prints the same digits; elsewhere float rounding may move a last digit
    for line, expected in zip(printed.splitlines(), shown.splitlines(), strict=True):
        got = [float(v) for v in re.findall(r"\d+\.\d+", line)]
        want = [float(v) for v in re.findall(r"\d+\.\d+", expected)]
        assert got == pytest.approx(want, abs=0.002), (line, expected)
