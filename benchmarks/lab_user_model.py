"""Your own model in the lab: the batched any-model trainer against its peers, in one run.

    python benchmarks/lab_user_model.py                   # all three tables
    python benchmarks/lab_user_model.py --epochs 1000     # a shorter MLP grid
    python benchmarks/lab_user_model.py --threads 1       # on one core (a shared machine)

1. **MLP grid** (the case study: 9 rates x 10 seeds x 4000 epochs on ``circles``): a user
   factory that builds the case study's MLP (``Linear(2, 500) → ReLU → Dropout(p) →
   Linear(500, 1)``) trained by :func:`dropkit.lab.train.vmapped.train_custom`, against the lab's
   built-in stacked MLP trainer (:func:`dropkit.lab.train.stacked.train_batch`, its hand-written
   backward pass) and against a plain PyTorch loop training the runs one after another
   (``benchmarks/lab_grid.py``'s ``plain_run``; timed on ``--plain-runs`` runs spread over the
   grid and scaled to all of them, as that benchmark does). Goals: within 2x the built-in
   trainer, at least 10x faster than the plain loop. Both batched trainers compile their steps
   (``torch.compile``) when a C++ compiler is found; their times include compiling, which is
   faster once torch's on-disk kernel cache holds the kernels (a second run of this script).
2. **CNN on digits** (a user CNN, two conv layers with dropout, on the 8x8 digits as
   ``(N, 1, 8, 8)`` tensors; 4 rates x 5 seeds): batched against the same trainer one run after
   another (``batched=False``: the same masks, so the same results), and batched with its
   steps compiled (``compile=True``; by default a run this short trains eagerly). Goal: at
   least 3x.
3. **Peak memory** of a batched group of ``R`` runs against ``R`` times one run's training
   memory (each measured in a fresh process as the growth of its peak resident set during
   ``train_custom`` over its resident set before: Linux's ``VmHWM``, reset through
   ``/proc/self/clear_refs``). Goal: within 1.5x.

Both sides of every ratio run in this process (the memory rows in fresh child processes),
with torch's default thread count unless ``--threads`` says otherwise. Results go to
benchmarks/results/lab_user_model.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from lab_grid import RATES, plain_run

from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.plan.user_data import from_user_data
from dropkit.lab.plan.user_model import model_source
from dropkit.lab.train.stacked import RunSettings, train_batch
from dropkit.lab.train.vmapped import train_custom


def case_study_mlp(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 500), nn.ReLU(), nn.Dropout(p), nn.Linear(500, 1))


def digits_cnn(p: float) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(p),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(p),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def _configs(
    data_spec: DataSpec, source: Any, train: TrainSpec, rates: list[float], seeds: int
) -> list[RunConfig]:
    return [
        RunConfig(data_spec, source.spec, train, p=p, seed=s) for p in rates for s in range(seeds)
    ]


def _timed(function: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def mlp_grid(epochs: int, seeds: int, plain_runs: int) -> list[dict[str, Any]]:
    data = load_dataset(DataSpec("circles"))
    source = model_source(case_study_mlp, rates=RATES)
    train = TrainSpec(epochs=epochs)
    configs = _configs(DataSpec("circles"), source, train, RATES, seeds)
    n = len(configs)
    user_s, user = _timed(train_custom, source, data, configs)
    settings = [RunSettings(seed=c.seed, p=c.p) for c in configs]
    builtin_s, builtin = _timed(train_batch, data, ModelSpec((500,)), train, settings)
    picks = [configs[round(i * (n - 1) / max(plain_runs - 1, 1))] for i in range(plain_runs)]
    start = time.perf_counter()
    for config in picks:
        plain_run(data, config.p, config.seed, epochs)
    plain_s = (time.perf_counter() - start) / plain_runs * n
    means = {
        name: result.curves["test_acc"][:, -1].reshape(len(RATES), seeds).mean(1).tolist()
        for name, result in (("user", user), ("builtin", builtin))
    }
    return [
        {"method": "user factory, batched (train_custom)", "runs": n, "seconds": user_s},
        {"method": "built-in stacked MLP trainer", "runs": n, "seconds": builtin_s},
        {
            "method": f"plain PyTorch loop (timed on {plain_runs} runs, scaled)",
            "runs": n,
            "seconds": plain_s,
        },
        {"method": "mean final test accuracy by rate", "runs": n, "means": means},
    ]


def _digits() -> tuple[DataSpec, Dataset]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return from_user_data((x, torch.tensor(digits.target)), validation=0.2)


def cnn_grid(epochs: int) -> list[dict[str, Any]]:
    spec, data = _digits()
    rates = [0.0, 0.2, 0.4, 0.6]
    source = model_source(digits_cnn, rates=rates)
    configs = _configs(spec, source, TrainSpec(epochs=epochs, batch_size=64), rates, 5)
    batched_s, batched = _timed(train_custom, source, data, configs, batched=True)
    alone_s, alone = _timed(train_custom, source, data, configs, batched=False)
    compiled_s, compiled = _timed(train_custom, source, data, configs, batched=True, compile=True)
    gap = float(np.nanmax(np.abs(batched.curves["test_loss"] - alone.curves["test_loss"])))
    compiled_gap = float(
        np.nanmax(np.abs(compiled.curves["test_loss"] - alone.curves["test_loss"]))
    )
    return [
        {"method": "user CNN, batched", "runs": len(configs), "seconds": batched_s},
        {"method": "user CNN, one run after another", "runs": len(configs), "seconds": alone_s},
        {"method": "user CNN, batched, compile=True", "runs": len(configs), "seconds": compiled_s},
        {"method": "largest |test loss batched − alone|", "runs": len(configs), "value": gap},
        {
            "method": "largest |test loss compiled − alone|",
            "runs": len(configs),
            "value": compiled_gap,
        },
    ]


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident set (``VmHWM``) to its current one (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _peak_growth(epochs: int, runs: int, threads: int, queue: Any) -> None:
    """In a fresh process: the growth of the peak resident set while ``runs`` CNN runs train
    (over the resident set before; ``ru_maxrss`` growth where ``VmHWM`` cannot be reset)."""
    torch.set_num_threads(threads)
    spec, data = _digits()
    source = model_source(digits_cnn, rates=[0.3])
    configs = _configs(spec, source, TrainSpec(epochs=epochs, batch_size=64), [0.3], runs)
    if _reset_peak():
        before = _status_bytes("VmRSS") or 0
        train_custom(source, data, configs, batched=True)
        queue.put((_status_bytes("VmHWM") or 0) - before)
        return
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_custom(source, data, configs, batched=True)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((after - before) * 1024)  # ru_maxrss is in KiB on Linux


def peak_growths(target: Any, counts: tuple[int, ...], *args: Any) -> dict[int, Any]:
    """``target(*args, count, threads, queue)`` in a fresh (spawned) process per ``count``: what
    each put on the queue (its peak memory growth), with this process's torch threads."""
    context = multiprocessing.get_context("spawn")
    growth = {}
    for count in counts:
        queue = context.Queue()
        process = context.Process(
            target=target, args=(*args, count, torch.get_num_threads(), queue)
        )
        process.start()
        growth[count] = queue.get()
        process.join()
    return growth


def peak_memory(runs: int, epochs: int) -> list[dict[str, Any]]:
    growth = peak_growths(_peak_growth, (1, runs), epochs)
    return [
        {"method": "peak growth, one run", "runs": 1, "bytes": growth[1]},
        {"method": f"peak growth, {runs} runs batched", "runs": runs, "bytes": growth[runs]},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000, help="epochs of the MLP grid")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--plain-runs", type=int, default=3)
    parser.add_argument("--cnn-epochs", type=int, default=10)
    parser.add_argument("--memory-runs", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(header)

    mlp = mlp_grid(args.epochs, args.seeds, args.plain_runs)
    user, builtin, plain = (row["seconds"] for row in mlp[:3])
    print(f"\nMLP grid: {mlp[0]['runs']} runs x {args.epochs} epochs on circles")
    print(f"{'method':55s} {'seconds':>9s} {'vs user':>8s}")
    for row in mlp[:3]:
        print(f"{row['method']:55s} {row['seconds']:9.1f} {row['seconds'] / user:7.2f}x")
    print(
        f"user / built-in: {user / builtin:.2f}x (goal <= 2); plain / user: {plain / user:.1f}x "
        "(goal >= 10)"
    )
    for name, means in mlp[3]["means"].items():
        print(f"  mean final test accuracy ({name}):", " ".join(f"{m:.3f}" for m in means))

    cnn = cnn_grid(args.cnn_epochs)
    batched_s, alone_s, compiled_s = (row["seconds"] for row in cnn[:3])
    print(f"\nCNN on digits: {cnn[0]['runs']} runs x {args.cnn_epochs} epochs")
    for row in cnn[:3]:
        print(f"{row['method']:55s} {row['seconds']:9.1f}")
    print(
        f"one after another / batched: {alone_s / batched_s:.1f}x (goal >= 3); "
        f"/ batched compiled: {alone_s / compiled_s:.1f}x; largest test-loss difference "
        f"{cnn[3]['value']:.2e} (compiled {cnn[4]['value']:.2e})"
    )

    memory = peak_memory(args.memory_runs, 2)
    one, group = memory[0]["bytes"], memory[1]["bytes"]
    ratio = group / max(args.memory_runs * one, 1)
    print(
        f"\nPeak memory: one run +{one / 2**20:.1f} MiB, {args.memory_runs} runs batched "
        f"+{group / 2**20:.1f} MiB: {ratio:.2f}x of {args.memory_runs} x one run (goal <= 1.5)"
    )

    out = Path(__file__).with_name("results") / "lab_user_model.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": header,
                "mlp_grid": {"epochs": args.epochs, "rows": mlp},
                "cnn": {"epochs": args.cnn_epochs, "rows": cnn},
                "memory": {"rows": memory, "ratio": ratio},
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
