"""dropkit.integrations.lightning in real ``lightning.Trainer.fit``/``predict`` runs, and the lazy
imports of both integrations."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dropkit

L = pytest.importorskip("lightning")

from dropkit.integrations.lightning import (  # noqa: E402
    DropoutCheckCallback,
    DropoutScheduleCallback,
    MaxNormCallback,
    MCDropoutPredictor,
)

pytestmark = [
    # Lightning 2.6 builds torch pytree LeafSpecs, deprecated in torch 2.13.
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
    # Lightning's advice about the machine (a GPU left idle, CPU cores left to data loading),
    # given on machines with a GPU or many cores; the tests train on one CPU device on purpose.
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    pytest.mark.filterwarnings(r"ignore:The '\w+' does not have many workers:UserWarning"),
]

EVAL_AT_START = "ignore:Found .* module.s. in eval mode at the start of training"


class Net(MCDropoutPredictor, L.LightningModule):
    """A small classifier that records, at each training step, the rate its forward pass used."""

    def __init__(self, p: float = 0.5, lr: float = 0.1, tail: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Linear(4, 16),
            nn.ReLU(),
            dropkit.Dropout(p),
            nn.Linear(16, 3),
        ]
        if tail:  # dropout after the output layer: a check_model warning
            layers.append(dropkit.Dropout(0.5))
        self.net = nn.Sequential(*layers)
        self.lr = lr
        self.rates: list[tuple[int, float]] = []
        self.example_input_array = torch.randn(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.rates.append((self.global_step, float(self.net[2].p)))
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _loader(n: int = 32, batch_size: int = 8) -> DataLoader[tuple[torch.Tensor, ...]]:
    data = TensorDataset(torch.randn(n, 4), torch.randint(0, 3, (n,)))
    return DataLoader(data, batch_size=batch_size)


def _trainer(callbacks: list[Any], **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "max_epochs": 2,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(callbacks=callbacks, **{**options, **kwargs})


def test_the_schedule_sets_the_rate_at_each_optimizer_step() -> None:
    model = Net(p=0.5)
    schedule = dropkit.DropoutSchedule(model, "early", total_steps=8, cutoff=0.5)
    trainer = _trainer([DropoutScheduleCallback(schedule)])
    trainer.fit(model, _loader())  # 4 steps per epoch, 2 epochs
    assert model.rates == [(s, 0.5 if s < 4 else 0.0) for s in range(8)]
    assert float(trainer.callback_metrics["dropout_p"]) == 0.0


def test_the_schedule_follows_optimizer_steps_under_gradient_accumulation() -> None:
    model = Net(p=0.4)
    schedule = dropkit.DropoutSchedule(model, "linear", total_steps=4)
    trainer = _trainer([DropoutScheduleCallback(schedule, name=None)], accumulate_grad_batches=2)
    trainer.fit(model, _loader())  # 4 batches = 2 optimizer steps per epoch
    expected = [0.4 * step / 4 for step in (0, 0, 1, 1, 2, 2, 3, 3)]
    assert [r for _, r in model.rates] == pytest.approx(expected)
    assert "dropout_p" not in trainer.callback_metrics


def test_the_schedule_by_epoch_is_logged() -> None:
    model = Net(p=0.3)
    schedule = dropkit.DropoutSchedule(model, "late", total_steps=3, cutoff=0.5)
    trainer = _trainer([DropoutScheduleCallback(schedule, interval="epoch")], max_epochs=3)
    trainer.fit(model, _loader())
    per_epoch = [model.rates[i][1] for i in (0, 4, 8)]
    assert per_epoch == [0.0, 0.0, 0.3]  # progress 0, 1/3 < 0.5, 2/3 >= 0.5
    assert float(trainer.callback_metrics["dropout_p"]) == pytest.approx(0.3)
    assert DropoutScheduleCallback(schedule).state_dict() == {"last_step": 2}


def test_the_schedule_callback_refuses_wrong_arguments() -> None:
    schedule = dropkit.DropoutSchedule(Net(), "early", total_steps=4)
    with pytest.raises(TypeError, match="`schedule` must be a dropkit.DropoutSchedule"):
        DropoutScheduleCallback("early")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        DropoutScheduleCallback(schedule, interval="batch")


class _NormProbe(L.Callback):  # type: ignore[misc]
    """Records the largest row norm of every Linear weight after each training batch."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.norms.append(
            max(
                float(m.weight.detach().norm(dim=1).max())
                for m in pl_module.modules()
                if isinstance(m, nn.Linear)
            )
        )


@pytest.mark.parametrize("accumulate", [1, 2])
def test_max_norm_holds_after_every_optimizer_step(accumulate: int) -> None:
    probe = _NormProbe()
    _trainer([MaxNormCallback(0.3), probe], accumulate_grad_batches=accumulate).fit(
        Net(lr=5.0), _loader()
    )
    assert len(probe.norms) == 8 and max(probe.norms) <= 0.3 + 1e-6

    unconstrained = _NormProbe()
    _trainer([unconstrained]).fit(Net(lr=5.0), _loader())
    assert max(unconstrained.norms) > 0.3  # the bound is not met by itself


def test_max_norm_hooks_are_removed_after_fit() -> None:
    model = Net(lr=5.0)
    trainer = _trainer([MaxNormCallback(0.3)], max_epochs=1)
    trainer.fit(model, _loader())
    optimizer = trainer.optimizers[0]
    for _ in range(3):
        model(torch.randn(8, 4)).square().sum().backward()
        optimizer.step()
    assert float(model.net[0].weight.detach().norm(dim=1).max()) > 0.3


def test_check_raises_on_a_dropout_mistake_at_fit_start() -> None:
    with pytest.raises(RuntimeError, match="after-output|comes after"):
        _trainer([DropoutCheckCallback()]).fit(Net(tail=True), _loader())


def test_check_warns_when_asked_and_keeps_the_findings() -> None:
    callback = DropoutCheckCallback(on_error="warn")
    with pytest.warns(UserWarning, match="dropout mistakes in Net"):
        _trainer([callback], max_epochs=1).fit(Net(tail=True), _loader())
    assert [f.check for f in callback.findings if f.severity == "warning"] == ["after-output"]


def test_check_passes_a_sound_model_silently() -> None:
    callback = DropoutCheckCallback()
    _trainer([callback], max_epochs=1).fit(Net(), _loader())
    assert not [f for f in callback.findings if f.severity == "warning"]
    with pytest.raises(ValueError, match="on_error"):
        DropoutCheckCallback(on_error="ignore")


@pytest.mark.filterwarnings(EVAL_AT_START)
def test_check_catches_training_with_dropout_in_eval_mode() -> None:
    model = Net(p=0.5)
    model.eval()  # Lightning >= 2.2 keeps this mode in fit
    with pytest.warns(UserWarning, match=r"trains with 1 dropout site\(s\) in eval mode.*`net.2`"):
        _trainer([DropoutCheckCallback()], max_epochs=1).fit(model, _loader())


def test_mc_predict_step_samples_dropout_in_trainer_predict() -> None:
    model = Net(p=0.5)
    model.mc_samples = 20
    model.mc_generator = torch.Generator().manual_seed(0)
    loader = _loader(16, 8)
    predictions = _trainer([]).predict(model, loader)
    assert predictions is not None and len(predictions) == 2
    for prediction in predictions:
        assert isinstance(prediction, dropkit.MCPrediction)
        assert prediction.samples.shape == (20, 8, 3)
        assert float(prediction.std.max()) > 0  # the samples vary: dropout was on
        assert prediction.mean.sum(-1) == pytest.approx(torch.ones(8))
    assert model.training  # predict restored the mode
    model.eval()
    deterministic = _trainer([]).predict(Net(p=0.0), loader)
    assert deterministic is not None and float(deterministic[0].std.max()) == 0.0


def test_mc_input_needs_a_tensor_or_a_tuple() -> None:
    with pytest.raises(TypeError, match="override mc_input"):
        Net().mc_input({"x": torch.randn(2, 4)})


# --- lazy imports ---------------------------------------------------------------------------


def test_the_core_never_imports_the_integrations() -> None:
    source = Path(dropkit.__file__).parent
    offenders = []
    for path in sorted(source.rglob("*.py")):
        if "integrations" in path.relative_to(source).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if "integrations" in n]
    assert not offenders, offenders


def test_import_dropkit_imports_neither_framework() -> None:
    code = (
        "import dropkit, dropkit.integrations, sys; "
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('lightning', 'transformers')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [("lightning", "lightning", "lightning"), ("transformers", "transformers", "transformers")],
)
def test_a_missing_framework_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, framework: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, framework, None)
    monkeypatch.delitem(sys.modules, f"dropkit.integrations.{module}", raising=False)
    with pytest.raises(ImportError) as raised:
        importlib.import_module(f"dropkit.integrations.{module}")
    message = str(raised.value)
    assert f'pip install "dropkit[{extra}]"' in message and "\n" not in message


# --- docs/integrations.md -------------------------------------------------------------------

DOCS = Path(__file__).parent.parent / "docs" / "integrations.md"


def _examples(heading: str) -> list[tuple[str, str]]:
    """The ```python blocks of a section of docs/integrations.md, each with the output shown
    after it."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```.*?```text\n(.*?)```", section, flags=re.DOTALL)


def _run_example(code: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, str(DOCS), "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.strip().splitlines()
    lines = expected.strip().splitlines()
    assert printed[-len(lines) :] == lines


@pytest.mark.parametrize("heading", ["## PyTorch Lightning", "## Early dropout"])
def test_the_docs_examples_run(
    heading: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    examples = _examples(heading)
    assert len(examples) == 1
    _run_example(*examples[0], capsys)
