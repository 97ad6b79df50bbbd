"""The thread chooser of the batched trainer (``dropkit.lab.train.threads``), on a fake clock:
each step takes the seconds a cost function gives for the thread count it runs with."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import dropkit.lab.train.threads as threads
from dropkit.lab.train.threads import PROBE_SHARE, ThreadChooser


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def train(
    chooser: ThreadChooser, clock: Clock, cost: Callable[[int, int], float], epochs: int
) -> list[int]:
    """Run ``epochs`` epochs, each ``cost(epoch, threads)`` seconds; the thread counts used."""
    used = []
    for epoch in range(epochs):
        with chooser.timed():
            used.append(torch.get_num_threads())
            clock.now += cost(epoch, used[-1])
    return used


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(threads.time, "perf_counter", fake)
    return fake


@pytest.mark.parametrize(("faster", "other"), [(1, 4), (4, 1)])
def test_it_keeps_the_faster_setting_and_probes_the_other_rarely(
    clock: Clock, faster: int, other: int
) -> None:
    before = torch.get_num_threads()
    lines: list[str] = []
    chooser = ThreadChooser(4, lines.append)
    seconds = {faster: 0.1, other: 0.3}
    used = train(chooser, clock, lambda _e, t: seconds[t], 400)
    chooser.restore()
    assert torch.get_num_threads() == before
    assert chooser.chosen == faster
    assert len(lines) == 1 and f"torch threads: {faster} " in lines[0], lines
    # after the first windows, the slower setting runs only in probes: about PROBE_SHARE of
    # the time (a probe is one window of 0.3 s, i.e. 1 epoch of the slower setting)
    later = used[20:]
    probing = sum(seconds[t] for t in later if t == other) / sum(seconds[t] for t in later)
    assert 0 < probing <= 1.5 * PROBE_SHARE


def test_it_follows_load_that_comes_and_goes(clock: Clock) -> None:
    lines: list[str] = []
    chooser = ThreadChooser(2, lines.append)

    def cost(epoch: int, t: int) -> float:  # another process takes a core from epoch 100 on
        if epoch < 100:
            return 0.05 if t == 2 else 0.09
        return 0.35 if t == 2 else 0.09

    used = train(chooser, clock, cost, 400)
    chooser.restore()
    assert used[60:100].count(2) > 30  # two threads while the machine is free
    assert chooser.chosen == 1 and any("now 1" in line for line in lines), lines
    # switched back within a bounded number of windows (probes come every 1/PROBE_SHARE
    # windows or sooner after losing by little)
    assert used[100 + int(2 / PROBE_SHARE) * 6 :].count(1) > 0.9 * len(
        used[100 + int(2 / PROBE_SHARE) * 6 :]
    )


@pytest.mark.parametrize("most", [None, 1])
def test_with_one_thread_to_choose_it_changes_nothing(clock: Clock, most: int | None) -> None:
    before = torch.get_num_threads()
    chooser = ThreadChooser(most)
    used = train(chooser, clock, lambda _e, _t: 0.5, 10)
    chooser.restore()
    assert used == [before] * 10 and torch.get_num_threads() == before


def test_the_first_window_of_each_setting_warms_it_up(clock: Clock) -> None:
    """A compiled step compiles again for each thread count: those epochs do not decide."""
    chooser = ThreadChooser(2)
    seen: set[int] = set()

    def cost(_epoch: int, t: int) -> float:
        first = t not in seen
        seen.add(t)
        return 30.0 if first and t == 2 else (0.4 if t == 1 else 0.35)

    used = train(chooser, clock, cost, 12)
    chooser.restore()
    # close timings (0.4 against 0.35): a second round, then two threads
    assert used[:7] == [1, 1, 2, 1, 2, 1, 2] and chooser.chosen == 2
