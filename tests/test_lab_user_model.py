"""A user's model as the lab builds it per run: factories, instances, checks, fingerprints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit
from dropkit.lab.plan.user_model import model_source
from dropkit.surgery import find_dropout_sites


def mlp(p: float) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(p), nn.Linear(8, 2))


class Scaled(nn.Module):
    """A module with a parameter and no reset_parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class TestFactory:
    def test_weights_follow_the_seed_not_the_rate(self) -> None:
        source = model_source(mlp, rates=[0.0, 0.5])
        a, b = source.build(0.1, seed=3), source.build(0.5, seed=3)
        assert _same(_weights(a), _weights(b))
        assert not _same(_weights(a), _weights(source.build(0.1, seed=4)))
        assert [s.p for s in find_dropout_sites(b)] == [0.5]

    def test_the_callers_generator_does_not_move(self) -> None:
        source = model_source(mlp)
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        source.build(0.2, seed=7)
        assert torch.equal(torch.rand(3), expected)

    def test_a_factory_must_return_a_module(self) -> None:
        with pytest.raises(TypeError, match="must return an nn.Module.*got int"):
            model_source(lambda p: 3)

    def test_a_model_without_dropout_cannot_sweep_a_rate(self) -> None:
        def plain(p: float) -> nn.Module:
            return nn.Linear(4, 2)

        with pytest.raises(ValueError, match="has no dropout for the rate p"):
            model_source(plain, rates=[0.0, 0.3])
        assert model_source(plain, rates=[0.0]).name.endswith("plain")

    def test_dropout_left_at_its_own_rate_is_noted(self) -> None:
        def block(p: float) -> nn.Module:
            return nn.Sequential(
                nn.TransformerEncoderLayer(8, 2, 16, dropout=p, batch_first=True),
                nn.Dropout(0.1),
            )

        notes = model_source(block).notes
        assert len(notes) == 1 and "'1' at 0.1" in notes[0] and "left at its own rate" in notes[0]
        assert model_source(mlp).notes == ()


class TestInstance:
    def test_copied_rerated_and_reinitialized_per_seed(self) -> None:
        template = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), dropkit.Dropout(0.2), nn.Linear(8, 2))
        before = _weights(template)
        source = model_source(template)
        a, b = source.build(0.4, seed=1), source.build(0.0, seed=1)
        assert _same(_weights(a), _weights(b)) and not _same(_weights(a), before)
        assert not _same(_weights(a), _weights(source.build(0.4, seed=2)))
        assert [s.p for s in find_dropout_sites(a)] == [0.4]
        assert _same(_weights(template), before) and template[2].p == 0.2  # untouched

    def test_float_rate_attention_dropout_is_rerated(self) -> None:
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        built = model_source(layer).build(0.3, seed=0)
        assert {s.p for s in find_dropout_sites(built)} == {0.3}
        assert built.self_attn.dropout == 0.3

    def test_a_parameter_without_reset_names_the_module_and_the_fix(self) -> None:
        model = nn.Sequential(Scaled(), nn.Dropout(0.1), nn.Linear(4, 2))
        with pytest.raises(ValueError, match=r"module '0' \(Scaled\).*pass a factory"):
            model_source(model)


class TestFingerprint:
    def test_stable_and_sensitive_to_the_architecture(self) -> None:
        first, again = model_source(mlp), model_source(mlp)
        assert first.fingerprint == again.fingerprint and len(first.fingerprint) == 16

        def wider(p: float) -> nn.Module:
            return nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Dropout(p), nn.Linear(9, 2))

        assert model_source(wider).fingerprint != first.fingerprint
        assert model_source(mlp, model_id="v1").fingerprint == "v1"
        spec = first.spec
        assert spec.kind == "custom" and spec.hidden == () and spec.name.endswith(":mlp")

    def test_model_id_must_be_text(self) -> None:
        with pytest.raises(ValueError, match="`model_id` must be a non-empty string"):
            model_source(mlp, model_id=" ")

    def test_neither_factory_nor_module(self) -> None:
        with pytest.raises(TypeError, match="factory f\\(p\\) -> nn.Module or an nn.Module"):
            model_source("mlp")  # type: ignore[arg-type]


def test_a_one_layer_rnns_inert_dropout_rate_is_not_reported() -> None:
    """torch drops the outputs of every layer but the last: one layer has nothing to drop."""
    from torch import nn

    from dropkit.lab.plan.user_model import model_source

    class Reader(nn.Module):
        def __init__(self, p: float, layers: int) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, num_layers=layers, batch_first=True)
            self.drop = nn.Dropout(p)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(self.drop(out[:, -1]))

    one = model_source(lambda p: Reader(p, 1), rates=[0.0, 0.3])
    assert not [n for n in one.notes if "rnn.dropout" in n], one.notes
    two = model_source(lambda p: Reader(p, 2), rates=[0.0, 0.3])
    assert [n for n in two.notes if "'rnn.dropout' at 0" in n], two.notes
