"""Weight-level tools: the max-norm constraint, dropout's companion in the original paper.

Srivastava et al. (2014, §5.1) bound the norm of each hidden unit's incoming weight vector:
after every optimizer step, ``w ← w · min(1, c / ‖w‖)``, with ``c`` usually 3–4. With a bound
on the weights a large learning rate cannot blow them up, which lets dropout nets train with
the large, decaying learning rates and high momentum the paper recommends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from dropkit._validation import check_dim, check_positive

__all__ = ["MaxNorm", "max_norm_"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONSTRAINED = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *_TRANSPOSED)


def _unit_dim(module: nn.Module) -> int:
    """The axis of ``module.weight`` that indexes output units (1 for transposed convs)."""
    return 1 if isinstance(module, _TRANSPOSED) else 0


@torch.no_grad()
def _renorm_(weight: torch.Tensor, max_norm: float, dim: int) -> None:
    """Scale each slice ``weight.select(dim, i)`` whose 2-norm exceeds ``max_norm`` down to it."""
    dims = [d for d in range(weight.ndim) if d != dim % weight.ndim]
    norms = torch.linalg.vector_norm(weight, dim=dims, keepdim=True)
    # Only slices above the bound change; the others are multiplied by exactly 1 (bit-identical)
    # and a zero slice never meets 0/0.
    scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
    weight.mul_(scale)


def max_norm_(module: nn.Module, max_norm: float, *, dim: int | None = None) -> nn.Module:
    """Rescale each unit's incoming weight vector to norm ``<= max_norm`` in place; return it.

    ``w_u ← w_u · min(1, max_norm / ‖w_u‖₂)`` for each output unit ``u``: a row of a
    ``Linear`` weight ``(out, in)``, a whole filter of a ``Conv`` weight ``(out, in, *k)``
    (``(in, out, *k)`` for transposed convolutions, handled). Vectors already within the bound are
    left bit-identical; zero vectors stay zero.

    Args:
        module: a layer or a whole model; every ``Linear``, ``Bilinear``, ``ConvNd`` and
            ``ConvTransposeNd`` inside gets the constraint.
        max_norm: the bound ``c > 0``; Srivastava et al. use 3–4.
        dim: the weight axis that indexes units, to override the per-layer default
            (like ``torch.renorm``'s ``dim``).

    Example::

        >>> layer = nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(10.0)
        >>> max_norm_(layer, 3.0).weight.norm(dim=1).tolist()
        [3.0, 3.0]
    """
    max_norm = check_positive(max_norm, "max_norm")
    for layer in module.modules():
        if isinstance(layer, _CONSTRAINED):
            weight = _stored_weight(layer)
            owner = f"the {weight.ndim}-D weight of {type(layer).__name__}"
            axis = _unit_dim(layer) if dim is None else check_dim(dim, weight.ndim, owner=owner)
            _renorm_(weight, max_norm, axis)
    return module


def _stored_weight(layer: nn.Module) -> torch.Tensor:
    """The tensor that holds ``layer``'s weight: the original under a one-tensor parametrization.

    Under ``torch.nn.utils.parametrize`` ``layer.weight`` is recomputed on every access, so
    scaling it in place would change a temporary. A parametrization with several originals
    (``weight_norm``'s magnitude and direction) has no single weight to bound: refused.
    """
    if not parametrize.is_parametrized(layer, "weight"):
        return layer.get_parameter("weight")
    original = getattr(layer.get_submodule("parametrizations.weight"), "original", None)
    if isinstance(original, torch.Tensor):
        return original
    raise ValueError(
        f"max_norm_ cannot bound the weight of {type(layer).__name__}: it is computed by a "
        "parametrization from several tensors (e.g. weight_norm); constrain those instead"
    )


class MaxNorm:
    """The max-norm constraint applied after every optimizer step.

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> handle = MaxNorm(3.0).attach(optimizer, model)  # handle.remove() detaches it

    Args:
        max_norm: the bound ``c > 0`` on each unit's incoming weight norm.
        dim: see :func:`max_norm_`.
    """

    def __init__(self, max_norm: float, *, dim: int | None = None) -> None:
        self.max_norm = check_positive(max_norm, "max_norm")
        self.dim = dim

    def __call__(self, module: nn.Module) -> nn.Module:
        """Apply the constraint to ``module`` now."""
        return max_norm_(module, self.max_norm, dim=self.dim)

    def attach(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
        """Constrain ``model`` after every ``optimizer.step()``; returns the hook's handle."""

        def hook(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            self(model)

        return optimizer.register_step_post_hook(hook)

    def __repr__(self) -> str:
        extra = "" if self.dim is None else f", dim={self.dim}"
        return f"MaxNorm(max_norm={self.max_norm}{extra})"
