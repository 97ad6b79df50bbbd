"""The arm registry: its invariants, what reads it, and label smoothing, the arm added through it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dropkit import lab
from dropkit.lab.plan.arms import (
    ACTS_ON,
    ARM_KINDS,
    CUSTOM_KIND,
    MODEL_KINDS,
    RATE_ENTRIES,
    REGULARIZERS,
    STRENGTHS,
    Strengths,
    entry_regularizer,
    module_entries,
    target_transforms,
)
from dropkit.lab.plan.comparison import BATCHED_REGULARIZERS, parse_arms
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.results.summary import group_label
from dropkit.lab.train.dispatch import is_batched, train_configs


class TestInvariants:
    @pytest.mark.parametrize("name", list(REGULARIZERS))
    def test_every_arm_is_complete(self, name: str) -> None:
        r = REGULARIZERS[name]
        assert r.name == name and r.change, "a one-line description"
        assert name == "none" or r.reference, "every regularizer but none cites its paper"
        assert r.kinds and set(r.kinds) <= set(ARM_KINDS)
        assert set(r.kinds) & set(MODEL_KINDS), "every arm applies to a built-in model"
        # a user's model keeps its structure: arms that build one (but dropout) never apply
        assert (
            CUSTOM_KIND not in r.kinds
            or "model" not in r.acts_on
            or r.name
            in (
                "dropout",
                "input_dropout",
            )
        )
        assert set(r.acts_on) <= set(ACTS_ON) and (name == "none" or r.acts_on)
        for option in r.options:
            assert option in STRENGTHS
        if r.entry is not None:
            assert entry_regularizer(r.entry).entry == r.entry

    def test_every_strength_is_used_and_documented(self) -> None:
        used = {o for r in REGULARIZERS.values() for o in r.options}
        assert used == set(STRENGTHS)
        for s in STRENGTHS.values():
            assert s.help and s.domain in {"rate", "probability", "positive", "positive_int"}
            assert (s.default is None) == (s.resolve is not None)

    def test_the_stacked_trainer_runs_exactly_the_batched_entries(self) -> None:
        batched = {r.entry for r in REGULARIZERS.values() if r.batched and r.entry}
        assert batched == BATCHED_REGULARIZERS
        assert "label_smoothing" not in BATCHED_REGULARIZERS

    def test_rate_entries_exclude_each_other(self) -> None:
        assert {"batchnorm", "dropout_bn", "spatial_dropout"} <= RATE_ENTRIES
        with pytest.raises(ValueError, match="exclude each other"):
            parse_arms("early_dropout+late_dropout")

    def test_module_entries_follow_kinds(self) -> None:
        assert "spatial_dropout" in module_entries("cnn")
        assert "spatial_dropout" not in module_entries("mlp")
        assert "l2" not in module_entries("mlp"), "l2 acts on the loss"

    def test_unknown_entry(self) -> None:
        with pytest.raises(ValueError, match="unknown regularizer 'dropconnect'; known:"):
            entry_regularizer("dropconnect")


class TestStrengths:
    def test_defaults_and_resolution(self) -> None:
        s = Strengths(p=0.3)
        assert s.p == 0.3 and s["l2"] == 1e-4 and s.patience is None
        r = s.resolved(epochs=400, kind="cnn", n_train=50)
        assert r.patience == 40 and r.augment == 1.0 and r.concrete == pytest.approx(2 / 50)
        assert Strengths(p=0.3) == Strengths(p=0.3) != Strengths(p=0.4)

    @pytest.mark.parametrize(
        ("values", "error", "message"),
        [
            ({"p": 2.0}, ValueError, r"`p` must be in \[0, 1\]"),
            ({"smoothing": -0.1}, ValueError, r"`smoothing` must be in \[0, 1\]"),
            ({"block_size": 2.5}, TypeError, "`block_size` must be an int >= 1"),
            ({"noise": math.inf}, ValueError, "`noise` must be a finite number > 0"),
            ({"lr": 0.1}, TypeError, "unknown strength 'lr'"),
        ],
    )
    def test_each_value_is_validated_by_name(
        self, values: dict[str, float], error: type, message: str
    ) -> None:
        with pytest.raises(error, match=message):
            Strengths(**values)


class TestLabelSmoothing:
    """The arm added as one registry definition: the registry's hooks carry it everywhere."""

    def test_the_targets_are_smoothed(self) -> None:
        (transform, strength), *_ = target_transforms([("label_smoothing", 0.2)])
        binary = transform(torch.tensor([0.0, 1.0]), strength, 2)
        assert binary.tolist() == pytest.approx([0.1, 0.9])
        onehot = transform(F.one_hot(torch.tensor([2]), 4).float(), strength, 4)
        assert onehot[0].tolist() == pytest.approx([0.05, 0.05, 0.85, 0.05])

    def test_the_loss_equals_torchs_label_smoothing(self) -> None:
        """Multi-class: the loop's loss with the arm is ``F.cross_entropy(label_smoothing=ε)``."""

        logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
        from dropkit.lab.train import module_loop as loop

        ours = loop._loss(logits, y, targets=target_transforms([("label_smoothing", 0.2)]))
        assert ours.item() == pytest.approx(
            F.cross_entropy(logits, y, label_smoothing=0.2).item(), abs=1e-6
        )

    def test_every_face_knows_it(self) -> None:
        arm = parse_arms("none,label_smoothing,dropout+label_smoothing")
        assert [a.name for a in arm] == ["none", "label_smoothing", "dropout+label_smoothing"]
        config = RunConfig(regularizers=(("label_smoothing", 0.1),), p=0.4)
        assert config.arm == "dropout+label_smoothing"
        assert group_label(config) == "dropout+label_smoothing=0.1 p=0.4"
        assert not is_batched(config), "the stacked trainer does not apply target transforms"
        from typer.testing import CliRunner

        from dropkit.cli import app

        help_text = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
        assert "--smoothing" in help_text.output and "label_smoothing" in help_text.output

    def test_it_changes_training_and_compares(self, tmp_path: Path) -> None:
        data, model = DataSpec("circles"), ModelSpec(hidden=(8,))
        train = TrainSpec(epochs=5)
        from dropkit.lab.plan.data import load_dataset

        dataset = load_dataset(data)
        plain = RunConfig(data, model, train, seed=1)
        smooth = RunConfig(data, model, train, seed=1, regularizers=(("label_smoothing", 0.3),))
        both = train_configs(dataset, [plain, smooth], compile=False, trainer="loop")
        loss = both.curves["train_loss"]
        assert not math.isclose(loss[0, -1], loss[1, -1]), "the arm reaches the loss"
        e = lab.compare(
            arms=["none", "label_smoothing"],
            smoothing=0.3,
            seeds=2,
            epochs=5,
            hidden=8,
            compile=False,
            store=tmp_path / "s.sqlite",
        )
        assert [r["name"] for r in e.summary] == ["none", "label_smoothing=0.3"]
