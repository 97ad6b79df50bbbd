"""The HTML report and ``dropkit report``: self-contained, escaped, deterministic, robust."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dropkit.cli import app
from dropkit.lab.execute.engines import InProcessEngine
from dropkit.lab.execute.runner import run_configs
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.results.analysis import analyze
from dropkit.lab.results.report import write_report
from dropkit.lab.store import ResultsStore, RunRecord

EPOCHS = 30
TINY = dict(data=DataSpec("circles"), model=ModelSpec((16,)), train=TrainSpec(epochs=EPOCHS))
IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def _configs(rates: tuple[float, ...] = (0.0, 0.5), seeds: int = 3) -> list[RunConfig]:
    return [RunConfig(**TINY, p=p, seed=s) for p in rates for s in range(seeds)]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, ...]]:
    """A real store: circles, 2 rates x 3 seeds, trained by the lab's runner."""
    path = tmp_path_factory.mktemp("trained") / "runs.sqlite"
    with ResultsStore(path) as store:
        outcome = run_configs(_configs(), store, engine=InProcessEngine(compile=False))
    return path, outcome.keys


@pytest.fixture(scope="module")
def page(trained: tuple[Path, tuple[str, ...]], tmp_path_factory: pytest.TempPathFactory) -> str:
    path, keys = trained
    with ResultsStore(path) as store:
        out = write_report(store, tmp_path_factory.mktemp("page") / "report.html", keys=keys)
    return out.read_text(encoding="utf-8")


def _images(text: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data) for alt, data in IMG.findall(text)}


def _record(config: RunConfig, test_acc: list[float], train_acc: float = 1.0) -> RunRecord:
    """A finished run with hand-made curves (``test_acc`` per epoch)."""
    test = np.asarray(test_acc, dtype=np.float64)
    curves = {
        "train_acc": np.full(test.shape, train_acc),
        "test_acc": test,
        "train_loss": np.linspace(0.7, 0.1, test.size),
        "test_loss": np.where(np.isfinite(test), np.linspace(0.7, 0.4, test.size), np.nan),
    }
    return RunRecord(config, curves, 1.0)


class TestPage:
    def test_self_contained(self, page: str) -> None:
        assert page.startswith("<!DOCTYPE html>")
        assert "<script" not in page.lower()
        assert not re.search(r"(src|href)=[\"']?(https?:|//)", page), "nothing may be fetched"
        assert "default-src 'none'" in page  # the CSP forbids any fetch
        images = _images(page)
        assert page.count("<img") == len(images), "every image is an inline PNG"
        for alt, data in images.items():
            assert data.startswith(b"\x89PNG\r\n\x1a\n"), alt
        assert {"arm comparison chart", "rate vs accuracy", "learning curves"} <= set(images)
        assert len(page) < 3_000_000

    def test_sections_and_numbers(self, trained: tuple[Path, tuple[str, ...]], page: str) -> None:
        path, keys = trained
        with ResultsStore(path) as store:
            (experiment,) = analyze(store, keys)
        assert len(experiment.summaries) == 2 and experiment.findings  # the loops below check
        for heading in ("Diagnosis", "Per-group results", "Comparisons with the baseline"):
            assert heading in page
        for summary in experiment.summaries:
            assert f"<td class=l>{summary.name}</td><td>3</td>" in page
            assert f"{summary.test_acc_mean:.3f}" in page
        comparison = experiment.summaries[1].vs_baseline
        assert comparison is not None and comparison.test_name in page
        assert experiment.best is not None and experiment.best.evidence in page
        for finding in experiment.findings:
            assert html.escape(finding.message) in page

    def test_deterministic(
        self, trained: tuple[Path, tuple[str, ...]], page: str, tmp_path: Path
    ) -> None:
        path, keys = trained
        with ResultsStore(path) as store:  # a fresh connection, the same store
            again = write_report(store, tmp_path / "again.html", keys=keys).read_bytes()
        assert again == page.encode("utf-8")  # Monte Carlo map included: its seed is fixed

    def test_two_d_pictures_from_stored_weights(self, page: str) -> None:
        """circles has two features: the networks are rebuilt from the store's weights."""
        images = _images(page)
        assert {"decision boundaries", "MC-dropout uncertainty map"} <= set(images)
        assert "no stored weights" not in page
        for alt in ("decision boundaries", "MC-dropout uncertainty map"):
            pixels = np.asarray(Image.open(io.BytesIO(images[alt])).convert("RGB"))
            packed = (
                (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
            )
            assert np.unique(packed).size > 50, alt  # regions, points and text, not blank


def test_escaping(tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    csv = tmp_path / "a<u>.csv"
    config = RunConfig(DataSpec(str(csv), target="y"), ModelSpec((4,)), TrainSpec(epochs=3))
    records = [
        _record(dataclasses.replace(config, seed=s, p=p), [0.5, 0.6, 0.7 + p / 10])
        for p in (0.0, 0.3)
        for s in range(2)
    ]
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        store.add_runs(records)
        text = write_report(store, tmp_path / "r.html", title=evil).read_text()
    assert evil not in text and "<u>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "a&lt;u&gt;.csv" in text
    # The CSV is gone: no 2-D pictures, a note saying why, no crash.
    assert "cannot be loaded" in text


def test_empty_store(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        text = write_report(store, tmp_path / "r.html").read_text()
    assert "No finished runs to report" in text and "<img" not in text


def test_one_seed_nan_and_interrupted_runs(tmp_path: Path) -> None:
    base = RunConfig(**TINY, seed=0)  # type: ignore[arg-type]
    epochs = np.arange(1, EPOCHS + 1)
    rising = list(0.5 + 0.3 * np.minimum(epochs / 20, 1))
    diverged = rising[:10] + [math.nan] * (EPOCHS - 10)
    records = [
        _record(base, rising),
        _record(RunConfig(**TINY, p=0.5, seed=0), rising),  # type: ignore[arg-type]
        _record(RunConfig(**TINY, p=0.8, seed=0), diverged),  # type: ignore[arg-type]
    ]
    missing = RunConfig(**TINY, p=0.5, seed=1).key()  # type: ignore[arg-type]
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        store.add_runs(records)
        keys = [r.config.key() for r in records] + [missing]
        text = write_report(store, tmp_path / "r.html", keys=keys).read_text()
    assert "3 of 4 requested runs are finished and stored" in text
    assert "1 requested runs are not in the store" in text
    assert "fewer than two usable seeds" in text.lower() or "Every group has fewer" in text
    assert "diverged" in text and "1 of 1 runs ended with NaN" in text
    assert "no interval" in text  # one seed: the best group's evidence says why
    assert {"arm comparison chart", "learning curves"} <= set(_images(text))
    assert "none (seed 0): no stored weights for this run" in text  # hand-made runs
    assert "decision boundaries" not in _images(text)


runner = CliRunner()


class TestCommand:
    def test_report_command(self, trained: tuple[Path, tuple[str, ...]], tmp_path: Path) -> None:
        path, _ = trained
        out = tmp_path / "sub" / "r.html"
        result = runner.invoke(app, ["report", "--store", str(path), "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["out"] == str(out) and payload["runs"] == 6 and out.is_file()
        (experiment,) = payload["experiments"]
        assert [row["name"] for row in experiment["summary"]] == ["none", "dropout p=0.5"]
        assert experiment["findings"], "no finding: the key check below would check nothing"
        assert all(
            {"rule", "severity", "message", "numbers"} <= f.keys() for f in experiment["findings"]
        )

    def test_report_command_text(self, tmp_path: Path) -> None:
        ResultsStore(tmp_path / "empty.sqlite").close()
        out = tmp_path / "r.html"
        result = runner.invoke(
            app, ["report", "--store", str(tmp_path / "empty.sqlite"), "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert "no finished runs" in result.stdout and f"report: {out}" in result.stdout
        assert "No finished runs to report" in out.read_text()

    def test_missing_store(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.sqlite"
        result = runner.invoke(app, ["report", "--store", str(missing)])
        assert result.exit_code == 2
        assert result.stderr.strip() == f"dropkit: error: no results store at {missing}"
        assert not missing.exists()

    def test_not_a_store(self, tmp_path: Path) -> None:
        bogus = tmp_path / "bogus.sqlite"
        bogus.write_text("not sqlite")
        result = runner.invoke(app, ["report", "--store", str(bogus)])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1

    def test_sweep_writes_the_report(self, tmp_path: Path) -> None:
        args = ["sweep", "--epochs", "3", "--seeds", "2", "--rates", "0,0.5", "--hidden", "8"]
        result = runner.invoke(app, [*args, "--no-compile", "--quiet", "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert f"report: {tmp_path / 'report.html'}" in result.stdout
        images = _images((tmp_path / "report.html").read_text())
        assert {"learning curves", "rate vs accuracy"} <= set(images)
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["files"]["report"] == str(tmp_path / "report.html")
        findings = summary["findings"]
        assert findings, "a 3-epoch run is diagnosed (it has not converged)"
        assert all({"rule", "severity", "message", "numbers"} <= f.keys() for f in findings)
