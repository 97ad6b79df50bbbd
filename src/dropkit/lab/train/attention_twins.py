"""Batchable twins of attention modules: their dropout on attention weights made counter-based.

Scaled dot-product attention (Vaswani et al. 2017, "Attention is all you need") computes, per
head, ``A = softmax(Q·Kᵀ/√d + M)`` over the keys (``M`` an additive mask: 0 where a query may
attend, −∞ or the dtype's lowest value where it may not) and returns ``A·V``; multi-head
attention projects the input to ``H`` heads of size ``d`` and the concatenated heads back.
Attention dropout drops weights of ``A``: ``A·D/(1 − p)`` for a Bernoulli keep mask ``D``.
The modules that apply it from a float rate in their own code (``nn.MultiheadAttention``,
Hugging Face's attention functions) draw ``D`` from torch's RNG and cannot take a per-run
rate, so the batched trainer (:mod:`dropkit.lab.train.vmapped`) would train them run by run.

A *twin* is the same module rewritten in place so that ``D`` comes from a
:class:`~dropkit.lab.train.counter_masks.CounterDropout` (a hash of the run's seed, the step,
the layer and the element; its rate a buffer, read from the original float rate when the twin
is made; created on the module's device, in its training mode): the same parameters and
buffers under the same names (the ``CounterDropout`` buffers are non-persistent, so
``state_dict`` keys are unchanged), the same outputs in evaluation mode and in training mode at
``p = 0``, and nothing that ``torch.vmap(randomness="error")`` or ``torch.compile`` refuses: no
torch RNG, no ``.item()``, no branch on tensor values, none of torch's fused fast paths (which
have no batching rules), no tensor kept as a plain attribute. Modules are rewritten whatever
their rate (0 included), so runs at different rates keep one structure, and their ``repr``
does not show the seed.

Covered by :func:`rewrite_attention`:

- ``nn.MultiheadAttention`` (exactly that class) becomes :class:`MultiheadAttentionTwin`: an
  explicit computation of torch's (projections, heads, scaled scores, masks, softmax, the
  counter dropout, the weighted sum, ``out_proj``) for batch-first or not, unbatched inputs,
  separate ``kdim``/``vdim`` projections, with or without biases, ``add_bias_kv`` and
  ``add_zero_attn``, bool or float ``attn_mask`` (2-D or per head) and ``key_padding_mask``,
  ``is_causal`` (torch then applies a causal mask in place of ``attn_mask`` when no weights
  are asked for and no padding mask is given, as here), and ``need_weights`` /
  ``average_attn_weights`` (the weights after dropout, as torch's).
- ``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder`` and ``nn.TransformerDecoder``
  become :class:`TransformerEncoderLayerTwin`, :class:`TransformerEncoderTwin` and
  :class:`TransformerDecoderTwin`, whose forward always takes the standard path: never
  ``torch._transformer_encoder_layer_fwd``, nested tensors, or the value comparison that
  detects a causal mask (``is_causal=None`` applies the mask given, which a causal hint would
  only compute faster). ``nn.TransformerDecoderLayer`` and ``nn.Transformer`` have no fast
  path of their own. (In evaluation mode without gradients, torch's encoder with a padding
  mask goes through nested tensors and returns zeros at padded positions; the twin returns
  the standard path's values there. Unpadded positions agree.)
- Hugging Face attention (transformers 5): a module whose class (read from its source) calls
  an attention function ``f(self, q, k, v, mask, dropout=…)`` with ``dropout=`` a child's rate
  (``self.dropout.p``, BERT; ``self.attn_dropout.p``, GPT-2) keeps that child (made a
  ``CounterDropout`` if it is still a dropout module) and records its name; one that passes a
  float attribute read nowhere else in its code (``self.attention_dropout``, ViT) gets a
  ``CounterDropout`` child under that attribute's name instead of the float. The model's
  configs then switch to the attention implementation :data:`ATTENTION_IMPLEMENTATION`:
  :func:`counter_attention`, eager attention (grouped-query, soft-capping, position bias and
  attention sinks included) with the module's counter dropout, and a mask function that
  always materializes the mask (transformers' ``sdpa`` and ``eager`` masks may skip
  themselves after reading the padding mask's values, which ``vmap`` cannot do).
  transformers is imported only for a model that holds modules of it.

Token embeddings: ``nn.Embedding(padding_idx=i)`` keeps row ``i`` out of the gradient, but
``vmap``'s rule for it does so for the first run of a batch only when each run has its own
rows (torch 2.13): :func:`rewrite_embeddings` makes such modules :class:`EmbeddingTwin`, which
detaches that row itself (the same forward; no ``max_norm``, whose in-place renormalization
``vmap`` cannot batch either: those are left alone).

Left to the batched trainer's fallback (their float rates still listed by
:func:`dropkit.find_dropout_sites`): subclasses of ``nn.MultiheadAttention`` (their own
``forward`` may differ), attention modules of other libraries, and Hugging Face modules whose
rate is also read elsewhere in their code or whose source cannot be read (a float rate that
reaches :func:`counter_attention` is applied with torch's RNG, as eager attention does: the
fallback's run-by-run training). Subclasses of the ``nn.Transformer*`` classes keep their
``forward``: their attention modules become twins, but torch's fast path may still run in
evaluation mode, which ``vmap`` refuses (the trainer then trains run by run).
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import math
import numbers
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dropkit._float_dropout import self_attribute
from dropkit.lab.train.counter_masks import CounterDropout, counter_module

__all__ = [
    "ATTENTION_IMPLEMENTATION",
    "EmbeddingTwin",
    "MultiheadAttentionTwin",
    "TransformerDecoderTwin",
    "TransformerEncoderLayerTwin",
    "TransformerEncoderTwin",
    "counter_attention",
    "register_attention",
    "rewrite_attention",
    "rewrite_embeddings",
]

ATTENTION_IMPLEMENTATION = "dropkit_counter"
"""The name under which :func:`counter_attention` (and its mask function) is registered in
transformers' ``AttentionInterface`` (``config._attn_implementation``)."""

_PROBS_CHILD = "_dropkit_probs_dropout"
"""Instance attribute of a Hugging Face attention module: the name of its child
``CounterDropout`` whose ``p`` it passes as ``dropout=``."""


def _joined(counter: CounterDropout, owner: nn.Module) -> CounterDropout:
    """``counter`` on the device of ``owner``'s first tensor, in its training mode."""
    counter.train(owner.training)
    for tensor in itertools.chain(owner.parameters(), owner.buffers()):
        return counter.to(tensor.device)
    return counter


def _counter(p: float, seed: int, layer: int, owner: nn.Module) -> CounterDropout:
    """A ``CounterDropout`` for the attention weights of ``owner``."""
    return _joined(CounterDropout(p, seed, layer, name=type(owner).__name__), owner)


def _additive(mask: Tensor | None, dtype: torch.dtype, name: str) -> Tensor | None:
    """A bool mask (True: may not attend) as 0/−∞ of ``dtype``; a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"only bool and floating types of {name} are supported, got {mask.dtype}")
    return mask


def _pad_key(mask: Tensor | None) -> Tensor | None:
    """``mask`` with one more key column that every query may attend (0)."""
    return None if mask is None else F.pad(mask, (0, 1))


# --- nn.MultiheadAttention ----------------------------------------------------------------------


class MultiheadAttentionTwin(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with its attention-weight dropout counter-based.

    Made from a module by :meth:`rewrite` (the class is swapped in place: parameter names and
    ``isinstance`` checks hold); ``attention_dropout`` is the
    :class:`~dropkit.lab.train.counter_masks.CounterDropout` at the module's ``dropout`` rate.
    ``forward`` takes torch's arguments and returns what torch's does:
    ``(out, weights)``, ``out`` ``(N, L, E)`` (batch first), ``(L, N, E)`` or ``(L, E)``
    unbatched, ``weights`` ``(N, L, S)`` averaged over heads, ``(N, H, L, S)`` per head, or
    None without ``need_weights``.
    """

    attention_dropout: CounterDropout

    @classmethod
    def rewrite(
        cls, module: nn.MultiheadAttention, seed: int, layer: int
    ) -> MultiheadAttentionTwin:
        """``module`` (exactly an ``nn.MultiheadAttention``) as its twin, in place."""
        if type(module) is not nn.MultiheadAttention:
            raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
        counter = _counter(float(module.dropout), seed, layer, module)
        module.__class__ = cls
        module.add_module("attention_dropout", counter)
        return cast(MultiheadAttentionTwin, module)

    def _projections(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, ...]:
        """q ``(N, L, E)``, k and v ``(N, S, E)`` from batch-first inputs."""
        bias = self.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
        if self._qkv_same_embed_dim:
            weight = self.in_proj_weight
            if query is key and key is value:  # self-attention: one product
                return tuple(F.linear(query, weight, bias).chunk(3, dim=-1))
            w_q, w_k, w_v = weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        same = query is key and key is value
        padding = _additive(key_padding_mask, query.dtype, "key_padding_mask")
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                "module method `generate_square_subsequent_mask` to create this mask."
            )
        # torch trusts the hint when it can hand it to its kernel: a causal mask replaces attn_mask
        causal = is_causal and padding is None and not need_weights
        mask = None if causal else _additive(attn_mask, query.dtype, "attn_mask")
        if not batched:  # (L, E) → (1, L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            padding = None if padding is None else padding.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) → (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if same:
            key = value = query
        q, k, v = self._projections(query, key, value)
        n, tgt_len, embed = q.shape
        heads, head_dim = self.num_heads, self.head_dim
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, embed)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, embed)], dim=1)
            mask, padding = _pad_key(mask), _pad_key(padding)
        q = q.view(n, tgt_len, heads, head_dim).transpose(1, 2)  # (N, H, L, d)
        k = k.view(n, -1, heads, head_dim).transpose(1, 2)  # (N, H, S, d)
        v = v.view(n, -1, heads, head_dim).transpose(1, 2)
        if self.add_zero_attn:
            zeros = k.new_zeros(n, heads, 1, head_dim)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            mask, padding = _pad_key(mask), _pad_key(padding)
        src_len = k.shape[2]
        if causal:
            allowed = torch.ones(tgt_len, src_len, dtype=torch.bool, device=q.device).tril()
            mask = torch.zeros(tgt_len, src_len, dtype=q.dtype, device=q.device).masked_fill(
                ~allowed, float("-inf")
            )
        elif mask is not None and mask.dim() == 3:  # (N·H, L, S)
            mask = mask.view(n, heads, tgt_len, src_len)
        if padding is not None:  # (N, S) → (N, 1, 1, S)
            padding = padding.view(n, 1, 1, src_len)
            mask = padding if mask is None else mask + padding
        scores = torch.matmul(q * math.sqrt(1.0 / float(head_dim)), k.transpose(-2, -1))
        if mask is not None:
            scores = scores + mask
        weights = self.attention_dropout(torch.softmax(scores, dim=-1))  # (N, H, L, S)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(n, tgt_len, embed)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, (weights if batched else weights.squeeze(0))


# --- the nn.Transformer family ------------------------------------------------------------------


class TransformerEncoderLayerTwin(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` that always takes the standard path (self-attention,
    feed-forward block, their dropouts and norms), never torch's fused evaluation kernel.
    ``src`` ``(N, L, E)`` (batch first), ``(L, N, E)`` or ``(L, E)``; returns its shape."""

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class TransformerEncoderTwin(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` without nested tensors and without reading ``mask``'s values
    to detect a causal mask (``is_causal=None`` applies ``mask`` as given)."""

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        output = src
        for layer in self.layers:
            output = layer(
                output,
                src_mask=mask,
                is_causal=bool(is_causal),
                src_key_padding_mask=src_key_padding_mask,
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoderTwin(nn.TransformerDecoder):
    """``nn.TransformerDecoder`` without reading ``tgt_mask``'s values to detect a causal mask
    (``tgt_is_causal=None`` applies ``tgt_mask`` as given)."""

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ) -> Tensor:
        output = tgt
        for layer in self.layers:
            output = layer(
                output,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=bool(tgt_is_causal),
                memory_is_causal=memory_is_causal,
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


_TORCH_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.TransformerEncoderLayer: TransformerEncoderLayerTwin,
    nn.TransformerEncoder: TransformerEncoderTwin,
    nn.TransformerDecoder: TransformerDecoderTwin,
}


# --- Hugging Face attention ---------------------------------------------------------------------


@dataclass(frozen=True)
class _DropoutArgument:
    """What a module class passes as ``dropout=`` to attention functions ``f(self, …)``.

    Attributes:
        children: ``<child>`` of ``self.<child>.p``, in order of appearance.
        rates: ``<name>`` of ``self.<name>`` (other than ``training``) read there.
        elsewhere: every ``self.<name>`` read outside such arguments.
    """

    children: tuple[str, ...]
    rates: tuple[str, ...]
    elsewhere: frozenset[str]


def _method_trees(klass: type) -> Iterator[ast.Module | None]:
    """The syntax trees of the functions ``klass`` defines (under their decorators; None for
    one whose source cannot be read), ``__init__`` aside."""
    for name, value in vars(klass).items():
        if name == "__init__":
            continue
        function = value.fget if isinstance(value, property) else value
        function = getattr(function, "__func__", function)  # static and class methods
        if not inspect.isfunction(function):
            continue
        try:
            source = inspect.getsource(inspect.unwrap(function))
            yield ast.parse(textwrap.dedent(source))
        except (OSError, TypeError, SyntaxError, ValueError):
            yield None


def _is_attention_call(node: ast.AST) -> bool:
    """A call ``f(self, …, dropout=…)``."""
    return (
        isinstance(node, ast.Call)
        and bool(node.args)
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id == "self"
        and any(keyword.arg == "dropout" for keyword in node.keywords)
    )


@functools.lru_cache(maxsize=256)
def _dropout_argument(cls: type) -> _DropoutArgument | None:
    """How the methods of ``cls`` (and its transformers bases) pass a rate to attention
    functions; None when none does or a method's source cannot be read."""
    children: dict[str, None] = {}
    rates: dict[str, None] = {}
    elsewhere: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("transformers."):
            continue
        for tree in _method_trees(klass):
            if tree is None:
                return None
            inside: set[int] = set()
            owners: set[int] = set()
            for call in ast.walk(tree):
                if not _is_attention_call(call):
                    continue
                for keyword in cast(ast.Call, call).keywords:
                    if keyword.arg != "dropout":
                        continue
                    for node in ast.walk(keyword.value):
                        inside.add(id(node))
                        if isinstance(node, ast.Attribute) and node.attr == "p":
                            owner = self_attribute(node.value)
                            if owner is not None:
                                children[owner] = None
                                owners.add(id(node.value))
                    for node in ast.walk(keyword.value):
                        name = self_attribute(node)
                        if name not in (None, "training") and id(node) not in owners:
                            rates[name] = None
            for node in ast.walk(tree):
                name = self_attribute(node)
                if name is not None and id(node) not in inside:
                    elsewhere.add(name)
    if not children and not rates:
        return None
    return _DropoutArgument(tuple(children), tuple(rates), frozenset(elsewhere))


def _rewrite_transformers_module(module: nn.Module, seed: int, layers: Iterator[int]) -> bool:
    """Give a Hugging Face attention module a counter dropout for its ``dropout=`` argument:
    record the name of the child whose ``p`` it passes (made a ``CounterDropout`` if it is
    still a dropout module), or replace a float rate read nowhere else by a ``CounterDropout``
    child of that name (the module then passes the child itself). Whether it did."""
    cls: type = type(module)
    usage = _dropout_argument(cls)
    if usage is None:
        return False
    rewrote = False
    for name in usage.children:
        child = module._modules.get(name)
        if child is None:
            continue
        if not isinstance(child, CounterDropout):
            counter = counter_module(child, seed, next(layers))
            if counter is None:
                continue
            module._modules[name] = _joined(counter, module)
        setattr(module, _PROBS_CHILD, name)
        rewrote = True
        break
    for name in usage.rates:
        value = module.__dict__.get(name)
        if name in usage.elsewhere or isinstance(value, bool):
            continue
        if not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
            continue
        del module.__dict__[name]
        module.add_module(name, _counter(float(value), seed, next(layers), module))
        rewrote = True
    return rewrote


def _probs_dropout(module: nn.Module, weights: Tensor, dropout: Any) -> Tensor:
    """The attention weights after the module's dropout: its ``CounterDropout`` when
    ``dropout`` is one or is the rate of one of its children, else torch's ``F.dropout`` at
    that rate (its RNG: what eager attention does; ``vmap`` refuses it)."""
    if isinstance(dropout, CounterDropout):
        return cast(Tensor, dropout(weights))
    if isinstance(dropout, Tensor):
        name = module.__dict__.get(_PROBS_CHILD)
        child = module._modules.get(name) if isinstance(name, str) else None
        if isinstance(child, CounterDropout):
            return cast(Tensor, child(weights))
        for candidate in module.children():
            if isinstance(candidate, CounterDropout) and candidate.p is dropout:
                return cast(Tensor, candidate(weights))
    rate = float(dropout)
    return F.dropout(weights, p=rate, training=module.training) if rate > 0 else weights


def counter_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: Any = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    softcap: float | None = None,
    position_bias: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Eager attention with the module's counter dropout, for transformers' interface.

    Args:
        module: the attention module (its ``CounterDropout`` applies the dropout).
        query: ``(B, H, Q, d)``.
        key: ``(B, H_kv, K, d)``; ``H_kv`` dividing ``H`` (grouped-query attention).
        value: ``(B, H_kv, K, d_v)``.
        attention_mask: ``(B or 1, 1 or H, Q, ≥ K)``, bool (True: attend) or additive
            float; None: all keys, or causal when ``is_causal`` (else the module's
            ``is_causal``) says so.
        dropout: the module's ``CounterDropout``, its rate tensor, or a float (torch's RNG).
        scaling: the factor of ``Q·Kᵀ`` (``d**-0.5`` when None).
        softcap: scores become ``softcap·tanh(scores/softcap)``.
        position_bias: added to the scores.
        kwargs: ``s_aux`` ``(H,)``: attention sinks, a logit per head that takes part in the
            softmax and is then dropped; the rest is ignored (as eager attention does).

    Returns:
        ``(out, weights)``: ``(B, Q, H, d_v)`` and ``(B, H, Q, K)`` (after dropout).
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias
    q_len, k_len = scores.shape[-2], scores.shape[-1]
    lowest = torch.finfo(scores.dtype).min
    if attention_mask is not None:
        mask = attention_mask[..., :k_len]
        boolean = mask.dtype == torch.bool
        scores = scores.masked_fill(~mask, lowest) if boolean else scores + mask
    else:
        causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", False))
        if causal and q_len > 1:
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~allowed, lowest)
    sinks = kwargs.get("s_aux")
    if sinks is not None:  # one more logit per head, dropped after the softmax
        sink = sinks.reshape(1, -1, 1, 1).expand(scores.shape[0], -1, q_len, 1)
        scores = torch.cat([scores, sink.to(scores.dtype)], dim=-1)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if sinks is not None:
        weights = weights[..., :k_len]
    weights = _probs_dropout(module, weights, dropout)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _counter_mask(**kwargs: Any) -> Tensor | None:
    """transformers' ``sdpa`` mask (bool, True: attend) never skipped by reading the padding
    mask's values; None only for full bidirectional attention without a padding mask."""
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    if kwargs.get("attention_mask") is None and (
        kwargs.get("mask_function") is bidirectional_mask_function
    ):
        return None
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    mask: Tensor | None = sdpa_mask(**kwargs)
    return mask


def register_attention() -> None:
    """Register :func:`counter_attention` and its mask function under
    :data:`ATTENTION_IMPLEMENTATION` in transformers (a model rewritten in another process
    needs this before its forward)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, counter_attention)
    AttentionMaskInterface.register(
        ATTENTION_IMPLEMENTATION, cast(Callable[..., Any], _counter_mask)
    )


@functools.cache
def _attention_interfaces() -> bool:
    """Whether the installed transformers registers attention and mask functions
    (``AttentionInterface`` and ``AttentionMaskInterface``); with a version without them, its
    modules are left as they are (their float rates then train run by run)."""
    try:
        from transformers import AttentionInterface, AttentionMaskInterface  # noqa: F401
    except ImportError:
        return False
    return True


def _use_counter_attention(model: nn.Module) -> None:
    """Switch the attention implementation of every config of ``model``'s modules."""
    register_attention()
    seen: set[int] = set()
    for module in model.modules():
        config = module.__dict__.get("config")
        if config is None or id(config) in seen or not hasattr(config, "_attn_implementation"):
            continue
        seen.add(id(config))
        config._attn_implementation = ATTENTION_IMPLEMENTATION


# --- the rewrite --------------------------------------------------------------------------------


def rewrite_attention(model: nn.Module, seed: int, layers: Iterator[int]) -> list[str]:
    """Make ``model``'s attention dropout counter-based, in place (see the module docstring).

    Args:
        model: the model; its covered modules become their twins.
        seed: the run's seed (of the new ``CounterDropout`` modules).
        layers: the layer numbers of the new ``CounterDropout`` modules, taken in order.

    Returns:
        The qualified names of the modules rewritten, in registration order.
    """
    rewritten: list[str] = []
    counted_attention = False  # a Hugging Face module now passes a counter rate
    for name, module in list(model.named_modules()):
        kind = type(module)
        if kind is nn.MultiheadAttention:
            MultiheadAttentionTwin.rewrite(cast(nn.MultiheadAttention, module), seed, next(layers))
            rewritten.append(name)
        elif kind in _TORCH_TWINS:
            module.__class__ = _TORCH_TWINS[kind]
            rewritten.append(name)
        elif (
            kind.__module__.startswith("transformers.")
            and _attention_interfaces()
            and _rewrite_transformers_module(module, seed, layers)
        ):
            rewritten.append(name)
            counted_attention = True
    if counted_attention:
        _use_counter_attention(model)
    return rewritten


class EmbeddingTwin(nn.Embedding):
    """``nn.Embedding`` with ``padding_idx`` whose padding row is detached in its own forward
    (``where(row == padding_idx, W.detach(), W)``, then ``F.embedding`` without
    ``padding_idx``): the same outputs, and no gradient reaches the row under ``vmap`` either."""

    def forward(self, input: Tensor) -> Tensor:
        weight = self.weight
        if self.padding_idx is not None:
            rows = torch.arange(self.num_embeddings, device=weight.device).unsqueeze(1)
            weight = torch.where(rows == self.padding_idx, weight.detach(), weight)
        return F.embedding(input, weight, None, None, 2.0, self.scale_grad_by_freq, self.sparse)


def rewrite_embeddings(model: nn.Module) -> list[str]:
    """Make every ``nn.Embedding`` (exactly that class) with a ``padding_idx`` and no
    ``max_norm`` of ``model`` an :class:`EmbeddingTwin`, in place; their qualified names."""
    rewritten = []
    for name, module in model.named_modules():
        kind = type(module)
        if kind is nn.Embedding and module.padding_idx is not None and module.max_norm is None:
            module.__class__ = EmbeddingTwin
            rewritten.append(name)
    return rewritten
