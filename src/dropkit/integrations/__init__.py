"""dropkit's tools inside the training loops of other frameworks, as callbacks.

* :mod:`dropkit.integrations.lightning`: PyTorch Lightning callbacks and a ``predict_step``
  mixin for Monte Carlo dropout (``pip install "dropkit[lightning]"``).
* :mod:`dropkit.integrations.transformers`: Hugging Face ``TrainerCallback``\\ s and
  :func:`~dropkit.integrations.transformers.mc_predict` for batch dicts
  (``pip install "dropkit[transformers]"``).

The submodules are imported on first use: ``import dropkit`` and ``import
dropkit.integrations`` import neither framework.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["lightning", "transformers"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
