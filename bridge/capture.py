"""Recorded DLMS sessions: a recording proxy, a replaying meter, and a pcap decoder.

- :class:`RecordingProxy` sits between a client and a meter and writes both directions of every
  connection to a pcap file as the bytes flow (``dlms-bridge capture``).
- :class:`RecordingStream` / :func:`recording_handler` record the connections a Trio server
  accepts, from inside the server (``simulate --record``).
- :class:`ReplayServer` serves recorded sessions back as a meter: it answers each recorded
  request with the recorded reply, byte for byte (``dlms-bridge replay``).
- :func:`decode_pcap` describes the frames and APDUs of every session in a capture
  (``dlms-bridge decode --pcap``).

The file format itself lives in :mod:`bridge.pcap`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import attrs
import trio

from bridge.pcap import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    CaptureError,
    Endpoint,
    PcapWriter,
    RecordedSession,
    Segment,
    SessionRecorder,
    read_sessions,
)
from codec.decoder import DecipherContext, StreamDecoder
from codec.security import SecurityKeys

__all__ = [
    "CLIENT_TO_SERVER",
    "SERVER_TO_CLIENT",
    "CaptureError",
    "PcapWriter",
    "ProxySession",
    "RecordedSession",
    "RecordingProxy",
    "RecordingStream",
    "ReplayResult",
    "ReplayServer",
    "SessionRecorder",
    "decode_pcap",
    "read_sessions",
    "recording_handler",
]

log = logging.getLogger("bridge.capture")
_RECEIVE_SIZE = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)


def _endpoint(address: Any) -> Endpoint:
    """``(host, port)`` of a socket address (IPv6 addresses carry two more fields)."""
    return str(address[0]), int(address[1])


def _show(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _abort(stream: trio.SocketStream) -> None:
    """Close with an RST (SO_LINGER 0), as a peer that resets its connection does."""
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass  # already closed by the other side: a plain close is all that is left
    with trio.CancelScope(shield=True):
        await stream.aclose()


def _resets_on_close(stream: trio.SocketStream) -> bool:
    """True when closing the socket will send an RST (SO_LINGER on with a zero timeout)."""
    try:
        raw = stream.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.calcsize("ii"))
    except OSError:
        return False
    onoff, seconds = struct.unpack("ii", raw)
    return bool(onoff) and seconds == 0


# -- the recording proxy ---------------------------------------------------------------------


@attrs.frozen
class ProxySession:
    """What one proxied connection carried."""

    index: int
    client: Endpoint
    meter: Endpoint
    client_bytes: int
    meter_bytes: int
    #: How it ended: "client closed", "meter closed", "client reset", "meter reset",
    #: "meter unreachable: ..." or "interrupted".
    ended: str
    duration: float

    def describe(self) -> str:
        """One line for the console."""
        return (
            f"session {self.index}: {_show(self.client)} -> {_show(self.meter)}: "
            f"client sent {self.client_bytes} bytes, meter sent {self.meter_bytes} bytes, "
            f"{self.ended} after {self.duration:.2f} s"
        )


_Outcome = Literal["eof", "reset", "peer broke"]


class RecordingProxy:
    """Forwards each accepted client connection to ``meter`` and records both directions.

    ``on_session`` is called with a :class:`ProxySession` when a connection is over. After one
    side closes its direction, the other gets ``linger`` seconds to finish before both are
    closed.
    """

    def __init__(
        self,
        writer: PcapWriter,
        meter: Endpoint,
        *,
        connect_timeout: float = 5.0,
        linger: float = 2.0,
        on_session: Callable[[ProxySession], None] | None = None,
    ) -> None:
        self.writer = writer
        self.meter = meter
        self.connect_timeout = connect_timeout
        self.linger = linger
        self.on_session = on_session
        self.sessions: list[ProxySession] = []
        self._next_index = 0

    async def serve(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[list[Endpoint]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 picks a free port) until cancelled.

        ``task_status.started`` receives the addresses actually listened on.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started([_endpoint(lst.socket.getsockname()) for lst in listeners])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, client: trio.SocketStream) -> None:
        """Proxy and record one client connection until both sides are done."""
        index, self._next_index = self._next_index, self._next_index + 1
        try:
            client_ep = _endpoint(client.socket.getpeername())
        except OSError:
            return  # the client left before it could be served
        started = trio.current_time()
        recorder: SessionRecorder | None = None
        ended = "interrupted"
        try:
            try:
                with trio.fail_after(self.connect_timeout):
                    meter = await trio.open_tcp_stream(*self.meter)
            except (OSError, trio.TooSlowError) as exc:
                reason = "no answer" if isinstance(exc, trio.TooSlowError) else exc.strerror
                ended = f"meter unreachable: {reason or exc}"
                # The client saw its connection accepted, then reset: record just that (when
                # the meter's address is known, i.e. it was given as an IP address).
                try:
                    recorder = SessionRecorder(self.writer, client_ep, self.meter)
                except ValueError:
                    recorder = None
                else:
                    recorder.finish(SERVER_TO_CLIENT, reset=True)
                await _abort(client)
                return
            async with meter:
                try:
                    meter_ep = _endpoint(meter.socket.getpeername())
                except OSError:  # the meter closed at once; its address is the one we dialled
                    meter_ep = self.meter
                recorder = SessionRecorder(self.writer, client_ep, meter_ep)
                ended = await self._relay(client, meter, recorder)
        finally:
            if recorder is not None:
                recorder.close()
            summary = ProxySession(
                index=index,
                client=client_ep,
                meter=recorder.server if recorder is not None else self.meter,
                client_bytes=recorder.client_bytes if recorder is not None else 0,
                meter_bytes=recorder.server_bytes if recorder is not None else 0,
                ended=ended,
                duration=trio.current_time() - started,
            )
            self.sessions.append(summary)
            if self.on_session is not None:
                self.on_session(summary)

    async def _relay(
        self, client: trio.SocketStream, meter: trio.SocketStream, recorder: SessionRecorder
    ) -> str:
        ends: dict[str, _Outcome] = {}
        async with trio.open_nursery() as nursery:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream, direction: str) -> None:
                write = (
                    recorder.client_to_server
                    if direction == CLIENT_TO_SERVER
                    else recorder.server_to_client
                )

                def record(data: bytes) -> None:
                    # After a reset on the other side the recording is over; bytes still in
                    # flight here are dropped with the connection.
                    if not recorder.closed:
                        write(data)

                outcome = await _pump(src, dst, record)
                ends[direction] = outcome
                if outcome == "eof":
                    recorder.finish(direction)
                    try:
                        await dst.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass  # the other side is gone too; its pump sees that on its own
                    # Give the other direction a moment to finish, as a half-close allows.
                    nursery.cancel_scope.deadline = min(
                        nursery.cancel_scope.deadline, trio.current_time() + self.linger
                    )
                    return
                # A reset: on the side that was read from, or ("peer broke") on the other one.
                broken = direction if outcome == "reset" else _other(direction)
                recorder.finish(broken, reset=True)
                await _abort(dst if outcome == "reset" else src)
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, meter, CLIENT_TO_SERVER)
            nursery.start_soon(pump, meter, client, SERVER_TO_CLIENT)
        return _ending(ends)


def _other(direction: str) -> str:
    return SERVER_TO_CLIENT if direction == CLIENT_TO_SERVER else CLIENT_TO_SERVER


def _ending(ends: dict[str, _Outcome]) -> str:
    who = {CLIENT_TO_SERVER: "client", SERVER_TO_CLIENT: "meter"}
    for direction, outcome in ends.items():
        if outcome == "reset":
            return f"{who[direction]} reset"
        if outcome == "peer broke":
            return f"{who[_other(direction)]} reset"
    if ends:
        return f"{who[next(iter(ends))]} closed"
    return "interrupted"


async def _pump(
    src: trio.SocketStream, dst: trio.SocketStream, record: Callable[[bytes], None]
) -> _Outcome:
    """Copy ``src`` to ``dst``, recording each chunk when it arrives, before it is forwarded."""
    while True:
        try:
            data = await src.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "reset"
        if not data:
            return "eof"
        record(data)
        try:
            await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "peer broke"


# -- recording inside a server ---------------------------------------------------------------


class _RecordedSocket:
    """The socket of a :class:`RecordingStream`: closing it directly is recorded too.

    A server that resets a connection sets SO_LINGER to zero and closes the socket itself; this
    notices both, so the capture shows the RST the client saw.
    """

    def __init__(self, sock: Any, owner: RecordingStream) -> None:
        self._sock = sock
        self._owner = owner

    def setsockopt(self, level: int, option: int, *value: Any) -> None:
        self._sock.setsockopt(level, option, *value)

    def close(self) -> None:
        self._owner.record_close()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class RecordingStream(trio.abc.HalfCloseableStream):
    """A server-side socket stream that records what it receives and sends.

    Received bytes are recorded as the client's, sent bytes as the server's; closing writes the
    FIN (or, when SO_LINGER is set to reset, the RST) of the server. The endpoints are the
    socket's own names.
    """

    def __init__(self, stream: trio.SocketStream, writer: PcapWriter) -> None:
        self.stream = stream
        self.socket: Any = _RecordedSocket(stream.socket, self)
        self.recorder = SessionRecorder(
            writer,
            client=_endpoint(stream.socket.getpeername()),
            server=_endpoint(stream.socket.getsockname()),
        )

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive and record."""
        try:
            data = await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self.recorder.finish(CLIENT_TO_SERVER, reset=True)
            raise
        if data:
            if not self.recorder.closed:
                self.recorder.client_to_server(data)
        else:
            self.recorder.finish(CLIENT_TO_SERVER)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Record, then send."""
        if not self.recorder.closed:
            self.recorder.server_to_client(bytes(data))
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the wrapped stream."""
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close and record the server's FIN."""
        self.recorder.finish(SERVER_TO_CLIENT)
        await self.stream.send_eof()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """As :meth:`trio.SocketStream.setsockopt`."""
        self.stream.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """As :meth:`trio.SocketStream.getsockopt`."""
        return self.stream.getsockopt(level, option, buffersize)

    def record_close(self) -> None:
        """Record the server's end of the connection: an RST if closing will reset, else FIN."""
        if self.recorder.closed:
            return
        if _resets_on_close(self.stream):
            self.recorder.finish(SERVER_TO_CLIENT, reset=True)
        else:
            self.recorder.finish(SERVER_TO_CLIENT)
            self.recorder.close()

    async def aclose(self) -> None:
        """Close, recording the server's FIN or RST."""
        self.record_close()
        await self.stream.aclose()


def recording_handler(
    handler: Callable[[RecordingStream], Awaitable[object]], writer: PcapWriter
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """Wrap a :func:`trio.serve_listeners` handler so each connection is recorded to ``writer``."""

    async def recorded(stream: trio.SocketStream) -> None:
        async with RecordingStream(stream, writer) as recording:
            await handler(recording)

    return recorded


# -- replay ----------------------------------------------------------------------------------


@attrs.frozen
class _Turn:
    """Client bytes to wait for, then the server segments that answered them."""

    expected: bytes
    #: Capture time of the last client byte of this turn (or of the session start).
    ts: float
    replies: tuple[Segment, ...]


def _turns(session: RecordedSession) -> list[_Turn]:
    turns: list[_Turn] = []
    expected = bytearray()
    last_ts = session.start
    replies: list[Segment] = []
    for segment in session.segments:
        if segment.direction == CLIENT_TO_SERVER:
            if replies:
                turns.append(_Turn(bytes(expected), last_ts, tuple(replies)))
                expected.clear()
                replies = []
            expected += segment.payload
            last_ts = segment.ts
        else:
            replies.append(segment)
    if replies or expected:
        turns.append(_Turn(bytes(expected), last_ts, tuple(replies)))
    return turns


@attrs.frozen
class ReplayResult:
    """How one replayed connection went."""

    connection: int
    session: int
    client: Endpoint
    turns: int
    turns_done: int
    bytes_received: int
    bytes_sent: int
    mismatches: int
    #: True when every recorded turn was played and the client's bytes matched.
    complete: bool

    def describe(self) -> str:
        """One line for the console."""
        state = "complete" if self.complete else "incomplete"
        return (
            f"connection {self.connection} from {_show(self.client)}: session {self.session}, "
            f"{self.turns_done}/{self.turns} turns, received {self.bytes_received} bytes, "
            f"sent {self.bytes_sent} bytes, {self.mismatches} mismatches, {state}"
        )


class _ClientGone(Exception):
    """The client closed or reset the connection during a replay."""


class ReplayServer:
    """Serves recorded sessions as a meter, one session per client connection.

    Connection *k* gets session ``only`` if given, else session *k*. Without ``loop`` the server
    stops accepting once every session (or ``only``, once) has been handed out, and
    :meth:`serve` returns when those connections are over; with ``loop`` it cycles for ever.

    For each recorded turn it waits until the client has sent as many bytes as the recorded
    client did (or until the client pauses for ``idle`` seconds having sent some of them), then
    sends the recorded reply segments, paced as recorded times ``speed`` (0: at once). Client
    bytes that differ from the recording are reported to ``on_warning`` and counted, never fatal.
    """

    def __init__(
        self,
        sessions: Sequence[RecordedSession],
        *,
        only: int | None = None,
        loop: bool = False,
        speed: float = 1.0,
        idle: float = 1.0,
        patience: float = 60.0,
        on_result: Callable[[ReplayResult], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("there is no session to replay")
        if only is not None and not 0 <= only < len(sessions):
            raise ValueError(
                f"session {only} is not in the capture (it has sessions 0 to {len(sessions) - 1})"
            )
        if speed < 0:
            raise ValueError(f"speed must be >= 0, not {speed}")
        self.sessions = list(sessions)
        self.only = only
        self.loop = loop
        self.speed = speed
        self.idle = idle
        self.patience = patience
        self.on_result = on_result
        self.on_warning = on_warning
        self.results: list[ReplayResult] = []
        self.warnings = 0
        self._handed_out = 0
        self._accepting: trio.CancelScope | None = None

    @property
    def _total(self) -> float:
        if self.loop:
            return math.inf
        return 1 if self.only is not None else len(self.sessions)

    async def serve(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[list[Endpoint]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 picks a free port); return when every session was served."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started([_endpoint(lst.socket.getsockname()) for lst in listeners])
        async with trio.open_nursery() as handlers:
            with trio.CancelScope() as self._accepting:
                await trio.serve_listeners(self.handle, listeners, handler_nursery=handlers)

    def _warn(self, message: str) -> None:
        self.warnings += 1
        if self.on_warning is not None:
            self.on_warning(message)
        else:
            log.warning("%s", message)

    async def handle(self, stream: trio.SocketStream) -> None:
        """Replay one session on one client connection."""
        connection = self._handed_out
        if connection >= self._total:
            await stream.aclose()
            return
        self._handed_out += 1
        if self._handed_out >= self._total and self._accepting is not None:
            self._accepting.cancel()
        if self.only is not None:
            session = self.sessions[self.only]
        else:
            session = self.sessions[connection % len(self.sessions)]
        result = await self._replay(connection, session, stream)
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    async def _replay(
        self, connection: int, session: RecordedSession, stream: trio.SocketStream
    ) -> ReplayResult:
        try:
            client = _endpoint(stream.socket.getpeername())
        except OSError:
            client = ("?", 0)  # gone already; the replay finds that out on its first read
        where = f"connection {connection} (session {session.index})"
        turns = _turns(session)
        received = bytearray()  # client bytes not yet matched to a turn
        counts = {"received": 0, "sent": 0, "mismatches": 0, "done": 0}

        async def receive() -> bytes:
            try:
                data = await stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                raise _ClientGone
            counts["received"] += len(data)
            received.extend(data)
            return data

        def mismatch(message: str) -> None:
            counts["mismatches"] += 1
            self._warn(f"{where}: {message}")

        try:
            for number, turn in enumerate(turns):
                need = len(turn.expected)
                waited = trio.current_time()
                while len(received) < need:
                    # Wait for the rest of the request; a client that paused part-way through
                    # sent a shorter one than recorded.
                    limit = self.idle if received else self.patience
                    with trio.move_on_after(limit) as waiting:
                        await receive()
                    if not waiting.cancelled_caught:
                        continue
                    if received:
                        break
                    mismatch(
                        f"turn {number}: the client sent nothing for {limit:g} s "
                        f"(waiting for {need} bytes)"
                    )
                    raise _ClientGone
                got = bytes(received[:need])
                del received[:need]
                if got != turn.expected:
                    mismatch(f"turn {number}: {_difference(got, turn.expected)}")
                anchor = trio.current_time()
                for reply in turn.replies:
                    await trio.sleep_until(anchor + max(0.0, reply.ts - turn.ts) * self.speed)
                    try:
                        await stream.send_all(reply.payload)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        raise _ClientGone from None
                    counts["sent"] += len(reply.payload)
                counts["done"] += 1
                log.debug("%s: turn %d after %.3f s", where, number, anchor - waited)
            await self._finish(session, stream, turns, received, receive, mismatch)
        except _ClientGone:
            if counts["done"] < len(turns):
                mismatch(
                    f"the client closed the connection after {counts['done']} of "
                    f"{len(turns)} recorded turns"
                )
        complete = counts["done"] == len(turns) and counts["mismatches"] == 0
        return ReplayResult(
            connection=connection,
            session=session.index,
            client=client,
            turns=len(turns),
            turns_done=counts["done"],
            bytes_received=counts["received"],
            bytes_sent=counts["sent"],
            mismatches=counts["mismatches"],
            complete=complete,
        )

    async def _finish(
        self,
        session: RecordedSession,
        stream: trio.SocketStream,
        turns: list[_Turn],
        received: bytearray,
        receive: Callable[[], Awaitable[bytes]],
        mismatch: Callable[[str], None],
    ) -> None:
        """End the connection the way the recording does."""
        if session.closed_by == SERVER_TO_CLIENT:
            last = turns[-1] if turns else None
            if last is not None and session.closed_at is not None:
                end_ts = last.replies[-1].ts if last.replies else last.ts
                await trio.sleep(max(0.0, session.closed_at - end_ts) * self.speed)
            if received:
                mismatch(f"the client sent {len(received)} bytes more than recorded")
            if session.reset:
                await _abort(stream)
            else:
                await stream.aclose()
            return
        # The client closed first in the recording: wait for it to do so again.
        with trio.move_on_after(self.patience):
            while True:
                try:
                    await receive()
                except _ClientGone:
                    break
        if received:
            mismatch(f"the client sent {len(received)} bytes more than recorded")


def _difference(got: bytes, expected: bytes) -> str:
    if len(got) != len(expected):
        head = f"the client sent {len(got)} bytes where {len(expected)} were recorded"
    else:
        head = f"the client's {len(got)} bytes differ from the recording"
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    if at is None:
        at = min(len(got), len(expected))
    return (
        f"{head}, first at byte {at} "
        f"(got {got[at : at + 8].hex() or 'nothing'}, "
        f"recorded {expected[at : at + 8].hex() or 'nothing'})"
    )


# -- decoding --------------------------------------------------------------------------------


def decode_pcap(
    path: str | os.PathLike[str],
    emit: Callable[[dict[str, Any]], None],
    *,
    transport: Literal["hdlc", "wrapper"] = "hdlc",
    keys: SecurityKeys | None = None,
) -> tuple[int, dict[str, int]]:
    """Describe every frame of every session in a capture, in capture order.

    With ``keys``, ciphered APDUs are deciphered (system titles from each session's AARQ/AARE).

    Each frame dict from :class:`~codec.decoder.StreamDecoder` gets ``session`` (index),
    ``direction`` (``"client->meter"`` or ``"meter->client"``) and ``ts`` (capture time of the
    segment that completed it) and is passed to ``emit``. Returns the number of items emitted
    and the scanners' counters summed over all sessions and directions.

    Raises :class:`~bridge.pcap.CaptureError` (a ValueError) for a file that is not a capture.
    """
    count = 0
    totals: dict[str, int] = {}
    sessions = read_sessions(path)
    for session in sessions:
        to_server, to_client = StreamDecoder.pair(transport)
        decoders = {CLIENT_TO_SERVER: to_server, SERVER_TO_CLIENT: to_client}
        if keys is not None:
            context = DecipherContext(keys)
            to_server.context = to_client.context = context
        last_ts = dict.fromkeys(decoders, session.start)
        feeds = [(s.direction, s.ts, s.payload) for s in session.segments]
        for direction, ts, payload in feeds:
            last_ts[direction] = ts
            count += _emit_all(
                emit, session.index, direction, ts, decoders[direction].feed(payload)
            )
        for direction, decoder in decoders.items():
            # End of stream: the scanner reports (and counts) what an unfinished frame left.
            count += _emit_all(
                emit, session.index, direction, last_ts[direction], decoder.feed(b"")
            )
            for key, value in decoder.stats().items():
                totals[key] = totals.get(key, 0) + value
    totals["sessions"] = len(sessions)
    return count, totals


def _emit_all(
    emit: Callable[[dict[str, Any]], None],
    session: int,
    direction: str,
    ts: float,
    items: list[dict[str, Any]],
) -> int:
    for item in items:
        emit({"session": session, "direction": direction, "ts": round(ts, 6), **item})
    return len(items)
