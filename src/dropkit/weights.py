"""Weight-level tools: the max-norm constraint and weight-level dropout.

* :func:`max_norm_` / :class:`MaxNorm`: the max-norm constraint, dropout's companion in the
  original paper (below).
* :class:`DropConnect` (a ``torch.nn.utils.parametrize`` parametrization),
  :class:`DropConnectLinear`, :class:`WeightDrop` (AWD-LSTM's DropConnect on an RNN's
  hidden-to-hidden weights) and :class:`EmbeddingDropout` (whole words dropped): dropout of
  weights rather than of activations. All keep the wrapped module's ``state_dict`` keys, so
  checkpoints load with or without them.

Srivastava et al. (2014, §5.1) bound the norm of each hidden unit's incoming weight vector:
after every optimizer step, ``w ← w · min(1, c / ‖w‖)``, with ``c`` usually 3–4. With a bound
on the weights a large learning rate cannot blow them up, which lets dropout nets train with
the large, decaying learning rates and high momentum the paper recommends.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, overload

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from dropkit._base import Rated
from dropkit._masks import keep_mask, masked_scale, trivial_result
from dropkit._validation import (
    check_dim,
    check_generator,
    check_instance,
    check_min_ndim,
    check_module,
    check_names,
    check_positive,
    check_probability,
)
from dropkit.functional import drop_connect

__all__ = [
    "DropConnect",
    "DropConnectLinear",
    "EmbeddingDropout",
    "MaxNorm",
    "WeightDrop",
    "max_norm_",
]

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


# --------------------------------------------------------------------------------------------
# Weight-level dropout: DropConnect, WeightDrop, embedding dropout
# --------------------------------------------------------------------------------------------


class _RateMixin(Rated, nn.Module):
    """A validated drop probability ``p``, an optional generator and ``extra_repr``."""

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---- DropConnect as a parametrization -------------------------------------------------------

_DROPCONNECT_HOOKS: weakref.WeakKeyDictionary[nn.Module, tuple[RemovableHandle, ...]] = (
    weakref.WeakKeyDictionary()
)


def _drop_connect_names(module: nn.Module) -> list[str]:
    """Names of ``module``'s tensors parametrized by DropConnect alone (one ``original``)."""
    if not parametrize.is_parametrized(module):
        return []
    lists = module.get_submodule("parametrizations")
    return [
        name
        for name, plist in lists.named_children()
        if len(plist) > 0  # type: ignore[arg-type]  # a ParametrizationList
        and all(isinstance(f, DropConnect) for f in plist.children())
        and isinstance(getattr(plist, "original", None), torch.Tensor)
    ]


def _drop_connect_state_dict_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """Save ``parametrizations.<name>.original`` under its plain name ``<name>``."""
    for name in _drop_connect_names(module):
        stored = f"{prefix}parametrizations.{name}.original"
        if stored in state_dict:
            state_dict[prefix + name] = state_dict.pop(stored)


def _drop_connect_load_hook(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load a plain ``<name>`` into ``parametrizations.<name>.original`` (either form loads)."""
    for name in _drop_connect_names(module):
        stored = f"{prefix}parametrizations.{name}.original"
        if prefix + name in state_dict and stored not in state_dict:
            state_dict[stored] = state_dict.pop(prefix + name)


def _apply_drop_connect(
    module: nn.Module,
    p: float = 0.5,
    names: str | Sequence[str] = ("weight",),
    *,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """See :meth:`DropConnect.apply`."""
    check_module(module, "module")
    p = check_probability(p)
    check_generator(generator)
    valid = [n for n, _ in module.named_parameters(recurse=False)]
    owner = f"{type(module).__name__} (parameters directly on it)"
    if parametrize.is_parametrized(module):
        already = [n for n in _drop_connect_names(module) if n in (names,) or n in names]
        if already:
            raise ValueError(
                f"`names` {already} of {type(module).__name__} already have DropConnect; "
                "call DropConnect.remove(module, names) first"
            )
    for name in check_names(names, valid, owner=owner):
        parametrize.register_parametrization(
            module, name, DropConnect(p, generator=generator), unsafe=True
        )  # unsafe=True: skip the trial forward, which would draw a mask (and consume RNG)
    if module not in _DROPCONNECT_HOOKS:
        _DROPCONNECT_HOOKS[module] = (
            module.register_state_dict_post_hook(_drop_connect_state_dict_hook),  # type: ignore[no-untyped-call]
            module.register_load_state_dict_pre_hook(_drop_connect_load_hook),  # type: ignore[no-untyped-call]
        )
    return module


class _ApplyDescriptor:
    """``DropConnect.apply(module, p, ...)`` on the class, ``nn.Module.apply(fn)`` on instances.

    A DropConnect instance is a submodule of the module it parametrizes, so
    ``model.apply(init_fn)`` reaches it and must find :meth:`torch.nn.Module.apply` there.
    """

    @overload
    def __get__(self, obj: None, owner: type) -> Callable[..., nn.Module]: ...
    @overload
    def __get__(self, obj: nn.Module, owner: type) -> Callable[..., nn.Module]: ...
    def __get__(self, obj: nn.Module | None, owner: type) -> Callable[..., nn.Module]:
        if obj is None:
            return _apply_drop_connect
        return functools.partial(nn.Module.apply, obj)


class DropConnect(_RateMixin):
    """DropConnect on a module's weights, as a ``torch.nn.utils.parametrize`` parametrization.

    In training, reading ``module.weight`` gives ``W ⊙ M / (1 - p)`` with
    ``M ~ Bernoulli(1 - p)`` per weight (Wan et al. 2013), so the layer computes
    ``y = (W ⊙ M) x / (1 - p)``; the gradient of a dropped weight is exactly 0. In eval mode it
    gives ``W`` itself: the inference rule is the full weights (inverted scaling keeps
    ``E[W ⊙ M / (1 - p)] = W``); the paper's Gaussian moment-matching inference is not
    implemented. The parametrization is a submodule of the layer, so ``model.eval()`` and
    ``model.train()`` reach it.

    **One mask per read of the weight.** ``parametrize`` recomputes ``module.weight`` on every
    access; a layer that reads its weight once per forward (``Linear``, ``ConvNd``) gets one mask
    per forward pass, shared by every sample of the batch (a per-batch mask). Code that reads
    the weight several times in one pass (tied weights, a custom forward) draws a new mask each
    time, unless it runs inside ``with torch.nn.utils.parametrize.cached():``. The exact,
    per-sample masks of the paper exist only in :class:`DropConnectLinear` (``per_sample=True``).

    **Checkpoints.** ``parametrize`` moves ``weight`` to ``parametrizations.weight.original``;
    :meth:`apply` adds ``state_dict`` hooks that save it as ``weight`` again and load either
    form, so the keys and the parameter count are those of the plain module (the keys' order
    may differ) and checkpoints load in both directions. ``module.parameters()`` yields the
    original tensor; optimizers and :func:`max_norm_` work on it. Like every parametrized
    module, the layer pickles only through ``state_dict`` (``copy.deepcopy`` works).

    When to use: fully connected layers that overfit, as a stronger alternative to dropout on
    their inputs; Wan et al. use ``p = 0.5``. For recurrent weights use :class:`WeightDrop`.

    Args:
        p: drop probability of each weight, in [0, 1].
        generator: source of randomness; the global RNG when None.

    Reference:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
        https://proceedings.mlr.press/v28/wan13.html

    Example::

        >>> layer = DropConnect.apply(nn.Linear(4, 3), 0.5)
        >>> sorted(layer.state_dict())
        ['bias', 'weight']
        >>> DropConnect.remove(layer).weight.requires_grad
        True
    """

    apply = _ApplyDescriptor()  # type: ignore[assignment]  # class: add DropConnect; instance: Module.apply

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self._init_rate(p, generator)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight ⊙ M / (1 - p)`` in training, ``weight`` itself in eval mode."""
        return drop_connect(weight, self.p, training=self.training, generator=self.generator)

    @staticmethod
    def remove(module: nn.Module, names: str | Sequence[str] = ("weight",)) -> nn.Module:
        """Remove DropConnect from ``names`` of ``module``; the raw weights become parameters again.

        Args:
            module: a module given to :meth:`apply`.
            names: the parametrized tensors to restore.

        Raises:
            ValueError: a name does not have DropConnect.
        """
        check_module(module, "module")
        valid = _drop_connect_names(module)
        owner = f"{type(module).__name__} (tensors with DropConnect)"
        for name in check_names(names, valid, owner=owner):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        if not _drop_connect_names(module) and module in _DROPCONNECT_HOOKS:
            for handle in _DROPCONNECT_HOOKS.pop(module):
                handle.remove()
        return module


# ---- DropConnectLinear ----------------------------------------------------------------------


class DropConnectLinear(Rated, nn.Linear):
    """A ``Linear`` layer with DropConnect on its weight: ``y = ((W ⊙ M) / (1 - p)) x + b``.

    ``M ~ Bernoulli(1 - p)`` per weight (Wan et al. 2013). With ``per_sample=False`` (default)
    one mask is drawn per forward pass and shared by the whole batch: cost of a ``Linear`` plus
    one mask of the weight's size. With ``per_sample=True`` every sample ``n`` gets its own
    ``M_n``, as in the paper: ``y_n = (W ⊙ M_n) x_n / (1 - p)``, computed as a batched product
    with ``N`` masked copies of the weight (memory ``N·out·in``; much slower, for small layers
    or exactness studies). The bias is not dropped. Eval mode uses the full weights (the
    paper's Gaussian moment-matching inference is not implemented). The ``state_dict`` is the
    one of ``nn.Linear`` (``weight``, ``bias``), so checkpoints load both ways.

    When to use: in place of ``Dropout`` + ``Linear`` on fully connected layers; Wan et al.
    use ``p = 0.5``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        p: drop probability of each weight, in [0, 1].
        bias: learn an additive bias.
        per_sample: one mask per sample (True) or per forward pass (False).
        generator: source of randomness; the global RNG when None.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Shape:
        Input ``(*, in_features)``; output ``(*, out_features)``. With ``per_sample=True`` the
        first axis of an input of 2 or more dimensions is the sample axis; the other leading
        axes (e.g. time) share their sample's mask. A 1-D input is one sample.

    Example::

        >>> layer = DropConnectLinear(4, 3, p=0.5)
        >>> layer(torch.randn(8, 4)).shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = 0.5,
        bias: bool = True,
        *,
        per_sample: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_rate(p, generator)
        check_instance(per_sample, bool, "per_sample", "a bool")
        self.per_sample = per_sample

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Apply the layer; see the class docstring for the masks."""
        if not (self.per_sample and self.training and 0.0 < self.p < 1.0 and input.ndim >= 2):
            weight = drop_connect(
                self.weight, self.p, training=self.training, generator=self.generator
            )
            return F.linear(input, weight, self.bias)
        n = input.shape[0]
        check_generator(self.generator, self.weight)
        keep = keep_mask(self.weight, self.p, (n, *self.weight.shape), self.generator)
        weights = masked_scale(self.weight, keep, 1.0 / (1.0 - self.p))  # (N, out, in)
        rows = input.reshape(n, -1, self.in_features)  # (N, K, in)
        out = torch.bmm(rows, weights.transpose(1, 2)).reshape(*input.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        items = [super().extra_repr(), f"p={self.p}"]
        return ", ".join(items + (["per_sample=True"] if self.per_sample else []))


# ---- Wrappers whose state_dict is the wrapped module's --------------------------------------


def _hoist_state_dict_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """Save ``<prefix><inner>.<key>`` as ``<prefix><key>``: the wrapper adds no key level."""
    inner = prefix + type(module)._wrapped + "."  # type: ignore[attr-defined]
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _sink_load_hook(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load ``<prefix><key>`` into ``<prefix><inner>.<key>``; keys already nested are kept."""
    inner = prefix + type(module)._wrapped + "."  # type: ignore[attr-defined]
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


class _TransparentWrapper(_RateMixin):
    """A module around one submodule whose ``state_dict`` keys are the submodule's own."""

    _wrapped: ClassVar[str]

    def _make_transparent(self) -> None:
        self.register_state_dict_post_hook(_hoist_state_dict_hook)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_sink_load_hook)  # type: ignore[no-untyped-call]


class WeightDrop(_TransparentWrapper):
    """DropConnect on the hidden-to-hidden weights of an ``nn.LSTM``/``GRU``/``RNN`` (AWD-LSTM).

    Each forward pass in training draws one mask ``M ~ Bernoulli(1 - p)`` per named weight and
    runs the RNN with ``W_hh ⊙ M / (1 - p)`` at every time step and for every sequence of the
    batch (Merity et al. 2017). Dropping recurrent *weights* instead of the hidden state leaves
    the fast fused RNN kernels usable. Eval mode runs the RNN with its raw weights.

    The dropped weights are passed with :func:`torch.func.functional_call`, so the RNN's
    parameters are never deleted or re-registered (which is what makes other implementations
    warn on every call and break across PyTorch versions); the module pickles and deep-copies.

    **Checkpoints.** The RNN is the submodule ``rnn`` (``named_parameters`` shows
    ``rnn.weight_hh_l0``), but ``state_dict`` hooks remove that level: the keys are exactly the
    plain RNN's (``weight_ih_l0``, ``weight_hh_l0``, ...), so a checkpoint of the plain RNN loads
    into the wrapper, the wrapper's into the plain RNN, and ``model.lstm = WeightDrop(model.lstm,
    0.5)`` keeps ``model``'s keys. Checkpoints with the ``rnn.`` level also load.

    When to use: recurrent language models and other LSTMs that overfit; AWD-LSTM uses
    ``p = 0.5`` on ``weight_hh``, together with embedding dropout (:class:`EmbeddingDropout`,
    0.1) and locked dropout between layers.

    Args:
        rnn: an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``.
        p: drop probability of each named weight, in [0, 1].
        names: the RNN parameters to drop, e.g. ``("weight_hh_l0", "weight_hh_l1")``.
        generator: source of randomness; the global RNG when None.

    Raises:
        TypeError: ``rnn`` is not a ``torch.nn.RNNBase``.
        ValueError: a name is not a parameter of ``rnn`` (the message lists the valid ones).

    Reference:
        Merity, Keskar & Socher, "Regularizing and Optimizing LSTM Language Models", ICLR 2018.
        https://arxiv.org/abs/1708.02182

    Example::

        >>> lstm = WeightDrop(nn.LSTM(4, 8, batch_first=True), 0.5)
        >>> output, (h, c) = lstm(torch.randn(2, 5, 4))
        >>> output.shape
        torch.Size([2, 5, 8])
    """

    _wrapped = "rnn"
    rnn: nn.RNNBase

    def __init__(
        self,
        rnn: nn.RNNBase,
        p: float = 0.5,
        names: str | Sequence[str] = ("weight_hh_l0",),
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_instance(rnn, nn.RNNBase, "rnn", "a torch.nn.RNNBase (nn.LSTM, nn.GRU, nn.RNN)")
        self._init_rate(p, generator)
        valid = [n for n, _ in rnn.named_parameters(recurse=False)]
        self.names = check_names(names, valid, owner=type(rnn).__name__)
        self.rnn = rnn
        self._make_transparent()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the RNN with freshly dropped weights (training) or its raw weights (eval)."""
        if not self.training or self.p == 0.0:
            return self.rnn(*args, **kwargs)
        dropped = {
            name: drop_connect(
                self.rnn.get_parameter(name), self.p, training=True, generator=self.generator
            )
            for name in self.names
        }
        return torch.func.functional_call(self.rnn, dropped, args, kwargs)

    def extra_repr(self) -> str:
        return f"p={self.p}, names={self.names}"


class EmbeddingDropout(_TransparentWrapper):
    """Drop whole words: zero rows of an embedding matrix with probability ``p`` (Gal 2016).

    In training, one ``m_v ~ Bernoulli(1 - p)`` per vocabulary entry (a mask of shape
    ``(num_embeddings, 1)``) gives ``E' = E ⊙ m / (1 - p)``, and the lookup reads ``E'``: a
    word that is dropped is dropped everywhere it occurs in the batch, and a kept one is
    scaled by ``1 / (1 - p)``. One mask per forward pass. Eval mode is the plain lookup.
    The embedding's ``padding_idx``, ``max_norm`` (applied to the stored weight first, as
    ``nn.Embedding`` does), ``norm_type`` and ``scale_grad_by_freq`` are respected;
    ``sparse=True`` is not supported in training (the mask makes the gradient dense).

    Like :class:`WeightDrop`, the ``state_dict`` keys are the embedding's own (``weight``).

    When to use: language models, where dropping word types regularizes more than dropping
    embedding coordinates; AWD-LSTM uses ``p = 0.1``.

    Args:
        embedding: the ``nn.Embedding`` to wrap.
        p: drop probability of each word (row), in [0, 1].
        generator: source of randomness; the global RNG when None.

    Reference:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
        Networks", NeurIPS 2016. https://arxiv.org/abs/1512.05287

    Example::

        >>> embed = EmbeddingDropout(nn.Embedding(10, 3), 0.1)
        >>> embed(torch.tensor([[1, 2, 1]])).shape
        torch.Size([1, 3, 3])
    """

    _wrapped = "embedding"
    embedding: nn.Embedding

    def __init__(
        self, embedding: nn.Embedding, p: float = 0.1, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        check_instance(embedding, nn.Embedding, "embedding", "a torch.nn.Embedding")
        self._init_rate(p, generator)
        self.embedding = embedding
        self._make_transparent()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Look up ``input`` in the row-dropped embedding matrix (training) or the plain one."""
        emb = self.embedding
        if not self.training or self.p == 0.0:
            lookup: torch.Tensor = emb(input)
            return lookup
        if emb.sparse:
            raise ValueError(
                "EmbeddingDropout does not support nn.Embedding(sparse=True) in training: "
                "the row mask makes the gradient dense; use sparse=False"
            )
        check_generator(self.generator, emb.weight)
        check_min_ndim(input, 0, "EmbeddingDropout", "(*) indices")
        if emb.max_norm is not None:  # what F.embedding does, on the stored weight
            with torch.no_grad():
                torch.embedding_renorm_(emb.weight, input.contiguous(), emb.max_norm, emb.norm_type)
        weight = trivial_result(emb.weight, self.p, True)
        if weight is None:
            keep = keep_mask(emb.weight, self.p, (emb.num_embeddings, 1), self.generator)
            weight = masked_scale(emb.weight, keep, 1.0 / (1.0 - self.p))
        return F.embedding(
            input, weight, emb.padding_idx, None, emb.norm_type, emb.scale_grad_by_freq, False
        )
