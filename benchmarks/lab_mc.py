"""Monte Carlo dropout over a sweep's trained runs against one deterministic pass per run.

    python benchmarks/lab_mc.py                      # every row (see below), best of 3
    python benchmarks/lab_mc.py --quick              # a smoke version: 2 runs a row, best of 1
    python benchmarks/lab_mc.py --only mlp,circles   # some rows
    python benchmarks/lab_mc.py --runs 4             # 4 runs in every row instead of its own
    python benchmarks/lab_mc.py --runs cnn=2         # 2 runs in the cnn row
    python benchmarks/lab_mc.py --threads 1          # on one core (a shared machine)
    python benchmarks/lab_mc.py --profile mlp        # where one MC call of a row spends its time

The goal: Monte Carlo evaluation of ``T = 30`` samples over all ``R`` runs of a sweep costs at
most 3x one deterministic evaluation pass per run, on the CPU.

Rows (the lab's built-in models, as :func:`dropkit.lab.plan.models.build_model` builds them,
rate ``p = 0.5``, seeds ``0 .. R-1``, classification; freshly built, untrained weights: the
time does not depend on their values):

- ``mlp``: ``784-500-10`` on ``mnist``'s 1,500 test images, R = 20;
- ``mlp2``: ``784-512-512-10``, dropout after each hidden layer, on ``mnist``, R = 20;
- ``cnn``: the built-in CNN (channels 16, 32; dropout after each convolution and after the
  flattening) on ``mnist``, R = 4 (fewer than the MLPs: one Monte Carlo evaluation of one run
  takes seconds here, by every method);
- ``circles``: the case study's ``2-500-1`` on ``circles``' 70 test points, R = 60.

Columns, each the whole of its ``R`` runs:

- **peer**: one deterministic evaluation pass per run, one run after another: ``module.eval()``
  and one forward over the whole test set under ``torch.no_grad()``;
- **MC ours**: :func:`dropkit.lab.train.vmapped.measure_modules` with ``evaluate="mc"``,
  ``mc_samples=T``: the ``R`` modules in one call, which also computes the metrics (NLL, Brier
  score, ECE and its bins, mutual information, entropy). By default it decides itself whether
  to compile its Monte Carlo passes (``--compile`` sets it); its log lines for the reported
  calls are printed under the table (a compiling call after the warm-up finds torch's
  compiled code cached);
- **det ours**: the same call with ``evaluate="deterministic"`` (for reference);
- **naive**: Monte Carlo one run after another with a Python loop over the ``T`` samples:
  ``dropkit.mc_predict(module, x, n_samples=T, batch_size=1)`` per run (one sample per
  forward; its summary, no metrics);
- **prefix once**: a reference for the design in plain PyTorch, one run after another: the
  layers before the first dropout once per chunk of 128 test rows (evaluation mode), the rest
  on the chunk's ``T`` copies in one forward with dropout on (:func:`dropkit.mc_dropout`,
  torch's RNG), then the mean of the ``T`` softmax (one logit: sigmoid) outputs. What it costs
  over the peer is the work after the first dropout, done ``T`` times, and the masks.
- **masks alone**: only the masks the Monte Carlo passes need, with nothing to mask: dropkit's
  fastest mask source (:func:`dropkit.functional.dropout` in place on a float32 tensor of
  ones, its random bit fields from torch's generator; torch's own ``bernoulli_`` takes about
  six times as long here), one run after another, per chunk of 128 rows and dropout layer:
  ``T × rows × units`` decisions per run, ``units`` the dropout layers' inputs per test row
  (every row's dropout is element-wise). No layer is computed: a floor under any Monte Carlo
  evaluation with independent masks drawn by PyTorch's operators.

Every time is the best of ``--repeats`` calls (3) after one warm-up call, with
``time.perf_counter``; a call well under a second is repeated until the timed calls add up to
about a second (at most 30 calls: the peer's passes take milliseconds). The modules are built
before each call, outside the time (``measure_modules`` swaps their dropout, so each of its
calls gets fresh ones). Both sides of every ratio run in this process with the same torch
threads (torch's default unless ``--threads`` says otherwise). Nothing is written unless
``--json PATH`` asks for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropkit import mc_dropout, mc_predict
from dropkit.functional import dropout
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset, load_dataset
from dropkit.lab.plan.models import build_model
from dropkit.lab.train.predictive import CHUNK_ROWS
from dropkit.lab.train.vmapped import measure_modules
from dropkit.surgery import is_dropout

GOAL = 3.0
"""The most MC ours may cost, in deterministic passes per run (peer's time)."""


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    data: str
    model: ModelSpec
    runs: int


ROWS = (
    Row("mlp", "MLP 784-500-10, mnist", "mnist", ModelSpec((500,)), 20),
    Row("mlp2", "MLP 784-512-512-10, mnist", "mnist", ModelSpec((512, 512)), 20),
    Row("cnn", "CNN 16-32, mnist", "mnist", ModelSpec((16, 32), kind="cnn"), 4),
    Row("circles", "MLP 2-500-1, circles", "circles", ModelSpec((500,)), 60),
)

QUICK_RUNS = 2

SHORT = 1.0
"""Seconds of timed calls a short measurement repeats for (at least ``--repeats`` calls)."""

MAX_REPEATS = 30


def best_of(
    call: Callable[[list[nn.Module]], object],
    build: Callable[[], list[nn.Module]],
    repeats: int,
) -> tuple[float, int]:
    """Seconds of ``call(build())``: the best of ``repeats`` timed calls after one warm-up
    call, each on freshly built modules (built outside the time); a call that takes well under
    a second is timed more often, until the timed calls add up to about ``SHORT`` seconds (at
    most ``MAX_REPEATS`` calls), so a busy moment of the machine does not decide its time.
    Returns the best time and which call gave it (1: the first after the warm-up)."""
    call(build())
    best, which, spent, count = float("inf"), 0, 0.0, 0
    while count < repeats or (spent < SHORT and count < MAX_REPEATS):
        modules = build()
        start = time.perf_counter()
        call(modules)
        seconds = time.perf_counter() - start
        spent, count = spent + seconds, count + 1
        if seconds < best:
            best, which = seconds, count
    return best, which


def configs_of(row: Row, runs: int, evaluate: str, samples: int) -> list[RunConfig]:
    extra = {"mc_samples": samples} if evaluate != "deterministic" else {}
    train = TrainSpec(epochs=1, evaluate=evaluate, **extra)
    return [
        RunConfig(DataSpec(row.data), row.model, train, p=0.5, seed=seed) for seed in range(runs)
    ]


def deterministic_passes(x: torch.Tensor) -> Callable[[list[nn.Module]], object]:
    def call(modules: list[nn.Module]) -> object:
        with torch.no_grad():
            for module in modules:
                module.eval()
                module(x)
        return None

    return call


def naive_mc(x: torch.Tensor, samples: int) -> Callable[[list[nn.Module]], object]:
    def call(modules: list[nn.Module]) -> object:
        for seed, module in enumerate(modules):
            generator = torch.Generator().manual_seed(seed)
            mc_predict(module, x, n_samples=samples, generator=generator, batch_size=1)
        return None

    return call


def prefix_once_mc(x: torch.Tensor, samples: int) -> Callable[[list[nn.Module]], object]:
    def call(modules: list[nn.Module]) -> object:
        with torch.no_grad():
            for seed, module in enumerate(modules):
                layers = list(module.children())
                first = next(i for i, layer in enumerate(layers) if is_dropout(layer))
                prefix, rest = nn.Sequential(*layers[:first]), nn.Sequential(*layers[first:])
                torch.manual_seed(seed)
                with mc_dropout(module):
                    for start in range(0, x.shape[0], CHUNK_ROWS):
                        hidden = prefix(x[start : start + CHUNK_ROWS])
                        out = rest(hidden.repeat(samples, *(1,) * (hidden.ndim - 1)))
                        out = out.view(samples, hidden.shape[0], -1)
                        probs = out.sigmoid() if out.shape[-1] == 1 else out.softmax(-1)
                        probs.mean(0)
        return None

    return call


def mask_units(module: nn.Module, x: torch.Tensor) -> list[int]:
    """The units each dropout layer of ``module`` draws per row of ``x`` (element-wise
    dropout: the size of its input per row), in the order they are called."""
    units: list[int] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: object) -> None:
        units.append(inputs[0][0].numel())

    hooks = [m.register_forward_hook(record) for m in module.modules() if is_dropout(m)]
    try:
        with torch.no_grad():
            module.eval()
            module(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return units


def masks_alone(
    x: torch.Tensor, samples: int, units: Sequence[int]
) -> Callable[[list[nn.Module]], object]:
    def call(modules: list[nn.Module]) -> object:
        n = x.shape[0]
        for seed in range(len(modules)):
            generator = torch.Generator().manual_seed(seed)
            for start in range(0, n, CHUNK_ROWS):
                rows = min(CHUNK_ROWS, n - start)
                for width in units:
                    ones = torch.ones(samples * rows, width)
                    dropout(ones, 0.5, generator=generator, inplace=True, save_mask=False)
        return None

    return call


class Ours:
    """``measure_modules`` on the modules of ``configs`` as one call; ``logs`` holds each
    call's log lines (whether it compiled the Monte Carlo passes, fallbacks)."""

    def __init__(
        self, flat: Dataset, configs: Sequence[RunConfig], compile: bool | None = None
    ) -> None:
        self.flat, self.configs, self.compile = flat, configs, compile
        self.key = "mc_acc" if configs[0].train.monte_carlo else "det_acc"
        self.logs: list[list[str]] = []

    def __call__(self, modules: list[nn.Module]) -> object:
        lines: list[str] = []
        self.logs.append(lines)
        infos = measure_modules(
            modules, self.flat, self.configs, log=lines.append, compile=self.compile
        )
        if len(infos) != len(self.configs) or not all(self.key in i for i in infos):
            raise RuntimeError(f"measure_modules returned no {self.key!r} for some run")
        return infos


def _data(row: Row, cache: dict[str, Dataset]) -> tuple[Dataset, Dataset]:
    """The data set as loaded (the models are built from it) and with flat rows (what the
    built-in models take: they reshape rows to images themselves, so ``measure_modules`` is
    handed the data with ``input_shape=None``, as the lab's trainers hand it)."""
    if row.data not in cache:
        cache[row.data] = load_dataset(DataSpec(row.data))
    data = cache[row.data]
    return data, dataclasses.replace(data, input_shape=None)


def measure(
    row: Row,
    runs: int,
    samples: int,
    repeats: int,
    cache: dict[str, Dataset],
    compile: bool | None = None,
) -> dict[str, Any]:
    data, flat = _data(row, cache)
    x = torch.as_tensor(flat.x_test)
    mc = configs_of(row, runs, "mc", samples)
    det = configs_of(row, runs, "deterministic", samples)

    def build() -> list[nn.Module]:
        return [build_model(config, data) for config in mc]

    ours_mc, ours_det = Ours(flat, mc, compile), Ours(flat, det, compile)
    peer_s, _ = best_of(deterministic_passes(x), build, repeats)
    mc_s, mc_best = best_of(ours_mc, build, repeats)
    det_s, det_best = best_of(ours_det, build, repeats)
    naive_s, _ = best_of(naive_mc(x, samples), build, repeats)
    prefix_s, _ = best_of(prefix_once_mc(x, samples), build, repeats)
    units = mask_units(build_model(mc[0], data), x)
    masks_s, _ = best_of(masks_alone(x, samples, units), build, repeats)
    return {
        "row": row.name,
        "title": row.title,
        "runs": runs,
        "samples": samples,
        "test_rows": int(x.shape[0]),
        "peer_s": peer_s,
        "mc_s": mc_s,
        "det_s": det_s,
        "naive_s": naive_s,
        "prefix_s": prefix_s,
        "ratio": mc_s / peer_s,
        "prefix_ratio": prefix_s / peer_s,
        "mask_decisions": runs * samples * int(x.shape[0]) * sum(units),
        "masks_s": masks_s,
        "masks_ratio": masks_s / peer_s,
        "det_ratio": det_s / peer_s,
        "speedup": naive_s / mc_s,
        # measure_modules' log of the calls whose times are reported (index 0: the warm-up)
        "mc_log": ours_mc.logs[mc_best],
        "det_log": ours_det.logs[det_best],
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'row':28s} {'R':>3s} {'T':>3s} {'peer det (s)':>12s} {'MC ours (s)':>11s} "
        f"{'ours/peer':>9s} {'naive (s)':>9s} {'naive/ours':>10s} {'prefix once (s)':>15s} "
        f"{'/peer':>6s} {'det ours (s)':>12s} {'/peer':>6s} {'decisions':>11s} "
        f"{'masks alone (s)':>15s} {'/peer':>6s}"
    )
    for r in results:
        mark = "" if r["ratio"] <= GOAL else " !"
        print(
            f"{r['title']:28s} {r['runs']:3d} {r['samples']:3d} {r['peer_s']:12.4f} "
            f"{r['mc_s']:11.3f} {r['ratio']:8.1f}x {r['naive_s']:9.3f} {r['speedup']:9.1f}x "
            f"{r['prefix_s']:15.3f} {r['prefix_ratio']:5.1f}x {r['det_s']:12.4f} "
            f"{r['det_ratio']:5.1f}x {r['mask_decisions']:11,d} {r['masks_s']:15.3f} "
            f"{r['masks_ratio']:5.1f}x{mark}"
        )
    print("measure_modules' log (the reported calls):")
    for r in results:
        for mode in ("mc", "det"):
            for line in r[f"{mode}_log"] or ["(nothing)"]:
                print(f"  {r['row']}, {mode}: {line}")
    over = [r["title"] for r in results if r["ratio"] > GOAL]
    print(
        f"goal: MC ours <= {GOAL:g}x the peer; "
        + (f"not met by: {', '.join(over)} (!)" if over else "met by every row")
    )


def profile(row: Row, runs: int, samples: int, top: int, compile: bool | None) -> None:
    """One Monte Carlo call of ``row`` by ``measure_modules`` and one by the prefix-once
    reference (each after a warm-up call) under torch's profiler: the operators with the most
    CPU time of their own."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    data, flat = _data(row, {})
    configs = configs_of(row, runs, "mc", samples)
    x = torch.as_tensor(flat.x_test)
    for name, call in (
        ("measure_modules", Ours(flat, configs, compile)),
        ("prefix once", prefix_once_mc(x, samples)),
    ):
        call([build_model(config, data) for config in configs])
        modules = [build_model(config, data) for config in configs]
        with profiler(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            call(modules)
            seconds = time.perf_counter() - start
        print(f"\n{row.title}, {name}: R = {runs}, T = {samples}, {seconds:.2f} s (profiled)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_RUNS} runs a row, best of 1: a smoke test"
    )
    parser.add_argument(
        "--only", default=None, help=f"rows, comma-separated: {','.join(r.name for r in ROWS)}"
    )
    parser.add_argument(
        "--runs",
        default=None,
        help="runs R: one number for every row, or row=R pairs, comma-separated (cnn=2)",
    )
    parser.add_argument("--samples", type=int, default=30, help="Monte Carlo samples T")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 3)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="ROW",
        help="instead of the table: profile one MC call of this row (ours, prefix once)",
    )
    parser.add_argument("--top", type=int, default=15, help="operators --profile lists")
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="measure_modules' compile= for the Monte Carlo passes (auto: it decides, timed)",
    )
    args = parser.parse_args()
    compile = {"auto": None, "yes": True, "no": False}[args.compile]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = {r.name: r for r in ROWS}
    chosen = list(ROWS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(names)}")
        chosen = [r for r in ROWS if r.name in wanted]
    if args.profile is not None and args.profile not in names:
        parser.error(f"unknown row {args.profile}; rows: {', '.join(names)}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    every, per_row = None, {}
    if args.runs:
        try:
            if "=" in args.runs:
                pairs = (part.split("=") for part in args.runs.split(",") if part.strip())
                per_row = {name.strip(): int(count) for name, count in pairs}
            else:
                every = int(args.runs)
        except ValueError:
            parser.error(f"--runs takes a number or row=R pairs, got {args.runs!r}")
        unknown = sorted(set(per_row) - set(names))
        counts = [*per_row.values(), *([] if every is None else [every])]
        if unknown or min(counts, default=1) < 1:
            parser.error(f"--runs: unknown row(s) or fewer than 1 run in {args.runs!r}")
    if args.samples < 2 or (args.repeats is not None and args.repeats < 1):
        parser.error("--samples takes at least 2, --repeats at least 1")

    def runs_of(row: Row) -> int:
        if row.name in per_row:
            return per_row[row.name]
        if every is not None:
            return every
        return min(row.runs, QUICK_RUNS) if args.quick else row.runs

    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; best of {repeats}+ after a warm-up"
    )
    print(header + (" (quick)" if args.quick else ""))

    if args.profile is not None:
        row = names[args.profile]
        profile(row, runs_of(row), args.samples, args.top, compile)
        return
    cache: dict[str, Dataset] = {}
    results = []
    start = time.perf_counter()
    for row in chosen:
        result = measure(row, runs_of(row), args.samples, repeats, cache, compile)
        results.append(result)
        print(
            f"{row.name}: peer {result['peer_s']:.3f} s, MC ours {result['mc_s']:.3f} s "
            f"({result['ratio']:.1f}x) [{time.perf_counter() - start:.0f} s so far]",
            flush=True,
        )
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": header, "rows": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
