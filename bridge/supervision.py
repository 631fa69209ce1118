"""How the service restarts a meter's poller that crashed (a bug), and when it stops trying hard.

A crash is restarted after a backoff that doubles from ``backoff_s`` up to ``backoff_max_s``.
The same crash again and again (same exception type, message and place) is a bug that a restart
will not cure: after ``fault_after`` identical crashes in a row the meter is ``faulted``, its
alarm carries the exception summary, and it is retried only at ``faulted_retry_s`` (the circuit
breaker's slow cadence), in case what it met has gone away. A poller that then runs for
``healthy_after_s`` without crashing clears the state.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable

import attrs

__all__ = [
    "CrashTracker",
    "SupervisionSettings",
    "clear_if_healthy",
    "crash_summary",
    "crashed_alarm",
    "crashed_message",
    "faulted_alarm",
    "faulted_message",
    "poller_crashed",
]

#: Raises or clears an alarm: ``(name, active, message)``.
AlarmHook = Callable[[str, bool, str], None]


@attrs.frozen(kw_only=True)
class SupervisionSettings:
    """The restart policy of crashed pollers (see the module docstring)."""

    backoff_s: float = 5.0
    backoff_max_s: float = 300.0
    fault_after: int = 3
    faulted_retry_s: float = 300.0
    healthy_after_s: float = 600.0


def crash_summary(exc: BaseException) -> str:
    """``Type: message (at file:line in function)``: what identifies a crash, on one line."""
    message = " ".join(str(exc).split())[:300]
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text


_JITTER = random.Random()


@attrs.define
class CrashTracker:
    """The crash history of one meter's poller."""

    settings: SupervisionSettings = attrs.field(factory=SupervisionSettings)
    #: The jitter (shared by default: a ``Random`` holds 2.5 KB of state).
    rng: random.Random = attrs.field(factory=lambda: _JITTER)
    crashes: int = 0
    identical: int = 0
    last: str | None = None
    faulted: bool = False
    _delay: float | None = None

    def crashed(self, exc: BaseException) -> float:
        """Record a crash; returns how long to wait before starting the poller again."""
        summary = crash_summary(exc)
        self.crashes += 1
        self.identical = self.identical + 1 if summary == self.last else 1
        self.last = summary
        s = self.settings
        if self.identical >= s.fault_after:
            self.faulted = True
        if self.faulted:
            return s.faulted_retry_s
        delay = s.backoff_s if self._delay is None else min(s.backoff_max_s, self._delay * 2)
        self._delay = delay
        return delay * (0.5 + self.rng.random())

    def reset(self) -> None:
        """The poller ran healthy for ``healthy_after_s``: forget the crash history."""
        self.identical = 0
        self.last = None
        self.faulted = False
        self._delay = None


def crashed_alarm(meter: str) -> str:
    """The alarm raised when a meter's poller crashed (a bug) and was restarted."""
    return f"meter.{meter}.crashed"


def faulted_alarm(meter: str) -> str:
    """The alarm raised when a meter's poller keeps crashing the same way (a bug)."""
    return f"meter.{meter}.faulted"


def crashed_message(meter: str, crashes: int) -> str:
    """The message of :func:`crashed_alarm` (in the service and in a worker process alike)."""
    return (
        f"the poller of meter {meter} crashed {crashes} time(s); restarting it (see the "
        "traceback in the log)"
    )


def faulted_message(meter: str, tracker: CrashTracker) -> str:
    """The message of :func:`faulted_alarm` (in the service and in a worker process alike)."""
    return (
        f"meter {meter} is faulted: its poller crashed {tracker.identical} times in a row with "
        f"{tracker.last}; retried every {tracker.settings.faulted_retry_s:g} s"
    )


def poller_crashed(
    meter: str, tracker: CrashTracker, exc: BaseException, ran_s: float, set_alarm: AlarmHook
) -> float:
    """A meter's poller crashed after running ``ran_s`` seconds (in the service or in a worker
    process alike): its history is forgotten first if it had run healthy long enough, the crash
    recorded, and ``crashed`` or ``faulted`` raised. Returns how long to wait before the
    restart."""
    if ran_s >= tracker.settings.healthy_after_s:
        tracker.reset()
    delay = tracker.crashed(exc)
    if tracker.faulted:
        set_alarm(faulted_alarm(meter), True, faulted_message(meter, tracker))
    else:
        set_alarm(crashed_alarm(meter), True, crashed_message(meter, tracker.crashes))
    return delay


def clear_if_healthy(meter: str, tracker: CrashTracker, ran_s: float, set_alarm: AlarmHook) -> bool:
    """A faulted meter whose poller has run ``healthy_after_s`` without crashing: its state
    and both alarms are cleared. Returns True when it was cleared now."""
    if not tracker.faulted or ran_s < tracker.settings.healthy_after_s:
        return False
    tracker.reset()
    message = f"the poller of meter {meter} runs again without crashing"
    set_alarm(faulted_alarm(meter), False, message)
    set_alarm(crashed_alarm(meter), False, message)
    return True
