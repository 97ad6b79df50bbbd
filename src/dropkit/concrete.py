r"""Concrete dropout: a dropout rate learned by gradient descent (Gal, Hron & Kendall 2017).

`Concrete Dropout <https://arxiv.org/abs/1705.07832>`_ replaces the discrete Bernoulli mask by
its continuous relaxation (the Concrete, or relaxed-Bernoulli, distribution), so that the
training loss is differentiable in the drop probability ``p`` and ``p`` can be learned per
layer together with the weights. With ``p = sigmoid(p_logit)``, temperature ``t`` and
``u ~ U(0, 1)`` per element, the relaxed *drop* indicator is

.. math::

    z = \sigma\bigl((\log p - \log(1-p) + \log u - \log(1-u)) / t\bigr)

(an ``ε = 1e-7`` is added inside each log), and the wrapped layer sees
``x̃ = x·(1 − z)/(1 − p)``. As ``t → 0``, ``z`` tends to a Bernoulli(``p``) draw.

The rate is kept from collapsing to 0 by the paper's regularizer, which must be **added to
the loss** (:meth:`ConcreteDropout.regularization`, or :func:`concrete_regularization` for a
whole model)::

    w_reg · ΣW² / (1 − p)  +  d_reg · K · (p·log p + (1 − p)·log(1 − p))

The second term is ``−K·H(p)``, the negative entropy of the rate: it pulls ``p`` towards 0.5,
and its weight ``d_reg = 2/(τN)`` shrinks with the number of training samples ``N``, so that
the learned rate falls as data grows (epistemic uncertainty vanishing with data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dropkit._validation import (
    check_generator,
    check_module,
    check_nonnegative,
    check_open_probability,
    check_positive,
    check_positive_int,
)

__all__ = ["ConcreteDropout", "concrete_regularization"]

_EPS = 1e-7


class ConcreteDropout(nn.Module):
    r"""Wrap ``layer`` and drop its **input** with a learned rate (Gal, Hron & Kendall 2017).

    Training: ``y = layer(x·(1 − z)/(1 − p))`` where ``z`` is the relaxed drop mask described in
    :mod:`dropkit.concrete` (one independent ``u ~ U(0, 1)`` per element of ``x``). Inference:
    ``y = layer(x)`` — the scaling is inverted, so nothing is rescaled at test time.

    ``p = sigmoid(p_logit)`` is clamped into ``[1e-7, 1 − 1e-7]`` so that it, the mask and the
    regularizer stay finite whatever the optimizer does to ``p_logit`` (even with a huge
    learning rate). Past the clamp the gradient of ``p`` is zero, as it nearly is anyway
    through a saturated sigmoid.

    **Add** :meth:`regularization` **to the loss** (or :func:`concrete_regularization` for all the
    layers of a model); without it the rate just drifts to 0, since the data term alone always
    prefers less noise. Pick the two regularizer weights with :meth:`regularizers`.

    Args:
        layer: the module whose input is dropped, typically an ``nn.Linear`` or an
            ``nn.Conv*d``. Its parameters are the ``W`` of the weight regularizer.
        init_p: initial drop probability, in (0, 1) with the ends excluded (the logit is
            infinite there). The paper initialises around 0.1.
        temperature: temperature ``t > 0`` of the relaxation; the paper uses 0.1. Smaller
            gives a more binary mask but noisier gradients for ``p``.
        weight_regularizer: ``w_reg >= 0``, the paper's ``l²/(τN)``.
        dropout_regularizer: ``d_reg >= 0``, the paper's ``2/(τN)``.
        generator: optional ``torch.Generator`` for the uniform noise ``u``.

    Attributes:
        p_logit: the learned ``nn.Parameter`` (0-d), ``log(p/(1 − p))`` before clamping.
        input_dim: ``K`` of the regularizer, the number of input features of ``layer``:
            ``in_features`` of an ``nn.Linear``, ``in_channels`` of an ``nn.Conv*d``, otherwise
            ``x.shape[-1]`` of the last input seen in :meth:`forward` (``None`` before).
            Recorded on every forward pass.

    Example:
        >>> layer = ConcreteDropout(nn.Linear(8, 4), init_p=0.2)
        >>> y = layer(torch.randn(16, 8))
        >>> loss = y.pow(2).mean() + layer.regularization()
        >>> round(layer.p, 6)
        0.2
    """

    p_logit: nn.Parameter
    input_dim: int | None

    def __init__(
        self,
        layer: nn.Module,
        *,
        init_p: float = 0.1,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.layer = check_module(layer, "layer")
        p0 = check_open_probability(init_p, "init_p")
        self.temperature = check_positive(temperature, "temperature")
        self.weight_regularizer = check_nonnegative(weight_regularizer, "weight_regularizer")
        self.dropout_regularizer = check_nonnegative(dropout_regularizer, "dropout_regularizer")
        check_generator(generator)
        self.generator = generator
        self.p_logit = nn.Parameter(torch.tensor(math.log(p0) - math.log1p(-p0)))
        self.input_dim = _known_input_dim(layer)

    # ---------------------------------------------------------------- the rate
    def _p_tensor(self) -> Tensor:
        """``sigmoid(p_logit)`` clamped into ``[ε, 1 − ε]``, differentiable inside the clamp."""
        return torch.sigmoid(self.p_logit).clamp(_EPS, 1.0 - _EPS)

    @property
    def p(self) -> float:
        """The current drop probability, a Python float in (0, 1)."""
        return float(self._p_tensor().detach())

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        dim = _input_dim_of(self.layer, x)
        if dim is not None:
            self.input_dim = dim
        if not self.training:
            return self.layer(x)  # type: ignore[no-any-return]
        check_generator(self.generator, x)
        # The noise and the mask are computed in at least the parameter's precision (fp32 by
        # default), so that ε = 1e-7 means something for half-precision inputs too.
        work = torch.promote_types(x.dtype, self.p_logit.dtype)
        p = self._p_tensor().to(work)
        u = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=work)
        logits = (
            torch.log(p + _EPS)
            - torch.log(1 - p + _EPS)
            + torch.log(u + _EPS)
            - torch.log(1 - u + _EPS)
        )
        z = torch.sigmoid(logits / self.temperature)
        x_tilde = x.to(work) * (1 - z) / (1 - p)
        return self.layer(x_tilde.to(x.dtype))  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- regularizer
    def regularization(self) -> Tensor:
        """The paper's regularizer of this layer, a 0-d tensor to **add** to the loss.

        ``w_reg · ΣW² / (1 − p) + d_reg · K · (p·log p + (1 − p)·log(1 − p))``.

        ``ΣW²`` runs over **all** parameters of the wrapped layer, bias included, as in Yarin
        Gal's PyTorch reference notebook (his Keras version takes the kernel only; the bias
        term is tiny next to it). ``K`` is :attr:`input_dim`. Differentiable in ``p_logit`` and
        in the layer's parameters.

        Raises:
            RuntimeError: ``K`` is not known yet: the layer is neither an ``nn.Linear`` nor an
                ``nn.Conv*d`` and has not seen an input.
        """
        if self.input_dim is None:
            raise RuntimeError(
                f"ConcreteDropout around {type(self.layer).__name__} does not know its input "
                f"dimension K yet: run one forward pass before calling regularization()"
            )
        p = self._p_tensor()
        squares = [w.pow(2).sum() for w in self.layer.parameters()]
        sum_sq = torch.stack(squares).sum().to(p.dtype) if squares else torch.zeros_like(p)
        weight_term = self.weight_regularizer * sum_sq / (1 - p)
        neg_entropy = p * torch.log(p) + (1 - p) * torch.log(1 - p)
        dropout_term = self.dropout_regularizer * self.input_dim * neg_entropy
        return weight_term + dropout_term

    @staticmethod
    def regularizers(
        n_samples: int, length_scale: float = 1e-4, precision: float = 1.0
    ) -> tuple[float, float]:
        """The paper's ``(weight_regularizer, dropout_regularizer) = (l²/(τN), 2/(τN))``.

        Args:
            n_samples: ``N``, the number of training samples.
            length_scale: ``l``, the prior length-scale of the weights (prior ``N(0, 1/l²)``);
                the paper's default 1e-4 makes the weight term nearly vanish.
            precision: ``τ``, the model precision (inverse observation-noise variance) of a
                regression; 1 for a loss that is a plain mean.

        Both are scaled by ``1/N`` because the loss they are added to is a per-sample mean.
        """
        n = check_positive_int(n_samples, "n_samples")
        length = check_positive(length_scale, "length_scale")
        tau = check_positive(precision, "precision")
        return length**2 / (tau * n), 2.0 / (tau * n)

    def extra_repr(self) -> str:
        return (
            f"p={self.p:.4g}, temperature={self.temperature:g}, "
            f"weight_regularizer={self.weight_regularizer:g}, "
            f"dropout_regularizer={self.dropout_regularizer:g}"
        )


def concrete_regularization(model: nn.Module) -> Tensor:
    """Sum of :meth:`ConcreteDropout.regularization` over every ``ConcreteDropout`` in ``model``.

    ``model`` itself counts if it is one. Returns a 0-d zero tensor when there is none, so the
    result can always be added to the loss.
    """
    check_module(model, "model")
    terms = [m.regularization() for m in model.modules() if isinstance(m, ConcreteDropout)]
    if not terms:
        return torch.zeros(())
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


_CONV = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_CONV_RANK: dict[type[nn.Module], int] = {
    nn.Conv1d: 1,
    nn.Conv2d: 2,
    nn.Conv3d: 3,
    nn.ConvTranspose1d: 1,
    nn.ConvTranspose2d: 2,
    nn.ConvTranspose3d: 3,
}


def _known_input_dim(layer: nn.Module) -> int | None:
    """``K`` read from the layer's own shape when it has one (Linear, Conv), else ``None``."""
    if isinstance(layer, nn.Linear):
        return layer.in_features or None  # 0 for an uninitialised nn.LazyLinear
    if isinstance(layer, _CONV):
        return layer.in_channels
    return None


def _input_dim_of(layer: nn.Module, x: Tensor) -> int | None:
    """``K`` seen in the input: the channel axis for a conv, the last axis otherwise."""
    if x.ndim == 0:
        return None
    for kind, rank in _CONV_RANK.items():
        if isinstance(layer, kind):
            # (N, C, *spatial) or unbatched (C, *spatial): channels are rank + 1 from the end.
            return int(x.shape[-(rank + 1)]) if x.ndim > rank else None
    return int(x.shape[-1])
