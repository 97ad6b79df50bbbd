"""dropkit: dropout regularization for PyTorch, done completely and done right.

``p`` is always the drop probability: the probability of an element to be zeroed.

Layers live here (``dropkit.Dropout``, ``dropkit.SpatialDropout2d``, ...), with the tools that
apply dropout to an existing model (``insert_dropout``, ``max_norm_``, ``DropoutSchedule``, ...);
the pure ops the layers wrap live in :mod:`dropkit.functional`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, imported on first use (``import dropkit`` stays cheap)
    from dropkit import calibration as calibration
    from dropkit import functional as functional
    from dropkit.checks import Finding as Finding
    from dropkit.checks import check_model as check_model
    from dropkit.checks import inference as inference
    from dropkit.checks import warn_if_training as warn_if_training
    from dropkit.concrete import ConcreteDropout as ConcreteDropout
    from dropkit.concrete import concrete_regularization as concrete_regularization
    from dropkit.layers import AlphaDropout as AlphaDropout
    from dropkit.layers import DropBlock2d as DropBlock2d
    from dropkit.layers import DropBlock3d as DropBlock3d
    from dropkit.layers import Dropout as Dropout
    from dropkit.layers import DropPath as DropPath
    from dropkit.layers import FeatureAlphaDropout as FeatureAlphaDropout
    from dropkit.layers import GaussianDropout as GaussianDropout
    from dropkit.layers import LockedDropout as LockedDropout
    from dropkit.layers import SpatialDropout1d as SpatialDropout1d
    from dropkit.layers import SpatialDropout2d as SpatialDropout2d
    from dropkit.layers import SpatialDropout3d as SpatialDropout3d
    from dropkit.recurrent import GRU as GRU
    from dropkit.recurrent import LSTM as LSTM
    from dropkit.schedules import DropoutSchedule as DropoutSchedule
    from dropkit.surgery import DropoutSite as DropoutSite
    from dropkit.surgery import find_dropout as find_dropout
    from dropkit.surgery import find_dropout_sites as find_dropout_sites
    from dropkit.surgery import insert_dropout as insert_dropout
    from dropkit.surgery import set_dropout as set_dropout
    from dropkit.uncertainty import MCPrediction as MCPrediction
    from dropkit.uncertainty import mc_dropout as mc_dropout
    from dropkit.uncertainty import mc_predict as mc_predict
    from dropkit.weights import DropConnect as DropConnect
    from dropkit.weights import DropConnectLinear as DropConnectLinear
    from dropkit.weights import EmbeddingDropout as EmbeddingDropout
    from dropkit.weights import MaxNorm as MaxNorm
    from dropkit.weights import WeightDrop as WeightDrop
    from dropkit.weights import max_norm_ as max_norm_

__version__ = "0.1.0"

_HOMES = {
    "calibration": "dropkit.calibration",
    "functional": "dropkit.functional",
    "Finding": "dropkit.checks",
    "check_model": "dropkit.checks",
    "inference": "dropkit.checks",
    "warn_if_training": "dropkit.checks",
    "ConcreteDropout": "dropkit.concrete",
    "concrete_regularization": "dropkit.concrete",
    "AlphaDropout": "dropkit.layers",
    "DropBlock2d": "dropkit.layers",
    "DropBlock3d": "dropkit.layers",
    "Dropout": "dropkit.layers",
    "DropPath": "dropkit.layers",
    "FeatureAlphaDropout": "dropkit.layers",
    "GaussianDropout": "dropkit.layers",
    "LockedDropout": "dropkit.layers",
    "SpatialDropout1d": "dropkit.layers",
    "SpatialDropout2d": "dropkit.layers",
    "SpatialDropout3d": "dropkit.layers",
    "GRU": "dropkit.recurrent",
    "LSTM": "dropkit.recurrent",
    "DropoutSchedule": "dropkit.schedules",
    "DropoutSite": "dropkit.surgery",
    "find_dropout": "dropkit.surgery",
    "find_dropout_sites": "dropkit.surgery",
    "insert_dropout": "dropkit.surgery",
    "set_dropout": "dropkit.surgery",
    "MCPrediction": "dropkit.uncertainty",
    "mc_dropout": "dropkit.uncertainty",
    "mc_predict": "dropkit.uncertainty",
    "DropConnect": "dropkit.weights",
    "DropConnectLinear": "dropkit.weights",
    "EmbeddingDropout": "dropkit.weights",
    "MaxNorm": "dropkit.weights",
    "WeightDrop": "dropkit.weights",
    "max_norm_": "dropkit.weights",
}
"""Where each public name lives; :func:`__getattr__` imports it on first use (PEP 562):
``import dropkit`` (and so the ``dropkit`` command's start-up) does not import torch until a
layer, op or tool is used."""

__all__ = [
    "GRU",
    "LSTM",
    "AlphaDropout",
    "ConcreteDropout",
    "DropBlock2d",
    "DropBlock3d",
    "DropConnect",
    "DropConnectLinear",
    "DropPath",
    "Dropout",
    "DropoutSchedule",
    "DropoutSite",
    "EmbeddingDropout",
    "FeatureAlphaDropout",
    "Finding",
    "GaussianDropout",
    "LockedDropout",
    "MCPrediction",
    "MaxNorm",
    "SpatialDropout1d",
    "SpatialDropout2d",
    "SpatialDropout3d",
    "WeightDrop",
    "__version__",
    "calibration",
    "check_model",
    "concrete_regularization",
    "find_dropout",
    "find_dropout_sites",
    "functional",
    "inference",
    "insert_dropout",
    "max_norm_",
    "mc_dropout",
    "mc_predict",
    "set_dropout",
    "warn_if_training",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dropkit' has no attribute {name!r}")
    module = importlib.import_module(home)
    value = module if home == f"dropkit.{name}" else getattr(module, name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
