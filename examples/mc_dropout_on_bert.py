"""Monte Carlo dropout on a Hugging Face classifier built from a config: predictive mean,
spread, entropy and BALD's mutual information in one call.

A tiny BERT (2 layers, hidden 32; nothing downloaded: weights from a seed) learns whether
token 1 occurs more than once in 12 tokens, for a few epochs with dropout 0.1 on its hidden
states and attention weights. Then :func:`dropkit.mc_predict` keeps the dropout on at test
time (everything else in evaluation mode) and draws ``T = 30`` predictions per sequence in
batched passes. Its ``entropy`` is the total uncertainty of the averaged prediction and
``mutual_info`` (BALD, Houlsby et al. 2011) the part that comes from the weights: the
sequences the model is least sure about have the highest. The deterministic prediction
(``model.eval()``) is printed beside the MC mean. ``mc_predict`` takes the model's output
object as it is (its ``logits``).

Needs ``pip install "transformers[torch]"``. Run: ``python examples/mc_dropout_on_bert.py``.
"""

from __future__ import annotations

import torch
from torch import nn

import dropkit

VOCAB, LENGTH = 8, 12


def make_model(p: float = 0.1, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=p,
        attention_probs_dropout_prob=p,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    return tokens, ((tokens == 1).sum(1) > 1).long()


def main(epochs: int = 8) -> dropkit.MCPrediction:
    model = make_model()
    tokens, labels = make_data(512, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for start in range(0, len(tokens), 32):
            out = model(input_ids=tokens[start : start + 32], labels=labels[start : start + 32])
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()

    test, truth = make_data(8, seed=1)
    pred = dropkit.mc_predict(model, test, n_samples=30, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        deterministic = model(input_ids=test).logits.softmax(-1)
    entropy, mutual_info = pred.entropy, pred.mutual_info
    assert entropy is not None
    assert mutual_info is not None  # a classifier has both
    print("label  deterministic p(1)  MC mean p(1)  MC std  entropy  mutual info")
    for i in range(len(test)):
        columns = (
            f"{int(truth[i]):5d}",
            f"{float(deterministic[i, 1]):18.3f}",
            f"{float(pred.mean[i, 1]):12.3f}",
            f"{float(pred.std[i, 1]):6.3f}",
            f"{float(entropy[i]):7.3f}",
            f"{float(mutual_info[i]):11.4f}",
        )
        print("  ".join(columns))
    return pred


if __name__ == "__main__":
    main()
