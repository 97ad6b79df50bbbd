"""dropkit.integrations.transformers in real ``transformers.Trainer.train`` runs on tiny models
built from configs (no downloads)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import dropkit

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it: dropkit[transformers] installs it

from dropkit.integrations.transformers import (  # noqa: E402
    DropoutCheckCallback,
    DropoutScheduleCallback,
    MaxNormCallback,
    mc_predict,
)

LENGTH = 8


class Tokens(Dataset[dict[str, torch.Tensor]]):
    """Random token sequences with random labels: enough to run training steps."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, LENGTH), generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


def _bert(hidden: float = 0.1, attention: float = 0.1) -> Any:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=hidden,
        attention_probs_dropout_prob=attention,
    )
    return transformers.BertForSequenceClassification(config)


def _train(model: nn.Module, tmp_path: Path, callbacks: list[Any], **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 8,
        "num_train_epochs": 2,
        "report_to": [],
        "use_cpu": True,
        "logging_strategy": "no",
        "save_strategy": "no",
        "disable_tqdm": True,
    }
    args = transformers.TrainingArguments(**{**options, **kwargs})
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(), callbacks=callbacks
    )
    trainer.train()
    return trainer


class _Probe(transformers.TrainerCallback):  # type: ignore[misc]
    """Records the rate of one dropout module at each step and the largest Linear row norm
    after it."""

    def __init__(self) -> None:
        self.rates: list[tuple[int, float]] = []
        self.norms: list[float] = []

    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **_: Any
    ) -> None:
        self.rates.append((state.global_step, float(model.bert.encoder.layer[0].output.dropout.p)))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        self.norms.append(
            max(
                float(m.weight.detach().norm(dim=1).max())
                for m in model.modules()
                if isinstance(m, nn.Linear)
            )
        )


def test_the_schedule_sets_the_rate_at_each_step_and_logs_it(tmp_path: Path) -> None:
    model = _bert(hidden=0.2)
    schedule = dropkit.DropoutSchedule(model, "early", total_steps=8, cutoff=0.5)
    probe = _Probe()
    trainer = _train(
        model,
        tmp_path,
        [DropoutScheduleCallback(schedule), probe],
        logging_strategy="steps",
        logging_steps=2,
    )
    assert probe.rates == [(s, 0.2 if s < 4 else 0.0) for s in range(8)]
    # The attention-probability dropout (a module HF attention reads `p` from) is driven too.
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.0
    logged = [(row["step"], row["dropout_p"]) for row in trainer.state.log_history if "loss" in row]
    assert logged == [(2, 0.2), (4, 0.2), (6, 0.0), (8, 0.0)]


def test_the_schedule_by_epoch_under_gradient_accumulation(tmp_path: Path) -> None:
    model = _bert(hidden=0.3)
    schedule = dropkit.DropoutSchedule(model, "linear", total_steps=2)
    probe = _Probe()
    _train(
        model,
        tmp_path,
        [DropoutScheduleCallback(schedule, interval="epoch"), probe],
        gradient_accumulation_steps=2,
    )
    assert probe.rates == [(0, 0.0), (1, 0.0), (2, 0.15), (3, 0.15)]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_max_norm_holds_after_every_optimizer_step(tmp_path: Path, accumulate: int) -> None:
    probe = _Probe()
    _train(
        _bert(),
        tmp_path,
        [MaxNormCallback(0.05), probe],
        learning_rate=1.0,
        gradient_accumulation_steps=accumulate,
    )
    assert len(probe.norms) == 8 // accumulate and max(probe.norms) <= 0.05 + 1e-6

    unconstrained = _Probe()
    _train(_bert(), tmp_path, [unconstrained], learning_rate=1.0, max_steps=2)
    assert max(unconstrained.norms) > 0.05


def _with_tail_dropout() -> Any:
    model = _bert()
    model.classifier = nn.Sequential(nn.Linear(16, 3), nn.Dropout(0.5))
    return model


def test_check_raises_or_warns_on_a_dropout_mistake(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="dropout mistakes in BertForSequenceClassification"):
        _train(_with_tail_dropout(), tmp_path, [DropoutCheckCallback()], max_steps=1)
    callback = DropoutCheckCallback(on_error="warn")
    with pytest.warns(UserWarning, match="comes after"):
        _train(_with_tail_dropout(), tmp_path, [callback], max_steps=1)
    assert [f.module for f in callback.findings if f.check == "after-output"] == ["classifier.1"]


def test_check_passes_a_sound_model_loaded_in_eval_mode(tmp_path: Path) -> None:
    model = _bert()
    model.eval()  # as from_pretrained returns it: the Trainer calls model.train()
    callback = DropoutCheckCallback(example_input={"input_ids": Tokens().ids[:2]})
    _train(model, tmp_path, [callback], max_steps=1)
    assert not [f for f in callback.findings if f.severity == "warning"]


class FrozenEncoder(transformers.BertForSequenceClassification):  # type: ignore[misc]
    """A common mistake: train() keeps a frozen encoder in eval mode, dropout included."""

    def train(self, mode: bool = True) -> FrozenEncoder:
        super().train(mode)
        self.bert.encoder.eval()
        return self


def test_check_catches_training_with_dropout_in_eval_mode(tmp_path: Path) -> None:
    model = FrozenEncoder(_bert().config)
    with pytest.warns(UserWarning, match=r"FrozenEncoder trains with 3 dropout site\(s\) in eval"):
        _train(model, tmp_path, [DropoutCheckCallback()], max_steps=1)


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    data = Tokens(n, seed=1)
    return {key: torch.stack([data[i][key] for i in range(n)]) for key in data[0]}


def test_mc_predict_on_a_batch_dict_samples_attention_dropout() -> None:
    model = _bert(hidden=0.0, attention=0.5)  # only the attention probabilities drop
    model.eval()
    batch = _batch()
    prediction = mc_predict(model, batch, n_samples=16, generator=torch.Generator().manual_seed(0))
    assert prediction.samples.shape == (16, 4, 3) and prediction.mean.shape == (4, 3)
    assert float(prediction.std.max()) > 0 and prediction.mutual_info is not None
    again = mc_predict(model, batch, n_samples=16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.samples, prediction.samples)
    assert not any(m.training for m in model.modules())  # modes restored
    chunked = mc_predict(model, batch, n_samples=16, batch_size=5)
    assert chunked.samples.shape == (16, 4, 3)


def test_mc_predict_without_dropout_gives_zero_spread() -> None:
    prediction = mc_predict(_bert(hidden=0.0, attention=0.0), _batch(), n_samples=4)
    assert float(prediction.std.max()) == 0.0


def test_mc_predict_refuses_what_it_cannot_use() -> None:
    model = _bert()
    with pytest.raises(TypeError, match="`batch` must be a mapping"):
        mc_predict(model, _batch()["input_ids"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`batch` has no tensor"):
        mc_predict(model, {"labels": torch.zeros(2)})
    with pytest.raises(TypeError, match="`model` must be"):
        mc_predict("bert", _batch())  # type: ignore[arg-type]


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


@pytest.mark.slow
@pytest.mark.filterwarnings(
    # The example leaves the Trainer's device choice to it; on a machine without a GPU:
    "ignore:'pin_memory' argument is set as true but no accelerator is found"
)
def test_the_docs_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    examples = _examples("## Hugging Face")
    assert len(examples) == 1
    _run_example(*examples[0], capsys)
