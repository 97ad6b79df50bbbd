"""Dropout layers: thin ``nn.Module`` wrappers around :mod:`dropkit.functional`.

Every layer stores its drop probability ``p`` (validated on every assignment, so
``layer.p = 30`` fails at once), an optional ``torch.Generator``, and follows
``model.train()`` / ``model.eval()`` through ``self.training``. The math lives in the
functional ops; the layers add the rank checks of their dimension suffix (``2d`` means an
``(N, C, H, W)`` input, nothing else) and ``extra_repr``.

Drop-in for ``torch.nn``: :class:`Dropout`, :class:`SpatialDropout1d`/``2d``/``3d``
(``torch.nn.Dropout1d``/``2d``/``3d``), :class:`AlphaDropout` and :class:`FeatureAlphaDropout`
take ``(p, inplace)`` positionally like their torch counterparts, and return outputs of the
same shape, dtype and memory layout. Deliberate differences: the default ``p`` follows the usual
rates (0.2 for spatial, 0.1 for alpha dropout; torch uses 0.5 everywhere); NaN and ``bool``
rates are refused; the spatial layers refuse an unbatched input instead of guessing its layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from dropkit import functional as DF
from dropkit._base import DropoutLayer
from dropkit._validation import (
    check_block_size,
    check_ndim,
    check_one_of,
    check_probability,
)

__all__ = [
    "AlphaDropout",
    "DropBlock2d",
    "DropBlock3d",
    "DropPath",
    "Dropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "LockedDropout",
    "SpatialDropout1d",
    "SpatialDropout2d",
    "SpatialDropout3d",
]


class Dropout(DropoutLayer):
    r"""Zero each element with probability ``p`` during training (Srivastava et al. 2014).

    Each step trains a different "thinned" network; the trained net approximates the average
    of all of them. With ``m ~ Bernoulli(1 - p)`` per element:

    * ``scaling="inverted"`` (default): training ``y = x·m / (1 - p)``, inference ``y = x``;
    * ``scaling="classic"`` (the paper's): training ``y = x·m``, inference ``y = (1 - p)·x``.

    In both, the training output's expectation equals the inference output. The factor is the
    *keep* probability ``1 - p``; it equals the drop probability only at ``p = 0.5``.

    When to use: after hidden dense layers (usual ``p`` 0.2–0.5, 0.5 in the paper), on the
    inputs (0.1–0.2), before the output layer (0.3–0.5); transformers 0.1. Never after the
    output layer. For convolutional maps prefer :class:`SpatialDropout2d` or
    :class:`DropBlock2d`; for SELU networks :class:`AlphaDropout`.

    Args:
        p: drop probability in [0, 1]. Default: 0.5.
        inplace: write the result into the input. Default: False.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.
        save_mask: keep the mask for the backward (1 byte per element, like
            ``torch.nn.Dropout``). False keeps no activation memory for the backward: it
            re-draws the identical mask from the generator state saved at the forward, at the
            cost of one more random draw. Default: True.

    Drop probabilities are resolved to ``2**-16`` (``|p_eff - p| <= 2**-17``, finer near 0
    and 1); kept units are scaled by exactly ``1 / (1 - p)``.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, same as the input.

    Reference:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
        Overfitting", JMLR 2014. https://jmlr.org/papers/v15/srivastava14a.html

    Example::

        >>> layer = Dropout(0.4)
        >>> y = layer(torch.ones(8, 500))        # about 40% zeros, the rest 1 / 0.6
        >>> layer.eval()(torch.ones(2)).tolist()  # inference: identity
        [1.0, 1.0]
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        scaling: str = "inverted",
        generator: torch.Generator | None = None,
        save_mask: bool = True,
    ) -> None:
        super().__init__(p, generator=generator)
        self.scaling = check_one_of(scaling, "scaling", DF.SCALINGS)
        self.inplace = bool(inplace)
        self.save_mask = bool(save_mask)

    @classmethod
    def from_keep_prob(cls, q: float, **kwargs: Any) -> Dropout:
        """Build from the *keep* probability ``q = 1 - p`` (the papers' "retain probability").

        ``p`` is ``1 - q`` rounded to 12 significant digits, so that a decimal keep probability
        gives the decimal drop probability exactly: ``Dropout.from_keep_prob(0.8).p == 0.2``
        (a plain ``1 - 0.8`` is ``0.19999999999999996``). The rounding moves ``p`` by at most
        ``5e-13`` relative, far below the mask's resolution.
        """
        q = check_probability(q, "q", meaning="keep")
        return cls(float(f"{1.0 - q:.12g}"), **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return DF.dropout(
            x,
            self.p,
            training=self.training,
            scaling=self.scaling,
            generator=self.generator,
            inplace=self.inplace,
            save_mask=self.save_mask,
        )

    def _extra_repr_items(self) -> list[str]:
        items = [] if self.scaling == "inverted" else [f"scaling={self.scaling!r}"]
        items += ["inplace=True"] if self.inplace else []
        return items + ([] if self.save_mask else ["save_mask=False"])


class _InplaceDropoutLayer(DropoutLayer):
    """A dropout layer with torch's ``(p, inplace)`` positional arguments."""

    def __init__(
        self, p: float, inplace: bool = False, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, generator=generator)
        self.inplace = bool(inplace)

    def _extra_repr_items(self) -> list[str]:
        return ["inplace=True"] if self.inplace else []


class _SpatialDropoutNd(_InplaceDropoutLayer):
    """Spatial dropout for inputs of exactly ``(N, C)`` plus ``_spatial_dims`` axes."""

    _spatial_dims: ClassVar[int]
    _layout: ClassVar[str]

    def __init__(
        self, p: float = 0.2, inplace: bool = False, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, inplace, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        rank = self._spatial_dims + 2
        torch_name = f"torch.nn.Dropout{self._spatial_dims}d"
        check_ndim(
            x,
            (rank,),
            name,
            self._layout,
            f"{name} drops whole channels of batched input and does not guess which axis is "
            f"the channel ({torch_name} would read a {rank - 1}-D input as one unbatched "
            f"sample; dropkit refuses it on purpose). For one unbatched sample use "
            f"layer(x.unsqueeze(0)).squeeze(0).",
        )
        return DF.spatial_dropout(
            x, self.p, training=self.training, generator=self.generator, inplace=self.inplace
        )


_SPATIAL_DOC = r"""Zero whole channels (feature maps) of a {d}-d input with probability ``p``.

    One ``m ~ Bernoulli(1 - p)`` per (sample, channel), broadcast over the {d} spatial axes, and
    inverted scaling: ``y[n, c] = x[n, c]·m[n, c] / (1 - p)``. Adjacent {unit} are strongly
    correlated, so element-wise dropout barely regularizes a convolutional net; dropping whole
    maps does (Tompson et al. 2015). Keras' ``SpatialDropout{d}D``, in PyTorch's layout.

    When to use: after convolutional layers, usually ``p`` 0.1–0.25 (default 0.2).

    Args:
        p: drop probability in [0, 1]. Default: 0.2.
        inplace: write the result into the input. Default: False.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: :math:`{shape}`. Exactly this rank: an unbatched input is refused instead of
          being reinterpreted (``torch.nn.Dropout{d}d`` accepts it as one sample, and
          ``torch.nn.functional.dropout2d`` treats a 3-D input as 1-d data, with only a
          warning); for one sample use ``layer(x.unsqueeze(0)).squeeze(0)``.
        - Output: :math:`{shape}`, same as the input.

    Reference:
        Tompson et al., "Efficient Object Localization Using Convolutional Networks",
        CVPR 2015. https://arxiv.org/abs/1411.4280

    Example::

        >>> y = {name}(0.2)(torch.randn({example}))
    """


class SpatialDropout1d(_SpatialDropoutNd):
    __doc__ = _SPATIAL_DOC.format(
        d=1, unit="time steps", shape="(N, C, L)", name="SpatialDropout1d", example="8, 16, 50"
    )
    _spatial_dims = 1
    _layout = "(N, C, L)"


class SpatialDropout2d(_SpatialDropoutNd):
    __doc__ = _SPATIAL_DOC.format(
        d=2, unit="pixels", shape="(N, C, H, W)", name="SpatialDropout2d", example="8, 16, 28, 28"
    )
    _spatial_dims = 2
    _layout = "(N, C, H, W)"


class SpatialDropout3d(_SpatialDropoutNd):
    __doc__ = _SPATIAL_DOC.format(
        d=3,
        unit="voxels",
        shape="(N, C, D, H, W)",
        name="SpatialDropout3d",
        example="2, 4, 8, 16, 16",
    )
    _spatial_dims = 3
    _layout = "(N, C, D, H, W)"


class LockedDropout(DropoutLayer):
    r"""Variational (locked) dropout: the same units dropped at every time step.

    One ``m ~ Bernoulli(1 - p)`` per (sequence, feature), shared over time, inverted scaling:
    ``y[n, t, f] = x[n, t, f]·m[n, f] / (1 - p)``. Gal & Ghahramani derive it as variational
    inference in RNNs; a fresh mask per step (plain dropout on a sequence) lets the network
    recover the dropped feature from neighbouring steps. Use it on an RNN's inputs and outputs
    (AWD-LSTM uses 0.4 on the embedding output, 0.25–0.4 between layers).

    Args:
        p: drop probability in [0, 1]. Default: 0.3.
        batch_first: True for ``(N, T, F)`` inputs, False for ``(T, N, F)``. Default: True.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: :math:`(N, T, *F)` if ``batch_first`` else :math:`(T, N, *F)`.
        - Output: same as the input.

    Reference:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
        Networks", NeurIPS 2016. https://arxiv.org/abs/1512.05287

    Example::

        >>> y = LockedDropout(0.3)(torch.randn(4, 35, 400))  # (batch, time, features)
    """

    def __init__(
        self,
        p: float = 0.3,
        *,
        batch_first: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator=generator)
        self.batch_first = bool(batch_first)

    def forward(self, x: Tensor) -> Tensor:
        return DF.locked_dropout(
            x,
            self.p,
            training=self.training,
            batch_first=self.batch_first,
            generator=self.generator,
        )

    def _extra_repr_items(self) -> list[str]:
        return [f"batch_first={self.batch_first}"]


class GaussianDropout(DropoutLayer):
    r"""Multiplicative Gaussian noise ``ε ~ N(1, p / (1 - p))`` (Srivastava et al. 2014, §10).

    ``y = x·ε``. The noise matches the mean and variance of inverted Bernoulli dropout's factor
    ``m / (1 - p)``, so ``E[y] = x``, but no unit is exactly zeroed; Srivastava et al. found it
    works as well as Bernoulli dropout or better. Inference is the identity. ``p = 1`` (unbounded
    noise variance) is defined as dropping everything: exact zeros.

    When to use: wherever Bernoulli dropout would go, same rates (hidden 0.2–0.5).

    Args:
        p: drop probability in [0, 1] whose variance the noise matches. Default: 0.5.
        generator: ``torch.Generator`` to draw noise from; the global RNG when None.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, same as the input.

    Reference:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
        Overfitting", JMLR 2014, section 10. https://jmlr.org/papers/v15/srivastava14a.html

    Example::

        >>> y = GaussianDropout(0.5)(torch.ones(4, 10))  # noise of std 1 around 1
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return DF.gaussian_dropout(x, self.p, training=self.training, generator=self.generator)


class AlphaDropout(_InplaceDropoutLayer):
    r"""Dropout that keeps a SELU network self-normalizing (Klambauer et al. 2017).

    Dropped units go to SELU's saturation value ``α' = -λα ≈ -1.7581`` and an affine map
    restores zero mean and unit variance: kept units give ``a·x + b``, dropped ones
    ``a·α' + b``, with ``a = ((1 - p)(1 + p·α'²))^(-1/2)`` and ``b = -a·α'·p``. Plain dropout
    in a SELU network changes the activations' variance and breaks the self-normalization.
    Inference is the identity.

    When to use: in SELU networks instead of :class:`Dropout`; the paper recommends ``p`` of
    0.05 or 0.1 (default 0.1).

    Args:
        p: drop probability in [0, 1]. Default: 0.1.
        inplace: write the result into the input. Default: False.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, same as the input.

    Reference:
        Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017.
        https://arxiv.org/abs/1706.02515

    Example::

        >>> net = nn.Sequential(nn.Linear(64, 64), nn.SELU(), AlphaDropout(0.1))
    """

    def __init__(
        self, p: float = 0.1, inplace: bool = False, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, inplace, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return DF.alpha_dropout(
            x, self.p, training=self.training, generator=self.generator, inplace=self.inplace
        )


class FeatureAlphaDropout(_InplaceDropoutLayer):
    r"""Alpha dropout of whole channels, for convolutional SELU networks.

    One draw per (sample, channel) as in :class:`SpatialDropout2d`, with the affine correction
    of :class:`AlphaDropout`: a dropped channel becomes the constant ``a·α' + b``.

    Args:
        p: drop probability in [0, 1]. Default: 0.1.
        inplace: write the result into the input. Default: False.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: :math:`(N, C, *)`, at least 2-D; axis 0 is the batch and axis 1 the channel
          (as in ``torch.nn.FeatureAlphaDropout``).
        - Output: same as the input.

    Reference:
        Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017.
        https://arxiv.org/abs/1706.02515

    Example::

        >>> y = FeatureAlphaDropout(0.1)(torch.randn(8, 16, 28, 28))
    """

    def __init__(
        self, p: float = 0.1, inplace: bool = False, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, inplace, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return DF.feature_alpha_dropout(
            x, self.p, training=self.training, generator=self.generator, inplace=self.inplace
        )


class DropPath(DropoutLayer):
    r"""Stochastic depth: drop a residual branch for whole samples (Huang et al. 2016).

    ``y[n] = x[n]·m[n] / (1 - p)`` with one ``m[n] ~ Bernoulli(1 - p)`` per sample. Put it on
    the residual branch, ``out = x + drop_path(block(x))``, so a dropped sample skips the block.
    Not to be confused with DropConnect, which drops individual weights (Wan et al. 2013).

    When to use: residual networks and transformers; rates usually grow linearly with depth
    from 0 to 0.1–0.3 at the last block.

    Args:
        p: drop probability in [0, 1]. Default: 0.1.
        scale_by_keep: divide kept samples by ``1 - p``. Default: True.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: :math:`(N, *)`.
        - Output: same as the input.

    Reference:
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
        https://arxiv.org/abs/1603.09382

    Example::

        >>> branch, drop = nn.Linear(32, 32), DropPath(0.1)
        >>> x = torch.randn(8, 32)
        >>> out = x + drop(branch(x))
    """

    def __init__(
        self,
        p: float = 0.1,
        *,
        scale_by_keep: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator=generator)
        self.scale_by_keep = bool(scale_by_keep)

    def forward(self, x: Tensor) -> Tensor:
        return DF.drop_path(
            x,
            self.p,
            training=self.training,
            scale_by_keep=self.scale_by_keep,
            generator=self.generator,
        )

    def _extra_repr_items(self) -> list[str]:
        return [] if self.scale_by_keep else ["scale_by_keep=False"]


class _DropBlockNd(DropoutLayer):
    """DropBlock for inputs of exactly ``(N, C)`` plus ``_spatial_dims`` axes."""

    _spatial_dims: ClassVar[int]
    _layout: ClassVar[str]

    def __init__(
        self,
        p: float = 0.1,
        block_size: int | Sequence[int] = 7,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator=generator)
        self.block_size = check_block_size(block_size, self._spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        name = type(self).__name__
        check_ndim(
            x,
            (self._spatial_dims + 2,),
            name,
            self._layout,
            "For one unbatched sample use x.unsqueeze(0).",
        )
        return DF.drop_block(
            x,
            self.p,
            block_size=self.block_size,
            training=self.training,
            generator=self.generator,
        )

    def _extra_repr_items(self) -> list[str]:
        size = self.block_size
        return [f"block_size={size[0] if len(set(size)) == 1 else size}"]


_DROPBLOCK_DOC = r"""Drop contiguous {what} of each feature map (Ghiasi et al. 2018).

    Block seeds are drawn at rate γ where a whole block fits, grown into ``block_size`` blocks
    and the kept units rescaled by ``numel / Σ mask``. Dropping contiguous regions removes
    information that neighbouring units would otherwise carry, which element-wise dropout
    does not. γ is calibrated so that the *realized* fraction of dropped units is ``p`` (the
    paper's formula and published implementations drop between 0.07 and 0.22 for ``p = 0.1``,
    block 7, 14x14 map). Blocks larger than the map are clipped to it.

    When to use: convolutional nets, on later stages; the paper uses ``p = 0.1`` (keep 0.9)
    with block size 7 on ResNet-50, often ramped up linearly from 0 during training.

    Args:
        p: fraction of units to drop, in [0, 1]. Default: 0.1.
        block_size: block edge, an int or one per spatial axis. Default: 7.
        generator: ``torch.Generator`` to draw masks from; the global RNG when None.

    Shape:
        - Input: :math:`{shape}`.
        - Output: :math:`{shape}`, same as the input.

    Reference:
        Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional networks",
        NeurIPS 2018. https://arxiv.org/abs/1810.12890

    Example::

        >>> y = {name}(0.1, block_size=3)(torch.randn({example}))
    """


class DropBlock2d(_DropBlockNd):
    __doc__ = _DROPBLOCK_DOC.format(
        what="square blocks", shape="(N, C, H, W)", name="DropBlock2d", example="8, 16, 14, 14"
    )
    _spatial_dims = 2
    _layout = "(N, C, H, W)"


class DropBlock3d(_DropBlockNd):
    __doc__ = _DROPBLOCK_DOC.format(
        what="cubic blocks", shape="(N, C, D, H, W)", name="DropBlock3d", example="2, 4, 8, 14, 14"
    )
    _spatial_dims = 3
    _layout = "(N, C, D, H, W)"
