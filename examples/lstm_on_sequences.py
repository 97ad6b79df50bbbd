"""Your own LSTM on token sequences: recurrent dropout swept, every run in one computation.

An ``nn.LSTM`` of two layers reads sequences of 16 token ids and answers the question of
``transformer_on_tokens.py`` (does token 3 come before token 7?). ``p`` is both the LSTM's
``dropout`` (on the first layer's outputs, a fresh mask per element and time step, as torch
applies it) and an ``nn.Dropout`` before the classifier.

torch's fused LSTM kernel has no ``vmap`` rule, so the lab trains a batchable twin of the
module: the same weights, the cell unrolled over time (the input products of all steps in one
matrix product, one product per step for the recurrence), its dropout counter-based, so each
run gives the result it gives alone. ``nn.GRU`` and dropkit's variational ``LSTM``/``GRU`` are
treated the same way. Run: ``python examples/lstm_on_sequences.py``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from dropkit import lab

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from transformer_on_tokens import VOCAB, make_data


class TokenLSTM(nn.Module):
    """Embedding → 2-layer LSTM (dropout p between the layers) → dropout → logits of the last
    step."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 32, num_layers=2, dropout=p, batch_first=True)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (N, 16) int64
        outputs, _ = self.lstm(self.embed(ids))
        return self.head(self.drop(outputs[:, -1]))


def main(store: str = "lstm-runs.sqlite", epochs: int = 30) -> lab.Experiment:
    experiment = lab.sweep(
        data=make_data(),
        model=TokenLSTM,
        rates=[0.0, 0.2, 0.4],
        seeds=3,
        epochs=epochs,
        batch_size=64,
        store=store,
        progress=True,
    )
    for note in experiment.notes:
        print("note:", note)
    print(experiment)
    return experiment


if __name__ == "__main__":
    main(*sys.argv[1:2])
