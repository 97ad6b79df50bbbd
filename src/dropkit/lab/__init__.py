"""The dropkit lab: does dropout help my model, and at what rate?

Python and the ``dropkit`` command line call the same functions:

==============================================  ==============================================
Python                                          command line
==============================================  ==============================================
``lab.demo()``                                  ``dropkit demo``
``lab.sweep(rates=[0, 0.2, 0.4], seeds=10)``    ``dropkit sweep --rates 0,0.2,0.4 --seeds 10``
``lab.compare(arms=["none", "dropout", "l2"])``  ``dropkit compare --arms none,dropout,l2``
``lab.load("runs.sqlite")``                     ``dropkit report --store runs.sqlite``
==============================================  ==============================================

Each returns an :class:`Experiment` (``.summary``, ``.best``, ``.comparisons``, ``.findings``,
``.runs``, ``.curves()``, ``.plot_curves()``, ``.plot_rates()``, ``.plot_arms()``,
``.report(path)``, ``.to_dict()``; a notebook shows its table). The arms a comparison can use
are :data:`REGULARIZERS` (:mod:`dropkit.lab.plan.arms`). See ``docs/lab.md``.

How many seeds? ``lab.seeds_needed(0.02, 0.02)`` gives the seeds per group a paired comparison
needs to detect a +0.02 difference at 80% power when the per-seed differences spread by 0.02
(each experiment's comparisons state the same for the differences they saw). See
``docs/report.md``.

Your own model and data: ``lab.sweep(data=(X, y), model=make_model)`` with a factory
``make_model(p) -> nn.Module`` (or an ``nn.Module``), arrays, tensors or torch Datasets, for
classification or regression; runs of one model train batched (``torch.func.vmap``) with
counter-based dropout masks, and the best rate is chosen on a validation split. See
``docs/your-model.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first use (``import dropkit.lab`` stays cheap)
    from dropkit.lab.api import ENGINES as ENGINES
    from dropkit.lab.api import Plan as Plan
    from dropkit.lab.api import RunOptions as RunOptions
    from dropkit.lab.api import compare as compare
    from dropkit.lab.api import demo as demo
    from dropkit.lab.api import load as load
    from dropkit.lab.api import load_all as load_all
    from dropkit.lab.api import plan_compare as plan_compare
    from dropkit.lab.api import plan_demo as plan_demo
    from dropkit.lab.api import plan_sweep as plan_sweep
    from dropkit.lab.api import report as report
    from dropkit.lab.api import run as run
    from dropkit.lab.api import sweep as sweep
    from dropkit.lab.execute.engines import EngineError as EngineError
    from dropkit.lab.execute.runner import IncompleteSweep as IncompleteSweep
    from dropkit.lab.plan.arms import REGULARIZERS as REGULARIZERS
    from dropkit.lab.plan.arms import STRENGTHS as STRENGTHS
    from dropkit.lab.plan.arms import Strength as Strength
    from dropkit.lab.plan.config import DEMO_SEEDS as DEMO_SEEDS
    from dropkit.lab.plan.data import BUILTIN_DATASETS as BUILTIN_DATASETS
    from dropkit.lab.results.experiment import Experiment as Experiment
    from dropkit.lab.results.plots import save_png as save_png
    from dropkit.lab.results.significance import seeds_needed as seeds_needed
    from dropkit.lab.results.tables import Table as Table
    from dropkit.lab.store import StoreError as StoreError

_HOMES = {
    "ENGINES": "dropkit.lab.api",
    "Plan": "dropkit.lab.api",
    "RunOptions": "dropkit.lab.api",
    "report": "dropkit.lab.api",
    "compare": "dropkit.lab.api",
    "demo": "dropkit.lab.api",
    "load": "dropkit.lab.api",
    "load_all": "dropkit.lab.api",
    "plan_compare": "dropkit.lab.api",
    "plan_demo": "dropkit.lab.api",
    "plan_sweep": "dropkit.lab.api",
    "run": "dropkit.lab.api",
    "sweep": "dropkit.lab.api",
    "EngineError": "dropkit.lab.execute.engines",
    "IncompleteSweep": "dropkit.lab.execute.runner",
    "REGULARIZERS": "dropkit.lab.plan.arms",
    "STRENGTHS": "dropkit.lab.plan.arms",
    "Strength": "dropkit.lab.plan.arms",
    "DEMO_SEEDS": "dropkit.lab.plan.config",
    "BUILTIN_DATASETS": "dropkit.lab.plan.data",
    "Experiment": "dropkit.lab.results.experiment",
    "save_png": "dropkit.lab.results.plots",
    "seeds_needed": "dropkit.lab.results.significance",
    "Table": "dropkit.lab.results.tables",
    "StoreError": "dropkit.lab.store",
}
"""Where each public name lives; :func:`__getattr__` imports it on first use (PEP 562), so
``from dropkit import lab`` costs nothing until the lab is called (SciPy, scikit-learn and the
trainers load then)."""

__all__ = [
    "BUILTIN_DATASETS",
    "DEMO_SEEDS",
    "ENGINES",
    "REGULARIZERS",
    "STRENGTHS",
    "EngineError",
    "Experiment",
    "IncompleteSweep",
    "Plan",
    "RunOptions",
    "StoreError",
    "Strength",
    "Table",
    "compare",
    "demo",
    "load",
    "load_all",
    "plan_compare",
    "plan_demo",
    "plan_sweep",
    "report",
    "run",
    "save_png",
    "seeds_needed",
    "sweep",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dropkit.lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
