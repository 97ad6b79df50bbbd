"""A regression MLP on a CSV file: does dropout lower the test error, and at what rate?

scikit-learn's diabetes data (442 patients, 10 features, a numeric disease-progression target)
is written to ``diabetes.csv`` to stand in for your file. The lab reads the CSV, sees that the
target column is numeric with many values and treats the task as regression (it says so),
trains ``make_mlp(p)`` with mean squared error, and reports R², RMSE and MAE with 95%
confidence intervals. The target is standardized here so that the default learning rate fits.

Run: ``python examples/regression_mlp_on_csv.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_diabetes
from torch import nn

from dropkit import lab


def make_mlp(p: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(10, 64),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Linear(64, 1),
    )


def write_csv(path: Path) -> Path:
    frame = load_diabetes(as_frame=True).frame
    frame["target"] = (frame["target"] - frame["target"].mean()) / frame["target"].std()
    frame.to_csv(path, index=False)
    return path


def main(folder: str = ".") -> lab.Experiment:
    csv = write_csv(Path(folder) / "diabetes.csv")
    experiment = lab.sweep(
        data=str(csv),
        target="target",
        model=make_mlp,
        rates=[0.0, 0.2, 0.5],
        seeds=3,
        epochs=60,
        validation=0.2,
        store=str(Path(folder) / "regression-runs.sqlite"),
        progress=True,
    )
    for note in experiment.notes:
        print("note:", note)
    print(experiment)
    experiment.report(Path(folder) / "regression-report.html")
    return experiment


if __name__ == "__main__":
    main(*sys.argv[1:])
