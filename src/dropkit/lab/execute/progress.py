"""Progress sinks: where a long sweep shows how far it is (a terminal bar, a notebook bar, nothing).

Training reports progress in *run-epochs* through the small :class:`Progress` protocol
(``begin(total, description)``, ``advance(amount)``, ``end()``); the training loop never
imports a progress library. :func:`progress_sink` turns what a user passes as ``progress=``
into a sink:

==================  ===========================================================================
``progress=``       shows
==================  ===========================================================================
``None``/``False``  nothing (the default of the Python API: no output at all)
``True``/"auto"     a ``tqdm.auto`` bar: a widget in Jupyter, a text bar on a terminal
``"tqdm"``          the same
``"rich"``          a rich bar on stderr (what the ``dropkit`` command line shows on a terminal)
an object           any object with ``begin``, ``advance`` and ``end`` (:class:`Progress`)
==================  ===========================================================================
"""

from __future__ import annotations

from typing import Any

from dropkit.lab.execute.runner import NullProgress, Progress

__all__ = ["NullProgress", "Progress", "RichProgress", "TqdmProgress", "progress_sink"]

PROGRESS_CHOICES = ("auto", "tqdm", "rich")


class RichProgress:
    """A rich progress bar on stderr, over run-epochs."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichBar

        self._bar = RichBar(
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


class TqdmProgress:
    """A ``tqdm.auto`` bar over run-epochs: a widget in a notebook, text on a terminal."""

    def __init__(self) -> None:
        self._bar: Any = None

    def begin(self, total: int, description: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=description, unit="run-epoch", unit_scale=True)

    def advance(self, amount: int) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_sink(progress: object) -> Progress | None:
    """The sink for a ``progress=`` argument (see the module docstring); None shows nothing.

    Raises:
        ValueError: an unknown string.
        TypeError: an object without ``begin``, ``advance`` and ``end``.
    """
    if progress is None or progress is False:
        return None
    if progress is True:
        return TqdmProgress()
    if isinstance(progress, str):
        if progress in ("auto", "tqdm"):
            return TqdmProgress()
        if progress == "rich":
            return RichProgress()
        raise ValueError(
            f"`progress` must be None, True, one of {', '.join(map(repr, PROGRESS_CHOICES))} "
            f"or an object with begin/advance/end, got {progress!r}"
        )
    if all(callable(getattr(progress, name, None)) for name in ("begin", "advance", "end")):
        sink: Progress = progress  # type: ignore[assignment]
        return sink
    raise TypeError(
        "`progress` must be None, True, 'auto', 'tqdm', 'rich' or an object with "
        f"begin(total, description), advance(amount) and end(), got {type(progress).__name__}"
    )
