"""The recent poll durations of one meter, in a fixed-size ring of whole microseconds.

Every meter keeps its last few hundred poll durations for the console's p50/p95 and the
summaries' p99. A ``deque`` of Python floats costs about 32 bytes a value (the float object and
its slot); thousands of meters made that the biggest per-meter cost of the service. Here a value
is 4 bytes (an unsigned microsecond count in an :class:`array.array`), the ring is never longer
than ``maxlen`` and the values read back are seconds again (``us / 1e6``: a duration given in
whole microseconds comes back exactly).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

__all__ = ["MAX_US", "LatencyWindow"]

#: The longest duration kept, microseconds (about 71 minutes; longer ones are kept as this).
MAX_US = 0xFFFF_FFFF


class LatencyWindow:
    """The last ``maxlen`` durations (seconds), oldest first; what a bounded ``deque`` of
    floats offered (``append``, ``extend``, ``len``, iteration both ways, ``maxlen``).

    Durations are rounded to the microsecond; negative ones are kept as 0.
    """

    __slots__ = ("_data", "_next", "maxlen")

    def __init__(self, values: Iterable[float] = (), maxlen: int = 512) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        self.maxlen = maxlen
        self._data = array("I")
        #: Once the ring is full: the slot of the oldest value (the next one overwritten).
        self._next = 0
        self.extend(values)

    def append(self, seconds: float) -> None:
        """Keep ``seconds``, dropping the oldest value when the window is full."""
        us = round(seconds * 1e6)
        us = 0 if us < 0 else MAX_US if us > MAX_US else us
        data = self._data
        if len(data) < self.maxlen:
            data.append(us)
            return
        data[self._next] = us
        self._next = (self._next + 1) % self.maxlen

    def extend(self, values: Iterable[float]) -> None:
        """:meth:`append` each of ``values`` in turn."""
        for seconds in values:
            self.append(seconds)

    def clear(self) -> None:
        """Forget every value."""
        self._data = array("I")
        self._next = 0

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[float]:
        data, cut = self._data, self._next
        for us in data[cut:]:
            yield us / 1e6
        for us in data[:cut]:
            yield us / 1e6

    def __reversed__(self) -> Iterator[float]:
        data, cut = self._data, self._next
        for i in range(cut - 1, -1, -1):
            yield data[i] / 1e6
        for i in range(len(data) - 1, cut - 1, -1):
            yield data[i] / 1e6

    def newest(self, n: int) -> list[float]:
        """The ``n`` newest values (all of them when fewer), newest first: what
        ``islice(reversed(window), n)`` gives, taken by slices."""
        data, cut = self._data, self._next
        if n == 1 and data:  # the usual case: one poll since the last look
            return [data[cut - 1] / 1e6]  # data[-1] when cut is 0
        return [us / 1e6 for us in self.newest_us(n)]

    def newest_us(self, n: int) -> array[int]:
        """:meth:`newest` in whole microseconds, as kept (no conversion)."""
        data, cut = self._data, self._next
        n = min(n, len(data))
        if n <= 0:
            return array("I")
        # Newest first: data[cut - 1] down to data[0], then data[-1] down to data[cut].
        take = data[max(0, cut - n) : cut][::-1]
        if len(take) < n:
            take += data[len(data) - (n - len(take)) :][::-1]
        return take

    def __repr__(self) -> str:
        return f"LatencyWindow({list(self)!r}, maxlen={self.maxlen})"
