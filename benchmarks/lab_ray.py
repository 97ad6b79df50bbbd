"""The case-study grid (9 rates x 10 seeds x 4000 epochs = 90 runs) in-process vs on local Ray.

    python benchmarks/lab_ray.py                 # full grid, both engines, 2 Ray workers
    python benchmarks/lab_ray.py --epochs 500    # a shorter run

Both engines go through :func:`dropkit.lab.execute.runner.run_configs` into a fresh SQLite store,
one after the other in the same invocation. The in-process engine trains the 90 runs as one
batch, timed twice: with torch's default thread count and with one thread, as a Ray worker
runs. The Ray engine splits them into one batch per worker CPU (2 x 45) and trains them at
once; it is timed from ``ray.init`` to shutdown (start-up, worker processes that import
torch and compile, training, results back, stored), each phase apart. The machine's load
average is printed before and after. Results go to
benchmarks/results/lab_ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dropkit.lab.execute.engines import InProcessEngine, RayEngine
from dropkit.lab.execute.runner import run_configs
from dropkit.lab.plan.config import DataSpec, ModelSpec, SweepSpec, TrainSpec
from dropkit.lab.store import ResultsStore, RunRecord

RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _sweep(engine: object, path: Path, configs: list) -> dict:  # type: ignore[type-arg]
    start = time.perf_counter()
    with ResultsStore(path) as store:
        outcome = run_configs(configs, store, engine=engine)  # type: ignore[arg-type]
        runs = store.runs(list(outcome.keys))
    seconds = time.perf_counter() - start
    with sqlite3.connect(path) as db:  # fold the WAL into the file, then measure it
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    batches: dict[float, int] = {}
    for run in runs:  # a batch's runs share its time (seconds per run = batch s / size)
        batches[round(run.seconds, 9)] = batches.get(round(run.seconds, 9), 0) + 1
    with ResultsStore(path) as store:  # the driver's share: one batch written in one transaction
        size = max(batches.values())
        records = [RunRecord(r.config, store.curves(r.key), r.seconds) for r in runs[:size]]
    with ResultsStore(path.with_suffix(".rewrite")) as fresh:
        write_start = time.perf_counter()
        fresh.add_runs(records)
        write_s = time.perf_counter() - write_start
    return {
        "seconds": seconds,
        "store_write": {"runs": size, "seconds": write_s},
        "batches": [
            {"runs": size, "seconds": per_run * size} for per_run, size in sorted(batches.items())
        ],
        "store_bytes": path.stat().st_size,
        "final_test_acc": {run.key: run.test_acc for run in runs},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None)
    args = parser.parse_args()

    spec = SweepSpec(
        data=DataSpec("circles"),
        model=ModelSpec((500,)),
        train=TrainSpec(epochs=args.epochs),
        rates=RATES,
        seeds=args.seeds,
    )
    configs = list(spec.runs())
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="dropkit-bench-"))

    threads = torch.get_num_threads()
    local = _sweep(InProcessEngine(compile=args.compile), folder / "in_process.sqlite", configs)
    torch.set_num_threads(1)  # the in-process engine as a Ray worker runs it: one thread
    single = _sweep(InProcessEngine(compile=args.compile), folder / "single.sqlite", configs)
    torch.set_num_threads(threads)

    start = time.perf_counter()
    engine = RayEngine(num_cpus=args.workers, compile=args.compile)
    engine.start()
    ray_start = time.perf_counter() - start
    on_ray = _sweep(engine, folder / "ray.sqlite", configs)
    start = time.perf_counter()
    engine.close()
    ray_stop = time.perf_counter() - start
    ray_total = ray_start + on_ray["seconds"] + ray_stop
    load_after = os.getloadavg()

    a, b = local.pop("final_test_acc"), on_ray.pop("final_test_acc")
    differences = np.array([abs(a[k] - b[k]) for k in a])
    n = len(configs)
    slowest = max(batch["seconds"] for batch in on_ray["batches"])
    rows = [
        (f"in-process (1 batch, {threads} threads)", local["seconds"]),
        ("in-process (1 batch, 1 thread)", single["seconds"]),
        ("ray: start local instance", ray_start),
        (f"ray: sweep ({len(on_ray['batches'])} batches at once)", on_ray["seconds"]),
        ("ray: shut down", ray_stop),
        (f"ray total ({args.workers} workers)", ray_total),
        ("ray overhead: total - slowest batch's training", ray_total - slowest),
    ]
    print(
        f"\n{n} runs x {args.epochs} epochs, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}"
    )
    print(f"{'engine':42s} {'seconds':>9s} {'vs in-process':>14s}")
    for name, seconds in rows:
        print(f"{name:42s} {seconds:9.1f} {seconds / local['seconds']:13.2f}x")
    single.pop("final_test_acc")
    for name, result in (("in-process", local), ("in-process 1 thread", single), ("ray", on_ray)):
        for batch in result["batches"]:
            print(f"{name} batch of {batch['runs']} runs: {batch['seconds']:.1f} s of training")
        write = result["store_write"]
        print(
            f"{name} store: {result['store_bytes'] / n / 1024:.0f} KiB per run; writing "
            f"{write['runs']} runs in one transaction took {write['seconds']:.2f} s"
        )
    print(
        f"final test accuracy, ray vs in-process: {np.count_nonzero(differences)} of {n} runs "
        f"differ, largest difference {differences.max():.4f}"
    )

    out = Path(__file__).with_name("results") / "lab_ray.json"
    out.parent.mkdir(exist_ok=True)
    payload = {
        "runs": n,
        "epochs": args.epochs,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "compile": args.compile,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": [{"engine": name, "seconds": seconds} for name, seconds in rows],
        "threads": threads,
        "in_process": local,
        "in_process_1_thread": single,
        "ray": on_ray,
        "final_test_acc_runs_differing": int(np.count_nonzero(differences)),
        "final_test_acc_max_difference": float(differences.max()),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
