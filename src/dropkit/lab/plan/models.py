"""Network builders of the lab: an MLP, a small CNN and a small LSTM classifier per run config.

:func:`build_model` turns a :class:`~dropkit.lab.plan.config.RunConfig` into an ``nn.Module`` whose
input is a batch of rows ``(N, n_features)`` float32 as a :class:`~dropkit.lab.plan.data.Dataset`
stores them (the module reshapes them to images or sequences itself, from
``data.input_shape``) and whose output is logits: ``(N, 1)`` for two classes (sigmoid /
binary cross-entropy), ``(N, n_classes)`` otherwise; for regression data one value
``(N, 1)``. Every dropout layer is a dropkit layer, so
:func:`dropkit.mc_predict` samples it and :func:`dropkit.set_dropout` re-rates it.

Kinds (``config.model.kind``) and the arms that change the module
(``config.regularizers``; arms of the loop such as ``l2`` or ``early_stopping`` do not):

``mlp``
    ``[Dropout(input_p)] → (Linear → ReLU → Dropout(p))·L → Linear``: the batched trainer's
    model, Glorot-uniform weights and zero biases (Keras' defaults). Arms:

    - ``batchnorm``: blocks ``Linear → BatchNorm1d → ReLU → Dropout(p)``: dropout after the
      normalization, the order Li et al. (2019) recommend (with one hidden layer every dropout
      comes after every BN; with more, a block's dropout reaches the next block's BN through
      that block's Linear).
    - ``dropout_bn``: blocks ``Linear → ReLU → Dropout(p) → BatchNorm1d``: dropout feeds a BN
      directly, the order whose "variance shift" Li et al. analyse: in training the BN sees the
      variance of the dropped units, ``Var[x]/(1−p) + p/(1−p)·E[x]²``, at test time ``Var[x]``,
      so its running statistics do not fit the inference network.
    - ``concrete``: :class:`dropkit.ConcreteDropout` on the input of every layer after a hidden
      one (learned rates starting at ``p``, or 0.1 when ``p`` is 0); its
      ``dropout_regularizer`` is the arm's strength, its ``weight_regularizer`` the paper's
      ``l²/N`` with ``l = 1e-4`` (:meth:`dropkit.ConcreteDropout.regularizers`). The loop adds
      :func:`dropkit.concrete.concrete_regularization` to the loss.
    - ``gaussian_noise``: :class:`GaussianNoise` (σ = strength) after each hidden dropout.

``cnn`` (images ``(C, H, W)``, e.g. digits as ``(1, 8, 8)``)
    Per width ``c`` in ``hidden``: ``Conv2d(3×3, c, padding 1) → ReLU → drop → MaxPool2d(2)``
    (no pooling once the map is 1 pixel wide), then ``Flatten → Dropout(p) → Linear``. ``drop``
    is ``Dropout(p)`` (one draw per pixel and channel), or with the arms ``spatial_dropout``
    :class:`dropkit.SpatialDropout2d` (whole channels) and ``dropblock``
    :class:`dropkit.DropBlock2d` (square blocks of edge ``strength``, clipped to the map).
    ``batchnorm`` / ``dropout_bn`` put a ``BatchNorm2d`` before the ReLU / after ``drop``;
    ``gaussian_noise`` adds noise after ``drop``.

``rnn`` (sequences ``(T, F)``)
    One :class:`dropkit.LSTM` per width in ``hidden`` (batch first), the last time step's
    output, ``Dropout(p) → Linear``. Arms: ``variational``: :class:`dropkit.LockedDropout(p)`
    (one mask per sequence, shared over time) on the inputs and on every LSTM's output sequence
    instead of the plain dropout; ``recurrent_dropout``: ``LSTM(recurrent_dropout=p)`` (Gal &
    Ghahramani's mask on ``h_{t−1}``) instead of the plain dropout; ``gaussian_noise`` adds
    noise to the last hidden state.

``input_p`` puts ``Dropout(input_p)`` on the raw inputs of every kind. Arms that do not apply to
a kind raise ``ValueError``. The builders read what the entries do to the module (BatchNorm's
place, the layer that applies ``p``, noise, concrete dropout) from
:func:`dropkit.lab.plan.effects.run_effects`, where each arm's declared effect is applied, not
from the entries' names.

Initialization: weights come from ``generator`` (a ``torch.Generator`` seeded with
``config.seed`` when none is given), so a run's initial weights are a function of its seed:
Glorot-uniform kernels (Linear and Conv2d, Keras' default), zero biases, and the LSTM's
``U(−1/√H, 1/√H)``; the plain MLP draws exactly what :mod:`dropkit.lab.train.stacked` draws.

Reference:
    Li, Chen, Hu & Yang, "Understanding the Disharmony between Dropout and Batch Normalization
    by Variance Shift", CVPR 2019. https://arxiv.org/abs/1801.05134
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dropkit._validation import check_generator, check_nonnegative
from dropkit.concrete import ConcreteDropout
from dropkit.lab.plan.arms import entry_regularizer, module_entries
from dropkit.lab.plan.config import RunConfig
from dropkit.lab.plan.data import Dataset
from dropkit.lab.plan.effects import RunEffects, run_effects
from dropkit.layers import DropBlock2d, Dropout, LockedDropout, SpatialDropout2d
from dropkit.recurrent import LSTM
from dropkit.surgery import find_dropout

__all__ = [
    "GaussianNoise",
    "LSTMStack",
    "build_model",
    "constrained_layers",
    "hidden_dropout",
    "load_linear_weights",
    "penalized_weights",
]


class GaussianNoise(nn.Module):
    """Additive Gaussian noise in training: ``y = x + σ·ε``, ``ε ~ N(0, 1)``; identity in eval.

    Args:
        sigma: the standard deviation ``σ >= 0``.
        generator: ``torch.Generator`` to draw ``ε`` from; the global RNG when None.

    Shape:
        Any; the output has the input's shape.
    """

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sigma = check_nonnegative(sigma, "sigma")
        check_generator(generator)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.sigma == 0.0:
            return x
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        return x + self.sigma * noise

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"


class LSTMStack(nn.Module):
    """Stacked :class:`dropkit.LSTM` layers over ``(N, T, F)``; returns the last step ``(N, H)``.

    Args:
        input_size: features ``F`` per time step.
        hidden: hidden size of each layer, bottom first.
        recurrent_dropout: Gal & Ghahramani's rate on ``h_{t−1}`` in every layer.
        locked_p: rate of a :class:`dropkit.LockedDropout` on every layer's output sequence
            (0: none).
        generator: draws the masks; the global RNG when None.
    """

    def __init__(
        self,
        input_size: int,
        hidden: Sequence[int],
        *,
        recurrent_dropout: float = 0.0,
        locked_p: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [input_size, *hidden]
        self.layers = nn.ModuleList(
            LSTM(i, o, recurrent_dropout=recurrent_dropout, generator=generator)
            for i, o in itertools.pairwise(sizes)
        )
        self.dropouts = nn.ModuleList(
            LockedDropout(locked_p, generator=generator) for _ in hidden if locked_p > 0
        )

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x, _ = layer(x)
            if self.dropouts:
                x = self.dropouts[index](x)
        return x[:, -1]


def _glorot_(weight: Tensor, generator: torch.Generator) -> None:
    """Keras' Glorot-uniform: ``U(±√(6/(fan_in + fan_out)))``, fans times the kernel area.

    A Linear weight ``(out, in)`` is drawn in Keras' ``(in, out)`` layout and transposed, so
    the numbers match :mod:`dropkit.lab.train.stacked` draw for draw.
    """
    out_features, in_features = weight.shape[:2]
    area = math.prod(weight.shape[2:])
    limit = math.sqrt(6.0 / ((in_features + out_features) * area))
    with torch.no_grad():
        if weight.ndim == 2:
            drawn = torch.empty(in_features, out_features).uniform_(
                -limit, limit, generator=generator
            )
            weight.copy_(drawn.T)
        else:
            weight.copy_(torch.empty(weight.shape).uniform_(-limit, limit, generator=generator))


def _initialize(module: nn.Module, generator: torch.Generator) -> None:
    """Every layer's weights from ``generator``, in module order (see the module docstring)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                _glorot_(layer.weight, generator)
                if layer.bias is not None:
                    layer.bias.zero_()
            elif isinstance(layer, LSTM):
                bound = 1.0 / math.sqrt(layer.hidden_size)
                for weight in layer.parameters():
                    weight.uniform_(-bound, bound, generator=generator)


def _check_arms(config: RunConfig) -> None:
    """The config's regularizer entries, each checked against its model kind (registry).

    Raises:
        ValueError: an unknown entry, one that does not apply to the kind, or two entries that
            both say how the hidden rate is applied (e.g. ``batchnorm`` and ``dropout_bn``).
    """
    kind = config.model.kind
    rate_entries = []
    for name, _ in config.regularizers:
        regularizer = entry_regularizer(name)
        if kind not in regularizer.kinds:
            raise ValueError(
                f"regularizer {name!r} does not apply to a {kind} model "
                f"(it applies to: {', '.join(regularizer.kinds)})"
            )
        if regularizer.applies_rate and name in module_entries(kind):
            rate_entries.append(name)
    if len(rate_entries) > 1:
        raise ValueError(
            f"regularizers {' and '.join(map(repr, rate_entries))} each say how the dropout "
            "rate is applied; pick one"
        )


def _outputs(data: Dataset) -> int:
    """Output width: one logit for two classes, one value for regression, else a logit per
    class (:attr:`Dataset.n_outputs`)."""
    return data.n_outputs


def _input_layers(
    config: RunConfig, data: Dataset, generator: torch.Generator | None
) -> list[nn.Module]:
    layers: list[nn.Module] = []
    if config.model.kind != "mlp":
        shape = data.input_shape
        expected = 3 if config.model.kind == "cnn" else 2
        if shape is None or len(shape) != expected:
            what = "images (C, H, W)" if config.model.kind == "cnn" else "sequences (T, F)"
            raise ValueError(
                f"a {config.model.kind} model needs {what}, but data set {data.name!r} has "
                f"input_shape {shape!r}"
            )
        layers.append(nn.Unflatten(1, shape))
    if config.input_p > 0:
        layers.append(Dropout(config.input_p, generator=generator))
    return layers


def _mlp(
    config: RunConfig, data: Dataset, effects: RunEffects, generator: torch.Generator | None
) -> nn.Sequential:
    layers = _input_layers(config, data, generator)
    widths = [data.n_features, *config.model.hidden]
    concrete = effects.concrete is not None
    weight_reg, _ = ConcreteDropout.regularizers(max(1, len(data.y_train)))

    def linear(n_in: int, n_out: int, after_hidden: bool) -> nn.Module:
        """A Linear, whose input a learned-rate dropout drops when it follows a hidden layer."""
        layer = nn.Linear(n_in, n_out)
        if effects.concrete is None or not after_hidden:
            return layer
        return ConcreteDropout(
            layer,
            init_p=config.p if 0.0 < config.p < 1.0 else 0.1,
            weight_regularizer=weight_reg,
            dropout_regularizer=effects.concrete,
            generator=generator,
        )

    for index, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(linear(n_in, n_out, index > 0))
        dropout = None if concrete else Dropout(config.p, generator=generator)
        _activated(layers, n_out, effects, nn.BatchNorm1d, dropout, generator)
    layers.append(linear(widths[-1], _outputs(data), True))
    return nn.Sequential(*layers)


def _activated(
    layers: list[nn.Module],
    width: int,
    effects: RunEffects,
    norm: Callable[[int], nn.Module],
    dropout: nn.Module | None,
    generator: torch.Generator | None,
) -> None:
    """Append what follows a hidden layer of ``width`` units: BatchNorm (``norm``) before or
    after the dropout as the arm says, ReLU, ``dropout`` (None: none), Gaussian noise."""
    if effects.batchnorm == "after_layer":
        layers.append(norm(width))
    layers.append(nn.ReLU())
    if dropout is not None:
        layers.append(dropout)
    if effects.batchnorm == "after_dropout":
        layers.append(norm(width))
    if effects.noise is not None:
        layers.append(GaussianNoise(effects.noise, generator=generator))


def _cnn(
    config: RunConfig, data: Dataset, effects: RunEffects, generator: torch.Generator | None
) -> nn.Sequential:
    layers = _input_layers(config, data, generator)
    assert data.input_shape is not None
    channels, height, width = data.input_shape
    for out in config.model.hidden:
        layers.append(nn.Conv2d(channels, out, 3, padding=1))
        dropout: nn.Module
        if effects.dropout_layer == "spatial_dropout":
            dropout = SpatialDropout2d(config.p, generator=generator)
        elif effects.dropout_layer == "dropblock":
            assert effects.block_size is not None
            dropout = DropBlock2d(config.p, block_size=effects.block_size, generator=generator)
        else:
            dropout = Dropout(config.p, generator=generator)
        _activated(layers, out, effects, nn.BatchNorm2d, dropout, generator)
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    layers += [
        nn.Flatten(),
        Dropout(config.p, generator=generator),
        nn.Linear(channels * height * width, _outputs(data)),
    ]
    return nn.Sequential(*layers)


def _rnn(
    config: RunConfig, data: Dataset, effects: RunEffects, generator: torch.Generator | None
) -> nn.Sequential:
    layers = _input_layers(config, data, generator)
    assert data.input_shape is not None
    variational = effects.dropout_layer == "locked_dropout"
    recurrent = effects.dropout_layer == "recurrent_dropout"
    if variational:
        layers.append(LockedDropout(config.p, generator=generator))
    layers.append(
        LSTMStack(
            data.input_shape[1],
            config.model.hidden,
            recurrent_dropout=config.p if recurrent else 0.0,
            locked_p=config.p if variational else 0.0,
            generator=generator,
        )
    )
    if not (variational or recurrent):
        layers.append(Dropout(config.p, generator=generator))
    if effects.noise is not None:
        layers.append(GaussianNoise(effects.noise, generator=generator))
    layers.append(nn.Linear(config.model.hidden[-1], _outputs(data)))
    return nn.Sequential(*layers)


def build_model(
    config: RunConfig, data: Dataset, *, generator: torch.Generator | None = None
) -> nn.Module:
    """The network of ``config`` for ``data`` (see the module docstring for each kind and arm).

    Args:
        config: the run; ``config.model`` picks the kind and widths, ``p``/``input_p`` the
            rates, ``regularizers`` the module arms.
        data: the data set: its ``n_features``, ``n_classes`` and ``input_shape``.
        generator: draws the initial weights and, held by every dropout layer, the masks. None:
            weights from a generator seeded with ``config.seed``, masks from the global RNG.

    Returns:
        An ``nn.Sequential`` in training mode: ``(N, n_features)`` rows → logits ``(N, 1)``
        (two classes) or ``(N, n_classes)``.

    Raises:
        ValueError: an arm that does not apply to the kind, or data of the wrong shape.
    """
    _check_arms(config)
    builder = {"mlp": _mlp, "cnn": _cnn, "rnn": _rnn}[config.model.kind]
    model = builder(config, data, run_effects(config), generator)
    init = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    _initialize(model, init)
    return model


def load_linear_weights(module: nn.Module, pairs: Sequence[tuple[Tensor, Tensor]]) -> nn.Module:
    """Set the ``nn.Linear`` layers of ``module``, in module order, from ``(weight, bias)`` pairs.

    Args:
        module: e.g. the plain MLP :func:`build_model` builds.
        pairs: one ``(weight (out, in), bias (out,))`` per Linear layer, any float dtype/device.

    Returns:
        ``module``, changed in place.

    Raises:
        ValueError: the number of pairs or a shape does not match.
    """
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(pairs) != len(linears):
        raise ValueError(
            f"`pairs` must hold one (weight, bias) per Linear layer: the module has "
            f"{len(linears)}, got {len(pairs)}"
        )
    with torch.no_grad():
        for index, (layer, (weight, bias)) in enumerate(zip(linears, pairs, strict=True)):
            for name, target, value in (
                ("weight", layer.weight, weight),
                ("bias", layer.bias, bias),
            ):
                if target is None:
                    raise ValueError(f"Linear layer {index} has no {name}")
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(
                        f"pairs[{index}] {name} must have shape {tuple(target.shape)}, "
                        f"got {tuple(value.shape)}"
                    )
                target.copy_(value)
    return module


def constrained_layers(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The hidden layers that the max-norm constraint bounds: every Linear and Conv2d but the
    output layer (the last Linear), as in the batched trainer."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[:-1]


def penalized_weights(model: nn.Module) -> list[Tensor]:
    """The weights the ``l1``/``l2`` penalties act on: the kernels of every Linear and Conv2d
    (output layer included) and the LSTM's ``weight_ih``/``weight_hh``; no biases, no
    BatchNorm or ConcreteDropout parameters."""
    weights: list[Tensor] = []
    for layer in model.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            weights.append(layer.weight)
        elif isinstance(layer, LSTM):
            weights += [w for name, w in layer.named_parameters() if name.startswith("weight")]
    return weights


def hidden_dropout(model: nn.Module, config: RunConfig) -> list[nn.Module]:
    """The dropout modules of a :func:`build_model` network that use the hidden rate ``p``:
    all of them but the input dropout (``Dropout(input_p)``, the first module after the
    reshape). These are what the ``early_dropout`` / ``late_dropout`` arms switch."""
    found = [module for _, module in find_dropout(model)]
    if config.input_p > 0 and isinstance(model, nn.Sequential):
        children = [m for m in model.children() if not isinstance(m, nn.Unflatten)]
        if children and type(children[0]) is Dropout:
            found = [m for m in found if m is not children[0]]
    return found
