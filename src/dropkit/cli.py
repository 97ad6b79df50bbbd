"""The ``dropkit`` command line: a thin Typer app that parses, calls the library and prints.

Nothing imports this module. Usage errors exit with code 2 and a one-line message.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dropkit import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="dropkit",
    help="Dropout regularization for PyTorch: does dropout help my model, and at what rate?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The reference case study (MISSION.md section 4) that `dropkit demo` reproduces.
CASE_STUDY = {
    "data": "make_circles(n_samples=100, noise=0.1, random_state=1); first 30 train, last 70 test",
    "model": "Dense(500, ReLU) -> [Dropout(p)] -> Dense(1, sigmoid)",
    "loss": "binary cross-entropy",
    "optimizer": "Adam (default settings)",
    "batch_size": 32,
}


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


def _check_positive(name: str, value: int) -> int:
    if value < 1:
        raise typer.BadParameter(f"must be >= 1, got {value}", param_hint=name)
    return value


@app.command()
def demo(
    epochs: Annotated[int, typer.Option(help="Training epochs per run.")] = 4000,
    seeds: Annotated[
        int, typer.Option(help="Seeds per model (10 is the minimum for a claim).")
    ] = 10,
    p: Annotated[float, typer.Option("--p", help="Drop probability of the hidden dropout.")] = 0.4,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of text.")
    ] = False,
) -> None:
    """Show the reference case study: does Dropout(0.4) help a 500-unit MLP on 30 points?

    The experiment lab that trains it is not part of this release yet; this command states the
    plan it will run, with the options given.
    """
    from dropkit._validation import check_probability

    _check_positive("--epochs", epochs)
    _check_positive("--seeds", seeds)
    try:
        p = check_probability(p)
    except (TypeError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="--p") from None
    plan = {
        **CASE_STUDY,
        "arms": ["none", f"dropout(p={p:g})"],
        "epochs": epochs,
        "seeds": seeds,
        "runs": 2 * seeds,
        "status": "planned: the training lab is not available in this version",
    }
    if as_json:
        typer.echo(json.dumps(plan))
        return
    typer.echo("dropkit demo: does dropout help, and at what rate?")
    for key, value in plan.items():
        typer.echo(f"  {key:<10} {value}")


def main() -> None:
    """Console-script entry point."""
    app()
