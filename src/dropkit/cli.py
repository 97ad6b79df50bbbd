"""The ``dropkit`` command line: a thin Typer app that parses, calls the lab and prints.

Nothing imports this module. Usage errors (bad options, unusable data or store) exit with
code 2 and a one-line message on stderr, before anything is written; ``--debug`` shows the
traceback. ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from dropkit import __version__
from dropkit.lab import BUILTIN_DATASETS, DEMO_SEEDS, REGULARIZERS, STRENGTHS, Strength

if TYPE_CHECKING:  # the rest of the lab is imported when a command runs, not at start-up
    from dropkit.lab import Experiment, Plan, Table

__all__ = ["app", "main"]

_T = TypeVar("_T")

app = typer.Typer(
    name="dropkit",
    help="Dropout regularization for PyTorch: does dropout help my model, and at what rate?",
    no_args_is_help=True,
    add_completion=False,
    # Help texts are Rich markup: "[word ...]" is a style tag and ":name:" an emoji code, so
    # help is written without either (tests/test_cli_help.py checks every text).
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

# Options shared by the experiment commands.
EpochsOpt = Annotated[int, typer.Option(help="Training epochs per run.")]
SeedsOpt = Annotated[int, typer.Option(help="Seeds per setting (10 is the minimum for a claim).")]
_OUT_HELP = "Output folder: figures, report.html, summary.json and the results store"
DemoOutOpt = Annotated[Path | None, typer.Option(help=f"{_OUT_HELP} (default: dropkit-demo/).")]
SweepOutOpt = Annotated[Path | None, typer.Option(help=f"{_OUT_HELP} (default: dropkit-sweep/).")]
CompareOutOpt = Annotated[
    Path | None, typer.Option(help=f"{_OUT_HELP} (default: dropkit-compare/).")
]
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
        help="Ray cluster to join, e.g. HEAD:6379 or auto (default: none: --engine ray starts "
        "a local Ray instance)."
    ),
]
DataOpt = Annotated[
    str,
    typer.Option(
        help=f"{', '.join(BUILTIN_DATASETS)}, PATH.csv, or MODULE:FUNCTION returning your data: "
        "(X, y), ((X_train, y_train), (X_test, y_test)) or torch Datasets (docs/your-model.md)."
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(help="classification or regression (default: inferred from the target)."),
]
ValidationOpt = Annotated[
    float | None,
    typer.Option(
        help="Fraction of the training split that chooses the best rate or arm (default: 0.2 "
        "for your own model or data, 0 for built-in data and CSV files)."
    ),
]
FoldsOpt = Annotated[
    int, typer.Option(help="k >= 2: k-fold cross-validation instead of one validation split.")
]
LrOpt = Annotated[float, typer.Option(help="Adam's learning rate.")]
EvaluateOpt = Annotated[
    str | None,
    typer.Option(
        help="Also measure calibration once trained: deterministic (dropout off), mc (Monte "
        "Carlo dropout) or both: NLL, Brier, ECE and reliability diagrams (regression: "
        "Gaussian NLL, 90% coverage), with intervals and paired tests (default: none)."
    ),
]
McSamplesOpt = Annotated[int, typer.Option(help="Monte Carlo dropout passes per test row.")]
McConsistentOpt = Annotated[
    bool,
    typer.Option(
        "--mc-consistent",
        help="The same Monte Carlo masks for every test row (baal's ConsistentDropout).",
    ),
]
ChooseByOpt = Annotated[
    str,
    typer.Option(
        help="The metric that chooses the best group: score (accuracy or R²), nll, brier, "
        "ece (regression: nll, rmse), optionally det_ or mc_ before it."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")]
BatchedOpt = Annotated[
    bool | None,
    typer.Option(
        "--batched/--no-batched",
        help="Your own model: --batched refuses to fall back to one run after another; "
        "--no-batched always trains one run after another (default: batched where the model "
        "allows it).",
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(help="Target column of a CSV file (default: none; a CSV file needs it)."),
]
ImputeOpt = Annotated[
    str | None,
    typer.Option(
        help="mean or median: fill missing CSV feature values with the training split's "
        "column statistic (default: none: missing values are an error)."
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
    from dropkit._validation import check_trainable_rate

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
        return [check_trainable_rate(v, "--rates") for v in values]
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


def _argument_names() -> frozenset[str]:
    """The lab's argument names that are also flags of some command (``--name``)."""
    from dropkit.lab import RunOptions, plan_compare, plan_sweep

    names = {"data", "target", "impute", "engine", "address", "store", "p", *STRENGTHS}
    names |= {field.name for field in dataclasses.fields(RunOptions)}
    for function in (plan_sweep, plan_compare):
        names |= set(inspect.signature(function).parameters)
    return frozenset(names - {"plan", "log", "strengths", "progress"})


def _flags(message: str, renamed: Mapping[str, str] | None = None) -> str:
    """The library's message with its argument names (`` `seeds` ``) written as this command's
    flags (``--seeds``); ``renamed`` maps arguments whose flag has another name. Backticked
    words that are no argument of the lab stay as they are."""
    renamed = renamed or {}
    known = _argument_names() | set(renamed)

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in known:
            return match.group(0)
        return renamed.get(name, "--" + name.replace("_", "-"))

    def flag_value(match: re.Match[str]) -> str:  # engine='ray' -> --engine ray
        name = match.group(1)
        return f"{flag(match)} {match.group(2)}" if name in known else match.group(0)

    message = re.sub(r"`([a-z][a-z0-9_]*)`", flag, message)
    message = re.sub(r"\b([a-z][a-z0-9_]*)='([^' ]+)'", flag_value, message)
    return re.sub(r"\bUse ([a-z][a-z0-9_]*)=", lambda m: f"Use {flag(m)}=", message)


@contextlib.contextmanager
def _usage(renamed: Mapping[str, str] | None = None) -> Iterator[None]:
    """Argument and data errors of the library exit 2 with one line naming the flag."""
    try:
        yield
    except (TypeError, ValueError) as error:
        _fail(_flags(str(error), renamed))


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        typer.echo(f"dropkit: note: {_flags(note)}", err=True)


def _execute(
    plan: Plan,
    *,
    out: Path,
    store_path: Path | None,
    as_json: bool,
    quiet: bool,
    compile: bool | None,
    runs_per_batch: int,
    engine: str,
    address: str | None,
    device: str = "auto",
    batched: bool | None = None,
) -> tuple[Experiment, Path]:
    """Train what the store lacks (:func:`dropkit.lab.run`) and return the experiment.

    The output folder and the store must be usable before anything trains. Ctrl-C exits 130
    saying how many runs are stored; a batch whose retries ran out exits 1.
    """
    from dropkit.lab import EngineError, IncompleteSweep, RunOptions, StoreError, run

    store_path = store_path or out / "runs.sqlite"
    show_progress = not (quiet or as_json) and sys.stderr.isatty()
    with _usage():
        options = RunOptions(
            store=store_path,
            engine=engine,
            address=address,
            compile=compile,
            progress="rich" if show_progress else None,
            runs_per_batch=runs_per_batch,
            log=None if as_json else typer.echo,
            device=device,
            batched=batched,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _fail(f"cannot create the output folder {out}: {error}")
    try:
        # Arguments and data passed the plan: an error from here on is a failure (exit 1).
        experiment = run(plan, options)
    except (StoreError, EngineError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        stored = plan.stored(store_path)
        typer.echo(
            f"dropkit: interrupted; {stored}/{len(set(plan.keys))} runs are stored in "
            f"{store_path}. Run the same command again to resume.",
            err=True,
        )
        raise typer.Exit(130) from None
    except IncompleteSweep as error:
        typer.echo(f"dropkit: error: {error}", err=True)
        raise typer.Exit(1) from None
    return experiment, store_path


def _emit(
    experiment: Experiment,
    *,
    out: Path,
    store_path: Path,
    as_json: bool,
    curves: Sequence[str] | None = None,
    rates: bool = False,
) -> None:
    """Save the figures, the HTML report and ``OUT/summary.json``; print the JSON or the table,
    the best group's evidence and the diagnosis."""
    from dropkit.lab import save_png

    files: dict[str, Path] = {}
    if experiment.groups:
        files["learning_curves"] = save_png(
            experiment.plot_curves(curves), out / "learning_curves.png"
        )
    if rates:
        files["rate_curve"] = save_png(experiment.plot_rates(), out / "rate_vs_accuracy.png")
    files["report"] = experiment.report(out / "report.html")
    payload = {
        **experiment.to_dict(),
        "store": str(store_path),
        "out": str(out),
        "files": {k: str(v) for k, v in files.items()},
    }
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(payload))
        return
    _print_experiment(experiment)
    typer.echo(f"results store: {store_path}")
    for name, path in files.items():
        typer.echo(f"{name.replace('_', ' ')}: {path}")
    typer.echo(f"summary table: {out / 'summary.json'}")


def _train_and_emit(
    plan: Plan,
    *,
    out: Path,
    debug: bool,
    curves_all: bool = False,
    rates: bool = False,
    as_json: bool,
    **run_options: Any,
) -> None:
    """What demo, sweep and compare do after their plan: train, then save and print."""
    experiment, store_path = _guarded(
        debug, _execute, plan, out=out, as_json=as_json, **run_options
    )
    _guarded(
        debug,
        _emit,
        experiment,
        out=out,
        store_path=store_path,
        as_json=as_json,
        curves=experiment.groups if curves_all else None,
        rates=rates,
    )


def _print_experiment(experiment: Experiment) -> None:
    choice, *after = experiment.tables()
    _print_table(choice)
    if experiment.best is not None:
        typer.echo(experiment.best.evidence)
        typer.echo(experiment.best.choice)
    for table in after:
        _print_table(table)
    for table in experiment.calibration_tables():
        _print_table(table)
    for finding in experiment.findings:
        typer.echo(f"{finding.severity} [{finding.rule}]: {finding.message}")


def _print_table(table: Table) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    shown = RichTable(title=table.title, caption=table.caption)
    for column in table.headers:
        shown.add_column(column, justify="left" if column in ("group", "read as") else "right")
    for row in table.rows:
        shown.add_row(*row)
    Console(width=max(124, 15 * len(table.headers))).print(shown)


@app.command()
def demo(
    epochs: EpochsOpt = 4000,
    seeds: Annotated[
        int, typer.Option(help="Seeds per setting (the case study's repeated evaluation: 30).")
    ] = DEMO_SEEDS,
    p: Annotated[float, typer.Option("--p", help="Drop probability of the hidden dropout.")] = 0.4,
    out: DemoOutOpt = None,
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
    batch 32, trained with and without dropout over 30 seeds. Python: dropkit.lab.demo().
    """
    from dropkit.lab import plan_demo

    with _usage():
        plan = plan_demo(seeds=seeds, epochs=epochs, p=p)
    folder = out or Path("dropkit-demo")
    _train_and_emit(
        plan,
        out=folder,
        debug=debug,
        curves_all=True,
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
    data: DataOpt = "circles",
    model: Annotated[
        str | None,
        typer.Option(
            help="Your model as MODULE:FACTORY, a function f(p) -> nn.Module (default: the "
            "built-in MLP of --hidden)."
        ),
    ] = None,
    target: TargetOpt = None,
    impute: ImputeOpt = None,
    task: TaskOpt = None,
    validation: ValidationOpt = None,
    folds: FoldsOpt = 0,
    lr: LrOpt = 1e-3,
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
        float | None,
        typer.Option(
            help="Max-norm bound c on hidden units' incoming weights (default: none: no bound)."
        ),
    ] = None,
    out: SweepOutOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    compile: CompileOpt = None,
    runs_per_batch: RunsPerBatchOpt = 128,
    engine: EngineOpt = "in-process",
    address: AddressOpt = None,
    device: DeviceOpt = "auto",
    batched: BatchedOpt = None,
    evaluate: EvaluateOpt = None,
    mc_samples: McSamplesOpt = 30,
    mc_consistent: McConsistentOpt = False,
    choose_by: ChooseByOpt = "score",
    debug: DebugOpt = False,
) -> None:
    """Grid-search the dropout rate: rates x seeds, with 95% CIs and the best rate's evidence.

    Python: dropkit.lab.sweep(data, rates=..., seeds=...). Your own model and data:
    --model MODULE:FACTORY --data MODULE:FUNCTION (docs/your-model.md).
    """
    from dropkit.lab import plan_sweep

    grid = _parse_rates(rates)
    widths = _parse_hidden(hidden)
    source = None if model is None else _load_factory(model)
    with _usage({"input_p": "--input-dropout"}):
        plan = plan_sweep(
            _user_data(data),
            model=source,
            rates=grid,
            seeds=seeds,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            hidden=widths,
            input_p=input_dropout,
            max_norm=max_norm,
            target=target,
            impute=impute,
            task=task,
            validation=validation,
            folds=folds,
            evaluate=evaluate,
            mc_samples=mc_samples,
            mc_consistent=mc_consistent,
            choose_by=choose_by,
        )
    _print_notes(plan.notes)
    folder = out or Path("dropkit-sweep")
    _train_and_emit(
        plan,
        out=folder,
        debug=debug,
        rates=True,
        store_path=store,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
        device=device,
        batched=batched,
    )


@app.command()
def report(
    store: Annotated[Path, typer.Option(help="The SQLite results store to report on.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[
        str | None,
        typer.Option(
            help="The report's title (default: 'dropkit report: ' followed by the names of "
            "the data sets)."
        ),
    ] = None,
    choose_by: ChooseByOpt = "score",
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write ONE self-contained HTML report of a results store: tables, diagnosis, figures.

    Figures are inline, nothing is fetched from the network; the same store gives the same
    file. A read-only store (file or folder) is read without a change. Python:
    dropkit.lab.load(store).report(path) (or lab.load_all for every experiment).
    """
    from dropkit.lab import StoreError, load_all, report

    if not store.is_file():
        _fail(f"no results store at {store}")
    try:
        experiments = load_all(store, choose_by=choose_by)
        path = report(store, out, title=title, experiments=experiments)
    except ValueError as error:  # a --choose-by the runs' task does not take
        _fail(str(error))
    except StoreError as error:
        _fail(str(error))
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
        _print_notes(experiment.notes)
        _print_experiment(experiment)
    typer.echo(f"report: {path}")


# ---- dropkit compare ------------------------------------------------------------------------


def _compare(
    data: str,
    target: str | None,
    impute: str | None,
    arms: str | None,
    seeds: int,
    epochs: int | None,
    batch_size: int,
    model: str,
    hidden: str | None,
    out: Path | None,
    store: Path | None,
    as_json: bool,
    quiet: bool,
    compile: bool | None,
    runs_per_batch: int,
    engine: str,
    address: str | None,
    debug: bool,
    task: str | None = None,
    validation: float | None = None,
    folds: int = 0,
    lr: float = 1e-3,
    device: str = "auto",
    batched: bool | None = None,
    evaluate: str | None = None,
    mc_samples: int = 30,
    mc_consistent: bool = False,
    choose_by: str = "score",
    **strengths: Any,
) -> None:
    """Compare regularizers: every arm trained with the same seeds, tested against 'none'.

    Each arm is one documented change to the model, the optimizer or the training loop (the
    registry dropkit.lab.plan.arms), with its own strength option; arms the stacked trainer can
    express train together as one batched computation. Python: dropkit.lab.compare(...).
    """
    from dropkit.lab import plan_compare

    widths = None if hidden is None else _parse_hidden(hidden)
    source = _load_factory(model) if ":" in model else model
    with _usage():
        plan = plan_compare(
            _user_data(data),
            arms=arms,
            model=source,
            hidden=widths,
            seeds=seeds,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            target=target,
            impute=impute,
            task=task,
            validation=validation,
            folds=folds,
            evaluate=evaluate,
            mc_samples=mc_samples,
            mc_consistent=mc_consistent,
            choose_by=choose_by,
            **strengths,
        )
    _print_notes(plan.notes)
    folder = out or Path("dropkit-compare")
    _train_and_emit(
        plan,
        out=folder,
        debug=debug,
        store_path=store,
        as_json=as_json,
        quiet=quiet,
        compile=compile,
        runs_per_batch=runs_per_batch,
        engine=engine,
        address=address,
        device=device,
        batched=batched,
    )


def _strength_option(strength: Strength) -> inspect.Parameter:
    """The ``compare`` option of one registry strength: ``--name``, its type, default and help."""
    base: Any = int if strength.domain == "positive_int" else float
    kind: Any = base if strength.default is not None else base | None
    help_text = strength.help + (f"; in {strength.unit}" if strength.unit else "") + "."
    flag = "--" + strength.name.replace("_", "-")
    return inspect.Parameter(
        strength.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=strength.default,
        annotation=Annotated[kind, typer.Option(flag, help=help_text)],
    )


def _compare_command() -> Callable[..., None]:
    """``dropkit compare``, whose strength options come from the arm registry."""

    def compare(**options: Any) -> None:
        _compare(**options)

    fixed = [
        ("data", DataOpt, "circles"),
        ("target", TargetOpt, None),
        ("impute", ImputeOpt, None),
        (
            "arms",
            Annotated[
                str | None,
                typer.Option(
                    help="Comma-separated arms, regularizers joined by '+', e.g. "
                    "'none,dropout,l2,dropout+l2' (default: every arm that applies to --model). "
                    f"Arms: {', '.join(REGULARIZERS)}."
                ),
            ],
            None,
        ),
        ("seeds", SeedsOpt, 10),
        (
            "epochs",
            Annotated[
                int | None,
                typer.Option(
                    help="Training epochs per run (default: mlp on circles 1000, moons 500, "
                    "digits 100, breast_cancer 100, wine 200, mnist 20, other data 200; cnn "
                    "and rnn 30; your own model 200)."
                ),
            ],
            None,
        ),
        ("batch_size", Annotated[int, typer.Option(help="Mini-batch size.")], 32),
        (
            "model",
            Annotated[
                str,
                typer.Option(
                    help="mlp, cnn (image data), rnn (sequences), or your model as "
                    "MODULE:FACTORY, a function f(p) -> nn.Module."
                ),
            ],
            "mlp",
        ),
        ("task", TaskOpt, None),
        ("validation", ValidationOpt, None),
        ("folds", FoldsOpt, 0),
        ("lr", LrOpt, 1e-3),
        ("evaluate", EvaluateOpt, None),
        ("mc_samples", McSamplesOpt, 30),
        ("mc_consistent", McConsistentOpt, False),
        ("choose_by", ChooseByOpt, "score"),
        (
            "hidden",
            Annotated[
                str | None,
                typer.Option(
                    help="Layer widths: MLP hidden units, CNN channels or LSTM sizes "
                    "(default: mlp 500, cnn 16,32, rnn 32)."
                ),
            ],
            None,
        ),
    ]
    shared = [
        ("out", CompareOutOpt, None),
        ("store", StoreOpt, None),
        ("as_json", JsonOpt, False),
        ("quiet", QuietOpt, False),
        ("compile", CompileOpt, None),
        ("runs_per_batch", RunsPerBatchOpt, 256),
        ("engine", EngineOpt, "in-process"),
        ("address", AddressOpt, None),
        ("device", DeviceOpt, "auto"),
        ("batched", BatchedOpt, None),
        ("debug", DebugOpt, False),
    ]
    parameters = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
        for name, hint, default in fixed
    ]
    parameters += [_strength_option(s) for s in STRENGTHS.values()]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
        for name, hint, default in shared
    ]
    compare.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    compare.__annotations__ = {p.name: p.annotation for p in parameters}
    compare.__doc__ = _compare.__doc__
    return compare


app.command(name="compare")(_compare_command())


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


def _user_data(data: str) -> Any:
    """``--data``: a built-in name or CSV path as it is, or what ``MODULE:FUNCTION()`` returns."""
    if data in BUILTIN_DATASETS or ":" not in data or Path(data).exists():
        return data
    load = _load_factory(data)
    try:
        return load()
    except Exception as error:  # the user's loader, any failure
        _fail(f"--data {data}: {load.__name__}() raised {type(error).__name__}: {error}")


@app.command()
def check(
    target: Annotated[
        str, typer.Argument(help="MODULE:FACTORY, a function that builds the model.")
    ],
    input_shape: Annotated[
        str | None,
        typer.Option(
            help="Shape of an example input, e.g. '1,3,32,32': one forward pass on random "
            "values of that shape, and the checks follow the call order (default: none: no "
            "forward pass; the modules' registration order)."
        ),
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


def _guarded(debug: bool, command: Callable[..., _T], *args: Any, **options: Any) -> _T:
    """Run a step of a training command; without ``--debug``, an unexpected error is one
    line, exit 1."""
    try:
        return command(*args, **options)
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
