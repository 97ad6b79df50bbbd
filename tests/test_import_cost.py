"""``import dropkit`` leaves the compiler stack alone: no ``torch._dynamo`` at import.

torch.compile imports dynamo itself when a function is first compiled; importing it with
dropkit cost about a second on every import and every CLI call. Times are measured in
``benchmarks/import_cost.py``, never here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

import dropkit.functional as DF


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, timeout=300
    )


def test_importtime_shows_no_dynamo() -> None:
    stderr = _python("-X", "importtime", "-c", "import dropkit").stderr
    assert any(line.endswith("| dropkit") for line in stderr.splitlines()), stderr[-2000:]
    assert "torch._dynamo" not in stderr
    assert "torch._inductor" not in stderr


def test_import_leaves_the_compiler_and_plotting_out() -> None:
    code = (
        "import sys, dropkit, dropkit.functional, dropkit.integrations\n"
        "heavy = ('torch._dynamo', 'torch._inductor', 'matplotlib', 'sklearn', 'dropkit.lab')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(heavy)))\n"
    )
    assert _python("-c", code).stdout.strip() == "[]"


def test_the_constant_marker_is_torchs() -> None:
    """dropkit marks DropBlock's seed rate as a compile-time constant the way
    ``torch.compiler.assume_constant_result`` does, without importing dynamo to do it."""

    def ours() -> float:
        return 0.5

    def torchs() -> float:
        return 0.5

    marked: Callable[[], float] = torch.compiler.assume_constant_result(torchs)  # type: ignore[no-untyped-call]  # untyped in torch
    assert marked is torchs
    assert DF._assume_constant_result(ours) is ours
    assert vars(ours) == vars(torchs) == {"_dynamo_marked_constant": True}


def test_drop_block_rate_is_a_constant_under_compile() -> None:
    """Traced, the seed rate is computed once in Python (a miss of the solver's cache) and
    enters the graph as a constant, not traced as a 60-step bisection."""
    torch._dynamo.reset()
    p = 0.2718  # a rate no other test solves, so its first solve is a cache miss
    before = DF._solve_drop_block_seed_rate.cache_info().misses
    compiled = torch.compile(
        lambda x: DF.drop_block(x, p, block_size=3), fullgraph=True, backend="aot_eager"
    )
    x = torch.rand(2, 3, 9, 9) + 0.5
    torch.manual_seed(5)
    y = compiled(x)
    assert DF._solve_drop_block_seed_rate.cache_info().misses == before + 1
    assert y.shape == x.shape and (y == 0).any()


def test_the_command_and_the_namespaces_start_without_torch() -> None:
    """``import dropkit``, ``from dropkit import lab`` and the ``dropkit`` command's module
    import no torch (nor SciPy, scikit-learn, matplotlib): their public names load on first
    use (PEP 562), so ``dropkit --help`` answers without the cost of torch."""
    code = (
        "import sys, dropkit, dropkit.cli\n"
        "from dropkit import lab\n"
        "heavy = ('torch', 'scipy', 'sklearn', 'matplotlib')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    assert _python("-c", code).stdout.strip() == "[]"


def test_every_public_name_resolves_on_first_use() -> None:
    import dropkit
    from dropkit import lab

    for namespace in (dropkit, lab):
        names = set(namespace.__all__) - {"__version__"}
        assert names == set(namespace._HOMES), names ^ set(namespace._HOMES)
        assert names <= set(dir(namespace))
        for name in sorted(names):
            assert getattr(namespace, name) is not None, name
    assert dropkit.functional.dropout is DF.dropout
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        dropkit.no_such_name  # noqa: B018 - the attribute access is the test
