"""A Hugging Face-style model built from a config, its dropout rates the factory's argument.

Models of the ``transformers`` library are built from a config object whose fields include
their dropout rates (``hidden_dropout_prob``, ``attention_probs_dropout_prob``). The factory
below builds a tiny BERT classifier from such a config with both rates set to ``p`` (nothing is
downloaded: the weights are initialized from the run's seed). The task: is the count of the
token 1 in a random sequence of 12 tokens above 3?

BERT applies its attention dropout inside its attention function, from a float rate. The lab
switches the model to an attention implementation of its own (the same computation, with
counter-based masks: a function of run seed, step, layer and element), so the runs train as
one batched computation and each gives the result it gives alone. The token ids are int64 and
reach the model as int64.

Needs ``pip install "transformers[torch]"``. Run: ``python examples/transformer_from_config.py``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from dropkit import lab

VOCAB, LENGTH = 8, 12


class Classifier(nn.Module):
    """A BERT encoder from a config; logits of its [CLS] position."""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=LENGTH,
            hidden_dropout_prob=p,
            attention_probs_dropout_prob=p,
            num_labels=2,
        )
        self.bert = BertForSequenceClassification(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=tokens).logits


def make_data(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    return tokens, ((tokens == 1).sum(1) > 1).long()


def main(store: str = "bert-runs.sqlite") -> lab.Experiment:
    experiment = lab.sweep(
        data=make_data(),
        model=Classifier,
        rates=[0.0, 0.1],
        seeds=2,
        epochs=3,
        batch_size=32,
        store=store,
        progress=True,
    )
    for note in experiment.notes:
        print("note:", note)
    print(experiment)
    return experiment


if __name__ == "__main__":
    main(*sys.argv[1:])
