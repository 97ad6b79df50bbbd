"""dropkit's dropout ops against PyTorch, the pip peers and the copy ceiling.

    python benchmarks/ops.py                  # float32, 1e5 1e6 1e7 1e8 elements
    python benchmarks/ops.py --quick          # 1e5 and 1e6, few repeats
    python benchmarks/ops.py --device cuda    # on a GPU (writes benchmarks/results/ops_cuda.json)
    python benchmarks/ops.py --threads 1      # pin torch's intra-op threads

For each size: the copy ceiling (``y.copy_(x)``: bytes read + written per second), then the
forward (training mode, input without gradient) and forward + backward (``y.backward(g)``) of
``torch.nn.functional.dropout``, of every dropkit op and of each peer that is installed. All
of them take turns within every repeat, so that load on a shared machine hits all alike; the
figures are medians over the repeats.

Columns: ``ms`` the median time; ``GB/s`` the *effective* bandwidth, counting only the bytes
an op cannot avoid (forward: read x, write y = 2 tensors; forward + backward: also read the
incoming gradient and write the outgoing one = 4 tensors), so mask traffic and random-number
generation show as lost bandwidth; ``%copy`` that bandwidth as a share of the copy ceiling;
``x torch`` torch's ``F.dropout`` time over the op's time at the same size (above 1: faster).

Peers (optional, installed only for benchmarking; missing ones are reported with the reason):
PyTorch's own ``F.dropout2d`` and ``F.alpha_dropout``, ``timm`` (DropPath, DropBlock2d),
``torchvision`` (StochasticDepth, DropBlock2d), ``dropblock`` (DropBlock2D). A second table
compares each dropkit variant with them. The ``dropconnect`` package masks weights inside a
linear layer, one mask per sample; it gets its own table against dropkit's DropConnect layers.

The memory part runs dropout on a transformer-sized activation (batch 8, 1024 tokens, width
4096, float32: 128 MiB) and reports the bytes saved for the backward (counted with
``torch.autograd.graph.saved_tensors_hooks``), the memory held between forward and backward
(resident set size on a CPU, ``torch.cuda.memory_allocated`` on a GPU) beyond the output, the
peak during forward + backward on a GPU, and the time of forward + backward.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import dropkit.functional as DF

P = 0.2  # drop probability of the element-, channel-, sequence- and sample-wise ops
BLOCK_P, BLOCK_SIZE = 0.1, 5  # DropBlock on 25x25 maps
RESULTS = Path(__file__).resolve().parent / "results"


def shape_for(op: str, n: int) -> tuple[int, ...]:
    """The input shape of ``op`` with ``n`` elements (``n`` a multiple of 10,000)."""
    rows = n // 10_000
    return {
        "spatial_dropout": (rows, 100, 10, 10),  # (N, C, H, W): 100 channels of 10x10
        "locked_dropout": (rows, 100, 100),  # (N, T, F): 100 steps of 100 features
        "drop_path": (rows, 10, 1000),  # (B, L, D)
        "drop_block": (rows, 16, 25, 25),  # (N, C, H, W)
    }.get(op, (n // 1000, 1000))


@dataclass
class Impl:
    """One implementation of one op: ``fn(x)`` applies it in training mode."""

    op: str
    name: str
    fn: Callable[[Tensor], Tensor]
    backward: bool = True  # False: the forward only (the copy ceiling)


def dropkit_impls() -> list[Impl]:
    return [
        Impl("dropout", "torch F.dropout", lambda x: F.dropout(x, P)),
        Impl("dropout", "dropkit", lambda x: DF.dropout(x, P)),
        Impl("dropout", "dropkit save_mask=False", lambda x: DF.dropout(x, P, save_mask=False)),
        Impl("spatial_dropout", "dropkit", lambda x: DF.spatial_dropout(x, P)),
        Impl("locked_dropout", "dropkit", lambda x: DF.locked_dropout(x, P)),
        Impl("gaussian_dropout", "dropkit", lambda x: DF.gaussian_dropout(x, P)),
        Impl("alpha_dropout", "dropkit", lambda x: DF.alpha_dropout(x, P)),
        Impl("drop_path", "dropkit", lambda x: DF.drop_path(x, P)),
        Impl(
            "drop_block",
            "dropkit",
            lambda x: DF.drop_block(x, BLOCK_P, block_size=BLOCK_SIZE),
        ),
        Impl("drop_connect", "dropkit", lambda w: DF.drop_connect(w, P)),
    ]


def torch_peer_impls() -> list[Impl]:
    """PyTorch's own versions of the variants, where it has one."""
    return [
        Impl("spatial_dropout", "torch F.dropout2d", lambda x: F.dropout2d(x, P)),
        Impl("alpha_dropout", "torch F.alpha_dropout", lambda x: F.alpha_dropout(x, P, True)),
    ]


def _package_file(package: str, relative: str) -> Path:
    """A source file of an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {package!r}")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _load_source(name: str, path: Path, drop_lines: tuple[str, ...] = ()) -> types.ModuleType:
    """Execute one source file as a module, without its package's ``__init__``.

    ``drop_lines``: import lines to leave out (a package-relative usage-logging import).
    """
    source = "\n".join(
        line for line in path.read_text().splitlines() if line.strip() not in drop_lines
    )
    module = types.ModuleType(name)
    module.__dict__["_log_api_usage_once"] = lambda *args: None
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def _timm_drop() -> Any:
    """timm's ``timm/layers/drop.py`` (it imports only torch).

    ``import timm`` imports torchvision, whose C extension does not load beside the torch CPU
    wheel here; the DropPath/DropBlock2d source itself needs nothing but torch.
    """
    try:
        return importlib.import_module("timm.layers")
    except Exception:  # torchvision missing or broken: run the file on its own
        return _load_source("timm_drop", _package_file("timm", "layers/drop.py"))


def _torchvision_op(relative: str) -> Any:
    """A pure-Python torchvision op module, without torchvision's C extension if it is broken."""
    try:
        return importlib.import_module("torchvision.ops")
    except Exception:
        return _load_source(
            f"torchvision_{relative}",
            _package_file("torchvision", f"ops/{relative}.py"),
            drop_lines=("from ..utils import _log_api_usage_once",),
        )


def pip_peer_impls() -> tuple[list[Impl], dict[str, str], dict[str, str]]:
    """The installed pip peers, the missing ones with the reason, and how each was loaded."""
    impls: list[Impl] = []
    missing: dict[str, str] = {}
    loaded: dict[str, str] = {}

    def load(package: str, build: Callable[[], list[Impl]]) -> None:
        try:
            impls.extend(build())
            loaded[package] = _version(package)
        except Exception as error:  # an import error or a broken install: report it
            first_line = (str(error).splitlines() or [""])[0][:160]
            missing[package] = f"{type(error).__name__}: {first_line}"

    def timm_layers() -> list[Impl]:
        module = _timm_drop()
        path = module.DropPath(P).train()
        block = module.DropBlock2d(BLOCK_P, BLOCK_SIZE).train()
        # timm's default shares one mask across the channels of a sample; dropkit, torchvision
        # and the paper's Algorithm 1 draw one per channel, which is couple_channels=False.
        per_channel = module.DropBlock2d(BLOCK_P, BLOCK_SIZE, couple_channels=False).train()
        return [
            Impl("drop_path", "timm DropPath", path),
            Impl("drop_block", "timm DropBlock2d (mask shared by channels)", block),
            Impl("drop_block", "timm DropBlock2d couple_channels=False", per_channel),
        ]

    def torchvision_ops() -> list[Impl]:
        depth = _torchvision_op("stochastic_depth").StochasticDepth(P, "row").train()
        block = _torchvision_op("drop_block").DropBlock2d(BLOCK_P, BLOCK_SIZE).train()
        return [
            Impl("drop_path", "torchvision StochasticDepth", depth),
            Impl("drop_block", "torchvision DropBlock2d", block),
        ]

    def dropblock_package() -> list[Impl]:
        module = importlib.import_module("dropblock")
        block = module.DropBlock2D(drop_prob=BLOCK_P, block_size=BLOCK_SIZE).train()
        return [Impl("drop_block", "dropblock DropBlock2D (mask shared by channels)", block)]

    load("timm", timm_layers)
    load("torchvision", torchvision_ops)
    load("dropblock", dropblock_package)
    return impls, missing, loaded


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sizes(
    impls: list[Impl], n: int, repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Median ms of forward and forward + backward of every impl, all taking turns."""
    inputs: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor]] = {}
    for impl in impls:
        shape = shape_for(impl.op, n)
        if shape not in inputs:
            x = torch.randn(shape, device=device)
            inputs[shape] = (x, x.detach().clone().requires_grad_(True), torch.randn_like(x))
    copy_out = torch.empty(n, device=device)
    flat = next(iter(inputs.values()))[0].view(-1)

    def steps(impl: Impl) -> list[tuple[str, Callable[[], None]]]:
        x, leaf, grad = inputs[shape_for(impl.op, n)]

        def forward() -> None:
            impl.fn(x)

        def forward_backward() -> None:
            impl.fn(leaf).backward(grad)
            leaf.grad = None

        return [("fwd", forward)] + ([("fb", forward_backward)] if impl.backward else [])

    def copy() -> None:
        copy_out.copy_(flat)

    work: list[tuple[str, str, Callable[[], None]]] = [("copy", "fwd", copy)]
    for impl in impls:
        work += [(f"{impl.op}|{impl.name}", kind, step) for kind, step in steps(impl)]
    times: dict[tuple[str, str], list[float]] = {(key, kind): [] for key, kind, _ in work}
    for round_ in range(repeats + 1):  # round 0 warms up
        for key, kind, step in work:
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_:
                times[key, kind].append(time.perf_counter() - start)
    result: dict[str, dict[str, float]] = {}
    for (key, kind), values in times.items():
        result.setdefault(key, {})[f"{kind}_ms"] = 1000 * statistics.median(values)
    inputs.clear()
    gc.collect()
    return result


def compiled_impls(device: torch.device) -> tuple[list[Impl], float]:
    """torch's and dropkit's dropout under ``torch.compile(fullgraph=True, dynamic=True)``.

    Returns the impls and the seconds spent compiling them (forward, and forward + backward).
    """
    compiled = [
        Impl("dropout", "torch F.dropout compiled", lambda x: F.dropout(x, P)),
        Impl("dropout", "dropkit compiled", lambda x: DF.dropout(x, P)),
        Impl(
            "dropout",
            "dropkit save_mask=False compiled",
            lambda x: DF.dropout(x, P, save_mask=False),
        ),
    ]
    for impl in compiled:
        impl.fn = torch.compile(impl.fn, fullgraph=True, dynamic=True)
    start = time.perf_counter()
    for impl in compiled:
        for requires_grad in (False, True):
            x = torch.randn(10_000, 1000, device=device, requires_grad=requires_grad)
            y = impl.fn(x)
            if requires_grad:
                y.sum().backward()
    _sync(device)
    return compiled, time.perf_counter() - start


def dropconnect_rows(device: torch.device, repeats: int) -> tuple[list[dict[str, Any]], str]:
    """DropConnect in a linear layer (batch 64, 512 -> 512), where the pip peer works.

    The ``dropconnect`` package fuses the mask into a linear layer with one mask per sample,
    so it is compared with dropkit's per-sample ``DropConnectLinear`` and, for scale, with
    dropkit's per-batch ``F.linear(x, drop_connect(W))``. Returns rows and the peer's status.
    """
    from dropkit.weights import DropConnectLinear

    torch.manual_seed(0)
    layer = DropConnectLinear(512, 512, P, per_sample=True).to(device)
    x = torch.randn(64, 512, device=device)
    cases: list[tuple[str, Callable[[], Tensor]]] = [
        (
            "dropkit drop_connect per batch",
            lambda: F.linear(x, DF.drop_connect(layer.weight, P), layer.bias),
        ),
        ("dropkit DropConnectLinear per_sample=True", lambda: layer(x)),
    ]
    status = "measured"
    try:
        peer = importlib.import_module("dropconnect").dropconnect
        cases.append(("dropconnect (per sample)", lambda: peer(x, layer.weight, layer.bias, P)))
        status = f"dropconnect {_version('dropconnect')}"
    except Exception as error:
        status = f"unavailable: {type(error).__name__}: {str(error)[:120]}"
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for round_ in range(repeats + 1):
        for name, fn in cases:
            _sync(device)
            start = time.perf_counter()
            fn().sum().backward()
            _sync(device)
            layer.zero_grad(set_to_none=True)
            if round_:
                times[name].append(time.perf_counter() - start)
    rows = [{"impl": name, "fwd_bwd_ms": 1000 * statistics.median(t)} for name, t in times.items()]
    return rows, status


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


MEMORY_VARIANTS: dict[str, Callable[[Tensor], Tensor]] = {
    "torch F.dropout": lambda x: F.dropout(x, P),
    "dropkit save_mask=True": lambda x: DF.dropout(x, P),
    "dropkit save_mask=False": lambda x: DF.dropout(x, P, save_mask=False),
}


def _reset_peak_rss() -> None:
    """Reset the peak resident set size to the current one (Linux >= 4.0; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident set size since :func:`_reset_peak_rss` (``VmHWM``; Linux), 0 if unknown.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over ``execve`` from the parent.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_variant(
    name: str, shape: tuple[int, ...], repeats: int, device: torch.device
) -> dict[str, Any]:
    """One variant: saved-for-backward bytes, memory held after forward, peak, fwd+bwd time.

    On a CPU, run it in a fresh process with glibc's mmap threshold fixed (see
    :func:`memory_rows`), so that the resident set size follows the live tensors.
    """
    fn = MEMORY_VARIANTS[name]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    elements = x.numel()
    output_bytes = elements * x.element_size()
    saved: list[int] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    cuda = device.type == "cuda"
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    before = torch.cuda.memory_allocated(device) if cuda else _rss_bytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    _sync(device)
    after = torch.cuda.memory_allocated(device) if cuda else _rss_bytes()
    y.backward(grad)
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes()
    del y
    x.grad = None
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        fn(x).backward(grad)
        _sync(device)
        times.append(time.perf_counter() - start)
        x.grad = None
    return {
        "impl": name,
        "saved_bytes_per_element": sum(saved) / elements,
        "held_after_forward_beyond_output_MiB": (after - before - output_bytes) / 2**20,
        "peak_fwd_bwd_above_inputs_MiB": (peak - before) / 2**20,
        "fwd_bwd_ms": 1000 * statistics.median(times[1:]),
    }


def memory_rows(
    shape: tuple[int, ...], repeats: int, device: torch.device, threads: int
) -> list[dict[str, Any]]:
    """:func:`memory_variant` of every variant; on a CPU each in its own process.

    glibc serves freed chunks of up to 32 MiB again from its heap without returning them, so
    in one process the resident set size misses allocations of that size; a fresh process with
    ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB maps every tensor on its own.
    """
    if device.type != "cpu":
        return [memory_variant(name, shape, repeats, device) for name in MEMORY_VARIANTS]
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    for name in MEMORY_VARIANTS:
        command = [sys.executable, __file__, "--memory-child", name, "--threads", str(threads)]
        command += ["--shape", *map(str, shape), "--repeats", str(repeats)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _gbs(n: int, tensors: int, ms: float) -> float:
    return n * 4 * tensors / (ms / 1000) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7, 1e8])
    parser.add_argument("--quick", action="store_true", help="1e5 and 1e6, few repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--no-peers", action="store_true", help="skip the pip peers")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory part")
    parser.add_argument("--memory-only", action="store_true", help="update only the memory part")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        row = memory_variant(args.memory_child, tuple(args.shape), args.repeats, device)
        print(json.dumps(row))
        return
    sizes = [10**5, 10**6] if args.quick else [int(s) for s in args.sizes]
    out = args.out or RESULTS / ("ops.json" if device.type == "cpu" else f"ops_{device.type}.json")
    torch.manual_seed(0)
    if args.memory_only:
        results = json.loads(out.read_text()) if out.exists() else {}
        results["memory"] = memory_section(args.quick, device)
        _write(out, results)
        print(f"\nwrote {out}")
        return

    impls = dropkit_impls() + torch_peer_impls()
    missing: dict[str, str] = {}
    loaded: dict[str, str] = {}
    if not args.no_peers:
        peers, missing, loaded = pip_peer_impls()
        impls += peers
    compile_s = None
    if not args.no_compile:
        try:
            compiled, compile_s = compiled_impls(device)
            impls += compiled
        except Exception as error:  # no C++ compiler, or the backend refuses
            missing["torch.compile"] = f"{type(error).__name__}: {str(error)[:160]}"

    machine = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }
    print(f"# {machine}")
    print(f"# p={P} (drop_block p={BLOCK_P}, block {BLOCK_SIZE}); float32; medians")
    if compile_s is not None:
        print(f"# torch.compile of the compiled rows (dynamic shapes): {compile_s:.1f} s")
    print(f"# peers: {loaded}")
    for package, reason in missing.items():
        print(f"# unavailable: {package}: {reason}")

    results: dict[str, Any] = {
        "machine": machine,
        "p": P,
        "drop_block": {"p": BLOCK_P, "block_size": BLOCK_SIZE},
        "compile_s": compile_s,
        "peers": loaded,
        "unavailable": missing,
        "sizes": {},
    }
    columns = "fwd ms | GB/s | %copy | x torch | fwd+bwd ms | GB/s | %copy | x torch"
    print(f"\n| n | op | impl | {columns} |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    peer_lines: list[str] = []
    compiled_lines: list[str] = []
    for n in sizes:
        repeats = (
            (5 if n <= 10**6 else 2) if args.quick else {5: 40, 6: 15, 7: 7}.get(len(str(n)) - 1, 3)
        )
        medians = time_sizes(impls, n, repeats, device)
        copy_ms = medians.pop("copy")["fwd_ms"]
        copy_gbs = _gbs(n, 2, copy_ms)
        torch_row = medians["dropout|torch F.dropout"]
        rows = []
        ceiling = f"{copy_ms:.3f} | {copy_gbs:.1f} | 100 | | | | | |"
        print(f"| {n:.0e} | copy ceiling | `y.copy_(x)` | {ceiling}")
        for key, value in medians.items():
            op, name = key.split("|")
            row: dict[str, Any] = {"op": op, "impl": name, "repeats": repeats, **value}
            for kind, tensors in (("fwd", 2), ("fb", 4)):
                ms = value.get(f"{kind}_ms")
                if ms is None:
                    continue
                row[f"{kind}_GBps"] = _gbs(n, tensors, ms)
                row[f"{kind}_of_copy"] = row[f"{kind}_GBps"] / copy_gbs
                row[f"{kind}_x_torch"] = torch_row[f"{kind}_ms"] / ms
            rows.append(row)
            print(
                f"| {n:.0e} | {op} | {name} | {row['fwd_ms']:.3f} | {row['fwd_GBps']:.1f} | "
                f"{100 * row['fwd_of_copy']:.0f} | {row['fwd_x_torch']:.2f} | {row['fb_ms']:.3f} | "
                f"{row['fb_GBps']:.1f} | {100 * row['fb_of_copy']:.0f} | {row['fb_x_torch']:.2f} |"
            )
        results["sizes"][str(n)] = {"copy_ms": copy_ms, "copy_GBps": copy_gbs, "rows": rows}
        by_impl = {r["impl"]: r for r in rows if r["op"] == "dropout"}
        if "dropkit compiled" in by_impl:
            ours_c, torch_c = by_impl["dropkit compiled"], by_impl["torch F.dropout compiled"]
            compiled_lines.append(
                f"| {n:.0e} | {torch_c['fb_ms']:.3f} | {ours_c['fb_ms']:.3f} | "
                f"{torch_c['fb_ms'] / ours_c['fb_ms']:.2f} | "
                f"{by_impl['dropkit']['fb_ms'] / ours_c['fb_ms']:.2f} |"
            )
        ours = {r["op"]: r for r in rows if r["impl"] == "dropkit"}
        for row in rows:
            if row["impl"].startswith(("dropkit", "torch F.dropout")):
                continue
            mine = ours[row["op"]]
            peer_lines.append(
                f"| {n:.0e} | {row['op']} | {row['impl']} | {row['fwd_ms']:.3f} | "
                f"{row['fwd_ms'] / mine['fwd_ms']:.2f} | {row['fb_ms']:.3f} | "
                f"{row['fb_ms'] / mine['fb_ms']:.2f} |"
            )
        _write(out, results)

    if compiled_lines:
        print("\n# torch.compile, forward + backward (ratios above 1: compiled dropkit faster)")
        header = "torch compiled ms | dropkit compiled ms | x torch compiled | x dropkit eager"
        print(f"| n | {header} |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(compiled_lines))

    print("\n| n | op | peer | fwd ms | dropkit speed-up | fwd+bwd ms | dropkit speed-up |")
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(peer_lines))

    if not args.no_peers:
        rows, status = dropconnect_rows(device, 3 if args.quick else 10)
        results["dropconnect_linear"] = {"peer": status, "rows": rows}
        print(f"\n# DropConnect in a linear layer, batch 64, 512 -> 512, fwd+bwd ({status})")
        print("| impl | fwd+bwd ms |")
        print("|---|---:|")
        for row in rows:
            print(f"| {row['impl']} | {row['fwd_bwd_ms']:.2f} |")

    if not args.no_memory:
        results["memory"] = memory_section(args.quick, device)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    print(f"# load average at start {machine['load_average_at_start']}, at end {os.getloadavg()}")
    _write(out, results)
    print(f"\nwrote {out}")


def memory_section(quick: bool, device: torch.device) -> dict[str, Any]:
    """The memory part: run, print and return it."""
    shape = (2, 256, 1024) if quick else (8, 1024, 4096)
    rows = memory_rows(shape, 3 if quick else 5, device, torch.get_num_threads())
    where = "GPU allocator" if device.type == "cuda" else "resident set size"
    print(f"\n# memory: dropout on a {shape} float32 activation ({where})")
    held = "held after forward beyond the output MiB"
    print(f"| impl | saved B/element | {held} | peak above inputs MiB | fwd+bwd ms |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['impl']} | {row['saved_bytes_per_element']:g} | "
            f"{row['held_after_forward_beyond_output_MiB']:.0f} | "
            f"{row['peak_fwd_bwd_above_inputs_MiB']:.0f} | {row['fwd_bwd_ms']:.1f} |"
        )
    return {"shape": list(shape), "measured_by": where, "rows": rows}


def _write(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
