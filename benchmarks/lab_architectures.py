"""The lab on one model per architecture against a plain PyTorch loop, measured in the same run.

    python benchmarks/lab_architectures.py                      # every row (see below)
    python benchmarks/lab_architectures.py --quick              # a smoke version (< 2 min)
    python benchmarks/lab_architectures.py --only bc256,cnn     # some rows
    python benchmarks/lab_architectures.py --plain-budget 300   # time more runs of the peer
    python benchmarks/lab_architectures.py --memory --only transformer,lstm2,bert
                                    # peak memory: 20 runs batched against 20 x one run
    python benchmarks/lab_architectures.py --device cuda --seeds 25 --only mlp,cnn,transformer,lstm
                                    # on a GPU: 100-run grids, the plain loop on the same GPU

Each row is a user's model, given as a factory ``f(p) -> nn.Module``, swept over rates × seeds
(at least 20 runs) by ``lab.sweep`` with its default settings, as a user calls it: the time is
the whole call (planning, the checks of the model, training, the results store in a temporary
folder, the analysis). The lab picks what it does by itself: batched (vmapped, compiled when a
run has enough work) or one run after another where the model does not allow batching; the
notes it returns say which, and the table prints them.

Peer: the same runs the way a practitioner writes one run, run after run: the model built
under ``torch.manual_seed(seed)``, ``torch.optim.Adam(lr=1e-3)``, a shuffled order each epoch,
mini-batches of the same size, ``model.train()``, cross-entropy (binary cross-entropy for a
one-logit model), backward, step; ``model.eval()`` + ``torch.no_grad()`` accuracy and loss on
the training and test rows after the epochs the lab measured them (by default the lab measures
every epoch while that costs under a tenth of the training time, else every k-th epoch and the
last; the table's ``evals`` column), and the validation rows once at the end. It trains on the
rows the lab fits on (the lab's test split and its validation hold-out of the training split,
read from ``lab.plan_sweep``, which trains nothing), for the same epochs. It is timed with
``torch.set_num_threads(1)`` and with 2 threads, each on up to 3 or 4 runs spread over the grid
(fewer once ``--plain-budget`` seconds have passed, at least one) and scaled to all runs: every
run of a row has the same shapes and epochs; the table says how many runs were timed. The
ratio is the faster of the two over the lab's time. The lab chooses its own thread count (its
notes say which). On a machine that other processes keep busy, the peer with 2 threads can be
many times slower than with 1 (its threads wait on each other); both are reported.

Rows (runs = rates × seeds; ``--quick``: the epochs in brackets, 3 seeds for ``mlp``):

- ``mlp``: the case study's MLP ``Linear(2, 500) → ReLU → Dropout(p) → Linear(500, 1)`` on the
  built-in ``circles``, 9 rates × 10 seeds × 4000 epochs (100), batch 32. Goal: 15x.
- ``cnn``: two conv layers with dropout on sklearn's digits as ``(N, 1, 8, 8)`` float32,
  4 rates × 5 seeds × 20 epochs (2), batch 64. Goal: 5x.
- ``transformer``: token ids → ``nn.Embedding(50, 32)`` + learned positions → a 2-layer
  ``nn.TransformerEncoder`` (``d_model=32, nhead=4, dim_feedforward=64, dropout=p``) → mean
  over positions → ``Linear(32, 2)``. Goal: 5x.
- ``lstm``, ``gru``: ``nn.Embedding(50, 16)`` → a 1-layer ``nn.LSTM``/``nn.GRU`` (hidden 32)
  → ``Dropout(p)`` → ``Linear`` on the last step; ``lstm2``, ``gru2``: 2 layers with
  ``dropout=p`` between them. Goal: 5x.
- ``bert``: ``BertForSequenceClassification`` (hidden 64, 2 layers, 2 heads, intermediate
  128, hidden and attention dropout ``p``) returning ``.logits``, 10 epochs (1). Goal: 3x.
- ``bc1024``: sklearn's breast cancer (standardized), MLP 30-1024-1024-2 with ``Dropout(p)``
  after each hidden ReLU, batch 64, 8 rates × 5 seeds × 100 epochs (1). Goal: 1x. Also the
  share of the machine's matmul rate: see :func:`matmul_rates` and :func:`mlp_flops`.
- ``bc256``: the same data, MLP 30-256-256-2, 200 epochs (5). Goal: 3x.

The sequence rows (5 rates × 4 seeds × 20 epochs (1), ``bert`` 10 (1); batch 32) share one
synthetic task: 600 sequences of 16 token ids (int64) over a vocabulary of 50, each holding
tokens 7 and 3 once at random places; the label says whether 7 comes first. Their models call
``.long()`` on the ids, which is a no-op for int64 ids and makes them work where the lab hands
the inputs over as float32.

Every row takes about 6.5 minutes on 2 quiet cores, and took 27 while other processes kept
them busy (the peer with 2 threads then dominates); ``--quick`` takes under 2 minutes.

Results go to benchmarks/results/lab_architectures.json (under ``full`` or ``quick``; a row
measured again replaces its entry).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dropkit import lab
from dropkit.lab.plan.splits import validation_rows

sys.path.insert(0, str(Path(__file__).parent))
from lab_user_model import (  # the same models and memory probes as that benchmark
    _reset_peak,
    _status_bytes,
    case_study_mlp,
    digits_cnn,
    peak_growths,
)

RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
SEQ_RATES = [0.0, 0.1, 0.2, 0.3, 0.4]
VOCAB, LENGTH, SEQUENCES = 50, 16, 600

# -- the models ------------------------------------------------------------------------------


def wide_mlp(width: int) -> Callable[[float], nn.Module]:
    def factory(p: float) -> nn.Module:
        return nn.Sequential(
            nn.Linear(30, width),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(width, 2),
        )

    factory.__name__ = factory.__qualname__ = f"mlp_{width}"
    return factory


class TokenTransformer(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, 32)
        self.positions = nn.Embedding(LENGTH, 32)
        layer = nn.TransformerEncoderLayer(
            d_model=32, nhead=4, dim_feedforward=64, dropout=p, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()  # a no-op once the lab hands token ids over as int64
        where = torch.arange(ids.shape[-1], device=ids.device)
        out: torch.Tensor = self.head(
            self.encoder(self.tokens(ids) + self.positions(where)).mean(-2)
        )
        return out


class TokenRecurrent(nn.Module):
    def __init__(self, p: float, cell: type[nn.LSTM] | type[nn.GRU], layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, 16)
        self.rnn = cell(
            16, 32, num_layers=layers, dropout=p if layers > 1 else 0.0, batch_first=True
        )
        self.dropout = nn.Dropout(p)
        self.head = nn.Linear(32, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()  # a no-op once the lab hands token ids over as int64
        states, _ = self.rnn(self.tokens(ids))
        out: torch.Tensor = self.head(self.dropout(states[:, -1]))
        return out


def lstm(p: float) -> nn.Module:
    return TokenRecurrent(p, nn.LSTM, 1)


def lstm2(p: float) -> nn.Module:
    return TokenRecurrent(p, nn.LSTM, 2)


def gru(p: float) -> nn.Module:
    return TokenRecurrent(p, nn.GRU, 1)


def gru2(p: float) -> nn.Module:
    return TokenRecurrent(p, nn.GRU, 2)


class TinyBert(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=32,
            hidden_dropout_prob=p,
            attention_probs_dropout_prob=p,
            num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
        )
        self.bert = BertForSequenceClassification(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # .long(): a no-op once the lab hands token ids over as int64
        logits: torch.Tensor = self.bert(input_ids=ids.long()).logits
        return logits


# -- the data --------------------------------------------------------------------------------


def token_sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """``(600, 16)`` int64 token ids, each row holding 7 and 3 once; label: 7 comes first."""
    rng = np.random.default_rng(0)
    fillers = np.setdiff1d(np.arange(VOCAB), [3, 7])
    ids = rng.choice(fillers, size=(SEQUENCES, LENGTH))
    places = np.argsort(rng.random((SEQUENCES, LENGTH)), axis=1)[:, :2]
    rows = np.arange(SEQUENCES)
    ids[rows, places[:, 0]] = 7
    ids[rows, places[:, 1]] = 3
    labels = (places[:, 0] < places[:, 1]).astype(np.int64)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(labels)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(bunch.target)


def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


# -- the rows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    model: str  # what the table's notes call it
    factory: Callable[[float], nn.Module]
    data: Callable[[], Any]  # what the user passes as ``data=``
    rates: list[float]
    seeds: int
    epochs: int
    quick_epochs: int
    goal: float
    batch_size: int = 32
    plain_runs: int = 3  # runs of the plain loop timed per thread count (full mode)
    quick_seeds: int | None = None  # fewer seeds in --quick (None: the same)


def _circles() -> str:
    return "circles"


SEQUENCE_ROW: dict[str, Any] = {
    "rates": SEQ_RATES,
    "seeds": 4,
    "epochs": 20,
    "quick_epochs": 1,
    "goal": 5.0,
}
BREAST_CANCER_ROW: dict[str, Any] = {
    "rates": RATES[:8],
    "seeds": 5,
    "batch_size": 64,
    "plain_runs": 4,
}
ROWS = [
    Row("mlp", "case-study MLP 2-500-1", case_study_mlp, _circles, RATES, seeds=10,
        epochs=4000, quick_epochs=100, quick_seeds=3, goal=15.0),
    Row("cnn", "CNN on digits (1, 8, 8)", digits_cnn, digits, [0.0, 0.2, 0.4, 0.6], seeds=5,
        epochs=20, quick_epochs=2, batch_size=64, goal=5.0),
    Row("transformer", "2-layer TransformerEncoder", TokenTransformer, token_sequences,
        **SEQUENCE_ROW),
    Row("lstm", "1-layer LSTM", lstm, token_sequences, **SEQUENCE_ROW),
    Row("lstm2", "2-layer LSTM, dropout=p", lstm2, token_sequences, **SEQUENCE_ROW),
    Row("gru", "1-layer GRU", gru, token_sequences, **SEQUENCE_ROW),
    Row("gru2", "2-layer GRU, dropout=p", gru2, token_sequences, **SEQUENCE_ROW),
    Row("bert", "BertForSequenceClassification", TinyBert, token_sequences, SEQ_RATES,
        seeds=4, epochs=10, quick_epochs=1, goal=3.0, plain_runs=2),
    Row("bc1024", "MLP 30-1024-1024-2", wide_mlp(1024), breast_cancer, epochs=100,
        quick_epochs=1, goal=1.0, **BREAST_CANCER_ROW),
    Row("bc256", "MLP 30-256-256-2", wide_mlp(256), breast_cancer, epochs=200,
        quick_epochs=5, goal=3.0, **BREAST_CANCER_ROW),
]  # fmt: skip


# -- the plain loop --------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The rows the lab trains on, as a practitioner would hold them."""

    x_fit: torch.Tensor
    y_fit: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: str) -> Split:
        return Split(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def lab_split(plan: Any, ids: bool) -> Split:
    """The fit, validation and test rows of ``plan`` (``ids``: inputs as int64 token ids)."""
    data, spec = plan.dataset, plan.configs[0].data
    fit, val = validation_rows(data.y_train, spec, None)

    def x(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).reshape(-1, *data.sample_shape)
        return t.long() if ids else t

    def y(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a)).long()

    return Split(
        x(data.x_train[fit]),
        y(data.y_train[fit]),
        x(data.x_train[val]),
        y(data.y_train[val]),
        x(data.x_test),
        y(data.y_test),
    )


def _loss_and_correct(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if out.shape[-1] == 1:
        z = out.squeeze(-1)
        return F.binary_cross_entropy_with_logits(z, y.float()), ((z > 0).long() == y).sum()
    return F.cross_entropy(out, y), (out.argmax(-1) == y).sum()


def plain_run(
    factory: Callable[[float], nn.Module],
    rows: Split,
    p: float,
    seed: int,
    epochs: int,
    batch_size: int,
    measured: set[int],
) -> float:
    """One run the ordinary way, measuring the fit and test rows after the epochs
    ``measured`` (0-based; the last is always among them); returns its final test accuracy."""
    torch.manual_seed(seed)
    device = rows.y_fit.device
    model = factory(p).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = len(rows.y_fit)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, device=device)
        for begin in range(0, n, batch_size):
            batch = order[begin : begin + batch_size]
            optimizer.zero_grad()
            loss, _ = _loss_and_correct(model(rows.x_fit[batch]), rows.y_fit[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        if epoch not in measured:
            continue
        model.eval()
        with torch.no_grad():
            scores = []
            for x, y in ((rows.x_fit, rows.y_fit), (rows.x_test, rows.y_test)):
                loss, correct = _loss_and_correct(model(x), y)
                scores += [loss.item(), correct.item() / len(y)]
            history.append(scores)
    with torch.no_grad():
        _loss_and_correct(model(rows.x_val), rows.y_val)
    return float(history[-1][3])


def time_plain(
    row: Row,
    rows: Split,
    epochs: int,
    measured: dict[tuple[float, int], set[int]],
    timed: int,
    budget: float,
    threads: int,
) -> tuple[int, float, float, float]:
    """``(runs timed, measured s, scaled to every run, mean final test accuracy)`` of up to
    ``timed`` runs spread over the grid (the first, the last, then those between), with
    ``threads`` torch threads; it stops early, after at least one run, once ``budget``
    seconds have passed. ``measured``: the epochs the lab measured, per run ``(p, seed)``."""
    grid = sorted(measured)
    spread = [grid[round(i * (len(grid) - 1) / max(timed - 1, 1))] for i in range(timed)]
    order = [spread[i // 2] if i % 2 == 0 else spread[-1 - i // 2] for i in range(timed)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    accs = []
    try:
        start = time.perf_counter()
        for p, s in order:
            accs.append(plain_run(row.factory, rows, p, s, epochs, row.batch_size, measured[p, s]))
            if time.perf_counter() - start > budget:
                break
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return len(accs), seconds, seconds / len(accs) * len(grid), float(np.mean(accs))


# -- the bc1024 row's matmul rate ------------------------------------------------------------


def _rate(fn: Callable[[], object], flops: float, seconds: float = 1.0) -> float:
    """FLOP/s of ``fn``: the best of timed repeats over about ``seconds``."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best


def matmul_rates(width: int, batch: int, runs: int, seconds: float) -> dict[str, dict[str, float]]:
    """GFLOP/s of the hidden layer's products with 1 and 2 threads: ``mm`` is one run's
    forward product ``(batch × width) @ (width × width)``; ``mm_step`` the three products of
    one training step (forward, input gradient, weight gradient); ``bmm`` and ``bmm_step``
    the same batched over ``runs`` runs (``torch.bmm``, as vmap computes them). ``peak``:
    the highest of the four. Each is the best of repeats over ``seconds``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=g)
    w = torch.randn(width, width, generator=g)
    xs = torch.randn(runs, batch, width, generator=g)
    ws = torch.randn(runs, width, width, generator=g)
    one = 2.0 * batch * width * width
    cases: dict[str, tuple[Callable[[], object], float]] = {
        "mm": (lambda: torch.mm(x, w), one),
        "mm_step": (lambda: (torch.mm(x, w), torch.mm(x, w.t()), torch.mm(x.t(), x)), 3 * one),
        "bmm": (lambda: torch.bmm(xs, ws), runs * one),
        "bmm_step": (
            lambda: (
                torch.bmm(xs, ws),
                torch.bmm(xs, ws.transpose(1, 2)),
                torch.bmm(xs.transpose(1, 2), xs),
            ),
            3 * runs * one,
        ),
    }
    rates: dict[str, dict[str, float]] = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got = {name: _rate(fn, flops, seconds) / 1e9 for name, (fn, flops) in cases.items()}
            got["peak"] = max(got.values())
            rates[str(threads)] = got
    finally:
        torch.set_num_threads(before)
    return rates


def _weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def mlp_flops(model: nn.Module, rows: Split, epochs: int, measured: list[int]) -> float:
    """FLOPs of the sweep: per run ``6·W·n_fit`` per epoch (training: forward ``2·W`` per row,
    backward ``4·W``, input and weight gradients), ``2·W·(n_fit + n_test)`` per measured epoch
    (``measured``: their number, per run) and ``2·W·n_val`` once; ``W`` the Linear weights, the
    multiply-adds per row (biases, activations, dropout and Adam left out)."""
    weights = _weights(model)
    n_fit, n_test, n_val = len(rows.y_fit), len(rows.y_test), len(rows.y_val)
    train = 6 * weights * n_fit * epochs
    return float(sum(train + 2 * weights * ((n_fit + n_test) * m + n_val) for m in measured))


# -- one row ---------------------------------------------------------------------------------


def _mode(notes: tuple[str, ...]) -> str:
    alone = any(n.startswith("training run by run") for n in notes)
    together = any(" group(s) of at most " in n or "runs vmapped" in n for n in notes)
    compiled = any("runs: compiling the training" in n for n in notes)
    mode = "mixed" if alone and together else "run by run" if alone else "batched"
    return mode + (", compiled" if compiled else "")


def measure(
    row: Row, quick: bool, budget: float, device: str = "cpu", seeds: int | None = None
) -> dict[str, Any]:
    """One row: the lab's sweep, then the plain loop with 1 and with 2 threads (on CUDA: the
    plain loop once, on the same GPU); ``seeds`` replaces the row's."""
    epochs = row.quick_epochs if quick else row.epochs
    if seeds is None:
        seeds = row.quick_seeds if quick and row.quick_seeds else row.seeds
    data = row.data()
    ids = isinstance(data, tuple) and data[0].dtype == torch.int64
    settings: dict[str, Any] = {
        "model": row.factory,
        "rates": row.rates,
        "seeds": seeds,
        "epochs": epochs,
        "batch_size": row.batch_size,
    }
    plan = lab.plan_sweep(data, **settings)  # the peer's rows; trains nothing
    rows = lab_split(plan, ids)
    runs = len(plan.configs)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        experiment = lab.sweep(data, store=Path(folder) / "runs.sqlite", device=device, **settings)
        lab_s = time.perf_counter() - start
    lab_acc = float(np.mean([r.test_acc for r in experiment.runs]))
    # The epochs whose fit and test rows the lab measured, per run (its default curve
    # resolution may skip some); the plain loop measures the same ones.
    curves = experiment.analysis.curves
    measured = {
        (r.config.p, r.config.seed): set(
            np.flatnonzero(~np.isnan(curves[r.key]["test_loss"])).tolist()
        )
        for r in experiment.runs
    }
    points = sorted({len(e) for e in measured.values()})
    timed = 1 if quick else row.plain_runs
    thread_counts = (1, 2) if device == "cpu" else (torch.get_num_threads(),)
    on_device = rows.to(device)
    plain = {
        t: time_plain(row, on_device, epochs, measured, timed, budget, t) for t in thread_counts
    }
    plain.setdefault(1, plain[thread_counts[0]])
    plain.setdefault(2, plain[thread_counts[-1]])
    best = min(plain[1][2], plain[2][2])
    result: dict[str, Any] = {
        "row": row.name,
        "model": row.model,
        "runs": runs,
        "epochs": epochs,
        "batch_size": row.batch_size,
        "fit_rows": len(rows.y_fit),
        "lab_s": lab_s,
        "lab_mode": _mode(experiment.notes),
        "lab_notes": list(experiment.notes),
        "lab_mean_test_acc": lab_acc,
        "measured_epochs": points[0] if len(points) == 1 else [points[0], points[-1]],
        "ratio": best / lab_s,
        "goal": row.goal,
        "met": best / lab_s >= row.goal,
    }
    for threads, name in ((1, "plain_1thread"), (2, "plain_2threads")):
        count, seconds, total, acc = plain[threads]
        result[f"{name}_runs_timed"] = count
        result[f"{name}_measured_s"] = seconds
        result[f"{name}_s"] = total
        result[f"{name}_mean_test_acc"] = acc
    result["device"] = device
    if row.name == "bc1024" and device == "cpu":
        rates = matmul_rates(1024, row.batch_size, runs, 0.3 if quick else 1.0)
        counts = [len(e) for e in measured.values()]
        flops = mlp_flops(row.factory(0.0), rows, epochs, counts)
        result["matmul_gflops"] = rates
        result["train_gflop"] = flops / 1e9
        result["weights"] = _weights(row.factory(0.0))
        result["test_rows"], result["val_rows"] = len(rows.y_test), len(rows.y_val)
        result["achieved_gflops"] = {
            "lab": flops / lab_s / 1e9,
            "plain, 1 thread": flops / plain[1][2] / 1e9,
            "plain, 2 threads": flops / plain[2][2] / 1e9,
        }
    return result


# -- output ----------------------------------------------------------------------------------


def _points(measured: int | list[int]) -> str:
    return str(measured) if isinstance(measured, int) else f"{measured[0]}-{measured[1]}"


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'row':12s} {'runs':>4s} {'epochs':>6s} {'lab s':>8s} {'plain 1t s':>10s} "
        f"{'plain 2t s':>10s} {'timed':>5s} {'ratio':>7s} {'goal':>5s} {'met':>4s} "
        f"{'evals':>7s}  lab mode"
    )
    for r in results:
        timed = f"{r['plain_1thread_runs_timed']}/{r['plain_2threads_runs_timed']}"
        print(
            f"{r['row']:12s} {r['runs']:4d} {r['epochs']:6d} {r['lab_s']:8.1f} "
            f"{r['plain_1thread_s']:10.1f} {r['plain_2threads_s']:10.1f} {timed:>5s} "
            f"{r['ratio']:6.1f}x {r['goal']:4g}x {'yes' if r['met'] else 'NO':>4s} "
            f"{_points(r['measured_epochs']):>7s}  {r['lab_mode']}"
        )
    print(
        "\nplain 1t/2t s: the plain loop with 1/2 torch threads, timed on `timed` runs (1 "
        "thread/2 threads) and scaled to all runs; ratio: the faster of the two / lab s; "
        "evals: the epochs after which the lab measured the fit and test rows, per run (its "
        "default curve resolution; the plain loop measures after the same ones)"
    )
    print("\nmean final test accuracy, lab (all runs) / plain loop (its timed runs, 1 thread):")
    for r in results:
        print(
            f"  {r['row']:12s} {r['lab_mean_test_acc']:.3f} / "
            f"{r['plain_1thread_mean_test_acc']:.3f}"
        )
    print("\nthe lab's notes:")
    for r in results:
        print(f"  {r['row']}:")
        for note in r["lab_notes"] or ["(none)"]:
            print(f"    - {note}")
    for r in results:
        if "matmul_gflops" not in r:
            continue
        print(
            f"\n{r['row']}: {r['train_gflop']:.0f} GFLOP: per run 6·W·n_fit per epoch (training) "
            "+ 2·W·(n_fit + n_test) per measured epoch + 2·W·n_val once; W = the Linear weights "
            f"({r['weights']}), n_fit/n_test/n_val = {r['fit_rows']}/{r['test_rows']}/"
            f"{r['val_rows']}, {r['epochs']} epochs, {r['measured_epochs']} measured"
        )
        print(f"{'matmul GFLOP/s':15s}" + "".join(f"{k:>10s}" for k in r["matmul_gflops"]["1"]))
        for threads, got in r["matmul_gflops"].items():
            print(f"{threads + ' thread(s)':15s}" + "".join(f"{v:10.1f}" for v in got.values()))
        peak1, peak2 = (r["matmul_gflops"][t]["peak"] for t in ("1", "2"))
        for name, achieved in r["achieved_gflops"].items():
            print(
                f"  {name:16s} {achieved:7.1f} GFLOP/s: {achieved / peak1:6.1%} of the 1-thread "
                f"peak, {achieved / peak2:6.1%} of the 2-thread peak"
            )


def write_json(
    results: list[dict[str, Any]], quick: bool, header: str, device: str = "cpu"
) -> Path:
    out = Path(__file__).with_name("results") / "lab_architectures.json"
    out.parent.mkdir(exist_ok=True)
    stored: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    section = ("quick" if quick else "full") + ("" if device == "cpu" else f"-{device}")
    mode = stored.setdefault(section, {"machine": header, "rows": {}})
    mode["machine"] = header
    for r in results:
        mode["rows"][r["row"]] = r
    out.write_text(json.dumps(stored, indent=2) + "\n")
    return out


def _peak_growth(name: str, runs: int, threads: int, queue: Any) -> None:
    """In a fresh process: the growth of the peak resident set (``VmHWM``, reset first) while
    ``lab.sweep`` trains ``runs`` runs of row ``name`` (one seed per run, at the row's highest
    rate), batched, over the resident set before."""
    torch.set_num_threads(threads)
    row = next(r for r in ROWS if r.name == name)
    data = row.data()
    with tempfile.TemporaryDirectory() as folder:
        if not _reset_peak():
            queue.put(None)
            return
        before = _status_bytes("VmRSS") or 0
        lab.sweep(
            data=data,
            model=row.factory,
            rates=[max(row.rates)],
            seeds=runs,
            epochs=row.quick_epochs,
            batch_size=row.batch_size,
            store=str(Path(folder) / "runs.sqlite"),
            batched=True,
        )
        queue.put((_status_bytes("VmHWM") or 0) - before)


def peak_memory(names: list[str], runs: int) -> list[dict[str, Any]]:
    """Per row: the peak growth of one run and of ``runs`` runs batched, each in a fresh
    process, and their ratio to ``runs`` times one run (goal <= 1.5)."""
    results = []
    for name in names:
        growth = peak_growths(_peak_growth, (1, runs), name)
        one, many = growth[1], growth[runs]
        ratio = None if not one or many is None else many / (runs * one)
        results.append({"row": name, "runs": runs, "one_run": one, "batched": many, "ratio": ratio})
        shown = "n/a" if ratio is None else f"{ratio:.2f}x"
        print(
            f"{name}: one run +{(one or 0) / 2**20:.1f} MiB, {runs} runs batched "
            f"+{(many or 0) / 2**20:.1f} MiB: {shown} of {runs} x one run (goal <= 1.5x)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs: a smoke test")
    parser.add_argument(
        "--only",
        default=None,
        help=f"rows to run, comma-separated: {','.join(r.name for r in ROWS)}",
    )
    parser.add_argument(
        "--plain-budget",
        type=float,
        default=30.0,
        help="seconds after which the plain loop stops timing more runs of a row, per thread "
        "count (at least one run is timed)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where both sides train: cpu (default) or cuda (the plain loop on the same GPU)",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per rate instead of each row's"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead of speed: the peak memory of 20 runs batched against 20 x one run, per "
        "chosen row (fresh processes)",
    )
    args = parser.parse_args()
    chosen = ROWS
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {r.name for r in ROWS})
        if unknown:
            parser.error(
                f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(r.name for r in ROWS)}"
            )
        chosen = [r for r in ROWS if r.name in names]
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads by default, "
        f"{platform.processor() or platform.machine()}"
    )
    print(header + (" (quick)" if args.quick else ""))
    if args.memory:
        memory = peak_memory([r.name for r in chosen], 20)
        out = Path(__file__).parent / "results" / "lab_architectures_memory.json"
        out.write_text(json.dumps({"machine": header, "rows": memory}, indent=2) + "\n")
        print(f"\nwrote {out.name}")
        return
    results = []
    start = time.perf_counter()
    for row in chosen:
        result = measure(row, args.quick, args.plain_budget, args.device, args.seeds)
        results.append(result)
        print(
            f"{row.name}: lab {result['lab_s']:.1f} s ({result['lab_mode']}), plain "
            f"{result['plain_1thread_s']:.1f} / {result['plain_2threads_s']:.1f} s, "
            f"{result['ratio']:.1f}x [{time.perf_counter() - start:.0f} s so far]",
            flush=True,
        )
    print_table(results)
    print(f"\nwrote {write_json(results, args.quick, header, args.device).name}")


if __name__ == "__main__":
    main()
