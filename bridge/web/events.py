"""Live events for the dashboard: readings, meter state changes and alarms, as server-sent events.

Each subscriber gets a bounded queue; one that does not keep up is dropped (its browser
reconnects and reloads the state), so a slow client never makes the service hold more memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import trio

__all__ = ["MAX_SUBSCRIBERS", "QUEUE_SIZE", "EventHub", "sse_stream"]

#: Events waiting for one subscriber before it is dropped.
QUEUE_SIZE = 512
#: Event streams open at once.
MAX_SUBSCRIBERS = 32
#: A comment line is sent this often so proxies keep the stream open.
KEEPALIVE_S = 15.0


class EventHub:
    """Fans events out to the open event streams."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[tuple[str, str]]] = set()
        self.dropped_subscribers = 0
        self.published = 0

    @property
    def subscribers(self) -> int:
        """Open event streams."""
        return len(self._subscribers)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send one event to every subscriber (never blocks)."""
        if not self._subscribers:
            return
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
        self.published += 1
        for send in list(self._subscribers):
            try:
                send.send_nowait((kind, text))
            except trio.WouldBlock:
                self._subscribers.discard(send)
                send.close()
                self.dropped_subscribers += 1
            except trio.BrokenResourceError:
                self._subscribers.discard(send)

    def subscribe(self) -> trio.MemoryReceiveChannel[tuple[str, str]] | None:
        """A new subscription, or None when too many are open."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            return None
        send, receive = trio.open_memory_channel[tuple[str, str]](QUEUE_SIZE)
        self._subscribers.add(send)
        return receive

    def close_all(self) -> None:
        """End every stream (at shutdown)."""
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()


async def sse_stream(
    receive: trio.MemoryReceiveChannel[tuple[str, str]], hello: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The ``text/event-stream`` body of one subscription."""
    yield f"retry: 2000\nevent: hello\ndata: {json.dumps(hello)}\n\n".encode()
    with receive:
        while True:
            item: tuple[str, str] | None = None
            with trio.move_on_after(KEEPALIVE_S):
                try:
                    item = await receive.receive()
                except trio.EndOfChannel:
                    return
            if item is None:
                yield b": keepalive\n\n"
                continue
            kind, text = item
            yield f"event: {kind}\ndata: {text}\n\n".encode()


def finite(value: Any) -> Any:
    """A value JSON can carry (NaN and infinities become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
