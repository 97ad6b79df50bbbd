"""Mistake checks: each check finds its mistake, stays silent on sound models, and says why."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import dropkit
from dropkit.checks import Finding, check_model, format_findings, inference, warn_if_training
from dropkit.surgery import insert_dropout


def _checks(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), dropkit.Dropout(0.5), nn.Linear(64, 64), nn.ReLU(),
        dropkit.Dropout(0.5), nn.Linear(64, 3),
    )  # fmt: skip


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), dropkit.SpatialDropout2d(0.2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), dropkit.SpatialDropout2d(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 10),
    )  # fmt: skip


def _selu_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(10, 32), nn.SELU(), dropkit.AlphaDropout(0.1), nn.Linear(32, 32), nn.SELU(),
        dropkit.AlphaDropout(0.05), nn.Linear(32, 1),
    )  # fmt: skip


def _transformer(p: float = 0.1, norm_first: bool = False) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        16, 2, 32, dropout=p, batch_first=True, norm_first=norm_first
    )
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


CLEAN = [
    (_mlp, torch.randn(4, 20)),
    (_cnn, torch.randn(2, 3, 8, 8)),
    (_selu_net, torch.randn(4, 10)),
    (_transformer, torch.randn(2, 5, 16)),
    (lambda: _transformer(norm_first=True), torch.randn(2, 5, 16)),
]


@pytest.mark.parametrize(("make", "x"), CLEAN)
@pytest.mark.parametrize("traced", [False, True])
def test_sound_models_give_no_findings(make: object, x: torch.Tensor, traced: bool) -> None:
    model = make()  # type: ignore[operator]
    findings = check_model(model, x if traced else None)
    assert findings == [], format_findings(findings)
    assert format_findings(findings) == "no problems found"


# --- after-output ---------------------------------------------------------------------------


@pytest.mark.parametrize("traced", [False, True])
def test_dropout_after_the_output_layer(traced: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Dropout(0.3))
    [finding] = check_model(model, torch.randn(2, 4) if traced else None)
    assert (finding.check, finding.severity, finding.module) == ("after-output", "warning", "3")
    assert "`2` (Linear)" in finding.what and "before it" in finding.fix


def test_dropout_after_the_output_layer_through_activations() -> None:
    model = nn.Sequential(nn.Linear(4, 3), dropkit.Dropout(0.3), nn.Softmax(-1), nn.Dropout(0.3))
    assert [f.module for f in _checks(check_model(model), "after-output")] == ["1", "3"]


def test_dropout_before_the_output_layer_is_fine() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    assert _checks(check_model(model), "after-output") == []


class _HeadFirst(nn.Module):
    """The output layer is registered first: registration order is not the call order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 2)
        self.body = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.body(x))))  # type: ignore[no-any-return]


class _DropLast(nn.Module):
    """Dropout registered first but applied to the output."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.head(torch.relu(self.body(x))))  # type: ignore[no-any-return]


def test_example_input_follows_the_call_order() -> None:
    x = torch.randn(3, 8)
    # Registration order puts `drop` after the last Linear: a false alarm it fixes.
    assert [f.module for f in _checks(check_model(_HeadFirst()), "after-output")] == ["drop"]
    assert check_model(_HeadFirst(), x) == []
    # And the other way round: `drop` looks like input dropout, but forward() applies it last.
    assert _checks(check_model(_DropLast()), "after-output") == []
    [finding] = check_model(_DropLast(), x)
    assert (finding.check, finding.module) == ("after-output", "drop")
    assert "`head` (Linear)" in finding.what and "registration order" not in finding.what


class _ResidualTail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.fc(x)))  # type: ignore[no-any-return]


def test_dropout_on_a_final_residual_branch_is_not_after_the_output() -> None:
    # Registration order cannot see the sum; the forward pass can.
    assert "registration order" in check_model(_ResidualTail())[0].what
    assert check_model(_ResidualTail(), torch.randn(2, 8)) == []


def test_example_input_tuple_and_mapping() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.drop = nn.Dropout(0.3)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.drop(self.fc(a + b))  # type: ignore[no-any-return]

    a, b = torch.randn(2, 4), torch.randn(2, 4)
    for example in [(a, b), {"a": a, "b": b}]:
        assert [f.check for f in check_model(TwoInputs(), example)] == ["after-output"]


# --- before-batchnorm -----------------------------------------------------------------------


@pytest.mark.parametrize("traced", [False, True])
def test_dropout_before_batchnorm(traced: bool) -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 8),
        nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1),
    )  # fmt: skip
    [finding] = check_model(model, torch.randn(4, 4) if traced else None)
    assert (finding.check, finding.severity, finding.module) == ("before-batchnorm", "warning", "1")
    assert "Li et al. 2019" in finding.why and "variance shift" in finding.why
    assert "after `3`" in finding.fix and "last BatchNorm" in finding.fix


def test_spatial_dropout_before_batchnorm2d() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), dropkit.SpatialDropout2d(0.2), nn.MaxPool2d(2),
        nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1),
    )  # fmt: skip
    assert [f.module for f in _checks(check_model(model), "before-batchnorm")] == ["2"]


def test_dropout_after_batchnorm_or_before_layernorm_is_fine() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.LayerNorm(8),
        nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 8), dropkit.DropPath(0.1),
        nn.BatchNorm1d(8), nn.Linear(8, 1),
    )  # fmt: skip
    assert _checks(check_model(model), "before-batchnorm") == []


# --- selu -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "replacement"),
    [
        (nn.Dropout(0.1), "AlphaDropout"),
        (dropkit.Dropout(0.1), "AlphaDropout"),
        (dropkit.GaussianDropout(0.1), "AlphaDropout"),
        (nn.Dropout1d(0.1), "FeatureAlphaDropout"),
    ],
)
def test_standard_dropout_in_a_selu_network(layer: nn.Module, replacement: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.SELU(), layer, nn.Linear(8, 1))
    [finding] = _checks(check_model(model), "selu")
    assert (finding.check, finding.severity, finding.module) == ("selu", "warning", "2")
    assert "self-normalization" in finding.why and f"dropkit.{replacement}" in finding.fix


def test_spatial_dropout_in_a_selu_convnet() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SELU(), dropkit.SpatialDropout2d(0.1))
    model.append(nn.Conv2d(4, 2, 1))
    [finding] = _checks(check_model(model), "selu")
    assert "FeatureAlphaDropout" in finding.fix


def test_alpha_dropout_without_selu_is_noted() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), dropkit.AlphaDropout(0.1), nn.Linear(8, 1))
    [finding] = check_model(model)
    assert (finding.check, finding.severity) == ("alpha-without-selu", "info")
    selu = nn.Sequential(nn.Linear(4, 8), nn.SELU(), nn.AlphaDropout(0.1), nn.Linear(8, 1))
    assert check_model(selu) == []


# --- rates ----------------------------------------------------------------------------------


def _hidden(drop: nn.Module) -> nn.Sequential:
    """``drop`` after a hidden dense layer, with another hidden layer before the output."""
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), drop, nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("p", "fix"),
    [
        (30.0, "Set p=0.3 (p/100)."),
        (150.0, "Set p to a value in [0, 1]."),
        (-0.1, "Set p to a value in [0, 1]."),
        (math.nan, "Set p to a value in [0, 1]."),
    ],
)
def test_rate_that_is_not_a_probability(p: float, fix: str) -> None:
    drop = nn.Dropout(0.5)
    drop.p = p  # torch does not validate on assignment
    [finding] = check_model(_hidden(drop))
    assert (finding.check, finding.severity, finding.fix) == ("rate", "warning", fix)
    assert ("percentage" in finding.why) == (p == 30.0)


def test_rate_of_one_drops_everything() -> None:
    [finding] = check_model(_hidden(dropkit.Dropout(1.0)))
    assert (finding.check, finding.severity) == ("rate", "warning")
    assert "drops everything" in finding.what


def test_input_dropout_rates() -> None:
    def model(p: float) -> nn.Sequential:
        return nn.Sequential(nn.Dropout(p), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    assert check_model(model(0.2)) == []
    [note] = check_model(model(0.4))
    assert (note.check, note.severity) == ("rate", "info")
    assert "above the usual 0.1–0.2 for input dropout" in note.what
    [warning] = check_model(model(0.6))
    assert (warning.severity, warning.module) == ("warning", "0")
    assert "more than half" in warning.what


@pytest.mark.parametrize(("p", "side"), [(0.05, "below"), (0.2, None), (0.5, None), (0.8, "above")])
def test_hidden_dense_rates(p: float, side: str | None) -> None:
    findings = check_model(_hidden(dropkit.Dropout(p)))
    if side is None:
        assert findings == []
    else:
        [note] = findings
        assert (note.check, note.severity) == ("rate", "info")
        assert f"{side} the usual 0.2–0.5 for dropout after a hidden dense layer" in note.what
        assert "Srivastava" in note.why and "0.2–0.5" in note.fix


def test_convolutional_rates() -> None:
    def model(drop: nn.Module, head_p: float = 0.5) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), drop, nn.Conv2d(4, 4, 3), nn.ReLU(),
            nn.Flatten(), nn.Dropout(head_p), nn.Linear(4 * 4 * 4, 2),
        )  # fmt: skip

    # Dropout before the classifier follows the dense range even after conv layers.
    assert check_model(model(dropkit.SpatialDropout2d(0.2))) == []
    for drop in [dropkit.SpatialDropout2d(0.5), dropkit.DropBlock2d(0.5, 3), nn.Dropout(0.4)]:
        [note] = check_model(model(drop))
        assert (note.module, note.severity) == ("2", "info")
        assert "0.1–0.25 for dropout on convolutional feature maps" in note.what
    [note] = check_model(model(nn.Dropout2d(0.1), head_p=0.7))
    assert note.module == "6" and "0.2–0.5 for dropout before the output layer" in note.what


def test_transformer_rates() -> None:
    [*notes] = check_model(_transformer(p=0.5), torch.randn(2, 5, 16))
    assert notes and all(f.check == "rate" and f.severity == "info" for f in notes)
    assert all("0.1–0.3 for dropout in a transformer" in f.what for f in notes)
    assert {f.module for f in notes} == {
        f"layers.{i}.{d}" for i in range(2) for d in ("dropout", "dropout1", "dropout2")
    }


def test_alpha_drop_path_locked_and_zero_rates() -> None:
    def model(drop: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 8), nn.SELU(), drop, nn.Linear(8, 8), nn.Linear(8, 1))

    assert "0.05–0.1 for alpha dropout" in check_model(model(dropkit.AlphaDropout(0.3)))[0].what
    note = check_model(model(dropkit.DropPath(0.6)))[0]
    assert "0.5 for stochastic depth" in note.what
    assert check_model(model(dropkit.DropPath(0.02))) == []
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), dropkit.LockedDropout(0.65), nn.Linear(8, 1))
    assert check_model(plain) == []
    assert check_model(_hidden(dropkit.Dropout(0.0))) == []


# --- unregistered ---------------------------------------------------------------------------


class _Hidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drops = [nn.Dropout(0.3), nn.Dropout(0.3)]
        self.by_name = {"in": dropkit.Dropout(0.2), "fc": self.fc}
        self.pair = (nn.Sequential(nn.Linear(4, 4), dropkit.Dropout(0.3)),)
        self.registered = nn.ModuleList([nn.Dropout(0.3)])
        self.aliases = [self.fc, self.registered[0]]  # registered elsewhere: fine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.registered[0](torch.relu(self.fc(self.drops[0](x))))
        return x


def test_dropout_in_a_plain_container_attribute() -> None:
    findings = _checks(check_model(_Hidden()), "unregistered")
    assert [f.module for f in findings] == ["", "", ""]
    what = " ".join(f.what for f in findings)
    assert "`drops` is a plain list holding 2 dropout modules" in what
    assert "`by_name` is a plain dict holding 1 dropout module" in what
    assert "`pair` is a plain tuple" in what and "aliases" not in what
    assert all(f.severity == "warning" and "model.eval()" in f.why for f in findings)
    assert "nn.ModuleDict" in findings[1].fix and "nn.ModuleList" in findings[0].fix


def test_dropout_in_a_plain_list_of_a_submodule() -> None:
    inner = nn.Linear(4, 4)
    inner.extra = [nn.Dropout(0.3)]  # type: ignore[assignment]
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), inner)
    [finding] = check_model(model)
    assert (finding.check, finding.module) == ("unregistered", "2")


# --- never-called ---------------------------------------------------------------------------


def test_dropout_never_called_needs_an_example_input() -> None:
    class Forgotten(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.drop = nn.Dropout(0.5)
            self.fc2 = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))  # type: ignore[no-any-return]

    assert check_model(Forgotten()) == []
    [finding] = check_model(Forgotten(), torch.randn(2, 4))
    assert (finding.check, finding.severity, finding.module) == ("never-called", "info", "drop")


def test_hook_inserted_dropout_is_followed() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(10, 20)
            self.fc2 = nn.Linear(20, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))  # type: ignore[no-any-return]

    net = insert_dropout(Net(), 0.5, input_p=0.2)
    assert check_model(net) == []
    assert check_model(net, torch.randn(3, 10)) == []


# --- modes ----------------------------------------------------------------------------------


def _mixed_modes() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 1))
    model.eval()
    model[2].train()  # Monte Carlo dropout setup
    return model


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_check_model_runs_in_eval_and_restores_modes_and_hooks() -> None:
    model = _mixed_modes()
    seen: list[bool] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = _modes(model)
    check_model(model, torch.randn(4, 4))
    # the eval pass and the Monte Carlo passes of the mc-identical check: BatchNorm evaluates
    assert seen and not any(seen) and _modes(model) == before
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model] == [0, 1, 0, 0]


def test_check_model_restores_modes_when_the_forward_pass_fails() -> None:
    model = _mixed_modes()
    before = _modes(model)
    with pytest.raises(RuntimeError):
        check_model(model, torch.randn(4, 5))  # wrong width
    assert _modes(model) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_inference_sets_eval_and_no_grad_then_restores() -> None:
    model = _mixed_modes()
    before = _modes(model)
    with inference(model) as m:
        assert m is model and not any(_modes(model)) and not torch.is_grad_enabled()
        m(torch.randn(2, 4))
    assert _modes(model) == before and torch.is_grad_enabled()


def test_inference_restores_modes_when_the_body_raises() -> None:
    model = _mixed_modes().train()
    seen: list[bool] = []

    def fail() -> None:
        with inference(model):
            seen.append(model.training)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fail()
    assert seen == [False]
    assert all(_modes(model)) and torch.is_grad_enabled()


# --- the training-mode guard ----------------------------------------------------------------


def test_guard_warns_once_under_no_grad_in_training_mode() -> None:
    model = _mlp()
    handle = warn_if_training(model)
    x = torch.randn(2, 20)

    def predict_twice() -> None:
        with torch.no_grad():
            model(x)
            model(x)

    with pytest.warns(UserWarning, match="training mode under") as record:
        predict_twice()
    assert len(record) == 1
    assert record[0].filename == __file__, "the warning points at the caller"
    assert "model.eval()" in str(record[0].message) and ".remove()" in str(record[0].message)
    with torch.no_grad():
        model(x)  # still silent: filterwarnings = error would raise

    # Silent in eval mode and with gradients; armed again once called in eval mode.
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    model(x)
    with torch.no_grad(), pytest.warns(UserWarning, match="training mode under"):
        model(x)

    handle.remove()
    model.eval()
    model(x)
    model.train()
    with torch.no_grad():
        model(x)  # guard removed


def test_guard_is_silent_for_monte_carlo_dropout_and_inference() -> None:
    model = _mixed_modes()
    warn_if_training(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.randn(2, 4))
        with inference(model.train()):
            model(torch.randn(2, 4))


# --- findings, formatting, arguments --------------------------------------------------------


def test_finding_str_and_format() -> None:
    finding = Finding("warning", "fc.2", "Something is off.", "Because.", "Do this.", "rate")
    assert str(finding) == "warning: `fc.2`: Something is off. Because. Fix: Do this."
    model_level = Finding("info", "", "A.", "B.", "C.", "unregistered")
    assert str(model_level) == "info: model: A. B. Fix: C."
    assert format_findings([finding, model_level]).splitlines() == [
        str(finding),
        str(model_level),
        "1 warning, 1 note",
    ]
    assert format_findings([finding, finding, model_level, model_level]).endswith(
        "2 warnings, 2 notes"
    )
    with pytest.raises(ValueError, match="`severity` must be one of 'warning', 'info'"):
        Finding("error", "", "A.", "B.", "C.", "rate")


def test_findings_are_sorted_warnings_first() -> None:
    model = nn.Sequential(nn.Dropout(0.4), nn.Linear(4, 8), nn.Linear(8, 1), nn.Dropout(0.3))
    assert [f.severity for f in check_model(model)] == ["warning", "info"]


def test_check_model_refuses_a_non_module() -> None:
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        check_model("net")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        warn_if_training(None)  # type: ignore[arg-type]
