"""Waiting for an observable condition in real-I/O tests: polled, bounded by a deadline, never
a fixed sleep followed by an assertion."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")
