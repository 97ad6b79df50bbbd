"""The case-study grid: 9 rates x 10 seeds x 4000 epochs = 90 runs, batched vs a plain loop.

    python benchmarks/lab_grid.py                  # full grid, plain loop timed on 3 runs
    python benchmarks/lab_grid.py --plain-runs 90  # time the plain loop on all 90 runs (~15 min)

Peer: the same runs trained one after another by a plain PyTorch loop (nn.Sequential with
torch.nn.Dropout, torch.optim.Adam, BCEWithLogitsLoss, an eval-mode pass over the train and
test sets every epoch). Every run of the grid has the same shapes and epochs, so the plain
loop's time for 90 runs is its measured time per run times 90 when fewer runs are timed; the
table says which. Both sides use torch's default thread count. Results go to
benchmarks/results/lab_grid.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from dropkit.lab.plan.config import DataSpec, ModelSpec, TrainSpec
from dropkit.lab.plan.data import load_dataset
from dropkit.lab.train.stacked import RunSettings, compiler_available, train_batch

RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def plain_run(data, p: float, seed: int, epochs: int) -> float:  # type: ignore[no-untyped-def]
    """One run the ordinary way; returns its final test accuracy."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Dropout(p), nn.Linear(500, 1))
    optimizer = torch.optim.Adam(model.parameters(), eps=1e-7)
    loss_fn = nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).float()
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test).float()
    test_acc = 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for begin in range(0, len(x), 32):
            rows = order[begin : begin + 32]
            optimizer.zero_grad()
            loss_fn(model(x[rows]).squeeze(-1), y[rows]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            train_acc = ((model(x).squeeze(-1) > 0).float() == y).float().mean().item()
            test_acc = ((model(xt).squeeze(-1) > 0).float() == yt).float().mean().item()
    del train_acc
    return test_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--plain-runs", type=int, default=3, help="runs of the plain loop to time")
    parser.add_argument(
        "--eager", action="store_true", help="also time the batched trainer uncompiled"
    )
    args = parser.parse_args()

    data = load_dataset(DataSpec("circles"))
    runs = [RunSettings(seed=s, p=p) for p in RATES for s in range(args.seeds)]
    model, train = ModelSpec((500,)), TrainSpec(epochs=args.epochs)
    rows = []

    start = time.perf_counter()
    batched = train_batch(data, model, train, runs, compile=None)
    batched_s = time.perf_counter() - start
    mode = "compiled" if compiler_available() else "eager"
    rows.append((f"dropkit batched ({mode}, incl. compile)", len(runs), batched_s, batched_s))
    if args.eager:
        start = time.perf_counter()
        train_batch(data, model, train, runs, compile=False)
        eager_s = time.perf_counter() - start
        rows.append(("dropkit batched (eager)", len(runs), eager_s, eager_s))

    start = time.perf_counter()
    # Timed runs spread evenly over the grid (all rates cost the same; this is a check).
    picks = [
        runs[round(i * (len(runs) - 1) / max(args.plain_runs - 1, 1))]
        for i in range(args.plain_runs)
    ]
    for p, seed in [(r.p, r.seed) for r in picks]:
        plain_run(data, p, seed, args.epochs)
    plain_measured = time.perf_counter() - start
    plain_total = plain_measured / args.plain_runs * len(runs)
    rows.append(
        ("plain PyTorch loop, one run after another", args.plain_runs, plain_measured, plain_total)
    )

    print(
        f"\n{len(runs)} runs x {args.epochs} epochs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'method':45s} {'runs timed':>10s} {'measured s':>11s} {'90-run s':>9s} {'speed-up':>9s}"
    )
    for name, timed, measured, total in rows:
        print(f"{name:45s} {timed:10d} {measured:11.1f} {total:9.1f} {plain_total / total:8.1f}x")
    means = batched.curves["test_acc"][:, -1].reshape(len(RATES), args.seeds).mean(1)
    print(
        "final test accuracy by rate:",
        ", ".join(f"{p:g}: {m:.3f}" for p, m in zip(RATES, means, strict=True)),
    )

    out = Path(__file__).with_name("results") / "lab_grid.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "runs": len(runs),
                "epochs": args.epochs,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "rows": [
                    dict(zip(("method", "runs_timed", "measured_s", "total_90_s"), r, strict=True))
                    for r in rows
                ],
                "test_acc_by_rate": dict(zip(map(str, RATES), means.tolist(), strict=True)),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
