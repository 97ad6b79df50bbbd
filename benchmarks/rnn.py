"""dropkit.recurrent.LSTM vs torch.nn.LSTM: training step (forward + backward) on CPU.

    python benchmarks/rnn.py            # batch 64, seq 100, input 256, hidden 256, 1 layer
    python benchmarks/rnn.py --repeats 30

The three models take turns within each repeat, so that other load on the machine hits all
alike.

Rows: torch.nn.LSTM without dropout (the reference); dropkit LSTM with dropout=0.25 only
(input masks, then PyTorch's fused kernel); dropkit LSTM with recurrent_dropout=0.25 (the loop
over time: one matmul for the inputs of all steps, one fused addmm per step). Time is the
median over repeats of forward + ``out.sum().backward()`` in training mode, after warm-up.
Uses torch's default thread count, printed in the header.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dropkit.recurrent import LSTM


def median_ms(steps: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
    """Median ms of each step; the steps take turns so that machine load hits all alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, store in zip(steps, times, strict=True):
            start = time.perf_counter()
            step()
            store.append(time.perf_counter() - start)
    return [1000 * statistics.median(store) for store in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.seq, args.input)
    reference = nn.LSTM(args.input, args.hidden, batch_first=True)
    models: list[tuple[str, nn.Module]] = [("torch.nn.LSTM (no dropout)", reference)]
    for label, kwargs in [
        ("dropkit LSTM dropout=0.25 (fused)", {"dropout": 0.25}),
        ("dropkit LSTM recurrent_dropout=0.25 (loop)", {"recurrent_dropout": 0.25}),
    ]:
        model = LSTM(args.input, args.hidden, **kwargs)
        model.load_state_dict(reference.state_dict())
        models.append((label, model))

    print(
        f"# batch {args.batch}, seq {args.seq}, input {args.input}, hidden {args.hidden}, "
        f"1 layer; forward + backward, training mode; median of {args.repeats}"
    )
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| model | median ms | ratio to torch |")
    print("|---|---:|---:|")
    steps = []
    for _, model in models:
        model.train()

        def step(model: nn.Module = model) -> None:
            model.zero_grad(set_to_none=True)
            out = model(x)[0]
            out.sum().backward()

        steps.append(step)
    results = median_ms(steps, args.repeats)
    for (label, _), ms in zip(models, results, strict=True):
        print(f"| {label} | {ms:.1f} | {ms / results[0]:.2f}x |")


if __name__ == "__main__":
    main()
