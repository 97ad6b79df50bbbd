"""Every dropout of a real model is reached or reported.

torch's Transformer modules (whose eval-mode fast path skips dropout), attention blocks that
apply a float rate themselves (a timm-style ViT block written here), and Hugging Face models
built from small configs (nothing is downloaded): Monte Carlo passes differ,
``set_dropout(m, 0)`` makes training mode deterministic, and the eval output is the same after
every context exits. Dropout that cannot be reached is named by ``check_model``.

Spread tests: with a fixed seed, Monte Carlo samples of a network with sampled dropout differ
with probability 1 - (p² + (1-p)²)^n per pair of passes, n being the number of dropped units
(thousands here): "std > 0" is certain, not a tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dropkit
from dropkit.checks import Finding, check_model
from dropkit.surgery import DropoutSite, find_dropout_sites, set_dropout
from dropkit.uncertainty import mc_dropout, mc_predict

# --- helpers --------------------------------------------------------------------------------


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _spread(model: nn.Module, x: Tensor, n_samples: int = 6) -> float:
    pred = mc_predict(
        model, x, n_samples=n_samples, task="regression", generator=torch.Generator().manual_seed(3)
    )
    return float(pred.std.max())


def _train_passes_equal(model: nn.Module, x: Tensor) -> bool:
    before = _modes(model)
    model.train()
    with torch.no_grad():
        first, second = model(x), model(x)
    for module, training in zip(model.modules(), before, strict=True):
        module.training = training
    return torch.equal(first, second)


@contextmanager
def _eval_output_kept(model: nn.Module, x: Tensor) -> Iterator[None]:
    """The eval-mode output and every module's mode are the same after the body as before."""
    model.eval()
    with torch.no_grad():
        expected = model(x)
    modes = _modes(model)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    yield
    assert _modes(model) == modes
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def _checks(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def _exercise(model: nn.Module, x: Tensor) -> None:
    """The contract every model here meets: sampled, restored, silenced by set_dropout(m, 0)."""
    with _eval_output_kept(model, x):
        assert _spread(model, x) > 0
        with mc_dropout(model):
            pass
        with pytest.raises(RuntimeError, match="body failed"), mc_dropout(model):
            raise RuntimeError("body failed")
        assert check_model(model, x) == []
    assert all(site.sampled for site in find_dropout_sites(model))
    assert not _train_passes_equal(model, x)
    set_dropout(model, 0.0)
    assert all(site.p == 0.0 for site in find_dropout_sites(model))
    assert _train_passes_equal(model, x)
    assert _spread(model, x) == 0.0


# --- torch's Transformer modules ----------------------------------------------------------


class _SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` as a one-input module."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(16, 2, dropout=dropout, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.mha(x, x, x, need_weights=False)[0]  # type: ignore[no-any-return]


class _Seq2Seq(nn.Module):
    """``nn.Transformer`` with the input as source and target."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.Transformer(16, 2, 1, 1, 32, dropout=0.1, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.transformer(x, x)  # type: ignore[no-any-return]


def _encoder(batch_first: bool = True) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.1, batch_first=batch_first)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=batch_first)


TORCH_MODELS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("encoder-fast-path", _encoder, (3, 5, 32)),
    ("encoder-seq-first", lambda: _encoder(batch_first=False), (5, 3, 32)),
    ("multihead-attention", lambda: _SelfAttention(0.3), (3, 5, 16)),
    ("transformer", _Seq2Seq, (3, 5, 16)),
    ("lstm", lambda: nn.LSTM(8, 8, num_layers=2, dropout=0.3, batch_first=True), (3, 5, 8)),
]


@pytest.mark.parametrize(
    ("make", "shape"), [m[1:] for m in TORCH_MODELS], ids=[m[0] for m in TORCH_MODELS]
)
def test_torch_transformer_modules(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
    model = make()
    if isinstance(model, nn.LSTM):
        model = _First(model)
    _exercise(model, torch.randn(shape))


class _First(nn.Module):
    """The first output of a module that returns a tuple (an RNN)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)[0]  # type: ignore[no-any-return]


def test_encoder_fast_path_was_the_problem() -> None:
    """Dropout modules alone in training mode: the fused eval path gives identical passes."""
    model, x = _encoder().eval(), torch.randn(3, 5, 32)
    for _, module in dropkit.find_dropout(model):
        module.train()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # what mc_dropout used to do
    assert _spread(model, x) > 0


def test_attention_dropout_alone_is_sampled() -> None:
    model, x = _encoder(), torch.randn(3, 5, 32)
    set_dropout(model, 0.0, kind="hidden")
    assert _spread(model, x) > 0
    set_dropout(model, 0.0, within=nn.MultiheadAttention)
    assert _spread(model, x) == 0.0


def test_sites_of_a_transformer_layer() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    sites = find_dropout_sites(layer)
    assert [(s.name, s.attribute, s.kind, s.p, s.sampled) for s in sites] == [
        ("self_attn.dropout", "dropout", "attention", 0.1, True),
        ("dropout", "p", "hidden", 0.1, True),
        ("dropout1", "p", "hidden", 0.1, True),
        ("dropout2", "p", "hidden", 0.1, True),
    ]
    assert sites[0].module is layer.self_attn and not sites[0].is_module
    assert sites[1].module is layer.dropout and sites[1].is_module
    # find_dropout keeps its contract: dropout modules only
    assert [name for name, _ in dropkit.find_dropout(layer)] == ["dropout", "dropout1", "dropout2"]


def test_set_dropout_by_kind_name_and_type() -> None:
    model = _encoder()
    set_dropout(model, 0.2, kind="attention")
    assert [layer.self_attn.dropout for layer in model.layers] == [0.2, 0.2]
    assert model.layers[0].dropout1.p == 0.1
    set_dropout(model, 0.3, name="layers.1.*")
    assert (model.layers[0].dropout.p, model.layers[1].dropout.p) == (0.1, 0.3)
    assert model.layers[1].self_attn.dropout == 0.3
    set_dropout(model, 0.0, within=(nn.TransformerEncoderLayer,))
    assert all(s.p == 0.0 for s in find_dropout_sites(model))
    assert find_dropout_sites(model, name="nothing.*") == []


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (
            {"kind": "attn"},
            ValueError,
            "`kind` must be one of 'attention', 'hidden', 'path', got 'attn'",
        ),
        ({"name": 3}, TypeError, "`name` must be an fnmatch pattern"),
        ({"within": int}, TypeError, "`within` must be an nn.Module subclass or a tuple of them"),
        ({"within": ()}, TypeError, "`within` must be an nn.Module subclass"),
        ({"within": (nn.Linear, "x")}, TypeError, "got 'x' of type str"),
    ],
)
def test_set_dropout_filters_are_validated(
    kwargs: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        set_dropout(_encoder(), 0.1, **kwargs)


# --- a timm-style ViT block, written here -------------------------------------------------


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """timm's ``drop_path``: one Bernoulli draw per sample, inverted scaling."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class TimmDropPath(nn.Module):
    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)


class TimmAttention(nn.Module):
    """Attention whose dropout is a float passed to ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))  # type: ignore[no-any-return]


class TimmBlock(nn.Module):
    def __init__(self, dim: int, heads: int, drop: float, attn_drop: float, path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, heads, attn_drop, drop)
        self.drop_path1 = TimmDropPath(path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(drop), nn.Linear(2 * dim, dim)
        )
        self.drop_path2 = TimmDropPath(path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))  # type: ignore[no-any-return]


class TinyViT(nn.Module):
    """Patch embedding, dropout on the tokens, two blocks, a BatchNorm head."""

    def __init__(self, drop: float = 0.1, attn_drop: float = 0.1, path: float = 0.1) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.Sequential(*(TimmBlock(16, 2, drop, attn_drop, path) for _ in range(2)))
        self.head = nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.pos_drop(self.patch(x).flatten(2).transpose(1, 2))
        return self.head(self.blocks(tokens).mean(dim=1))  # type: ignore[no-any-return]


def _vit() -> TinyViT:
    model = TinyViT()
    model.train()
    model(torch.randn(8, 3, 8, 8))  # BatchNorm statistics that are not the defaults
    return model


def test_timm_style_vit() -> None:
    model, x = _vit(), torch.randn(4, 3, 8, 8)
    stats = model.head[0].running_mean.clone()
    assert _spread(model, x) > 0 and check_model(model, x) == []
    assert torch.equal(model.head[0].running_mean, stats)  # BatchNorm stayed in eval mode
    _exercise(model, x)


def test_timm_style_vit_sites_and_kinds() -> None:
    sites = {s.name: (s.kind, s.attribute, s.sampled) for s in find_dropout_sites(_vit())}
    assert sites["blocks.0.attn.attn_drop"] == ("attention", "attn_drop", True)
    assert sites["blocks.0.attn.proj_drop"] == ("hidden", "p", True)
    assert sites["blocks.0.drop_path1.drop_prob"] == ("path", "drop_prob", True)
    assert sites["blocks.1.mlp.2"] == ("hidden", "p", True)
    assert sites["pos_drop"] == ("hidden", "p", True)
    assert len(sites) == 1 + 2 * 5


@pytest.mark.parametrize("kind", ["attention", "hidden", "path"])
def test_timm_style_vit_each_kind_alone_is_sampled(kind: str) -> None:
    model, x = _vit(), torch.randn(4, 3, 8, 8)
    for other in {"attention", "hidden", "path"} - {kind}:
        set_dropout(model, 0.0, kind=other)
    assert {s.kind for s in find_dropout_sites(model) if s.p > 0} == {kind}
    assert _spread(model, x) > 0


# --- the ways a module gates its own dropout --------------------------------------------------


class KeywordGate(nn.Module):
    """``training=self.training`` passed to ``F.dropout`` with a float attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.dropout_prob = 0.3

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.fc(x), p=self.dropout_prob, training=self.training)


class StatementGate(nn.Module):
    """A hand-written dropout: ``if not self.training or self.p == 0: return x``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = 0.3

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


class ChildRateGate(nn.Module):
    """Hugging Face style: a dropout child's ``p`` read by its parent, the child never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.fc(x), 0.0 if not self.training else self.dropout.p, True)


@pytest.mark.parametrize("gate", [KeywordGate, StatementGate, ChildRateGate])
def test_a_module_gating_its_own_dropout_is_sampled(gate: type[nn.Module]) -> None:
    model, x = nn.Sequential(nn.Linear(4, 8), gate(), nn.Linear(8, 2)), torch.randn(5, 4)
    [site] = find_dropout_sites(model)
    assert site.sampled and site.p == 0.3 and site.kind == "hidden"
    _exercise(model, x)


# --- dropout that cannot be reached is reported -------------------------------------------


class FunctionalNorm(nn.Module):
    """Applies dropout from a float, and also reads ``self.training`` for a batch norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.dropout = 0.3
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = F.batch_norm(x, self.mean, self.var, training=self.training)
        return F.dropout(self.fc(x), self.dropout, training=self.training)


def test_dropout_behind_another_use_of_training_is_reported() -> None:
    model, x = nn.Sequential(nn.Linear(4, 8), FunctionalNorm(8), nn.Linear(8, 2)), torch.randn(6, 4)
    [site] = find_dropout_sites(model)
    assert (site.name, site.sampled) == ("1.dropout", False)
    assert "FunctionalNorm also reads `self.training`" in site.reason
    assert "FunctionalNorm.forward, line" in site.reason
    with _eval_output_kept(model, x):
        assert _spread(model, x) == 0.0  # left off: switching it on would change the norm too
        findings = check_model(model, x)
    [unreachable] = _checks(findings, "mc-unreachable")
    assert (unreachable.severity, unreachable.module) == ("info", "1")
    assert "`1.dropout` (p=0.3)" in unreachable.what and "self.training" in unreachable.what
    [identical] = _checks(findings, "mc-identical")
    assert identical.severity == "warning" and "example input" in identical.what
    assert _checks(check_model(model), "mc-identical")[0].what.endswith("none reachable.")
    set_dropout(model, 0.0)  # still re-rated
    assert model[1].dropout == 0.0
    assert check_model(model, x) == []


def test_dropout_of_a_class_without_source_is_reported() -> None:
    namespace: dict[str, Any] = {"nn": nn, "F": F}
    exec(  # a class whose source inspect cannot read
        "class Hidden(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(4, 4)\n"
        "        self.dropout_p = 0.2\n"
        "    def forward(self, x):\n"
        "        return F.dropout(self.fc(x), self.dropout_p, self.training)\n",
        namespace,
    )
    model = nn.Sequential(namespace["Hidden"](), nn.Dropout(0.2), nn.Linear(4, 2))
    sites = find_dropout_sites(model)
    assert [(s.name, s.sampled) for s in sites] == [("0.dropout_p", False), ("1", True)]
    assert "source of Hidden cannot be read" in sites[0].reason
    findings = check_model(model, torch.randn(8, 4))
    assert [f.check for f in findings] == ["mc-unreachable"]  # the passes still differ
    # alone it makes every pass identical; beside DropConnect, whose masks MC draws, it does not
    alone = nn.Sequential(nn.Linear(4, 4), namespace["Hidden"]())
    assert [f.check for f in check_model(alone)] == ["mc-identical", "mc-unreachable"]
    drop_connect = nn.Sequential(dropkit.DropConnectLinear(4, 4, 0.3), namespace["Hidden"]())
    assert [f.check for f in check_model(drop_connect)] == ["mc-unreachable"]


def test_a_leftover_rate_attribute_is_not_a_site() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dropout_rate = 0.5  # read nowhere: a config value, not a dropout
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x)  # type: ignore[no-any-return]

    assert find_dropout_sites(Head()) == []
    assert check_model(Head(), torch.randn(2, 4)) == []


def test_site_records_are_frozen() -> None:
    [site] = find_dropout_sites(nn.Sequential(nn.Dropout(0.2)))
    assert isinstance(site, DropoutSite) and site.name == "0" and site.reason == ""
    with pytest.raises(AttributeError):
        site.p = 0.5  # type: ignore[misc]


# --- Hugging Face models from small configs (nothing downloaded) ----------------------------


class _Logits(nn.Module):
    """A Hugging Face model as a module that returns its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits  # type: ignore[no-any-return]


def _bert(attention: str) -> tuple[nn.Module, Tensor]:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        attn_implementation=attention,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config), torch.randint(0, 50, (3, 6))


def _gpt2() -> tuple[nn.Module, Tensor]:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config), torch.randint(0, 50, (3, 6))


def _hf_vit() -> tuple[nn.Module, Tensor]:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=3, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config), torch.randn(3, 3, 8, 8)


HF_MODELS: list[tuple[str, Callable[[], tuple[nn.Module, Tensor]]]] = [
    ("bert-sdpa", lambda: _bert("sdpa")),
    ("bert-eager", lambda: _bert("eager")),
    ("gpt2", _gpt2),
    ("vit", _hf_vit),
]


@pytest.mark.parametrize("make", [m[1] for m in HF_MODELS], ids=[m[0] for m in HF_MODELS])
def test_hugging_face_models(make: Callable[[], tuple[nn.Module, Tensor]]) -> None:
    model, x = make()
    kinds = {s.kind for s in find_dropout_sites(model)}
    assert kinds == {"attention", "hidden"}
    wrapped = _Logits(model)
    with _eval_output_kept(wrapped, x):
        set_dropout(model, 0.0, kind="hidden")
        assert _spread(wrapped, x) > 0  # the attention dropout alone is sampled
        set_dropout(model, 0.1)
    _exercise(wrapped, x)
