"""Waiting for an observable condition in real-I/O tests: polled, bounded by a deadline, never
a fixed sleep followed by an assertion."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bridge.service import BridgeService


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def all_delivered(
    service: BridgeService, received: Callable[[], int], before: int = 0, timeout: float = 10
) -> None:
    """Wait until every reading ``service`` took has been published and has reached the
    subscriber: ``received()`` counts the readings it got, ``before`` of them before the
    service started."""
    writer, publisher = service.writer, service.publisher
    assert writer is not None and publisher is not None
    await wait_until(
        lambda: (
            publisher.stats.published_readings >= writer.stats.readings
            and received() - before >= writer.stats.readings
        ),
        timeout,
        "every reading taken delivered",
    )
