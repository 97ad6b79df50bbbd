"""Attention twins (``dropkit.lab.train.attention_twins``): attention modules rewritten so that
their dropout on attention weights is counter-based and ``vmap`` can batch them.

For each architecture (torch's ``nn.MultiheadAttention`` in several configurations, the
``nn.Transformer*`` family, and Hugging Face's BERT, GPT-2 and ViT built from configs): the
``state_dict`` keys are unchanged, no float rate is left, evaluation outputs equal the
original's (with and without gradients, where torch's fast paths trigger; eager and ``sdpa``
for Hugging Face), training outputs at rate 0 equal the original's, and three stacked copies
with their own rates and seeds under ``vmap(randomness="error")`` give each copy's outputs and
gradients alone. End to end, the batched trainer trains such models batched with the results
of each run alone.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

import dropkit
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.data import Dataset
from dropkit.lab.train.attention_twins import (
    ATTENTION_IMPLEMENTATION,
    MultiheadAttentionTwin,
    TransformerEncoderLayerTwin,
    TransformerEncoderTwin,
    rewrite_attention,
)
from dropkit.lab.train.counter_masks import CounterDropout, counter_module, key_keep_mask
from dropkit.lab.train.vmapped import train_custom
from test_lab_vmapped import Factory, images, tokens  # the shared builders

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
ATOL = 1e-5
E = 8  # embedding width of the torch models


def counter_swapped(model: nn.Module, seed: int = 5) -> list[str]:
    """What the batched trainer does to a run's model: every dropout module with a counter
    equivalent becomes a ``CounterDropout`` (layers 1, 2, …), then the attention twins (the
    layers after). The names :func:`rewrite_attention` rewrote."""
    layers = itertools.count(1)
    device = next(model.parameters()).device
    replacements = {}
    for site in dropkit.find_dropout_sites(model):
        if site.is_module:
            counter = counter_module(site.module, seed, next(layers))
            if counter is not None:
                replacements[id(site.module)] = counter.to(device)
    for parent in model.modules():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]
    return rewrite_attention(model, seed, layers)


def counters(model: nn.Module) -> list[CounterDropout]:
    return [m for m in model.modules() if isinstance(m, CounterDropout)]


def set_run(model: nn.Module, p: float, seed: int, step: int) -> None:
    """A run's rate, seed and step in every ``CounterDropout`` of ``model``."""
    for counter in counters(model):
        counter.p.fill_(p)
        counter.seed.fill_(seed)
        counter.step = step


def float_rates(model: nn.Module) -> list[tuple[str, float]]:
    return [(s.name, s.p) for s in dropkit.find_dropout_sites(model) if not s.is_module]


def hf_implementations(model: nn.Module) -> list[str | None]:
    """``["eager", "sdpa"]`` for a model of transformers, ``[None]`` otherwise."""
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        return ["eager", "sdpa"]
    return [None]


def set_implementation(model: nn.Module, implementation: str | None) -> None:
    if implementation is None:
        return
    for module in model.modules():
        config = module.__dict__.get("config")
        if config is not None:
            config._attn_implementation = implementation


# --- architectures -------------------------------------------------------------------------------


def lengths_mask(x: Tensor, dim: int = -1) -> Tensor:
    """Padding (True) where a sequence's first feature is above 1, its first key never."""
    padded = x.select(dim, 0) > 1.0
    first = torch.arange(padded.shape[-1], device=x.device) == 0
    return padded & ~first


class CrossAttention(nn.Module):
    """Batch-first cross-attention with separate key/value widths, a bool attention mask, a
    padding mask from the data and the averaged weights in the output."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(E, 2, dropout=p, kdim=6, vdim=5, batch_first=True)

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        rows, keys = torch.arange(4, device=x.device), torch.arange(5, device=x.device)
        blocked = (rows[:, None] + keys[None, :]) % 4 == 3  # (L, S)
        out, weights = self.attention(x, k, v, key_padding_mask=lengths_mask(k), attn_mask=blocked)
        return torch.cat([out, weights], -1)


class SequenceFirst(nn.Module):
    """Sequence-first self-attention without biases, with ``add_bias_kv``, ``add_zero_attn``,
    a float attention mask and per-head weights."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(
            E, 2, dropout=p, bias=False, add_bias_kv=True, add_zero_attn=True
        )

    def forward(self, x: Tensor) -> Tensor:  # (L, N, E)
        positions = torch.arange(4, device=x.device)
        distance = (positions[:, None] - positions[None, :]).abs().float()
        out, weights = self.attention(x, x, x, attn_mask=-0.5 * distance, need_weights=True,
                                      average_attn_weights=False)  # fmt: skip
        return out.transpose(0, 1) + weights.mean((1, 3))[..., None]


class Unbatched(nn.Module):
    """Unbatched causal self-attention (the ``is_causal`` hint, no weights)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(E, 2, dropout=p)

    def forward(self, x: Tensor) -> Tensor:  # (L, E)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[0], device=x.device)
        out: Tensor = self.attention(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]
        return out


class Encoder(nn.Module):
    """Batch-first encoder with a causal mask: torch's fused layer in evaluation mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=p, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        out: Tensor = self.encoder(x, mask=mask)
        return out


class NormFirstEncoder(nn.Module):
    """Sequence-first, norm-first, GELU encoder with a padding mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=p, activation="gelu", norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:  # (L, N, E)
        out: Tensor = self.encoder(x, src_key_padding_mask=lengths_mask(x.transpose(0, 1)))
        return out


class Seq2Seq(nn.Module):
    """``nn.Transformer``: a causal target mask, a memory padding mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.transformer = nn.Transformer(E, 2, 1, 1, 16, dropout=p, batch_first=True)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        out: Tensor = self.transformer(
            src, tgt, tgt_mask=mask, memory_key_padding_mask=lengths_mask(src)
        )
        return out


class Bert(nn.Module):
    """BERT for classification on token ids, with an attention mask (id 0 pads; no
    ``padding_idx``, see :class:`IdsBert`)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            vocab_size=100, max_position_embeddings=64, hidden_dropout_prob=p,
            attention_probs_dropout_prob=p, pad_token_id=None,
        )  # fmt: skip
        self.model = BertForSequenceClassification(config)

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.model(ids, attention_mask=(ids != 0).long()).logits
        return out


class Gpt2(nn.Module):
    """GPT-2 language model on token ids (causal), with an attention mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_embd=64, n_layer=2, n_head=2, vocab_size=100, n_positions=64, attn_pdrop=p,
            resid_pdrop=p, embd_pdrop=p, bos_token_id=0, eos_token_id=0,
            tie_word_embeddings=False,
        )  # fmt: skip
        self.model = GPT2LMHeadModel(config)

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.model(ids, attention_mask=(ids != 0).long()).logits
        return out


class Vit(nn.Module):
    """ViT classifier on 1×6×6 images (its attention rate a float attribute)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            image_size=6, patch_size=3, num_channels=1, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=p,
            attention_probs_dropout_prob=p, num_labels=3,
        )  # fmt: skip
        self.model = ViTForImageClassification(config)

    def forward(self, pixels: Tensor) -> Tensor:
        out: Tensor = self.model(pixels).logits
        return out


def ids(g: torch.Generator) -> tuple[Tensor, ...]:
    tokens = torch.randint(1, 100, (3, 6), generator=g)
    tokens[0, 4:] = 0
    return (tokens,)


@dataclass(frozen=True)
class Arch:
    make: Callable[[float], nn.Module]
    inputs: Callable[[torch.Generator], tuple[Tensor, ...]]


ARCHS = {
    "cross_attention": Arch(
        CrossAttention,
        lambda g: (
            torch.randn(3, 4, E, generator=g),
            torch.randn(3, 5, 6, generator=g),
            torch.randn(3, 5, 5, generator=g),
        ),
    ),
    "sequence_first": Arch(SequenceFirst, lambda g: (torch.randn(4, 3, E, generator=g),)),
    "unbatched": Arch(Unbatched, lambda g: (torch.randn(5, E, generator=g),)),
    "encoder": Arch(Encoder, lambda g: (torch.randn(3, 5, E, generator=g),)),
    "norm_first_encoder": Arch(NormFirstEncoder, lambda g: (torch.randn(5, 3, E, generator=g),)),
    "transformer": Arch(
        Seq2Seq, lambda g: (torch.randn(3, 5, E, generator=g), torch.randn(3, 4, E, generator=g))
    ),
    "bert": Arch(Bert, ids),
    "gpt2": Arch(Gpt2, ids),
    "vit": Arch(Vit, lambda g: (torch.randn(3, 1, 6, 6, generator=g),)),
}
HF = {"bert", "gpt2", "vit"}
NAMES = [pytest.param(n, marks=needs_transformers) if n in HF else n for n in ARCHS]


def built(name: str, p: float, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ARCHS[name].make(p)


def inputs_of(name: str, seed: int = 0) -> tuple[Tensor, ...]:
    return ARCHS[name].inputs(torch.Generator().manual_seed(seed))


# --- per architecture ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_kept_and_no_float_rate_left(name: str) -> None:
    original = built(name, 0.2)
    twin = copy.deepcopy(original)
    rewritten = counter_swapped(twin)
    assert rewritten
    assert list(twin.state_dict()) == list(original.state_dict())
    for key, value in original.state_dict().items():
        assert torch.equal(twin.state_dict()[key], value)
    assert not [rate for rate in float_rates(twin) if rate[1] > 0]
    assert all(float(c.p) == pytest.approx(0.2) for c in counters(twin))


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_outputs_equal_the_original(name: str) -> None:
    original = built(name, 0.3).eval()
    twin = copy.deepcopy(original)
    counter_swapped(twin)
    twin.eval()
    x = inputs_of(name)
    for implementation in hf_implementations(original):
        set_implementation(original, implementation)
        for grad in (True, False):  # without gradients, torch's fused paths
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(twin(*x), original(*x), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_training_outputs_at_rate_zero_equal_the_original(name: str) -> None:
    original = built(name, 0.0).train()
    twin = copy.deepcopy(original)
    counter_swapped(twin)
    twin.train()
    x = inputs_of(name)
    for implementation in hf_implementations(original):
        set_implementation(original, implementation)
        torch.testing.assert_close(twin(*x), original(*x), atol=ATOL, rtol=1e-5)


RATES = (0.0, 0.3, 0.6)


@pytest.mark.parametrize("name", NAMES)
def test_vmapped_runs_equal_each_run_alone(name: str) -> None:
    """Three copies with their own rate and seed, stacked: ``vmap(functional_call)`` over a
    meta-device template gives each copy's outputs (training and evaluation) and gradients."""
    model = built(name, 0.1)
    counter_swapped(model)
    runs = []
    for r, p in enumerate(RATES):
        run = copy.deepcopy(model)
        set_run(run, p, seed=10 + r, step=7)
        runs.append(run)
    params, buffers = stack_module_state(runs)
    template = copy.deepcopy(runs[0]).to("meta")
    per_run = [inputs_of(name, seed=r) for r in range(len(runs))]
    x = tuple(torch.stack(parts) for parts in zip(*per_run, strict=True))

    def call(p: dict[str, Tensor], b: dict[str, Tensor], *inputs: Tensor) -> Tensor:
        out: Tensor = functional_call(template, (p, b), inputs)
        return out

    def loss(p: dict[str, Tensor], b: dict[str, Tensor], *inputs: Tensor) -> Tensor:
        return call(p, b, *inputs).square().mean()

    for training in (True, False):
        template.train(training)
        out = torch.vmap(call, randomness="error")(params, buffers, *x)
        for run, inputs, got in zip(runs, per_run, out, strict=True):
            run.train(training)
            torch.testing.assert_close(got, run(*inputs), atol=ATOL, rtol=1e-5)
    template.train()

    def summed(p: dict[str, Tensor]) -> Tensor:  # as the trainer: one backward over the runs
        losses: Tensor = torch.vmap(loss, randomness="error")(p, buffers, *x)
        return losses.sum()

    grads = torch.func.grad(summed)(params)
    for r, (run, inputs) in enumerate(zip(runs, per_run, strict=True)):
        run.train().zero_grad()
        run(*inputs).square().mean().backward()
        for key, param in run.named_parameters():
            expected = torch.zeros_like(param) if param.grad is None else param.grad
            torch.testing.assert_close(grads[key][r], expected, atol=ATOL, rtol=1e-4)
    # the rates act: the same inputs at rate 0 and 0.6 differ in training mode
    runs[0].train()
    runs[2].train()
    assert not torch.allclose(runs[0](*per_run[0]), runs[2](*per_run[0]))


# --- nn.MultiheadAttention in detail ------------------------------------------------------------

MHA_SETTINGS = [  # batch_first, kdim/vdim, bias, add_bias_kv, add_zero_attn, unbatched
    (True, False, True, False, False, False),
    (False, False, True, False, False, False),
    (True, True, True, False, False, False),
    (False, True, False, False, False, False),
    (True, False, True, True, False, False),
    (False, False, False, False, True, False),
    (True, False, True, True, True, True),
    (False, True, True, False, True, True),
]


@pytest.mark.parametrize(
    ("batch_first", "separate", "bias", "bias_kv", "zero_attn", "unbatched"), MHA_SETTINGS
)
def test_multihead_attention_twin_matches_torch(
    batch_first: bool, separate: bool, bias: bool, bias_kv: bool, zero_attn: bool, unbatched: bool
) -> None:
    """Masks (bool, float, per head; padding), the causal hint, weights averaged or not,
    self-attention and not, in evaluation mode (with and without gradients) and in training
    mode at rate 0: the twin's outputs and weights are torch's."""
    widths = {"kdim": 6, "vdim": 5} if separate else {}
    original = nn.MultiheadAttention(
        E, 2, dropout=0.0, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
        batch_first=batch_first, **widths,
    )  # fmt: skip
    twin = copy.deepcopy(original)
    assert rewrite_attention(twin, 1, itertools.count(1)) == [""]
    assert isinstance(twin, MultiheadAttentionTwin) and isinstance(twin, nn.MultiheadAttention)
    g = torch.Generator().manual_seed(3)
    n, length = 2, 4

    def tensor(rows: int, width: int) -> Tensor:
        shape = (
            (rows, width) if unbatched else (n, rows, width) if batch_first else (rows, n, width)
        )
        return torch.randn(*shape, generator=g)

    q = tensor(length, E)
    k, v = (tensor(length, 6), tensor(length, 5)) if separate else (tensor(length, E),) * 2
    padding = torch.zeros((length,) if unbatched else (n, length), dtype=torch.bool)
    padding[..., -1] = True
    heads = 2 if unbatched else 2 * n
    masks: list[Tensor | None] = [
        None,
        torch.eye(length, dtype=torch.bool).roll(1, 1),
        torch.randn(length, length, generator=g),
        torch.randn(heads, length, length, generator=g),
    ]
    causal = nn.Transformer.generate_square_subsequent_mask(length)
    calls: list[dict[str, Any]] = [
        {"attn_mask": causal, "is_causal": True, "need_weights": False},
        {"attn_mask": causal, "is_causal": True, "need_weights": True},
        {"attn_mask": causal, "is_causal": True, "need_weights": False,
         "key_padding_mask": torch.zeros_like(padding, dtype=torch.float).masked_fill(padding, -1e9)},
    ]  # fmt: skip
    for mask, padded, (weights, average) in itertools.product(
        masks, (False, True), ((True, True), (True, False), (False, True))
    ):
        kpm = None
        if padded:  # of the mask's type (torch warns about mixed types)
            floating = mask is not None and mask.is_floating_point()
            kpm = padding.float().masked_fill(padding, float("-inf")) if floating else padding
        call = {"attn_mask": mask, "key_padding_mask": kpm}
        calls.append(call | {"need_weights": weights, "average_attn_weights": average})
    arguments = [(q, k, v)] if separate else [(q, k, v), (q, q, q)]
    for (query, key, value), call in itertools.product(arguments, calls):
        for training, grad in ((False, True), (False, False), (True, True)):
            original.train(training)
            twin.train(training)
            with torch.set_grad_enabled(grad):
                expected = original(query, key, value, **call)
                got = twin(query, key, value, **call)
            torch.testing.assert_close(got[0], expected[0], atol=ATOL, rtol=1e-5)
            if expected[1] is None:
                assert got[1] is None
            else:
                torch.testing.assert_close(got[1], expected[1], atol=ATOL, rtol=1e-5)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        twin(q, k, v, is_causal=True)


def test_multihead_attention_drops_the_weights_with_the_counter_mask() -> None:
    """In training mode the weights are the evaluation weights times the counter keep mask
    over ``1 − p`` (inverted dropout on the attention probabilities); the output is their
    weighted sum."""
    twin = nn.MultiheadAttention(E, 2, dropout=0.5, batch_first=True)
    rewrite_attention(twin, 4, itertools.count(3))
    counter = twin.attention_dropout
    assert (counter.layer, int(counter.seed), float(counter.p)) == (3, 4, 0.5)
    counter.step = 9
    x = torch.randn(2, 5, E)
    twin.eval()
    _, clean = twin(x, x, x, average_attn_weights=False)
    twin.train()
    out, dropped = twin(x, x, x, average_attn_weights=False)
    assert clean is not None and dropped is not None
    keep = key_keep_mask(counter.key, counter.p, tuple(clean.shape))
    assert 0 < keep.float().mean() < 1
    torch.testing.assert_close(dropped, torch.where(keep, clean / 0.5, 0.0))
    assert torch.equal(twin(x, x, x)[0], out)  # the same step: the same masks


def test_encoder_never_takes_torchs_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """In evaluation mode without gradients and with a padding mask torch's encoder takes
    nested tensors and fused kernels (no batching rules); the twin takes none of them, and
    agrees with torch at every unpadded position."""
    layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=0.1, batch_first=True)
    original = nn.TransformerEncoder(layer, 2).eval()
    twin = copy.deepcopy(original)
    rewrite_attention(twin, 1, itertools.count(1))
    assert isinstance(twin, TransformerEncoderTwin)
    assert all(isinstance(m, TransformerEncoderLayerTwin) for m in twin.layers)
    x = torch.randn(3, 5, E)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    with torch.no_grad(), pytest.warns(UserWarning, match="nested tensors is in prototype"):
        expected = original(x, src_key_padding_mask=padding)

    def refused(*args: object, **kwargs: object) -> Tensor:
        raise AssertionError("a fused fast path was taken")

    for op in ("_transformer_encoder_layer_fwd", "_native_multi_head_attention",
               "_nested_tensor_from_mask", "_nested_tensor_from_mask_left_aligned"):  # fmt: skip
        monkeypatch.setattr(torch, op, refused)
    with torch.no_grad():
        got = twin(x, src_key_padding_mask=padding)
        twin(x)
    torch.testing.assert_close(got[~padding], expected[~padding], atol=ATOL, rtol=1e-5)
    with pytest.raises(AssertionError, match="fast path was taken"), torch.no_grad():
        original(x)  # torch's own layer does take it


def test_twins_copy_move_and_print_without_their_seed() -> None:
    """``repr`` (part of the structure runs must share) does not show the seed; a twin
    survives ``copy.deepcopy``, the meta device and ``.to(dtype)``."""
    first, second = built("transformer", 0.2), built("transformer", 0.2)
    counter_swapped(first, seed=1)
    counter_swapped(second, seed=2)
    assert repr(first) == repr(second)
    assert "MultiheadAttentionTwin" in repr(first) and "CounterDropout" in repr(first)
    meta = copy.deepcopy(first).to("meta")
    assert all(t.device.type == "meta" for t in meta.state_dict().values())
    x = tuple(t.double() for t in inputs_of("transformer"))
    original = built("transformer", 0.2).double().eval()
    twin = copy.deepcopy(first).double().eval()
    torch.testing.assert_close(twin(*x), original(*x))


def test_rewriting_a_torch_model_does_not_import_transformers() -> None:
    code = (
        "import itertools, sys\n"
        "from torch import nn\n"
        "from dropkit.lab.train.attention_twins import rewrite_attention\n"
        "model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1)\n"
        "assert rewrite_attention(model, 0, itertools.count(1))\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_compiled_vmapped_gradients_equal_eager() -> None:
    """The twin traces as one graph (no graph break) inside ``torch.compile`` of the batched
    trainer's step (``grad_and_value`` of a ``vmap``-ped ``functional_call``)."""
    model = nn.TransformerEncoderLayer(E, 2, 16, dropout=0.3, batch_first=True)
    counter_swapped(model)
    runs = [copy.deepcopy(model) for _ in RATES]
    for r, (run, p) in enumerate(zip(runs, RATES, strict=True)):
        set_run(run, p, seed=r, step=2)
    params, buffers = stack_module_state(runs)
    template = copy.deepcopy(runs[0]).to("meta").train()
    x = torch.randn(len(runs), 3, 5, E)

    def loss(p: dict[str, Tensor], b: dict[str, Tensor], inputs: Tensor) -> Tensor:
        call = torch.vmap(
            lambda p, b, x: functional_call(template, (p, b), (x,)), randomness="error"
        )
        out: Tensor = call(p, b, inputs)
        return out.square().sum()

    eager = torch.func.grad_and_value(loss)(params, buffers, x)
    compiled = torch.compile(torch.func.grad_and_value(loss), backend="aot_eager", fullgraph=True)
    grads, value = compiled(params, buffers, x)
    torch.testing.assert_close(value, eager[1])
    for key, grad in grads.items():
        torch.testing.assert_close(grad, eager[0][key], atol=ATOL, rtol=1e-5)


# --- Hugging Face ------------------------------------------------------------------------------


@needs_transformers
def test_hugging_face_attention_goes_through_the_counter_attention() -> None:
    """BERT's and GPT-2's attention modules pass their child's rate (marked), ViT's its float
    rate (now a ``CounterDropout`` child of that name); the configs name dropkit's
    implementation."""
    bert = built("bert", 0.2)
    names = counter_swapped(bert)
    assert names == [f"model.bert.encoder.layer.{i}.attention.self" for i in range(2)]
    assert bert.model.config._attn_implementation == ATTENTION_IMPLEMENTATION
    vit = built("vit", 0.2)
    assert counter_swapped(vit) == ["model.vit.layers.0.attention"]
    attention = vit.model.vit.layers[0].attention
    assert isinstance(attention.attention_dropout, CounterDropout)
    assert float(attention.attention_dropout.p) == pytest.approx(0.2)
    gpt2 = built("gpt2", 0.2)
    assert counter_swapped(gpt2) == [f"model.transformer.h.{i}.attn" for i in range(2)]


@needs_transformers
def test_counter_attention_is_transformers_attention() -> None:
    """Against transformers' ``sdpa`` function: grouped-query heads, bool and float masks,
    a causal module without a mask, a position bias; soft-capping and attention sinks against
    their formulas; the counter dropout on the weights (as a module, as its rate tensor)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from dropkit.lab.train.attention_twins import counter_attention

    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 5, 8, generator=g)
    k, v = torch.randn(2, 2, 6, 8, generator=g), torch.randn(2, 2, 6, 8, generator=g)
    module = nn.Module()
    module.num_key_value_groups = 2
    allowed = torch.rand(2, 1, 5, 6, generator=g) > 0.3
    allowed[..., 0] = True
    bias = torch.randn(1, 4, 5, 6, generator=g)
    for mask, extra in [
        (None, {}),
        (allowed, {}),
        (torch.zeros(2, 1, 5, 6).masked_fill(~allowed, -1e4), {}),
        (None, {"position_bias": bias}),
        (allowed, {"position_bias": bias}),
    ]:
        expected, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3, is_causal=False,
                                             **extra)  # fmt: skip
        got, _ = counter_attention(module, q, k, v, mask, scaling=0.3, **extra)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    module.is_causal = True
    expected, _ = sdpa_attention_forward(module, q, k, v, None)
    torch.testing.assert_close(counter_attention(module, q, k, v, None)[0], expected)
    del module.is_causal
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 8**-0.5
    capped = torch.softmax(2.0 * torch.tanh(scores / 2.0), -1)
    torch.testing.assert_close(counter_attention(module, q, k, v, None, softcap=2.0)[1], capped)
    sinks = torch.randn(4, generator=g)
    logits = torch.cat([scores, sinks.view(1, 4, 1, 1).expand(2, 4, 5, 1)], -1)
    sunk = torch.softmax(logits, -1)[..., :-1]
    torch.testing.assert_close(counter_attention(module, q, k, v, None, s_aux=sinks)[1], sunk)
    plain = torch.softmax(scores, -1)
    module.dropout = CounterDropout(0.4, seed=3, layer=2)
    module.dropout.step = 5
    keep = key_keep_mask(module.dropout.key, module.dropout.p, tuple(plain.shape))
    dropped = torch.where(keep, plain / 0.6, 0.0)
    for rate in (module.dropout, module.dropout.p):
        torch.testing.assert_close(counter_attention(module, q, k, v, None, rate)[1], dropped)
    torch.testing.assert_close(counter_attention(module, q, k, v, None, 0.0)[1], plain)


@needs_transformers
def test_hugging_face_rate_read_elsewhere_is_left_to_the_fallback() -> None:
    """A float rate that the module also applies itself stays a float (its site is still
    listed), and nothing is switched."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_dropout = 0.2
            self.proj = nn.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            x = F.dropout(x, self.attention_dropout, self.training)
            out: Tensor = self.attend(self, x, dropout=self.attention_dropout)
            return out

        def attend(self, module: nn.Module, x: Tensor, dropout: float) -> Tensor:
            out: Tensor = self.proj(x)
            return out

    Attention.__module__ = "transformers.models.example"
    model = nn.Sequential(Attention())
    assert rewrite_attention(model, 0, itertools.count(1)) == []
    assert float_rates(model) == [("0.attention_dropout", 0.2)]


def test_a_transformers_without_attention_interfaces_keeps_its_modules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An older transformers (no attention and mask interfaces to register with): its modules
    are left as they are, their float rates listed, so those runs fall back, not fail."""
    import dropkit.lab.train.attention_twins as twins

    pytest.importorskip("transformers")
    monkeypatch.setattr(twins, "_attention_interfaces", lambda: False)
    model = Vit(0.2)
    assert rewrite_attention(model, 0, itertools.count(1)) == []
    assert [rate for _, rate in float_rates(model)] == [0.2]


# --- end to end through the batched trainer ------------------------------------------------------

MODEL = ModelSpec(hidden=(), kind="custom", name="test", fingerprint="0123456789abcdef")


def table(n: int = 60) -> Dataset:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n + 30, 5)).astype(np.float32)
    score = x[:, 0] + 0.5 * x[:, 1] ** 2 - x[:, 2]
    y = np.searchsorted(np.quantile(score, [1 / 3, 2 / 3]), score).astype(np.int64)
    names = tuple(f"f{i}" for i in range(5))
    return Dataset("table", x[:n], y[:n], x[n:], y[n:], 3, names)


def configs() -> list[RunConfig]:
    train = TrainSpec(epochs=2, batch_size=16)
    settings = [{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}, {"p": 0.0, "seed": 3}]
    return [RunConfig(DataSpec("table"), MODEL, train, **s) for s in settings]  # type: ignore[arg-type]


def without_key_bias(name: str, tensor: Tensor) -> Tensor:
    """A trained weight without the bias of an attention's key projection. That bias moves
    every score of a query by the same amount, which the softmax ignores: its gradient is 0 in
    exact arithmetic, and the computed one is rounding noise that Adam (eps 1e-7) turns into
    steps of up to ~0.1·lr, so two computations of the same run leave it at different values
    (to ~1e-4) without any effect on the outputs."""
    if name.endswith("in_proj_bias"):  # (query, key, value) biases
        query, _, value = tensor.chunk(3)
        return torch.cat([query, value])
    if name.endswith(("key.bias", "k_proj.bias")):
        return tensor[:0]
    return tensor


def assert_same_runs(source: Factory, data: Dataset, runs: list[RunConfig]) -> None:
    """Trained together with ``batched=True`` (one vmapped group: no fallback) == each run
    trained alone: final weights, curves and info."""
    lines: list[str] = []
    together = train_custom(source, data, runs, batched=True, log=lines.append)
    assert not any("run by run" in line for line in lines), lines
    assert together.states is not None and together.info is not None
    for i, config in enumerate(runs):
        alone = train_custom(source, data, [config])
        assert alone.states is not None and alone.info is not None
        assert together.states[i].keys() == alone.states[0].keys()
        for key, value in alone.states[0].items():
            mine, theirs = (
                without_key_bias(key, together.states[i][key]),
                without_key_bias(key, value),
            )
            torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
        for name, curve in alone.curves.items():
            np.testing.assert_allclose(together.curves[name][i], curve[0], atol=1e-4, rtol=0)
        for key, number in alone.info[0].items():
            assert together.info[i][key] == pytest.approx(number, abs=1e-4, nan_ok=True)


class TokenEncoder(nn.Module):
    """Each of the 5 features a token: a transformer encoder, mean-pooled."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Linear(1, E)
        layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=p, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(E, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(self.embed(x.unsqueeze(-1))).mean(1))
        return out


class TokenSeq2Seq(nn.Module):
    """``nn.Transformer`` from the 5 feature tokens to the first 3, causal target mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Linear(1, E)
        self.transformer = nn.Transformer(E, 2, 1, 1, 16, dropout=p, batch_first=True)
        self.head = nn.Linear(E, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x.unsqueeze(-1))
        mask = nn.Transformer.generate_square_subsequent_mask(3, device=x.device)
        out: Tensor = self.head(self.transformer(tokens, tokens[:, :3], tgt_mask=mask).mean(1))
        return out


class TokenBert(nn.Module):
    """BERT on float inputs (``inputs_embeds``: the 5 features as tokens)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            vocab_size=10, max_position_embeddings=8, hidden_dropout_prob=p,
            attention_probs_dropout_prob=p,
        )  # fmt: skip
        self.embed = nn.Linear(1, 16)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.bert(inputs_embeds=self.embed(x.unsqueeze(-1))).last_hidden_state
        out: Tensor = self.head(hidden.mean(1))
        return out


@pytest.mark.parametrize("make", [TokenEncoder, TokenSeq2Seq])
def test_trainer_batches_transformers_with_the_results_of_each_run_alone(
    make: Callable[[float], nn.Module],
) -> None:
    assert_same_runs(Factory(make), table(), configs())


@needs_transformers
def test_trainer_batches_hugging_face_models_with_the_results_of_each_run_alone() -> None:
    assert_same_runs(Factory(TokenBert), table(), configs())
    assert_same_runs(Factory(Vit), images(72), configs())


class IdsBert(nn.Module):
    """BERT for classification on int64 token ids, padding masked. (Its word embedding has no
    ``padding_idx``: torch's batching rule of ``embedding`` keeps the padding row out of the
    gradient for the first stacked weight only, so batched runs would differ from alone.)"""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            vocab_size=12, max_position_embeddings=8, hidden_dropout_prob=p,
            attention_probs_dropout_prob=p, pad_token_id=None,
        )  # fmt: skip
        self.model = BertForSequenceClassification(config)

    def forward(self, ids: Tensor) -> Tensor:
        assert ids.dtype == torch.int64, ids.dtype
        out: Tensor = self.model(ids, attention_mask=(ids != 0).long()).logits
        return out


class IdsGpt2(nn.Module):
    """GPT-2 (causal) on int64 token ids, padding masked, mean-pooled into two logits."""

    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        config = GPT2Config(
            n_embd=16, n_layer=1, n_head=2, vocab_size=12, n_positions=8, attn_pdrop=p,
            resid_pdrop=p, embd_pdrop=p, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        self.model = GPT2Model(config)
        self.head = nn.Linear(16, 2)

    def forward(self, ids: Tensor) -> Tensor:
        assert ids.dtype == torch.int64, ids.dtype
        hidden = self.model(ids, attention_mask=(ids != 0).long()).last_hidden_state
        out: Tensor = self.head(hidden.mean(1))
        return out


@needs_transformers
@pytest.mark.parametrize("make", [IdsBert, IdsGpt2])
def test_trainer_batches_hugging_face_models_on_token_ids(
    make: Callable[[float], nn.Module],
) -> None:
    train = TrainSpec(epochs=2, batch_size=16)
    settings = [{"p": 0.2, "seed": 1}, {"p": 0.4, "seed": 2}, {"p": 0.0, "seed": 3}]
    runs = [RunConfig(DataSpec("tokens"), MODEL, train, **s) for s in settings]  # type: ignore[arg-type]
    assert_same_runs(Factory(make), tokens(60), runs)


class Attention(nn.Module):
    """A bare ``nn.MultiheadAttention`` with a float rate (it used to train run by run)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.embed = nn.Linear(1, E)
        self.attention = nn.MultiheadAttention(E, 2, dropout=p, batch_first=True)
        self.head = nn.Linear(E, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.unsqueeze(-1))
        h, _ = self.attention(h, h, h, need_weights=False)
        out: Tensor = self.head(h.mean(1))
        return out


@pytest.mark.parametrize("make", [Attention, TokenEncoder])
def test_attention_rates_no_longer_fall_back(make: Callable[[float], nn.Module]) -> None:
    lines: list[str] = []
    result = train_custom(Factory(make), table(), configs(), batched=True, log=lines.append)
    assert result.states is not None
    assert not any("run by run" in line or "torch's RNG" in line for line in lines), lines
    assert "3 runs in 1 group" in lines[0]


# --- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", NAMES)
def test_twins_on_cuda_equal_the_cpu(name: str) -> None:
    """Rewritten on the GPU (the counters follow the module) or moved there after: the
    evaluation outputs are the original's, the training outputs (the same counter masks on
    any device) the CPU's."""
    original = built(name, 0.3)
    cpu = copy.deepcopy(original)
    counter_swapped(cpu)
    on_gpu = copy.deepcopy(original).cuda()
    counter_swapped(on_gpu)
    moved = copy.deepcopy(cpu).cuda()
    x = inputs_of(name)
    xc = tuple(t.cuda() for t in x)
    original.cuda().eval()
    for twin in (on_gpu, moved):
        assert all(t.is_cuda for t in twin.state_dict(keep_vars=True).values())
        assert all(c.p.is_cuda and c.key.is_cuda for c in counters(twin))
        twin.eval()
        torch.testing.assert_close(twin(*xc), original(*xc), atol=1e-4, rtol=1e-4)
        set_run(twin, 0.3, seed=2, step=4)
        set_run(cpu, 0.3, seed=2, step=4)
        twin.train()
        cpu.train()
        torch.testing.assert_close(twin(*xc).cpu(), cpu(*x), atol=1e-4, rtol=1e-4)
