"""Waiting for an observable condition in real-I/O tests: polled, bounded by a deadline, never
a fixed sleep followed by an assertion."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bridge.service import BridgeService


async def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    state: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` (and ``state()``, what was
    seen instead) after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    seen = f" ({state()})" if state is not None else ""
    raise AssertionError(f"not within {timeout:g} s: {what}{seen}")


async def all_delivered(
    service: BridgeService, received: Callable[[], int], before: int = 0, timeout: float = 10
) -> None:
    """Wait until what ``service`` published has reached the subscriber (``received()``
    counts the readings it got, ``before`` of them before the service started); while the
    service runs, until its outbox is empty too: every reading it took (and any left from
    before) was published. After a stop, a reading taken during the stop may be left in the
    outbox for the next start."""
    writer, publisher, outbox = service.writer, service.publisher, service.outbox
    assert writer is not None and publisher is not None and outbox is not None
    stopped = service._stop.is_set()

    def done() -> bool:
        published = publisher.stats.published_readings
        if not stopped and (outbox.depth()[0] or published < writer.stats.readings):
            return False
        return received() - before >= published

    await wait_until(
        done,
        timeout,
        "every reading taken delivered" if not stopped else "every reading published received",
        lambda: (
            f"taken {writer.stats.readings}, published {publisher.stats.published_readings}, "
            f"received {received() - before}"
        ),
    )
