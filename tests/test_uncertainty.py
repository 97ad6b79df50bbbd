"""Monte Carlo dropout: the mode switch, the batched sampler and the summary statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import dropkit
from dropkit.surgery import is_dropout, set_dropout
from dropkit.uncertainty import MCPrediction, mc_dropout, mc_predict


def classifier(n_classes: int = 4) -> nn.Sequential:
    """A small classifier with BatchNorm, a dropkit dropout and a torch dropout.

    Its BatchNorm has seen one training batch (running statistics that are not the defaults),
    and it is left in train mode: the usual state in which someone calls MC dropout by mistake.
    """
    net = nn.Sequential(
        nn.Linear(6, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        dropkit.Dropout(0.3),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(32, n_classes),
    )
    net.train()
    net(torch.randn(64, 6))
    return net


def without_dropout(n_out: int = 4) -> nn.Sequential:
    """The same network with no dropout at all, BatchNorm statistics already set."""
    net = nn.Sequential(nn.Linear(6, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, n_out))
    net(torch.randn(64, 6))
    return net


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same(a: MCPrediction, b: MCPrediction) -> None:
    for field in ("mean", "std", "samples", "entropy", "mutual_info"):
        left, right = getattr(a, field), getattr(b, field)
        assert (left is None and right is None) or torch.equal(left, right), field


def entropy(probs: Tensor) -> Tensor:
    """Reference entropy in nats over the last axis, written out."""
    logs = torch.where(probs > 0, probs.log(), torch.zeros_like(probs))
    return -(probs * logs).sum(-1)


class TestMCDropout:
    def test_dropout_trains_everything_else_evaluates(self) -> None:
        net = nn.Sequential(classifier(), nn.Sequential(nn.Dropout2d(0.1), nn.BatchNorm1d(4)))
        net.eval()
        with mc_dropout(net) as inside:
            assert inside is net
            modes = {name: m.training for name, m in net.named_modules()}
        expected = {name: is_dropout(m) for name, m in net.named_modules()}
        assert modes == expected
        assert modes["0.1"] is False and modes["1.1"] is False  # the BatchNorms
        assert modes["0.3"] and modes["0.6"] and modes["1.0"]  # dropkit, nn.Dropout, Dropout2d

    def test_restores_every_flag_exactly(self) -> None:
        net = classifier()
        for index, module in enumerate(net.modules()):  # a mixed state, on purpose
            module.training = index % 3 == 0
        before = [m.training for m in net.modules()]
        assert any(before) and not all(before)
        with mc_dropout(net):
            assert [m.training for m in net.modules()] != before
        assert [m.training for m in net.modules()] == before

    def test_restores_when_the_body_raises(self) -> None:
        net = classifier()
        net[1].eval()  # BatchNorm in eval, the rest in train
        dropout_layer = net[3]
        dropout_layer.eval()
        before = [m.training for m in net.modules()]
        seen: list[bool] = []

        def body() -> None:
            with mc_dropout(net):
                seen.append(dropout_layer.training)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            body()
        assert seen == [True]
        assert [m.training for m in net.modules()] == before

    def test_nested_contexts_restore_in_order(self) -> None:
        net = classifier().eval()
        with mc_dropout(net):
            with mc_dropout(net):
                pass
            assert net[3].training and not net[1].training
        assert not any(m.training for m in net.modules())


class TestMCPredict:
    def test_leaves_batchnorm_statistics_and_modes_alone(self) -> None:
        net = classifier()
        buffers = {name: b.clone() for name, b in net.named_buffers()}
        assert set(buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
        modes = [m.training for m in net.modules()]
        mc_predict(net, torch.randn(9, 6), n_samples=20, generator=seeded(0))
        for name, value in net.named_buffers():
            assert torch.equal(value, buffers[name]), name
        assert [m.training for m in net.modules()] == modes

    def test_shapes(self) -> None:
        pred = mc_predict(classifier(n_classes=4), torch.randn(5, 6), n_samples=11)
        assert pred.mean.shape == pred.std.shape == (5, 4)
        assert pred.samples.shape == (11, 5, 4)
        assert pred.entropy is not None and pred.entropy.shape == (5,)
        assert pred.mutual_info is not None and pred.mutual_info.shape == (5,)
        assert not pred.mean.requires_grad  # computed under no_grad

    def test_shapes_with_a_sequence_axis(self) -> None:
        net = nn.Sequential(nn.Linear(6, 16), dropkit.Dropout(0.3), nn.Linear(16, 3))
        pred = mc_predict(net, torch.randn(2, 7, 6), n_samples=4)
        assert pred.samples.shape == (4, 2, 7, 3)
        assert pred.entropy is not None and pred.entropy.shape == (2, 7)

    def test_probabilities_sum_to_one(self) -> None:
        pred = mc_predict(classifier(), torch.randn(8, 6), n_samples=30)
        ones = torch.ones(8)
        torch.testing.assert_close(pred.mean.sum(-1), ones)
        torch.testing.assert_close(pred.samples.sum(-1), ones.expand(30, 8))
        assert (pred.samples >= 0).all()

    def test_statistics_match_their_definitions(self) -> None:
        pred = mc_predict(classifier(), torch.randn(8, 6), n_samples=40, generator=seeded(1))
        p = pred.samples.double()
        torch.testing.assert_close(pred.mean.double(), p.mean(0))
        torch.testing.assert_close(pred.std.double(), p.std(0, correction=0))
        h_mean = entropy(p.mean(0))
        assert pred.entropy is not None and pred.mutual_info is not None
        torch.testing.assert_close(pred.entropy.double(), h_mean)
        bald = (h_mean - entropy(p).mean(0)).clamp_min(0)
        torch.testing.assert_close(pred.mutual_info.double(), bald, atol=1e-6, rtol=1e-5)

    def test_entropy_and_mutual_info_bounds(self) -> None:
        pred = mc_predict(classifier(n_classes=5), torch.randn(50, 6), n_samples=30)
        assert pred.entropy is not None and pred.mutual_info is not None
        assert (pred.entropy >= 0).all() and (pred.entropy <= math.log(5) + 1e-6).all()
        assert (pred.mutual_info >= 0).all()
        assert (pred.mutual_info <= pred.entropy + 1e-6).all()
        assert (pred.mutual_info > 0).any()  # the dropout is on: the samples disagree

    def test_same_seed_same_result_different_seed_different(self) -> None:
        net, x = classifier(), torch.randn(6, 6)
        first = mc_predict(net, x, n_samples=10, generator=seeded(7))
        assert_same(first, mc_predict(net, x, n_samples=10, generator=seeded(7)))
        assert not torch.equal(
            first.samples, mc_predict(net, x, n_samples=10, generator=seeded(8)).samples
        )

    def test_generator_leaves_the_global_rng_untouched(self) -> None:
        net, x = classifier(), torch.randn(6, 6)
        state = torch.get_rng_state()
        mc_predict(net, x, n_samples=10, generator=seeded(7))
        assert torch.equal(torch.get_rng_state(), state)

    def test_without_generator_the_global_rng_is_used(self) -> None:
        net, x = classifier(), torch.randn(6, 6)
        torch.manual_seed(3)
        first = mc_predict(net, x, n_samples=10)
        second = mc_predict(net, x, n_samples=10)
        assert not torch.equal(first.samples, second.samples)
        torch.manual_seed(3)
        assert_same(first, mc_predict(net, x, n_samples=10))

    def test_global_rng_restored_when_the_model_raises(self) -> None:
        class Failing(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.drop = nn.Dropout(0.5)

            def forward(self, x: Tensor) -> Tensor:
                self.drop(x)  # consumes random numbers, then fails
                raise RuntimeError("model failed")

        net, x = Failing().eval(), torch.randn(3, 2)
        state = torch.get_rng_state()
        with pytest.raises(RuntimeError, match="model failed"):
            mc_predict(net, x, generator=seeded(0))
        assert torch.equal(torch.get_rng_state(), state)
        assert not net.training and not net.drop.training

    def test_dropkit_layers_with_their_own_generator_keep_it(self) -> None:
        # The layer draws from its own generator: mc_predict's seed does not reach it, and
        # re-seeding the layer's generator is what makes the result repeat.
        layer = dropkit.Dropout(0.5, generator=seeded(5))
        net, x = nn.Sequential(nn.Linear(6, 16), layer), torch.randn(4, 6)
        first = mc_predict(net, x, n_samples=5, generator=seeded(0), task="regression")
        second = mc_predict(net, x, n_samples=5, generator=seeded(0), task="regression")
        assert not torch.equal(first.samples, second.samples)
        layer.generator = seeded(5)
        assert_same(first, mc_predict(net, x, n_samples=5, generator=seeded(0), task="regression"))

    def test_batch_size(self) -> None:
        # The batch size decides how the masks are drawn: with all samples in one pass each
        # dropout layer draws once for every sample, with one sample per pass the layers take
        # turns. So the same seed gives the same samples only for the same batch size (this is
        # the documented contract), and different batch sizes agree in distribution.
        net, x, n = classifier(), torch.randn(4, 6), 400
        runs = {
            bs: mc_predict(net, x, n_samples=n, generator=seeded(3), batch_size=bs)
            for bs in (1, 7, None)
        }
        for bs, pred in runs.items():
            assert pred.samples.shape == (n, 4, 4)
            assert_same(pred, mc_predict(net, x, n_samples=n, generator=seeded(3), batch_size=bs))
        assert not torch.equal(runs[1].samples, runs[None].samples)
        assert_same(
            runs[None], mc_predict(net, x, n_samples=n, generator=seeded(3), batch_size=10**6)
        )
        # Two independent estimates of the same mean: the difference has standard error
        # sqrt(std_a²/n + std_b²/n); allow 5 of them (plus float slack for zero-spread cells).
        for a, b in [(runs[1], runs[None]), (runs[7], runs[None])]:
            se = ((a.std**2 + b.std**2) / n).sqrt()
            assert ((a.mean - b.mean).abs() <= 5 * se + 1e-6).all()

    @pytest.mark.parametrize("batch_size", [1, 7, None])
    def test_model_without_dropout_has_zero_spread(self, batch_size: int | None) -> None:
        net = without_dropout()
        x = torch.randn(33, 6)
        pred = mc_predict(net, x, n_samples=50, batch_size=batch_size)
        assert pred.mutual_info is not None
        assert torch.equal(pred.std, torch.zeros_like(pred.std))
        assert torch.equal(pred.mutual_info, torch.zeros_like(pred.mutual_info))
        assert torch.equal(pred.mean, pred.samples[0])
        torch.testing.assert_close(pred.mean, torch.softmax(net.eval()(x), -1))

    def test_dropout_at_zero_rate_has_zero_spread(self) -> None:
        net = set_dropout(classifier(), 0.0)
        pred = mc_predict(net, torch.randn(5, 6), n_samples=20)
        assert torch.equal(pred.std, torch.zeros_like(pred.std))

    def test_regression(self) -> None:
        net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), dropkit.Dropout(0.5), nn.Linear(32, 2))
        pred = mc_predict(net, torch.randn(5, 6), n_samples=25, task="regression")
        assert pred.entropy is None and pred.mutual_info is None
        assert pred.mean.shape == pred.std.shape == (5, 2)
        assert pred.samples.shape == (25, 5, 2)
        assert (pred.samples < 0).any()  # raw outputs, not probabilities
        assert (pred.std > 0).all()

    def test_regression_keeps_float64(self) -> None:
        net = nn.Sequential(nn.Linear(3, 8), dropkit.Dropout(0.2), nn.Linear(8, 1)).double()
        pred = mc_predict(net, torch.randn(4, 3, dtype=torch.float64), task="regression")
        assert pred.mean.dtype == pred.samples.dtype == torch.float64

    def test_binary_single_logit(self) -> None:
        net = classifier(n_classes=1)
        pred = mc_predict(net, torch.randn(6, 6), n_samples=30)
        assert pred.mean.shape == (6, 2) and pred.samples.shape == (30, 6, 2)
        torch.testing.assert_close(pred.samples.sum(-1), torch.ones(30, 6))
        assert pred.entropy is not None and (pred.entropy <= math.log(2) + 1e-6).all()

    def test_binary_single_logit_without_dropout_is_the_sigmoid(self) -> None:
        net, x = without_dropout(n_out=1), torch.randn(6, 6)
        pred = mc_predict(net, x, n_samples=3)
        z = net.eval()(x)
        torch.testing.assert_close(
            pred.mean, torch.cat([1 - torch.sigmoid(z), torch.sigmoid(z)], -1)
        )

    def test_mean_approaches_the_deterministic_output(self) -> None:
        # Inverted dropout keeps the expectation, and a linear layer passes it on: the mean of
        # the MC samples estimates the eval-mode output. Per input, the sample mean of n draws
        # has standard error std / sqrt(n) (std of the n draws, n large enough for the normal
        # approximation); a correct mean lands outside 5 of them with probability ~6e-7.
        linear = nn.Linear(20, 1)
        nn.init.normal_(linear.weight)
        net = nn.Sequential(dropkit.Dropout(0.5), linear)
        x, n = torch.randn(16, 20), 4000
        pred = mc_predict(net, x, n_samples=n, generator=seeded(11), task="regression")
        exact = net.eval()(x)
        se = pred.std / math.sqrt(n)
        assert (se > 0).all()
        assert ((pred.mean - exact).abs() <= 5 * se).all()

    @pytest.mark.parametrize("batch_size", [1, None])
    def test_in_place_input_dropout_leaves_x_alone(self, batch_size: int | None) -> None:
        net = nn.Sequential(nn.Dropout(0.5, inplace=True), nn.Linear(4, 2))
        x = torch.randn(3, 4)
        before = x.clone()
        pred = mc_predict(net, x, n_samples=4, batch_size=batch_size, task="regression")
        assert torch.equal(x, before)
        assert (pred.std > 0).all()

    def test_numpy_integer_sample_count(self) -> None:
        pred = mc_predict(classifier(), torch.randn(2, 6), n_samples=np.int64(3))
        assert pred.samples.shape[0] == 3

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda_reproducible_and_global_rngs_untouched(self) -> None:
        net, x = classifier().cuda(), torch.randn(6, 6, device="cuda")
        cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
        first = mc_predict(net, x, n_samples=10, generator=seeded(7))
        assert torch.equal(torch.get_rng_state(), cpu)
        assert torch.equal(torch.cuda.get_rng_state(), gpu)
        assert first.mean.is_cuda
        assert_same(first, mc_predict(net, x, n_samples=10, generator=seeded(7)))


class TestArguments:
    @pytest.mark.parametrize("value", [0, -3])
    def test_n_samples_range(self, value: int) -> None:
        with pytest.raises(ValueError, match=rf"`n_samples` must be an int >= 1, got {value}"):
            mc_predict(classifier(), torch.randn(2, 6), n_samples=value)

    @pytest.mark.parametrize("value", [2.0, True, "5", None])
    def test_n_samples_type(self, value: object) -> None:
        with pytest.raises(TypeError, match=r"`n_samples` must be an int >= 1, got .* of type"):
            mc_predict(classifier(), torch.randn(2, 6), n_samples=value)  # type: ignore[arg-type]

    def test_batch_size(self) -> None:
        with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1 or None, got 0"):
            mc_predict(classifier(), torch.randn(2, 6), batch_size=0)
        with pytest.raises(TypeError, match=r"`batch_size` must be an int >= 1 or None, got 4\.0"):
            mc_predict(classifier(), torch.randn(2, 6), batch_size=4.0)  # type: ignore[arg-type]

    def test_task(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"`task` must be one of 'classification', 'regression', got 'classify'",
        ):
            mc_predict(classifier(), torch.randn(2, 6), task="classify")

    def test_generator(self) -> None:
        with pytest.raises(
            TypeError, match=r"`generator` must be a torch.Generator or None, got int"
        ):
            mc_predict(classifier(), torch.randn(2, 6), generator=3)  # type: ignore[arg-type]

    def test_input(self) -> None:
        with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor, got list"):
            mc_predict(classifier(), [[0.0] * 6])  # type: ignore[arg-type]
        with pytest.raises(
            ValueError,
            match=r"mc_predict expects an input of at least 1 dimension .* got a 0-D input",
        ):
            mc_predict(classifier(), torch.tensor(1.0))

    def test_model_output_not_a_tensor(self) -> None:
        class Pair(nn.Module):
            def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
                return x, x

        with pytest.raises(
            TypeError, match=r"mc_predict expects the model to return a torch.Tensor, got tuple"
        ):
            mc_predict(Pair(), torch.randn(2, 3))

    def test_model_output_without_batch_axis(self) -> None:
        net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))  # (N, 1) -> (N,)
        with pytest.raises(
            ValueError,
            match=r"\(N, \*, C\) of logits of at least 2 dimensions .* shape \(10,\)\. For one binary logit per input return shape \(N, 1\)\.",
        ):
            mc_predict(net, torch.randn(2, 3), n_samples=5)
        # the same model is fine for regression
        assert mc_predict(net, torch.randn(2, 3), n_samples=5, task="regression").mean.shape == (2,)

        class Total(nn.Module):
            def forward(self, x: Tensor) -> Tensor:
                return x.sum(0)

        with pytest.raises(ValueError, match=r"for an input of 10 rows it returned shape \(3,\)"):
            mc_predict(Total(), torch.randn(2, 3), n_samples=5, task="regression")


class TestOtherStochasticModules:
    """MC sampling also switches on dropkit's weight-level, learned and recurrent dropout."""

    @staticmethod
    def _spread(model: nn.Module, x: torch.Tensor) -> float:
        model.eval()
        prediction = mc_predict(model, x, n_samples=20, generator=torch.Generator().manual_seed(3))
        assert not any(m.training for m in model.modules()), "modes restored"
        return float(prediction.std.max())

    def test_drop_connect_modules(self) -> None:
        x = torch.randn(5, 4)
        linear = nn.Sequential(dropkit.DropConnectLinear(4, 8, 0.5), nn.ReLU(), nn.Linear(8, 3))
        param = nn.Sequential(nn.Linear(4, 8), dropkit.DropConnect.apply(nn.Linear(8, 3), 0.5))
        assert self._spread(linear, x) > 0
        assert self._spread(param, x) > 0

    def test_shared_masks_give_one_sample_per_pass(self) -> None:
        """A per-pass weight mask: batching samples into one pass would make them identical."""
        model = nn.Sequential(dropkit.DropConnectLinear(4, 3, 0.5))
        model.eval()
        prediction = mc_predict(model, torch.randn(2, 4), n_samples=8, task="regression")
        distinct = {tuple(sample.flatten().tolist()) for sample in prediction.samples}
        assert len(distinct) > 1

    def test_embedding_weight_drop_concrete_and_rnn(self) -> None:
        embed = nn.Sequential(
            dropkit.EmbeddingDropout(nn.Embedding(10, 4), 0.5), nn.Flatten(), nn.Linear(8, 3)
        )
        assert self._spread(embed, torch.randint(0, 10, (5, 2))) > 0
        concrete = nn.Sequential(dropkit.ConcreteDropout(nn.Linear(4, 3), init_p=0.3))
        assert self._spread(concrete, torch.randn(5, 4)) > 0

        class Head(nn.Module):
            def __init__(self, rnn: nn.Module) -> None:
                super().__init__()
                self.rnn, self.out = rnn, nn.Linear(6, 2)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.out(self.rnn(x)[0][:, -1])

        sequences = torch.randn(3, 7, 4)
        assert (
            self._spread(Head(dropkit.WeightDrop(nn.LSTM(4, 6, batch_first=True), 0.5)), sequences)
            > 0
        )
        assert self._spread(Head(dropkit.LSTM(4, 6, recurrent_dropout=0.3)), sequences) > 0


def test_mc_predict_takes_a_model_output_objects_logits() -> None:
    """A Hugging Face-style output object (``.logits``) is summarized like the tensor."""

    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> Output:
            return Output(self.net(x))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.randn(5, 4)
    plain = mc_predict(net, x, n_samples=10, generator=torch.Generator().manual_seed(1))
    wrapped = mc_predict(Wrapped(net), x, n_samples=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.samples, wrapped.samples)
