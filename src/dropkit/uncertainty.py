"""Monte Carlo dropout: predictive uncertainty from a network trained with dropout.

Gal & Ghahramani (2016) show that a network trained with dropout is an approximate Bayesian
model, and that keeping dropout on at test time samples from its approximate posterior: T
forward passes with independent dropout masks give T predictions whose spread is the model's
(epistemic) uncertainty. Only dropout is switched on. Every other module stays in eval mode:
above all BatchNorm, which in train mode would normalize with the statistics of the test batch
(so each prediction would depend on the other inputs) and overwrite its running statistics.

:func:`mc_dropout` is the mode switch alone; :func:`mc_predict` runs the T passes and returns
an :class:`MCPrediction` with the predictive mean, std, entropy and mutual information (BALD).

References:
    Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty in
    Deep Learning", ICML 2016. https://arxiv.org/abs/1506.02142

    Houlsby, Huszár, Ghahramani & Lengyel, "Bayesian Active Learning for Classification and
    Preference Learning", 2011. https://arxiv.org/abs/1112.5745
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dropkit._float_dropout import gates_own_dropout
from dropkit._validation import (
    check_batch_output,
    check_generator,
    check_min_ndim,
    check_one_of,
    check_positive_int,
    check_tensor,
)
from dropkit.concrete import ConcreteDropout
from dropkit.recurrent import GRU, LSTM
from dropkit.surgery import is_dropout
from dropkit.weights import DropConnect, DropConnectLinear, EmbeddingDropout, WeightDrop

__all__ = ["TASKS", "MCPrediction", "mc_dropout", "mc_predict"]

TASKS: tuple[str, ...] = ("classification", "regression")
"""The values of ``mc_predict(task=...)``."""

_OP = "mc_predict"

# dropkit modules that draw masks in training besides the dropout layers: the weight-level ones
# (DropConnect, DropConnectLinear, WeightDrop, EmbeddingDropout: all rate-carrying `Rated`),
# ConcreteDropout and the variational LSTM/GRU.
_STOCHASTIC: tuple[type, ...] = (
    DropConnect,
    DropConnectLinear,
    WeightDrop,
    EmbeddingDropout,
    ConcreteDropout,
    LSTM,
    GRU,
)


def _masks_shared_by_rows(model: nn.Module) -> bool:
    """Whether a forward pass draws masks shared by all its rows (weight-level dropout).

    Then the rows of one pass are not independent samples, and :func:`mc_predict` computes one
    sample per pass.
    """
    return any(
        isinstance(m, (DropConnect, WeightDrop, EmbeddingDropout))
        or (isinstance(m, DropConnectLinear) and not m.per_sample)
        for m in model.modules()
    )


def _samples_in_mc(module: nn.Module) -> bool:
    """Whether ``module`` is switched to training (mask drawing) under :func:`mc_dropout`."""
    return is_dropout(module) or isinstance(module, _STOCHASTIC) or gates_own_dropout(module)


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Within the ``with`` body, dropout trains and every other module evaluates.

    Dropout modules are dropkit's layers and PyTorch's (:func:`dropkit.surgery.is_dropout`), plus
    dropkit's other mask-drawing modules: ``DropConnect``, ``DropConnectLinear``, ``WeightDrop``,
    ``EmbeddingDropout``, ``ConcreteDropout`` and the variational ``LSTM``/``GRU`` (MC
    DropConnect and MC variational RNNs). Every other module, BatchNorm above all, is put in eval
    mode, so it uses its running statistics and leaves them alone. On exit each module gets back
    its own ``training`` flag, exactly as it was (a model in a mixed state stays mixed), also
    when the body raises.

    Modules that apply dropout themselves, gated on their own ``training`` flag, are switched
    to training too, because that flag is their dropout switch:

    * ``nn.MultiheadAttention`` (attention-weight dropout), ``nn.TransformerEncoderLayer`` and
      ``nn.TransformerDecoderLayer``: in eval mode they take PyTorch's fused "fast path", which
      skips dropout, so every pass would be identical; in training mode they take the regular
      path and the dropout modules inside them draw masks. ``nn.LSTM``/``GRU``/``RNN`` with
      ``dropout=`` between layers.
    * Any module whose methods read ``self.training`` only to switch dropout:
      ``F.dropout(x, self.p, training=self.training)``,
      ``F.scaled_dot_product_attention(..., dropout_p=self.attn_drop if self.training else 0.)``,
      ``dropout=0.0 if not self.training else self.dropout.p`` (Hugging Face attention). This
      is read from the class's source; a module that also reads ``self.training`` for
      anything else stays in eval mode, and :func:`dropkit.checks.check_model` reports the
      dropout it leaves off (check ``mc-unreachable``).

    The flags are set per module (``module.training = ...``), not through ``model.train()``, so
    an overridden ``train()`` method is not called. No global setting is changed.
    :func:`dropkit.surgery.find_dropout_sites` lists every dropout with ``sampled`` saying
    whether this reaches it.

    Yields:
        ``model`` itself.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), Dropout(0.3), nn.Linear(8, 2))
        >>> with mc_dropout(net):
        ...     [m.training for m in net]
        [False, False, True, False]
        >>> net.training  # back as it was
        True
    """
    saved = [(module, module.training) for module in model.modules()]
    try:
        for module, _ in saved:
            module.training = _samples_in_mc(module)
        yield model
    finally:
        for module, training in saved:
            module.training = training


@dataclass(frozen=True)
class MCPrediction:
    r"""The summary of T Monte Carlo dropout predictions for a batch of N inputs.

    With ``y_t`` the t-th sample (t = 1..T): class probabilities for a classifier, raw outputs
    for a regressor,

    * ``mean = (1/T) Σ_t y_t``, the predictive mean;
    * ``std = sqrt((1/T) Σ_t (y_t - mean)²)``, element-wise: the spread of the samples (the
      1/T estimator of Gal & Ghahramani; their predictive variance adds the observation noise
      ``1/τ``, which a regressor has to add itself);
    * ``entropy = H[mean] = -Σ_c mean_c · log mean_c``, in nats: the total uncertainty of the
      averaged prediction, between 0 and log C;
    * ``mutual_info = H[mean] - (1/T) Σ_t H[y_t]``, in nats: BALD (Houlsby et al. 2011), the
      information the prediction would give about the weights, the epistemic part of the
      uncertainty. It is >= 0 (the entropy is concave); rounding can make it a hair negative,
      and such values are clamped to 0.

    A model without any active dropout gives the same sample T times: ``std`` is then exactly 0
    and ``mutual_info`` exactly 0 (the statistics are computed as offsets from the first
    sample, so identical samples give exact zeros).

    Attributes:
        mean: predictive mean, shape ``(N, *)``: for a classifier ``(N, *, C)``, probabilities
            that sum to 1 over the last axis.
        std: standard deviation of the samples, shape of ``mean``.
        samples: the T samples, shape ``(T, N, *)`` (``T = n_samples``): probabilities for a
            classifier, raw outputs for a regressor.
        entropy: predictive entropy, shape ``(N, *)`` without the class axis; None for a
            regressor.
        mutual_info: BALD mutual information, shape of ``entropy``; None for a regressor.

    References:
        Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty
        in Deep Learning", ICML 2016. https://arxiv.org/abs/1506.02142

        Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning",
        2011. https://arxiv.org/abs/1112.5745
    """

    mean: Tensor
    std: Tensor
    samples: Tensor
    entropy: Tensor | None = None
    mutual_info: Tensor | None = None


def mc_predict(
    model: nn.Module,
    x: Tensor,
    *,
    n_samples: int = 50,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    task: str = "classification",
) -> MCPrediction:
    """Predict ``x`` ``n_samples`` times with dropout on and summarize the predictions.

    Runs under ``torch.no_grad()`` and :func:`mc_dropout`: dropout trains, everything else
    (BatchNorm above all) evaluates, and every module's mode is restored afterwards. Buffers
    such as BatchNorm's running statistics are not changed.

    The samples are computed in batched form: ``x`` is repeated along its batch axis so that
    one forward pass computes ``batch_size`` samples of every input at once. Each row draws
    its own dropout masks, and in eval mode the other layers treat rows independently, so this
    is T independent passes, done faster. It assumes a batch-first model whose rows do not
    interact (not true of BatchNorm with ``track_running_stats=False``, which normalizes with
    the batch's statistics even in eval mode). Weight-level dropout (``DropConnect``,
    ``WeightDrop``, ``EmbeddingDropout``, ``DropConnectLinear`` without ``per_sample``) draws
    one mask per pass for all rows, so a model with it gets one sample per pass whatever
    ``batch_size`` says.

    Args:
        model: the network, trained with dropout. Its output must be one tensor with the batch
            axis first, or a Hugging Face output object whose ``logits`` are (a
            ``BertForSequenceClassification`` called on token ids, say).
        x: a batch of inputs, shape ``(N, *)``, on the model's device.
        n_samples: T, the number of Monte Carlo samples (>= 1). Default: 50.
        generator: makes the result reproducible. A seed is drawn from it and the passes run
            on PyTorch's global RNG seeded with it inside ``torch.random.fork_rng``, so the
            global RNG state is the same afterwards as before. Dropout layers that own a
            generator (``dropkit.Dropout(generator=...)``) keep drawing from their own, not
            from this one. None: the global RNG, advanced as usual.
        batch_size: how many samples each forward pass computes (a pass sees
            ``batch_size · N`` rows); None: all ``n_samples`` in one pass. Lower it to save
            memory. It changes which masks are drawn (the order in which the layers consume
            random numbers), so the same ``generator`` seed with a different ``batch_size``
            gives a different, equally valid, set of samples.
        task: ``"classification"``: the model returns logits over the last axis, turned into
            probabilities by a softmax, or, for a single output column (one binary logit), a
            sigmoid giving the two classes' probabilities ``[1 - σ(z), σ(z)]``; ``mean``, ``std``
            and ``samples`` are probabilities. ``"regression"``: the raw outputs are summarized
            and ``entropy`` and ``mutual_info`` are None.

    Returns:
        An :class:`MCPrediction` on the output's device, in float32 or the output's wider
        float dtype. A model without dropout gives ``std`` and ``mutual_info`` exactly 0.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), Dropout(0.5), nn.Linear(64, 3))
        >>> pred = mc_predict(net, torch.randn(8, 4), n_samples=100)
        >>> pred.mean.shape, pred.samples.shape, pred.entropy.shape
        (torch.Size([8, 3]), torch.Size([100, 8, 3]), torch.Size([8]))
    """
    x = check_tensor(x, "x")
    check_min_ndim(
        x, 1, _OP, "(N, *) with the batch axis first", "For one sample use x.unsqueeze(0)."
    )
    n_samples = check_positive_int(n_samples, "n_samples")
    per_pass = check_positive_int(batch_size, "batch_size", optional=True) or n_samples
    if _masks_shared_by_rows(model):
        per_pass = 1  # weight-level masks are drawn once per pass: one sample per pass
    task = check_one_of(task, "task", TASKS)
    check_generator(generator)

    classify = task == "classification"
    rng = contextlib.nullcontext() if generator is None else _seeded_rng(generator, x.device)
    rows = x.shape[0]
    chunks: list[Tensor] = []
    with torch.no_grad(), mc_dropout(model), rng:
        for start in range(0, n_samples, per_pass):
            k = min(per_pass, n_samples - start)
            # Sample-major rows (k copies of x, one after the other), always a new tensor:
            # an in-place dropout on the input must not write into the caller's x.
            repeated = x.repeat(k, *(1,) * (x.ndim - 1))
            output = check_batch_output(
                _model_output(model(repeated)),
                k * rows,
                _OP,
                min_ndim=2 if classify else 1,
                layout="(N, *, C) of logits" if classify else "(N, *)",
                hint="For one binary logit per input return shape (N, 1)." if classify else "",
            )
            chunks.append(output.reshape(k, rows, *output.shape[1:]))
        raw = torch.cat(chunks)

    samples = raw.to(torch.promote_types(raw.dtype, torch.float32))
    if not classify:
        mean, std = _mean_std(samples)
        return MCPrediction(mean=mean, std=std, samples=samples)
    probs = _probabilities(samples)
    mean, std = _mean_std(probs)
    # One entropy call for the mean and the samples: identical rows give identical numbers.
    entropies = _entropy(torch.cat([mean.unsqueeze(0), probs]))
    entropy = entropies[0]
    expected, _ = _mean_std(entropies[1:])
    mutual_info = (entropy - expected).clamp_min(0.0)
    return MCPrediction(mean=mean, std=std, samples=probs, entropy=entropy, mutual_info=mutual_info)


def _model_output(output: object) -> object:
    """The tensor to summarize: ``output``, or its ``logits`` for a Hugging Face model's output
    object (``SequenceClassifierOutput`` and the like)."""
    logits = getattr(output, "logits", None)
    return logits if not isinstance(output, Tensor) and isinstance(logits, Tensor) else output


@contextlib.contextmanager
def _seeded_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """The global RNG of the CPU and of ``device``, seeded from ``generator``, then restored."""
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device).item())
    accelerated = device.type != "cpu"
    devices = [device.index if device.index is not None else 0] if accelerated else []
    # torch < 2.13 refuses device_type=None: name the device type only for an accelerator.
    forked = {"device_type": device.type} if accelerated else {}
    with torch.random.fork_rng(devices, **forked):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif accelerated:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


def _probabilities(logits: Tensor) -> Tensor:
    """Class probabilities over the last axis: softmax, or ``[σ(-z), σ(z)]`` for one column."""
    if logits.shape[-1] == 1:
        return torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=-1)
    return torch.softmax(logits, dim=-1)


def _mean_std(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (1/T) std over axis 0, as offsets from the first sample.

    Identical samples give the first sample exactly and a std of exactly 0, which the plain
    formulas do not promise (``(a + a + a) / 3`` need not round back to ``a``).
    """
    offsets = samples - samples[0]
    shift = offsets.mean(dim=0)
    std = (offsets - shift).square().mean(dim=0).sqrt()
    return samples[0] + shift, std


def _entropy(probs: Tensor) -> Tensor:
    """Entropy in nats over the last axis, with ``0 · log 0 = 0``."""
    return -probs.xlogy(probs).sum(dim=-1)
