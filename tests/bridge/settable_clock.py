"""A wall clock a test sets, shared by the simulated meters and the bridge. It crosses into a
worker process with the poller options (pickled): there it keeps the time it had when the worker
started, so a test moves time on between two runs of the bridge."""

from __future__ import annotations


class SettableClock:
    """``clock()`` is the time (s) the test last set."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
