"""Loaded at the start of every Python process whose ``PYTHONPATH`` holds this directory (the
tests put it there for the worker processes they start): when ``DLMS_BRIDGE_TEST_CRASH`` names a
meter, that meter's poller crashes at once, always the same way - the in-process tests'
``MeterPoller.run`` patch (tests/bridge/test_supervision.py), carried into a worker process."""

from __future__ import annotations

import os
from typing import Any

_METER = os.environ.get("DLMS_BRIDGE_TEST_CRASH")

if _METER:
    import trio

    from bridge.poller import MeterPoller

    _original = MeterPoller.run

    async def _run(self: MeterPoller, **kwargs: Any) -> None:
        if self.meter.name == _METER:
            await trio.lowlevel.checkpoint()  # a crash of a running task, not of the call
            raise TypeError("unsupported operand type(s) for *: 'list' and 'int'")
        await _original(self, **kwargs)

    MeterPoller.run = _run  # type: ignore[method-assign]
