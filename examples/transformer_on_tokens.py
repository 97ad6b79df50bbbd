"""Your own Transformer on token ids: attention dropout swept like any other dropout.

A 2-layer ``nn.TransformerEncoder`` classifier reads sequences of 16 token ids (a vocabulary of
20) and answers: does token 3 come before token 7? ``dropout=p`` of the encoder layers sets all
of their dropout at once: on the attention weights (inside ``nn.MultiheadAttention``), after
attention and in the feed-forward block. The token ids are int64 and reach the model as int64.

Every run (rate × seed) trains in one batched computation: the attention modules become
batchable twins of themselves (the same weights, the same outputs in evaluation mode) whose
dropout masks are a function of (run seed, step, layer, element), so each run gives the result
it gives alone. Run: ``python examples/transformer_on_tokens.py``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from dropkit import lab

VOCAB, LENGTH = 20, 16


class TokenTransformer(nn.Module):
    """Embedding + learned positions → 2 encoder layers → mean over positions → 2 logits."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.position = nn.Parameter(0.02 * torch.randn(LENGTH, 32))
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=p, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (N, 16) int64
        hidden = self.encoder(self.embed(ids) + self.position)
        return self.head(hidden.mean(1))


def make_data(n: int = 800, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(n, 16)`` int64 and labels: 1 when token 3 comes before token 7 (a
    sequence without one of them counts it at the end)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    positions = torch.arange(LENGTH).expand(n, LENGTH)

    def first(token: int) -> torch.Tensor:
        return torch.where(ids == token, positions, LENGTH).min(1).values

    return ids, (first(3) < first(7)).long()


def main(store: str = "transformer-runs.sqlite", epochs: int = 30) -> lab.Experiment:
    experiment = lab.sweep(
        data=make_data(),
        model=TokenTransformer,
        rates=[0.0, 0.1, 0.2],
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
