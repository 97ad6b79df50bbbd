"""What ``import dropkit`` costs on top of ``import torch``, and the wall time of a CLI call.

    python benchmarks/import_cost.py                      # 15 fresh interpreters per row
    python benchmarks/import_cost.py --runs 31
    python benchmarks/import_cost.py --no-bytecode-cache  # compile dropkit's sources each run

Every figure comes from a fresh interpreter. Each run times ``import torch`` and then
``import dropkit`` inside one process (``time.perf_counter`` around each statement), so the
extra seconds of dropkit are measured against the torch that the same process just loaded.
``python -c "import torch"`` and ``python -m dropkit --help`` (what the ``dropkit`` command
runs) are timed from the outside: process start to exit. The rows take turns within every
round, so that load on a shared machine hits all alike; the figures are medians over the
rounds.

By default the interpreters write and reuse bytecode in a temporary folder (one warm-up run
fills it), as an installed package does; ``--no-bytecode-cache`` turns bytecode writing off,
so dropkit's modules are compiled from source on every run (torch keeps its installed
bytecode, if any).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

_IMPORTS = (
    "import time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "t1 = time.perf_counter()\n"
    "import dropkit\n"
    "t2 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1)\n"
)


def _wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def _imports(env: dict[str, str]) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout.split()
    return float(out[0]), float(out[1])


def _environment(bytecode_cache: bool, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = prefix
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per row")
    parser.add_argument(
        "--no-bytecode-cache",
        dest="bytecode_cache",
        action="store_false",
        help="compile dropkit's sources on every run",
    )
    args = parser.parse_args()

    import torch  # only for the header: the figures come from the subprocesses

    with tempfile.TemporaryDirectory(prefix="dropkit-pyc-") as prefix:
        env = _environment(args.bytecode_cache, prefix)
        help_command = [sys.executable, "-m", "dropkit", "--help"]
        torch_command = [sys.executable, "-c", "import torch"]
        _imports(env)  # warm-up: fills the bytecode folder, warms the file cache
        try:
            _wall(help_command, env)
            help_error = ""
        except subprocess.CalledProcessError as error:
            help_error = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-1]

        torch_in, dropkit_in, torch_wall, help_wall = [], [], [], []
        for _ in range(args.runs):
            t, d = _imports(env)
            torch_in.append(t)
            dropkit_in.append(d)
            torch_wall.append(_wall(torch_command, env))
            if not help_error:
                help_wall.append(_wall(help_command, env))

    med = statistics.median
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}, {platform.system()}); "
        f"medians of {args.runs} fresh interpreters; bytecode cache "
        f"{'on' if args.bytecode_cache else 'off'}"
    )
    print()
    rows = [
        ("import torch (in-process)", med(torch_in)),
        ("import dropkit after torch: extra", med(dropkit_in)),
        ("import torch; import dropkit", med(map(sum, zip(torch_in, dropkit_in, strict=True)))),
        ('python -c "import torch" (wall)', med(torch_wall)),
    ]
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'what':<{width}}{'seconds':>9}")
    for name, seconds in rows:
        print(f"{name:<{width}}{seconds:>9.3f}")
    name = "dropkit --help (wall)"
    if help_error:
        print(f"{name:<{width}}   failed: {help_error}")
    else:
        print(f"{name:<{width}}{med(help_wall):>9.3f}")


if __name__ == "__main__":
    main()
