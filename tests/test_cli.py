"""The command line, end to end on tiny settings: demo, sweep, --json, resume, bad input."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dropkit import __version__
from dropkit.cli import app

runner = CliRunner()
FAST = ["--epochs", "5", "--no-compile", "--quiet"]
SUMMARY_KEYS = {
    "arm",
    "p",
    "n_seeds",
    "train_acc_mean",
    "test_acc_mean",
    "test_acc_ci95",
    "gap_mean",
}


def _json(args: list[str]) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_demo_json_and_files(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    payload = _json(["demo", *FAST, "--seeds", "2", "--out", str(out), "--json"])
    rows = payload["summary"]
    assert [(r["arm"], r["p"], r["n_seeds"]) for r in rows] == [
        ("none", 0.0, 2),
        ("dropout", 0.4, 2),
    ]
    assert all(row.keys() >= SUMMARY_KEYS for row in rows)
    # The summary is recomputed from the store it names: same runs, same t-interval.
    from dropkit.lab.results import mean_ci
    from dropkit.lab.store import ResultsStore

    with ResultsStore(payload["store"]) as store:
        runs = store.runs()
    for row in rows:
        tests = [r.test_acc for r in runs if r.config.p == row["p"]]
        mean, low, high = mean_ci(tests)
        assert len(tests) == 2 and row["test_acc_mean"] == pytest.approx(mean)
        if math.isfinite(low):
            assert row["test_acc_ci95"] == pytest.approx([low, high])
    assert payload["store"] == str(out / "runs.sqlite") and payload["out"] == str(out)
    for name in ("runs.sqlite", "learning_curves.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name


def test_demo_text_and_resume(tmp_path: Path) -> None:
    args = ["demo", *FAST, "--seeds", "2", "--out", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "vs none" in first.output and "best: " in first.output
    assert "learning curves:" in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert "4/4 runs already complete" in again.output


@pytest.mark.parametrize("data", ["circles", "moons", "digits", "breast_cancer", "wine"])
def test_sweep_every_builtin_dataset(data: str, tmp_path: Path) -> None:
    payload = _json(
        ["sweep", "--data", data, *FAST, "--seeds", "2", "--rates", "0,0.5", "--hidden", "16"]
        + ["--out", str(tmp_path), "--json"]
    )
    rows = payload["summary"]
    assert [r["p"] for r in rows] == [0.0, 0.5]
    best = payload["best"]
    # The top by mean (the first on an exact tie: p=0, the simpler) and the tie rule's choice.
    assert best["top"] == max(rows, key=lambda r: r["test_acc_mean"])["name"]
    assert best["name"] in best["tied"] and best["chosen_on"] == "test"
    assert (tmp_path / "rate_vs_accuracy.png").exists()


def test_sweep_csv_with_options(tmp_path: Path) -> None:
    csv = tmp_path / "points.csv"
    lines = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 2 else 'no'}" for i in range(40)]
    csv.write_text("\n".join(lines) + "\n")
    payload = _json(
        ["sweep", "--data", str(csv), "--target", "label", *FAST, "--seeds", "2"]
        + ["--rates", "0:0.4:0.2", "--hidden", "8,4", "--input-dropout", "0.1", "--max-norm", "3"]
        + ["--batch-size", "8", "--out", str(tmp_path / "out"), "--json"]
    )
    assert [r["p"] for r in payload["summary"]] == [0.0, 0.2, 0.4]
    assert {r["arm"] for r in payload["summary"]} == {
        "input_dropout+max_norm",
        "dropout+input_dropout+max_norm",
    }


def _bad(args: list[str], message: str, tmp_path: Path) -> None:
    store = tmp_path / "bad" / "runs.sqlite"
    result = runner.invoke(app, [*args, *FAST, "--store", str(store)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert not store.exists(), "nothing may be written on bad input"


def test_bad_dataset(tmp_path: Path) -> None:
    _bad(["sweep", "--data", "imagenet"], "unknown dataset 'imagenet'", tmp_path)


def test_missing_csv(tmp_path: Path) -> None:
    _bad(
        ["sweep", "--data", str(tmp_path / "nope.csv"), "--target", "y"],
        "CSV file not found",
        tmp_path,
    )


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("a,b,y\n1,2,0\n3,4,1\n", "label", "target column 'label' not in"),
        ("a,b,y\n1,x,0\n3,4,1\n", "y", "feature column 'b' is not numeric"),
        ("a,b,y\n1,2,0\n3,4,nan\n", "y", "missing/NaN values"),
        ("", "y", "is empty"),
        ("a,b,y\n", "y", "no data rows"),
    ],
)
def test_bad_csv(content: str, target: str, message: str, tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text(content)
    _bad(["sweep", "--data", str(csv), "--target", target], message, tmp_path)


def test_bad_csv_lists_columns(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("alpha,beta,y\n1,2,0\n")
    _bad(["sweep", "--data", str(csv), "--target", "gamma"], "columns: alpha, beta, y", tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--rates", "0,1.5"], "Did you pass a percentage"),
        (["sweep", "--rates", "0,-0.1"], "must be in [0, 1]"),
        (["sweep", "--rates", "a,b"], "--rates: expected numbers"),
        (["sweep", "--seeds", "0"], "--seeds must be an int >= 1"),
        (["sweep", "--hidden", "0"], "--hidden: widths must be integers >= 1"),
        (["sweep", "--max-norm", "-1"], "--max-norm must be a finite number > 0"),
        (["demo", "--p", "40"], "Did you pass a percentage? Use --p=0.4"),
    ],
)
def test_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    _bad(args, message, tmp_path)


def test_unusable_out_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("")
    store = tmp_path / "runs.sqlite"
    result = runner.invoke(app, ["demo", *FAST, "--out", str(blocker), "--store", str(store)])
    assert result.exit_code == 2 and "cannot create the output folder" in result.stderr
    assert not store.exists()


@pytest.mark.parametrize(
    ("rates", "message"),
    [("0:inf:0.1", "needs finite start and stop"), ("0:1:1e-9", "at most 1000 are allowed")],
)
def test_bad_rate_ranges(rates: str, message: str, tmp_path: Path) -> None:
    _bad(["sweep", "--rates", rates], message, tmp_path)


def test_csv_identity_is_its_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [f"{i % 5},{i % 3},{i % 2}" for i in range(30)]
    Path("d.csv").write_text("a,b,y\n" + "\n".join(rows) + "\n")
    args = ["sweep", "--target", "y", *FAST, "--seeds", "1", "--rates", "0", "--hidden", "4"]
    assert runner.invoke(app, [*args, "--data", "d.csv"]).exit_code == 0
    again = runner.invoke(app, [*args, "--data", "./d.csv"])
    assert "1/1 runs already complete" in again.output
    Path("d.csv").write_text("a,b,y\n" + "\n".join(rows[::-1]) + "\n")
    edited = runner.invoke(app, [*args, "--data", "d.csv"])
    assert edited.exit_code == 0 and "already complete" not in edited.output


def test_unwritable_store(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["demo", *FAST, "--store", str(blocker / "runs.sqlite")])
    assert result.exit_code == 2
    assert "cannot create the results store" in result.stderr


def test_not_a_store(tmp_path: Path) -> None:
    fake = tmp_path / "fake.sqlite"
    fake.write_text("this is not sqlite " * 100)
    result = runner.invoke(app, ["demo", *FAST, "--store", str(fake)])
    assert result.exit_code == 2
    assert "cannot use" in result.stderr


# -- engines: --engine in-process|ray, --address (the Ray runs themselves: test_lab_ray.py) ----


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "spark"], "--engine must be one of 'in-process', 'ray', got 'spark'"),
        (["--address", "head:6379"], "--address names a Ray cluster; use it with --engine ray"),
    ],
)
@pytest.mark.parametrize("command", ["demo", "sweep"])
def test_bad_engine_options(command: str, args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [command, *FAST, "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is written before the options are checked"


def test_engine_ray_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is missing
    result = runner.invoke(app, ["sweep", *FAST, "--out", str(tmp_path), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        'dropkit: error: the Ray engine needs Ray: pip install "dropkit[ray]"'
    )
    assert not (tmp_path / "runs.sqlite").exists(), "no store is created"


def test_engine_ray_unreachable_address(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    args = ["sweep", *FAST, "--out", str(tmp_path), "--engine", "ray", "--address", "127.0.0.1:1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "dropkit: error: cannot reach Ray at 127.0.0.1:1" in result.stderr
    assert not (tmp_path / "runs.sqlite").exists(), "no store is created"
