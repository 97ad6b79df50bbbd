"""The scripts of examples/ run as documented (on smaller settings where they take long)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cnn_on_image_tensors(tmp_path: Path) -> None:
    module = _load("cnn_on_image_tensors")
    e = module.main(str(tmp_path / "runs.sqlite"), str(tmp_path / "report.html"))
    assert [row["p"] for row in e.summary] == [0.0, 0.25, 0.5]
    assert e.best is not None and e.best.chosen_on == "validation"
    assert (tmp_path / "report.html").stat().st_size > 0


def test_regression_mlp_on_csv(tmp_path: Path) -> None:
    module = _load("regression_mlp_on_csv")
    e = module.main(str(tmp_path))
    assert e.settings["task"] == "regression" and e.summary[0]["score_name"] == "R²"
    assert "RMSE" in (tmp_path / "regression-report.html").read_text()


def test_transformer_from_config(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    module = _load("transformer_from_config")
    e = module.main(str(tmp_path / "runs.sqlite"))
    assert len(e.summary) == 2 and e.trained == 4
    assert not [note for note in e.notes if "run by run" in note], e.notes


def test_transformer_on_tokens(tmp_path: Path) -> None:
    module = _load("transformer_on_tokens")
    e = module.main(str(tmp_path / "runs.sqlite"), epochs=3)
    assert [row["p"] for row in e.summary] == [0.0, 0.1, 0.2] and e.trained == 9
    assert not [note for note in e.notes if "run by run" in note], e.notes


def test_lstm_on_sequences(tmp_path: Path) -> None:
    module = _load("lstm_on_sequences")
    e = module.main(str(tmp_path / "runs.sqlite"), epochs=3)
    assert [row["p"] for row in e.summary] == [0.0, 0.2, 0.4] and e.trained == 9
    assert not [note for note in e.notes if "run by run" in note], e.notes


def test_mc_dropout_on_bert() -> None:
    pytest.importorskip("transformers")
    pred = _load("mc_dropout_on_bert").main(epochs=1)
    assert pred.samples.shape == (30, 8, 2) and pred.entropy is not None
    assert pred.mutual_info is not None and bool((pred.mutual_info > 0).any())
    assert bool((pred.mutual_info <= pred.entropy + 1e-6).all())  # BALD is part of the entropy
