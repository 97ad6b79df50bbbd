"""Surgery (insert/set/find dropout), the max-norm constraint and rate schedules."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dropkit
from dropkit.schedules import scheduled_rate


class Custom(nn.Module):
    """A model whose forward uses functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TestFindAndSet:
    def test_finds_dropkit_and_torch_modules(self) -> None:
        net = nn.Sequential(
            nn.Linear(4, 8),
            dropkit.Dropout(0.3),
            nn.Sequential(nn.Dropout(0.2), nn.AlphaDropout(0.1)),
        )
        found = dropkit.find_dropout(net)
        assert [name for name, _ in found] == ["1", "2.0", "2.1"]

    def test_set_dropout_changes_every_rate(self) -> None:
        net = nn.Sequential(dropkit.Dropout(0.3), nn.Dropout(0.2), dropkit.SpatialDropout2d(0.1))
        assert dropkit.set_dropout(net, 0.45) is net
        assert [m.p for _, m in dropkit.find_dropout(net)] == [0.45, 0.45, 0.45]

    def test_set_dropout_validates(self) -> None:
        with pytest.raises(ValueError, match="Did you pass a percentage"):
            dropkit.set_dropout(nn.Sequential(nn.Dropout()), 50)


class TestInsertDropout:
    def test_sequential_after_activation_not_after_output(self) -> None:
        net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
        dropkit.insert_dropout(net, 0.4)
        kinds = [type(m).__name__ for m in net]
        assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
        assert net[2].p == 0.4

    def test_layer_without_activation_and_input_dropout(self) -> None:
        net = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 1))
        dropkit.insert_dropout(net, 0.5, input_p=0.2)
        assert [type(m).__name__ for m in net] == ["Dropout", "Linear", "Dropout", "Linear"]
        assert (net[0].p, net[2].p) == (0.2, 0.5)

    def test_new_layers_follow_the_model_mode(self) -> None:
        net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)).eval()
        dropkit.insert_dropout(net, 0.4, input_p=0.1)
        assert not any(m.training for _, m in dropkit.find_dropout(net))

    def test_repeated_modules_are_kept(self) -> None:
        shared_act, shared_lin = nn.ReLU(), nn.Linear(4, 4)
        net = nn.Sequential(
            nn.Linear(2, 4), shared_act, shared_lin, shared_act, shared_lin, nn.Linear(4, 1)
        )
        dropkit.insert_dropout(net, 0.5)
        kinds = [type(m).__name__ for m in net._modules.values()]
        assert kinds == [
            "Linear",
            "ReLU",
            "Dropout",
            "Linear",
            "ReLU",
            "Dropout",
            "Linear",
            "Dropout",
            "Linear",
        ]

    def test_dropout_after_a_nested_block_counts(self) -> None:
        net = nn.Sequential(
            nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Dropout(0.5), nn.Linear(4, 1)
        )
        dropkit.insert_dropout(net, 0.3)
        assert [n for n, _ in dropkit.find_dropout(net)] == ["1"]

    def test_idempotent(self) -> None:
        net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        dropkit.insert_dropout(net, 0.4, input_p=0.1)
        dropkit.insert_dropout(net, 0.4, input_p=0.1)
        assert len(dropkit.find_dropout(net)) == 2

    def test_skip_last_false_and_other_types(self) -> None:
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        dropkit.insert_dropout(net, 0.1, after=nn.Conv2d, skip_last=False)
        assert [type(m).__name__ for m in net] == ["Conv2d", "ReLU", "Dropout", "Conv2d", "Dropout"]

    def test_custom_module_keeps_state_dict_keys_and_works(self) -> None:
        model = Custom()
        keys = list(model.state_dict())
        x = torch.randn(64, 4)
        model.eval()
        before = model(x)
        dropkit.insert_dropout(model, 0.5, input_p=0.1)
        assert list(model.state_dict()) == keys
        assert [n for n, _ in dropkit.find_dropout(model)] == [
            "fc1.dropout",
            "fc2.dropout",
            "input_dropout",
        ]
        assert torch.equal(model(x), before), "eval mode: the inserted dropout is the identity"
        model.train()
        assert not torch.equal(model(x), model(x))
        restored = pickle.loads(pickle.dumps(model))
        copied = copy.deepcopy(model)
        restored.eval()
        copied.eval()
        assert torch.equal(restored(x), before) and torch.equal(copied(x), before)

    def test_hook_drops_the_layer_output(self) -> None:
        layer_model = Custom()
        dropkit.insert_dropout(layer_model, 1.0)
        layer_model.train()
        # p=1 after fc1 and fc2: the output layer sees zeros, so the output is its bias.
        out = layer_model(torch.randn(5, 4))
        assert torch.allclose(out, layer_model.out.bias.expand(5, 3))

    def test_bad_arguments(self) -> None:
        with pytest.raises(TypeError, match="`after` must be nn.Module subclasses"):
            dropkit.insert_dropout(nn.Sequential(), 0.5, after=(int,))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="`input_p` must be in"):
            dropkit.insert_dropout(nn.Sequential(), 0.5, input_p=2.0)


class TestMaxNorm:
    def test_linear_rows(self) -> None:
        layer = nn.Linear(5, 3)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[3.0, 4.0, 0, 0, 0], [0.3, 0.4, 0, 0, 0], [0.0] * 5]))
        small_row = layer.weight[1].clone()
        dropkit.max_norm_(layer, 2.0)
        norms = layer.weight.norm(dim=1)
        assert norms[0].item() == pytest.approx(2.0)
        assert torch.equal(layer.weight[1], small_row), "rows within the bound are bit-identical"
        assert torch.equal(layer.weight[2], torch.zeros(5)), "zero rows stay zero, no NaN"

    def test_conv_whole_filters(self) -> None:
        conv = nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            conv.weight.mul_(100)
        dropkit.max_norm_(conv, 1.5)
        norms = conv.weight.flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full((4,), 1.5))

    def test_transposed_conv_units_are_dim_1(self) -> None:
        conv = nn.ConvTranspose2d(3, 4, 3)
        with torch.no_grad():
            conv.weight.mul_(100)
        dropkit.max_norm_(conv, 1.0)
        norms = conv.weight.transpose(0, 1).flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.ones(4))

    def test_whole_model_and_dim_override(self) -> None:
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(5.0)
        dropkit.max_norm_(model, 1.0, dim=1)  # columns instead of rows
        assert model[0].weight.norm(dim=0).max().item() == pytest.approx(1.0)
        assert model[0].bias.max().item() == 5.0, "biases are not constrained"

    def test_parametrized_weight_is_constrained_at_its_source(self) -> None:
        class Scale(nn.Module):
            def forward(self, weight: torch.Tensor) -> torch.Tensor:
                return weight * 1.0

        layer = nn.Linear(4, 3)
        torch.nn.utils.parametrize.register_parametrization(layer, "weight", Scale())
        with torch.no_grad():
            layer.parametrizations.weight.original.mul_(50)
        dropkit.max_norm_(layer, 0.5)
        torch.testing.assert_close(layer.weight.norm(dim=1), torch.full((3,), 0.5))

    def test_weight_norm_is_refused(self) -> None:
        layer = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
        with pytest.raises(ValueError, match="computed by a parametrization from several tensors"):
            dropkit.max_norm_(layer, 0.5)

    def test_dim_out_of_range(self) -> None:
        with pytest.raises(
            ValueError, match=r"`dim` must be in \[-2, 1\] for the 2-D weight of Linear, got 5"
        ):
            dropkit.max_norm_(nn.Linear(2, 2), 1.0, dim=5)

    @pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
    def test_refuses_bad_bound(self, bad: float) -> None:
        with pytest.raises(ValueError, match="`max_norm` must be a finite number > 0"):
            dropkit.max_norm_(nn.Linear(2, 2), bad)

    def test_after_every_optimizer_step(self) -> None:
        model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
        handle = dropkit.MaxNorm(0.5).attach(optimizer, model)
        x, y = torch.randn(64, 4), torch.randn(64, 1)
        for _ in range(5):
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
            assert model[0].weight.norm(dim=1).max().item() <= 0.5 + 1e-6
        handle.remove()
        with torch.no_grad():
            model[0].weight.mul_(100)
        optimizer.step()
        assert model[0].weight.norm(dim=1).max().item() > 0.5, "removed hook no longer applies"
        assert repr(dropkit.MaxNorm(3.0)) == "MaxNorm(max_norm=3.0)"


class TestSchedules:
    @pytest.mark.parametrize(
        ("schedule", "expected"),
        [
            ("constant", [0.4, 0.4, 0.4, 0.4, 0.4]),
            ("linear", [0.0, 0.1, 0.2, 0.3, 0.4]),
            ("early", [0.4, 0.4, 0.0, 0.0, 0.0]),
            ("late", [0.0, 0.0, 0.4, 0.4, 0.4]),
        ],
    )
    def test_rates(self, schedule: str, expected: list[float]) -> None:
        rates = [scheduled_rate(schedule, 0.4, step, 4) for step in range(5)]
        assert rates == pytest.approx(expected)

    def test_drives_every_module_in_proportion(self) -> None:
        model = nn.Sequential(dropkit.Dropout(0.2), nn.Linear(2, 2), nn.Dropout(0.5))
        schedule = dropkit.DropoutSchedule(model, "linear", total_steps=10, start=0.5)
        assert (model[0].p, model[2].p) == pytest.approx((0.1, 0.25))
        for _ in range(10):
            schedule.step()
        assert (model[0].p, model[2].p) == pytest.approx((0.2, 0.5))
        schedule.step()  # past the end the last rate holds
        assert model[2].p == pytest.approx(0.5)

    def test_early_dropout_turns_off_and_resumes(self) -> None:
        model = nn.Sequential(dropkit.Dropout(0.3))
        schedule = dropkit.DropoutSchedule(model, "early", total_steps=10, cutoff=0.3)
        for _ in range(3):
            schedule.step()
        assert model[0].p == 0.0
        state = schedule.state_dict()
        fresh = nn.Sequential(dropkit.Dropout(0.3))
        resumed = dropkit.DropoutSchedule(fresh, "early", total_steps=10, cutoff=0.3)
        resumed.load_state_dict(state)
        assert fresh[0].p == 0.0 and resumed.last_step == 3

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="`schedule` must be one of"):
            dropkit.DropoutSchedule(nn.Sequential(nn.Dropout()), "cosine", total_steps=3)
        with pytest.raises(ValueError, match="`total_steps` must be an int >= 1"):
            dropkit.DropoutSchedule(nn.Sequential(nn.Dropout()), total_steps=0)
        with pytest.raises(ValueError, match="has no dropout module"):
            dropkit.DropoutSchedule(nn.Linear(2, 2), total_steps=3)
        with pytest.raises(
            ValueError, match=r"`cutoff` must be in \[0, 1\] \(a fraction of training\)"
        ):
            scheduled_rate("early", 0.5, 0, 10, cutoff=2.0)
