"""The ``dropkit`` command line: a thin Typer app that parses, calls the lab and prints.

Nothing imports this module. Usage errors (bad options, unusable data or store) exit with
code 2 and a one-line message on stderr, before anything is written; ``--debug`` shows the
traceback. ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from dropkit import __version__

if TYPE_CHECKING:  # the lab is imported when a command runs, not at start-up
    from dropkit.lab.config import DataSpec, RunConfig, SweepSpec
    from dropkit.lab.data import Dataset
    from dropkit.lab.engines import Engine
    from dropkit.lab.runner import SweepOutcome
    from dropkit.lab.stats import ArmSummary, BestRate, Finding
    from dropkit.lab.store import ResultsStore, StoredRun

__all__ = ["app", "main"]

app = typer.Typer(
    name="dropkit",
    help="Dropout regularization for PyTorch: does dropout help my model, and at what rate?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options shared by the experiment commands.
EpochsOpt = Annotated[int, typer.Option(help="Training epochs per run.")]
SeedsOpt = Annotated[int, typer.Option(help="Seeds per setting (10 is the minimum for a claim).")]
OutOpt = Annotated[Path | None, typer.Option(help="Output folder for plots and tables.")]
StoreOpt = Annotated[
    Path | None, typer.Option(help="SQLite results store (default: OUT/runs.sqlite).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="Fuse training with torch.compile (default: when a C++ compiler is found).",
    ),
]
RunsPerBatchOpt = Annotated[
    int, typer.Option(help="Most runs trained together as one batch (bounds memory).")
]
EngineOpt = Annotated[
    str,
    typer.Option(help="Where runs train: in-process, or ray (a Ray cluster; see docs/scale.md)."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join, e.g. HEAD:6379 or auto; without it, --engine ray starts "
        "a local Ray instance."
    ),
]
ENGINES = ("in-process", "ray")
ImputeOpt = Annotated[
    str | None,
    typer.Option(
        help="mean or median: fill missing CSV feature values with the training split's "
        "column statistic (without it, missing values are an error)."
    ),
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dropkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Dropout regularization for PyTorch."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"dropkit: error: {message}", err=True)
    raise typer.Exit(2)


_MAX_RATES = 1000


def _parse_rates(text: str) -> list[float]:
    """``"0,0.1,0.4"`` or an inclusive range ``"start:stop:step"`` such as ``"0:0.8:0.1"``."""
    from dropkit._validation import check_probability

    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not all(map(math.isfinite, (start, stop, step))) or not step > 0:
                _fail(f"--rates: {text!r} needs finite start and stop and a step > 0")
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > _MAX_RATES:
                _fail(f"--rates: {text!r} makes {count} rates; at most {_MAX_RATES} are allowed")
            values = [round(start + i * step, 10) for i in range(max(count, 0))]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--rates: expected numbers like '0,0.2,0.4' or a range '0:0.8:0.1', got {text!r}")
    if not values:
        _fail(f"--rates: no rate in {text!r}")
    try:
        return [check_probability(v, "--rates") for v in values]
    except ValueError as error:
        _fail(str(error))


def _parse_hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        _fail(f"--hidden: expected widths like '500' or '256,128', got {text!r}")
    if not widths or min(widths) < 1:
        _fail(f"--hidden: widths must be integers >= 1, got {text!r}")
    return widths


class _RichProgress:
    """A rich progress bar on stderr, over run-epochs."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("run-epochs"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task: Any = None

    def begin(self, total: int, description: str) -> None:
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        self._bar.advance(self._task, amount)

    def end(self) -> None:
        self._bar.stop()


def _run_experiment(
    *,
    kind: str,
    rates: Sequence[float],
    seeds: int,
    epochs: int,
    batch_size: int,
    hidden: tuple[int, ...],
    data_name: str,
    target: str | None,
    input_dropout: float,
    max_norm: float | None,
    out: Path,
    store_path: Path | None,
    as_json: bool,
    quiet: bool,
    compile: bool | None,
    runs_per_batch: int,
    impute: str | None = None,
    engine: str = "in-process",
    address: str | None = None,
) -> None:
    from dropkit._validation import check_probability
    from dropkit.lab.config import ModelSpec, SweepSpec, TrainSpec

    _check_run_options(seeds, epochs, batch_size, runs_per_batch, engine, address, impute)
    if max_norm is not None and not (max_norm > 0 and math.isfinite(max_norm)):
        _fail(f"--max-norm must be a finite number > 0, got {max_norm}")
    try:
        input_dropout = check_probability(input_dropout, "--input-dropout")
    except ValueError as error:
        _fail(str(error))
    data_spec, dataset = _load_data(data_name, target, impute)
    spec = SweepSpec(
        data=data_spec,
        model=ModelSpec(hidden=hidden),
        train=TrainSpec(epochs=epochs, batch_size=batch_size),
        rates=tuple(rates),
        seeds=seeds,
        input_p=input_dropout,
        max_norm=max_norm,
    )
    with _trained(
        list(spec.runs()),
        dataset,
        out=out,
        store_path=store_path,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
    ) as (store, store_path, outcome):
        _report(
            kind, dataset.name, spec, store, outcome.keys, out, store_path, as_json, dataset.notes
        )


def _check_run_options(
    seeds: int,
    epochs: int | None,
    batch_size: int,
    runs_per_batch: int,
    engine: str,
    address: str | None,
    impute: str | None,
) -> None:
    """The options every training command shares; a bad one exits 2 with one line."""
    from dropkit.lab.data import IMPUTE_METHODS

    if seeds < 1:
        _fail(f"--seeds must be >= 1, got {seeds}")
    if epochs is not None and epochs < 1:
        _fail(f"--epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {batch_size}")
    if runs_per_batch < 1:
        _fail(f"--runs-per-batch must be >= 1, got {runs_per_batch}")
    _check_engine(engine, address)
    if impute is not None and impute not in IMPUTE_METHODS:
        _fail(f"--impute must be {' or '.join(IMPUTE_METHODS)}, got {impute!r}")


def _load_data(data_name: str, target: str | None, impute: str | None) -> tuple[DataSpec, Dataset]:
    """Load the data before anything is written (bad data exits 2); print its notes."""
    from dropkit.lab.data import DataError, load_dataset

    data_spec = _data_spec(data_name, target, impute)
    try:
        dataset = load_dataset(data_spec, impute=impute)
    except DataError as error:
        _fail(str(error))
    for note in dataset.notes:
        typer.echo(f"dropkit: note: {note}", err=True)
    return data_spec, dataset


@contextlib.contextmanager
def _trained(
    configs: Sequence[RunConfig],
    dataset: Dataset,
    *,
    out: Path,
    store_path: Path | None,
    as_json: bool,
    quiet: bool,
    compile: bool | None,
    runs_per_batch: int,
    engine: str,
    address: str | None,
) -> Iterator[tuple[ResultsStore, Path, SweepOutcome]]:
    """Train the configs missing from the store; yield the open store for the report.

    The output folder and the store must be usable before anything trains. Ctrl-C exits 130
    saying how many runs are stored; a batch whose retries ran out exits 1.
    """
    from dropkit.lab.runner import IncompleteSweep, run_configs
    from dropkit.lab.store import ResultsStore, StoreError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail(f"cannot create the output folder {out}: {error}")
    store_path = store_path or out / "runs.sqlite"
    runner_engine = _start_engine(engine, address, compile)  # exit 2 when Ray is unusable
    try:
        store = ResultsStore(store_path)
    except StoreError as error:
        _close_engine(runner_engine)
        _fail(str(error))
    show_progress = not (quiet or as_json) and sys.stderr.isatty()
    keys = [c.key() for c in configs]
    with store:
        done_before = len(store.done_keys(keys))
        if not as_json:
            if done_before == len(configs):
                typer.echo(f"{done_before}/{len(configs)} runs already complete in {store_path}")
            elif done_before:
                typer.echo(f"{done_before}/{len(configs)} runs already complete; training the rest")
        try:
            outcome = run_configs(
                configs,
                store,
                engine=runner_engine,
                progress=_RichProgress() if show_progress else None,
                max_batch=runs_per_batch,
                datasets={configs[0].data: dataset},
            )
        except KeyboardInterrupt:
            stored = len(store.done_keys(keys))
            typer.echo(
                f"dropkit: interrupted; {stored}/{len(configs)} runs are stored in {store_path}. "
                "Run the same command again to resume.",
                err=True,
            )
            raise typer.Exit(130) from None
        except IncompleteSweep as error:
            typer.echo(f"dropkit: error: {error}", err=True)
            raise typer.Exit(1) from None
        finally:
            _close_engine(runner_engine)
        yield store, store_path, outcome


def _check_engine(engine: str, address: str | None) -> None:
    if engine not in ENGINES:
        _fail(f"--engine must be {' or '.join(ENGINES)}, got {engine!r}")
    if address is not None and engine != "ray":
        _fail("--address names a Ray cluster; use it with --engine ray")


def _start_engine(engine: str, address: str | None, compile: bool | None) -> Engine:
    """The engine, started: a Ray engine starts or joins its cluster here."""
    from dropkit.lab.engines import EngineError, InProcessEngine, RayEngine

    if engine == "in-process":
        return InProcessEngine(compile=compile)
    ray_engine = RayEngine(address=address, compile=compile)
    try:
        ray_engine.start()
    except EngineError as error:
        _fail(str(error))
    return ray_engine


def _close_engine(engine: Engine) -> None:
    """Shut down a local Ray instance the engine started (a joined cluster keeps running)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def _data_spec(name: str, target: str | None, impute: str | None) -> DataSpec:
    """The data's spec: a built-in name, or a CSV file by path and content (imputation included)."""
    from dropkit.lab.config import DataSpec

    return DataSpec.resolve(name, target, impute)


def _report(
    kind: str,
    dataset_name: str,
    spec: SweepSpec,
    store: ResultsStore,
    keys: Sequence[str],
    out: Path,
    store_path: Path,
    as_json: bool,
    notes: Sequence[str] = (),
) -> None:
    from dropkit.lab.plots import plot_learning_curves, plot_rate_curve
    from dropkit.lab.stats import best_rate, diagnose, summarize

    runs = store.runs(list(keys))
    summaries = summarize(runs, {r.key: store.curves(r.key) for r in runs})
    best = best_rate(summaries)
    findings = diagnose(summaries)
    groups: dict[float, list[StoredRun]] = {}
    for run in runs:
        groups.setdefault(run.config.p, []).append(run)
    # The demo shows both of its models; a sweep its lowest rate and its best one.
    shown = (
        sorted(groups)
        if kind == "demo"
        else sorted({min(groups), best.summary.p if best else max(groups)})
    )
    files = {
        "learning_curves": plot_learning_curves(
            store,
            [groups[p] for p in shown],
            out / "learning_curves.png",
            title=f"{dataset_name}: train (dashed) and test (solid) accuracy, mean and 95% CI "
            f"over {spec.seeds} seeds",
        )
    }
    if kind == "sweep":
        files["rate_curve"] = plot_rate_curve(
            summaries,
            out / "rate_vs_accuracy.png",
            title=f"{dataset_name}: accuracy vs dropout rate",
        )
    files["report"] = _write_report(store, keys, out, title=f"dropkit {kind}: {dataset_name}")
    rows = [s.to_dict() for s in summaries]
    payload = {
        "command": kind,
        "dataset": dataset_name,
        "data_notes": list(notes),
        "summary": rows,
        "best": None
        if best is None
        else {"arm": best.summary.arm, "p": best.summary.p, "evidence": best.evidence},
        "findings": [f.to_dict() for f in findings],
        "store": str(store_path),
        "out": str(out),
        "files": {k: str(v) for k, v in files.items()},
    }
    _finish(payload, summaries, best, findings, store_path, files, out, as_json)


def _finish(
    payload: dict[str, Any],
    summaries: Sequence[ArmSummary],
    best: BestRate | None,
    findings: Sequence[Finding],
    store_path: Path,
    files: dict[str, Path],
    out: Path,
    as_json: bool,
) -> None:
    """Write ``OUT/summary.json``; print it (``--json``) or the table, verdict and findings."""
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(payload))
        return
    _print_table(summaries)
    if best is not None:
        typer.echo(best.evidence)
    _print_findings(findings)
    typer.echo(f"results store: {store_path}")
    for name, path in files.items():
        typer.echo(f"{name.replace('_', ' ')}: {path}")
    typer.echo(f"summary table: {out / 'summary.json'}")


def _write_report(store: ResultsStore, keys: Sequence[str], out: Path, *, title: str) -> Path:
    """Write ``OUT/report.html``, the self-contained HTML report of the runs ``keys``."""
    from dropkit.lab.report import write_report

    return write_report(store, out / "report.html", keys=keys, title=title)


def _print_findings(findings: Sequence[Finding]) -> None:
    for finding in findings:
        typer.echo(f"{finding.severity} [{finding.rule}]: {finding.message}")


def _print_table(summaries: Sequence[ArmSummary]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float) -> str:
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"

    table = Table(
        title="Final accuracy over seeds (mean, 95% CI)",
        caption="adj. p: Holm-adjusted over all groups; * significant at 0.05",
    )
    baseline = next((s.vs_baseline.baseline for s in summaries if s.vs_baseline), "baseline")
    columns = ("group", "seeds", "train acc", "test acc", "95% CI", "gap", f"vs {baseline}")
    for column in columns:
        table.add_column(column, justify="left" if column == "group" else "right")
    for s in summaries:
        low, high = s.test_acc_ci95
        test = s.vs_baseline
        versus = "baseline" if test is None else f"{test.difference:+.3f}"
        if test is not None and math.isfinite(test.p_adjusted):
            versus += f" (adj. p={test.p_adjusted:.2g}{'*' if test.significant else ''})"
        seeds = f"{s.n_seeds}" + (f" ({s.n_nan} NaN)" if s.n_nan else "")
        table.add_row(
            s.name,
            seeds,
            fmt(s.train_acc_mean),
            fmt(s.test_acc_mean),
            f"[{fmt(low)}, {fmt(high)}]",
            fmt(s.gap_mean),
            versus,
        )
    Console(width=110).print(table)


@app.command()
def demo(
    epochs: EpochsOpt = 4000,
    seeds: SeedsOpt = 10,
    p: Annotated[float, typer.Option("--p", help="Drop probability of the hidden dropout.")] = 0.4,
    out: OutOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    compile: CompileOpt = None,
    runs_per_batch: RunsPerBatchOpt = 128,
    engine: EngineOpt = "in-process",
    address: AddressOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Does Dropout(0.4) help a 500-unit MLP trained on 30 points? The reference case study.

    make_circles(100, noise=0.1, random_state=1): the first 30 samples train, the other 70
    test. Dense(500, ReLU) -> [Dropout(p)] -> Dense(1, sigmoid), binary cross-entropy, Adam,
    batch 32, trained with and without dropout over several seeds.
    """
    from dropkit._validation import check_probability

    try:
        p = check_probability(p, "--p")
    except (TypeError, ValueError) as error:
        _fail(str(error))
    _guarded(
        debug,
        _run_experiment,
        kind="demo",
        rates=[0.0, p] if p > 0 else [0.0],
        seeds=seeds,
        epochs=epochs,
        batch_size=32,
        hidden=(500,),
        data_name="circles",
        target=None,
        input_dropout=0.0,
        max_norm=None,
        out=out or Path("dropkit-demo"),
        store_path=store,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
    )


@app.command()
def sweep(
    data: Annotated[
        str,
        typer.Option(help="circles, moons, digits, breast_cancer, wine, or PATH.csv."),
    ] = "circles",
    target: Annotated[str | None, typer.Option(help="Target column of a CSV file.")] = None,
    impute: ImputeOpt = None,
    rates: Annotated[
        str, typer.Option(help="Drop rates: '0,0.2,0.4' or an inclusive range '0:0.8:0.1'.")
    ] = "0:0.8:0.1",
    seeds: SeedsOpt = 10,
    epochs: EpochsOpt = 4000,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 32,
    hidden: Annotated[
        str, typer.Option(help="Hidden layer widths, e.g. '500' or '256,128'.")
    ] = "500",
    input_dropout: Annotated[float, typer.Option(help="Drop probability on the inputs.")] = 0.0,
    max_norm: Annotated[
        float | None, typer.Option(help="Max-norm bound c on hidden units' incoming weights.")
    ] = None,
    out: OutOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    compile: CompileOpt = None,
    runs_per_batch: RunsPerBatchOpt = 128,
    engine: EngineOpt = "in-process",
    address: AddressOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Grid-search the dropout rate: rates x seeds, with 95% CIs and the best rate's evidence."""
    _guarded(
        debug,
        _run_experiment,
        kind="sweep",
        rates=_parse_rates(rates),
        seeds=seeds,
        epochs=epochs,
        batch_size=batch_size,
        hidden=_parse_hidden(hidden),
        data_name=data,
        target=target,
        input_dropout=input_dropout,
        max_norm=max_norm,
        out=out or Path("dropkit-sweep"),
        store_path=store,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
        impute=impute,
    )


@app.command()
def report(
    store: Annotated[Path, typer.Option(help="The SQLite results store to report on.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="The report's title.")] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write ONE self-contained HTML report of a results store: tables, diagnosis, figures.

    Figures are inline, nothing is fetched from the network; the same store gives the same file.
    """
    from dropkit.lab.report import analyze, write_report
    from dropkit.lab.store import ResultsStore, StoreError

    if not store.is_file():
        _fail(f"no results store at {store}")
    try:
        results = ResultsStore(store)
    except StoreError as error:
        _fail(str(error))
    try:
        with results:
            experiments = analyze(results)
            path = write_report(results, out, title=title)
    except OSError as error:
        _fail(f"cannot write the report {out}: {error}")
    except Exception as error:
        if debug:
            raise
        typer.echo(
            f"dropkit: {type(error).__name__}: {error} (rerun with --debug for details)", err=True
        )
        raise typer.Exit(1) from None
    if as_json:
        payload = {
            "command": "report",
            "store": str(store),
            "out": str(path),
            "runs": sum(len(e.runs) for e in experiments),
            "experiments": [e.to_dict() for e in experiments],
        }
        typer.echo(json.dumps(payload))
        return
    if not experiments:
        typer.echo(f"no finished runs in {store}")
    for experiment in experiments:
        typer.echo(experiment.title)
        _print_table(experiment.summaries)
        if experiment.best is not None:
            typer.echo(experiment.best.evidence)
        _print_findings(experiment.findings)
    typer.echo(f"report: {path}")


# ---- dropkit compare ------------------------------------------------------------------------

_DEFAULT_HIDDEN = {"mlp": (500,), "cnn": (16, 32), "rnn": (32,)}
# Strength options of `compare`, by Strengths field (see dropkit.lab.regularizers).
_STRENGTH_OPTIONS = {
    "p": "--p",
    "input_p": "--input-p",
    "l1": "--l1",
    "l2": "--l2",
    "max_norm": "--max-norm",
    "patience": "--patience",
    "noise": "--noise",
    "augment": "--augment",
    "switch": "--switch",
    "concrete": "--concrete",
    "block_size": "--block-size",
}


@app.command()
def compare(
    data: Annotated[
        str,
        typer.Option(
            help="circles, moons, digits, breast_cancer, wine, mnist, sequence, or PATH.csv."
        ),
    ] = "circles",
    target: Annotated[str | None, typer.Option(help="Target column of a CSV file.")] = None,
    impute: ImputeOpt = None,
    arms: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated arms, regularizers joined by '+', e.g. "
            "'none,dropout,l2,dropout+l2' (default: every arm that applies to --model). "
            "Arms: none, dropout, input_dropout, l1, l2, max_norm, batchnorm, bn_dropout, "
            "dropout_bn, early_stopping, augment, gaussian_noise, concrete, early_dropout, "
            "late_dropout, spatial_dropout, dropblock, variational, recurrent_dropout."
        ),
    ] = None,
    seeds: SeedsOpt = 10,
    epochs: Annotated[
        int | None,
        typer.Option(help="Training epochs per run (default: chosen per data set and model)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 32,
    model: Annotated[str, typer.Option(help="mlp, cnn (image data) or rnn (sequences).")] = "mlp",
    hidden: Annotated[
        str | None,
        typer.Option(
            help="Layer widths: MLP hidden units, CNN channels or LSTM sizes "
            "(default: mlp 500, cnn 16,32, rnn 32)."
        ),
    ] = None,
    p: Annotated[float, typer.Option("--p", help="Hidden drop probability of dropout arms.")] = 0.5,
    input_p: Annotated[float, typer.Option(help="Drop probability of input_dropout.")] = 0.2,
    l1: Annotated[float, typer.Option(help="λ of l1: loss + λ·Σ|w| (weights, not biases).")] = 1e-5,
    l2: Annotated[float, typer.Option(help="λ of l2: loss + λ·Σw² (weights, not biases).")] = 1e-4,
    max_norm: Annotated[
        float, typer.Option(help="Bound c of max_norm on each hidden unit's incoming weights.")
    ] = 3.0,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Epochs without a better validation loss before early_stopping "
            "stops (default: a tenth of --epochs, at least 10)."
        ),
    ] = None,
    noise: Annotated[float, typer.Option(help="σ of gaussian_noise on hidden activations.")] = 0.1,
    augment: Annotated[
        float | None,
        typer.Option(
            help="augment: jitter in feature standard deviations (tables), shift in "
            "pixels (images) (default: 0.1, images 1)."
        ),
    ] = None,
    switch: Annotated[
        float, typer.Option(help="Fraction of the epochs before early/late_dropout switch.")
    ] = 0.25,
    concrete: Annotated[
        float | None,
        typer.Option(
            help="Dropout-regularizer weight of concrete (default: 2/N, N training samples)."
        ),
    ] = None,
    block_size: Annotated[int, typer.Option(help="Block edge of dropblock, in pixels.")] = 3,
    out: OutOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    compile: CompileOpt = None,
    runs_per_batch: RunsPerBatchOpt = 256,
    engine: EngineOpt = "in-process",
    address: AddressOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Compare regularizers: every arm trained with the same seeds, tested against 'none'.

    Each arm is one documented change to the model, the optimizer or the training loop (see
    dropkit.lab.regularizers), with its own strength option; arms the stacked trainer can
    express train together as one batched computation.
    """
    options = {
        "p": p,
        "input_p": input_p,
        "l1": l1,
        "l2": l2,
        "max_norm": max_norm,
        "patience": patience,
        "noise": noise,
        "augment": augment,
        "switch": switch,
        "concrete": concrete,
        "block_size": block_size,
    }
    _guarded(
        debug,
        _compare,
        data_name=data,
        target=target,
        impute=impute,
        arms_text=arms,
        seeds=seeds,
        epochs=epochs,
        batch_size=batch_size,
        kind=model,
        hidden_text=hidden,
        strengths=options,
        out=out or Path("dropkit-compare"),
        store_path=store,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
    )


def _compare(
    *,
    data_name: str,
    target: str | None,
    impute: str | None,
    arms_text: str | None,
    seeds: int,
    epochs: int | None,
    batch_size: int,
    kind: str,
    hidden_text: str | None,
    strengths: dict[str, Any],
    out: Path,
    store_path: Path | None,
    as_json: bool,
    quiet: bool,
    compile: bool | None,
    runs_per_batch: int,
    engine: str,
    address: str | None,
) -> None:
    from dropkit.lab.config import MODEL_KINDS, ModelSpec, TrainSpec
    from dropkit.lab.models import build_model
    from dropkit.lab.regularizers import (
        REGULARIZERS,
        Arm,
        ArmError,
        Strengths,
        build_configs,
        default_epochs,
        parse_arms,
    )

    _check_run_options(seeds, epochs, batch_size, runs_per_batch, engine, address, impute)
    if kind not in MODEL_KINDS:
        _fail(f"--model must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    for name, value in strengths.items():  # one option at a time, so the message names it
        try:
            Strengths(**{name: value})
        except (TypeError, ValueError) as error:
            _fail(f"{_STRENGTH_OPTIONS[name]}: {error}")
    hidden = _DEFAULT_HIDDEN[kind] if hidden_text is None else _parse_hidden(hidden_text)
    try:
        if arms_text is None:
            chosen = [Arm((r,)) for r in REGULARIZERS.values() if kind in r.kinds]
        else:
            chosen = parse_arms(arms_text)
    except ArmError as error:
        _fail(str(error))
    data_spec, dataset = _load_data(data_name, target, impute)
    train = TrainSpec(
        epochs=epochs if epochs is not None else default_epochs(dataset.name, kind),
        batch_size=batch_size,
    )
    try:
        configs = build_configs(
            chosen,
            Strengths(**strengths),
            range(seeds),
            data_spec,
            ModelSpec(hidden=hidden, kind=kind),
            train,
            n_train=len(dataset.y_train),
        )
        for config in configs[::seeds]:  # each arm's network must build for this data
            build_model(config, dataset)
    except ArmError as error:
        _fail(str(error))
    except ValueError as error:
        _fail(f"--model {kind} on {dataset.name}: {error}")
    with _trained(
        configs,
        dataset,
        out=out,
        store_path=store_path,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
    ) as (results, store_path, outcome):
        _compare_report(
            results,
            outcome.keys,
            dataset_name=dataset.name,
            kind=kind,
            epochs=train.epochs,
            seeds=seeds,
            arms=[a.name for a in chosen],
            out=out,
            store_path=store_path,
            as_json=as_json,
            notes=dataset.notes,
        )


def _compare_report(
    store: ResultsStore,
    keys: Sequence[str],
    *,
    dataset_name: str,
    kind: str,
    epochs: int,
    seeds: int,
    arms: Sequence[str],
    out: Path,
    store_path: Path,
    as_json: bool,
    notes: Sequence[str],
) -> None:
    """The table per arm (statistics from :func:`dropkit.lab.stats.summarize`), the learning
    curves of the baseline and the best arm, the HTML report and ``summary.json``."""
    from dropkit.lab.plots import plot_learning_curves
    from dropkit.lab.stats import best_rate, diagnose, summarize

    runs = store.runs(list(keys))
    summaries = summarize(runs, {r.key: store.curves(r.key) for r in runs})
    best = best_rate(summaries)
    findings = diagnose(summaries)
    by_arm: dict[str, list[StoredRun]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    shown = dict.fromkeys(
        a for a in ("none", best.summary.arm if best else None) if a is not None and a in by_arm
    )
    files: dict[str, Path] = {}
    if shown:
        files["learning_curves"] = plot_learning_curves(
            store,
            [by_arm[a] for a in shown],
            out / "learning_curves.png",
            title=f"{dataset_name} ({kind}): train (dashed) and test (solid) accuracy, mean and "
            f"95% CI over {seeds} seeds",
        )
    title = f"dropkit compare: {dataset_name} ({kind})"
    files["report"] = _write_report(store, keys, out, title=title)  # the automatic HTML report
    payload = {
        "command": "compare",
        "dataset": dataset_name,
        "model": kind,
        "epochs": epochs,
        "seeds": seeds,
        "arms": list(arms),
        "data_notes": list(notes),
        "summary": [s.to_dict() for s in summaries],
        "best": None
        if best is None
        else {"arm": best.summary.arm, "name": best.summary.name, "evidence": best.evidence},
        "findings": [f.to_dict() for f in findings],
        "store": str(store_path),
        "out": str(out),
        "files": {k: str(v) for k, v in files.items()},
    }
    _finish(payload, summaries, best, findings, store_path, files, out, as_json)


def _load_factory(target: str) -> Any:
    """The callable named by ``MODULE:FACTORY`` (a dotted module or a ``.py`` path)."""
    import importlib
    import importlib.util

    module_name, _, factory_name = target.rpartition(":")
    if not module_name or not factory_name:
        _fail(f"expected MODULE:FACTORY (e.g. mypackage.models:build_model), got {target!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                _fail(f"no such file: {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                _fail(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except typer.Exit:
        raise
    except Exception as error:  # a syntax error or any exception raised while importing
        _fail(f"cannot import {module_name!r}: {type(error).__name__}: {error}")
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        _fail(f"{module_name!r} has no callable {factory_name!r}")
    return factory


@app.command()
def check(
    target: Annotated[
        str, typer.Argument(help="MODULE:FACTORY, a function that builds the model.")
    ],
    input_shape: Annotated[
        str | None,
        typer.Option(help="Shape of an example input, e.g. '1,3,32,32': checks in call order."),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Check a model for dropout mistakes; exit code 1 when there is a warning.

    The model comes from calling FACTORY() in MODULE (a dotted module name, importable from the
    current folder, or a path to a .py file).
    """
    import torch
    from torch import nn

    from dropkit.checks import check_model, format_findings

    shape: tuple[int, ...] | None = None
    if input_shape is not None:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            _fail(f"--input-shape: expected integers like '1,3,32,32', got {input_shape!r}")
    factory = _load_factory(target)
    try:
        model = factory()
        if not isinstance(model, nn.Module):
            _fail(f"{target} returned {type(model).__name__}, not a torch.nn.Module")
        findings = check_model(model, None if shape is None else torch.randn(shape))
    except typer.Exit:
        raise
    except Exception as error:
        if debug:
            raise
        _fail(f"{target} failed: {type(error).__name__}: {error}")
    typer.echo(format_findings(findings))
    if any(f.severity == "warning" for f in findings):
        raise typer.Exit(1)


def _guarded(debug: bool, command: Callable[..., None], **options: Any) -> None:
    """Run a training command; without ``--debug``, an unexpected error is one line, exit 1."""
    try:
        command(**options)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as error:
        if debug:
            raise
        typer.echo(
            f"dropkit: {type(error).__name__}: {error} (rerun with --debug for details)", err=True
        )
        raise typer.Exit(1) from None


def main() -> None:
    """Console-script entry point."""
    app()
