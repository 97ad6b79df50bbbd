"""Does dropout help my CNN, and at what rate? Your own CNN on your own image tensors.

The 8x8 digits that scikit-learn ships stand in for your images: a tensor ``X`` of shape
``(N, 1, 8, 8)`` and integer labels ``y``. ``make_cnn(p)`` is the factory the lab calls once
per run (under the run's seed) with the drop rate ``p`` to try. Runs of every rate and seed
train together as one batched computation; a validation split (20% of the training data)
chooses the best rate, and the test set measures it once.

Run: ``python examples/cnn_on_image_tensors.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn

from dropkit import lab


def make_cnn(p: float) -> nn.Module:
    """Two convolutions with dropout after each block, then a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(p),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def main(store: str = "cnn-runs.sqlite", report: str = "cnn-report.html") -> lab.Experiment:
    digits = load_digits()
    X = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target)
    experiment = lab.sweep(
        data=(X, y),
        model=make_cnn,
        rates=[0.0, 0.25, 0.5],
        seeds=3,
        epochs=15,
        batch_size=64,
        store=store,
        progress=True,
    )
    print(experiment)
    print(experiment.best)
    experiment.report(report)
    return experiment


if __name__ == "__main__":
    main(*sys.argv[1:])
