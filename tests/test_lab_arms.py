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
    ARM_TRAINERS,
    CUSTOM_KIND,
    MODEL_KINDS,
    RATE_ENTRIES,
    REGULARIZERS,
    STRENGTHS,
    Regularizer,
    Strengths,
    entry_regularizer,
    module_entries,
    target_transforms,
    trainer_entries,
)
from dropkit.lab.plan.comparison import BATCHED_REGULARIZERS, parse_arms
from dropkit.lab.plan.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from dropkit.lab.plan.effects import RunEffects, run_effects
from dropkit.lab.results.summary import group_label
from dropkit.lab.train.dispatch import is_batched, train_configs

ARM_NAMES_WITH_ENTRIES = [name for name, r in REGULARIZERS.items() if r.entry is not None]


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
        batched = {r.entry for r in REGULARIZERS.values() if "stacked" in r.trainers and r.entry}
        assert batched == BATCHED_REGULARIZERS
        assert "label_smoothing" not in BATCHED_REGULARIZERS

    def test_the_derived_trainer_sets_are_the_sets_the_trainers_had(self) -> None:
        """The sets the trainers spelled out before the arms declared their trainers."""
        from dropkit.lab.train import vmapped

        stacked = {
            "augment",
            "early_dropout",
            "early_stopping",
            "gaussian_noise",
            "l1",
            "l2",
            "late_dropout",
        }
        assert BATCHED_REGULARIZERS == trainer_entries("stacked") == stacked
        custom = ("augment", "early_dropout", "early_stopping", "l1", "l2", "late_dropout")
        assert custom == vmapped.SUPPORTED_REGULARIZERS
        assert trainer_entries("vmapped") == vmapped.VMAPPED_REGULARIZERS
        assert trainer_entries("vmapped") == {*custom, "label_smoothing"}
        every = {r.entry for r in REGULARIZERS.values() if r.entry}
        assert trainer_entries("loop") == every, "the loop runs every built-in arm"
        with pytest.raises(ValueError, match="`trainer` must be one of stacked, loop, vmapped"):
            trainer_entries("auto")

    @pytest.mark.parametrize("name", list(REGULARIZERS))
    def test_the_trainers_follow_the_kinds(self, name: str) -> None:
        r = REGULARIZERS[name]
        assert r.trainers and set(r.trainers) <= set(ARM_TRAINERS)
        assert ("vmapped" in r.trainers) == (CUSTOM_KIND in r.kinds)
        assert "loop" in r.trainers
        assert "stacked" not in r.trainers or "mlp" in r.kinds
        if r.entry is not None:  # arms sharing an entry (batchnorm, bn_dropout) agree on it
            owner = entry_regularizer(r.entry)
            assert (r.trainers, r.effect, r.targets) == (
                owner.trainers,
                owner.effect,
                owner.targets,
            )

    def test_a_definition_that_contradicts_itself_is_refused(self) -> None:
        with pytest.raises(ValueError, match="vmapped trainer runs exactly"):
            Regularizer("x", "x", kinds=("mlp",), trainers=("loop", "vmapped"))
        with pytest.raises(ValueError, match="every built-in model trains in the loop"):
            Regularizer("x", "x", kinds=("mlp",), trainers=("stacked",))
        with pytest.raises(ValueError, match="stacked trainer trains MLPs only"):
            Regularizer("x", "x", kinds=("cnn",), trainers=("stacked", "loop"))
        with pytest.raises(ValueError, match="an effect belongs to an entry"):
            Regularizer("x", "x", kinds=("mlp",), effect=lambda s, e: {"l1": s})

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


def _read_by_name(config: RunConfig) -> dict[str, object]:
    """What the trainers and the model builder read from a config's entries by name before
    the arms declared their effects: :func:`run_effects` must give the same."""
    strength, epochs = config.strength, config.train.epochs
    patience, early, late = (
        strength(n) for n in ("early_stopping", "early_dropout", "late_dropout")
    )
    window = None
    if early is not None:
        window = (0, round(early * epochs))
    elif late is not None:
        window = (round(late * epochs), epochs)
    block = strength("dropblock")
    return {
        "l1": strength("l1", 0.0) or 0.0,
        "l2": strength("l2", 0.0) or 0.0,
        "targets": tuple(target_transforms(config.regularizers)),
        "patience": None if patience is None else max(1, round(patience)),
        "dropout_window": window,
        "augment": strength("augment"),
        "noise": strength("gaussian_noise"),
        "batchnorm": "after_layer"
        if strength("batchnorm") is not None
        else "after_dropout"
        if strength("dropout_bn") is not None
        else None,
        "dropout_layer": next(
            (
                layer
                for entry, layer in (
                    ("spatial_dropout", "spatial_dropout"),
                    ("dropblock", "dropblock"),
                    ("variational", "locked_dropout"),
                    ("recurrent_dropout", "recurrent_dropout"),
                )
                if strength(entry) is not None
            ),
            "dropout",
        ),
        "block_size": None if block is None else max(1, round(block)),
        "concrete": strength("concrete"),
    }


class TestEffects:
    """Each arm declares its effect once; :func:`run_effects` applies them for every trainer."""

    @pytest.mark.parametrize(
        "arm",
        [
            *ARM_NAMES_WITH_ENTRIES,
            "dropout+l2+early_stopping+augment",
            "l1+gaussian_noise+late_dropout",
            "bn_dropout+label_smoothing",
        ],
    )
    @pytest.mark.parametrize("epochs", [7, 40])
    def test_the_declared_effects_are_what_the_trainers_read_by_name(
        self, arm: str, epochs: int
    ) -> None:
        (parsed,) = parse_arms(arm)
        kind = parsed.kinds[0]
        model = ModelSpec(hidden=(4,), kind=kind)
        strengths = Strengths(patience=3, switch=0.3, block_size=2).resolved(
            epochs=epochs, kind=kind, n_train=30
        )
        config = RunConfig(model=model, train=TrainSpec(epochs=epochs), **parsed.fields(strengths))
        effects = run_effects(config)
        assert isinstance(effects, RunEffects)
        assert {f: getattr(effects, f) for f in _read_by_name(config)} == _read_by_name(config)

    def test_hand_written_strengths_round_as_before(self) -> None:
        for entries in (
            (("early_stopping", 0.4), ("dropblock", 2.6), ("late_dropout", 0.33)),
            (("early_dropout", 0.5), ("late_dropout", 0.1), ("l1", -0.0), ("augment", 0.0)),
            (("batchnorm", 1.0), ("gaussian_noise", 0.0), ("concrete", 0.0)),
        ):
            config = RunConfig(train=TrainSpec(epochs=9), regularizers=entries)
            expected = _read_by_name(config)
            assert {f: getattr(run_effects(config), f) for f in expected} == expected

    def test_no_entry_no_effect(self) -> None:
        assert run_effects(RunConfig(p=0.4, max_norm=3.0)) == RunEffects()

    def test_an_unknown_entry_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown regularizer 'dropconnect'"):
            run_effects(RunConfig(regularizers=(("dropconnect", 1.0),)))

    def test_no_trainer_reads_an_entry_by_name(self) -> None:
        """The trainers and the model builder read :class:`RunEffects`, not entry names:
        no ``config.strength(...)`` call, no ``"entry" in ...`` test."""
        import ast

        import dropkit.lab.train as train

        entries = {r.entry for r in REGULARIZERS.values() if r.entry}
        root = Path(train.__file__).parent
        files = [*sorted(root.glob("*.py")), root.parent / "plan" / "models.py"]
        offenders = []
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "strength"
                ) or (
                    isinstance(node, ast.Compare)
                    and isinstance(node.left, ast.Constant)
                    and node.left.value in entries
                    and isinstance(node.ops[0], ast.In | ast.NotIn)
                ):
                    offenders.append(f"{path.name}:{node.lineno}")
        assert not offenders, offenders


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
