"""How many of torch's intra-op threads a training loop uses, chosen by timing its steps.

No fixed thread count is right for every batch of runs. A small model's steps are short, and
torch's threads spin waiting for each other as soon as another process wants a core: on two
cores beside one busy process, the case-study grid took 60 s with one thread and 420 s with
two. A compute-bound model (an MLP 30-1024-1024-2) is the other way round: its matrix products
are long enough to share, and one thread leaves half the machine idle. So the loop measures
its training steps (:meth:`ThreadChooser.timed` around each; the work between them, such as
evaluating, runs with the current setting):

1. the first step (compiling, allocating) runs with one thread and is not timed;
2. then windows of at least :data:`WINDOW_S` seconds (whole steps) try one thread and
   ``most`` threads: the first window of each warms it up and is not counted (``torch.compile``
   keys its graphs on the thread count, so a compiled step compiles again for the second
   setting), then one timed window each; when one is :data:`CLEAR_RATIO` times faster it is
   chosen, else one more window each decides (the lower median seconds per step);
3. the other setting is probed again, one window at a time, so that probing costs about
   :data:`PROBE_SHARE` of the time: after a probe that lost by a factor ``r`` (its seconds per
   step over the chosen one's) the next comes ``ceil(r / PROBE_SHARE)`` windows later. A probe
   that wins by more than :data:`SWITCH_MARGIN` becomes the setting. Load that comes and goes
   on a shared machine is followed, never locked in.

Only the time per step decides; the results do not depend on the thread count beyond float
rounding (a product summed in another order).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["CLEAR_RATIO", "PROBE_SHARE", "SWITCH_MARGIN", "WINDOW_S", "ThreadChooser"]

WINDOW_S = 0.3
"""Shortest timed window, seconds: whole steps are added until it is reached."""

PROBE_SHARE = 0.05
"""Share of the training time spent probing the setting not chosen."""

CLEAR_RATIO = 1.5
"""A first timing this lopsided decides without a second round."""

SWITCH_MARGIN = 0.9
"""A probe becomes the setting when its seconds per step are below this share of the chosen
setting's."""


class ThreadChooser:
    """Chooses torch's intra-op threads (1 or ``most``) step by step, by timing the steps.

    Use :meth:`timed` around each training step (steps of one size); torch's setting before
    the first is restored by :meth:`restore`. With ``most`` below 2 it changes nothing.

    Args:
        most: the largest thread count to try (the caller's ``torch.get_num_threads()``).
        say: receives one line when the choice is first made and at every switch.
    """

    def __init__(self, most: int | None, say: Callable[[str], None] | None = None) -> None:
        self.most = most if most is not None and most > 1 else 1
        self.say = say if say is not None else (lambda _line: None)
        self.before = torch.get_num_threads()
        self.active = self.most > 1
        # the first windows: (threads, counted): each setting warmed up, then timed
        self.queue = [(1, False), (self.most, False), (1, True), (self.most, True)]
        if not self.active:
            self.queue = []
        self.counted = False  # whether the current window is timed
        self.timings: dict[int, list[float]] = {1: [], self.most: []}
        self.chosen: int | None = None
        self.current = 1
        self.window: tuple[int, float, int] | None = None  # (threads, seconds, steps)
        self.until_probe = 0
        self.steps = 0

    @property
    def other(self) -> int:
        return 1 if self.chosen == self.most else self.most

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Run one step with the thread count of the current window, timed."""
        if not self.active:
            yield
            return
        torch.set_num_threads(self.current)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.steps += 1
        if self.steps == 1:  # compiling, allocating: not representative
            self._next_window()
            return
        threads, total, count = self.window or (self.current, 0.0, 0)
        total, count = total + seconds, count + 1
        if total < WINDOW_S:
            self.window = (threads, total, count)
            return
        self.window = None
        self._close(threads, total / count)

    def _close(self, threads: int, per_step: float) -> None:
        """A window of ``threads`` took ``per_step`` seconds per step: record, decide."""
        if self.chosen is None:
            if self.counted:
                self.timings[threads].append(per_step)
            if not self.queue:
                one, many = (statistics.median(self.timings[t]) for t in (1, self.most))
                if len(self.timings[1]) == 1 and max(one, many) < CLEAR_RATIO * min(one, many):
                    self.queue = [(1, True), (self.most, True)]  # close: one more round
                    self._next_window()
                    return
                self.chosen = 1 if one <= many else self.most
                self.say(
                    f"torch threads: {self.chosen} ({one:.3g} s per step with 1, "
                    f"{many:.3g} s with {self.most}; timed, and checked again while training)"
                )
                self.timings = {1: [one], self.most: [many]}
                self._schedule(max(one, many) / min(one, many))
        elif threads == self.chosen:
            self.timings[threads] = [per_step]
            self.until_probe -= 1
        else:  # a probe of the other setting
            chosen = self.timings[self.chosen][-1]
            if per_step < SWITCH_MARGIN * chosen:
                self.say(
                    f"torch threads: now {threads} ({per_step:.3g} s per step against "
                    f"{chosen:.3g} s with {self.chosen})"
                )
                self.chosen = threads
                self.timings[threads] = [per_step]
                self._schedule(chosen / per_step)
            else:
                self._schedule(per_step / chosen)
        self._next_window()

    def _schedule(self, ratio: float) -> None:
        """Probe the other setting after ``ceil(ratio / PROBE_SHARE)`` windows."""
        self.until_probe = math.ceil(max(1.0, ratio) / PROBE_SHARE)

    def _next_window(self) -> None:
        if self.queue:
            self.current, self.counted = self.queue.pop(0)
        elif self.chosen is not None:
            self.current = self.other if self.until_probe <= 0 else self.chosen

    def restore(self) -> None:
        """Give torch back the thread count it had before the first step."""
        if self.active:
            torch.set_num_threads(self.before)
