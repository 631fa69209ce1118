"""The Trio driver of one DLMS association over TCP.

:class:`MeterSession` is the thin I/O shell around the sans-IO :mod:`codec` core: it opens the TCP
connection, feeds received bytes to :class:`~codec.association.ClientAssociation`, writes what it
has to send, and turns its deadlines into Trio timeouts. It runs the client's procedures
(:mod:`codec.client`) and exposes the usual ones as coroutines.

Errors: everything the meter gets wrong is a :class:`~codec.errors.ProtocolError` (re-associate);
everything the network gets wrong is a :class:`MeterIOError` (reconnect).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeAlias, TypeVar

import attrs
import trio

from bridge.config import METER_DEFAULTS
from bridge.counters import CounterFileError, PersistentCounter
from bridge.fast_io import receive_some, send_now
from codec.apdu import Apdu, AttributeDescriptor, Request, SelectiveAccess, XdlmsApdu
from codec.association import (
    DEFAULT_MAX_RESPONSE_SIZE,
    Associated,
    AssociationSettings,
    AssociationState,
    ClientAssociation,
    Closed,
    Event,
    Lenient,
    Negotiated,
    Notification,
    Released,
    Response,
    SecuritySettings,
)
from codec.axdr import Data
from codec.client import DlmsClient, Procedure, ProfileData, RegisterReading, RegisterSpec
from codec.cosem import ObjectListEntry
from codec.errors import LinkError, ProtocolError, RemoteProtocolError
from codec.hdlc import HdlcAddress, NeedData
from codec.hdlc_params import LinkParameters
from codec.link import HdlcClientLink, Link, WrapperClientLink
from codec.obis import Obis

__all__ = ["MeterEndpoint", "MeterIOError", "MeterSession", "StreamFactory", "open_tcp"]

T = TypeVar("T")
log = logging.getLogger("bridge.session")
_RECEIVE_SIZE = 65536


def _reason(exc: OSError) -> str:
    """The root cause of a connect failure ("Connection refused"), not trio's summary."""
    causes: list[BaseException] = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        causes = list(cause.exceptions)
    reasons = sorted({c.strerror for c in causes if isinstance(c, OSError) and c.strerror})
    return "; ".join(reasons) if reasons else str(exc)


class MeterIOError(Exception):
    """The TCP connection to the meter could not be opened, or broke."""


@attrs.frozen
class MeterEndpoint:
    """How to reach and talk to one meter."""

    host: str
    port: int
    transport: Literal["hdlc", "wrapper"] = METER_DEFAULTS["transport"]
    client_sap: int = METER_DEFAULTS["client_sap"]
    server_logical: int = 0
    server_physical: int = METER_DEFAULTS["server_physical"]
    #: HDLC server address size in bytes (1, 2 or 4); None picks the smallest that fits.
    server_address_size: int | None = None
    password: bytes | None = attrs.field(default=None, repr=False)
    #: Reply timeout of one frame (s); also how long one send may block on a peer not reading.
    timeout: float = METER_DEFAULTS["timeout_s"]
    retries: int = 2
    connect_timeout: float = METER_DEFAULTS["timeout_s"]
    #: One overall deadline (s) per request and its whole response, segments and blocks
    #: included, and for opening the association. ``None``: :attr:`request_deadline`.
    request_timeout: float | None = None
    #: Bound of a GET answered in blocks: the raw data of all its blocks (bytes).
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_pdu_size: int = METER_DEFAULTS["max_pdu_size"]
    link_parameters: LinkParameters = attrs.field(factory=LinkParameters)
    byte_stuffing: bool = METER_DEFAULTS["byte_stuffing"]
    max_list_items: int = 10
    #: HLS mechanism, ciphering policy, titles, keys and counters (None: no security).
    security: SecuritySettings | None = attrs.field(default=None, repr=False)
    #: With security: read this frame counter (class 1, attribute 2) through the public client
    #: before associating, and start our invocation counter at least there.
    frame_counter: Obis | None = None

    @property
    def label(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"

    @property
    def request_deadline(self) -> float:
        """The overall deadline of one request: ``request_timeout``, or by default the time
        the link may spend on one reply with all its retransmissions, plus one more timeout
        for the segments of a long reply."""
        if self.request_timeout is not None:
            return self.request_timeout
        return self.timeout * (self.retries + 2)

    def make_link(self) -> Link:
        """A fresh sans-IO link for this endpoint's transport."""
        if self.transport == "wrapper":
            # The wrapper addresses logical devices by wPort; logical device 0 is not one, so a
            # meter configured with HDLC's "logical 0" is reached at the management device, 1.
            return WrapperClientLink(
                self.client_sap,
                self.server_logical or 1,
                timeout=self.timeout,
                retries=self.retries,
            )
        return HdlcClientLink(
            HdlcAddress.client(self.client_sap),
            HdlcAddress.server(self.server_logical, self.server_physical, self.server_address_size),
            parameters=self.link_parameters,
            timeout=self.timeout,
            retries=self.retries,
            transparency=self.byte_stuffing,
        )

    def association_settings(self) -> AssociationSettings:
        """What to propose in the AARQ."""
        return AssociationSettings(
            password=self.password,
            max_pdu_size=self.max_pdu_size,
            request_timeout=self.request_deadline,
            max_response_size=self.max_response_size,
            security=self.security,
        )


#: Opens the byte stream to a meter (the network backend of :class:`MeterSession`). Raises
#: :class:`OSError` when the meter cannot be reached; the session applies the connect timeout.
StreamFactory: TypeAlias = Callable[["MeterEndpoint"], Awaitable[trio.abc.Stream]]


async def open_tcp(endpoint: MeterEndpoint) -> trio.abc.Stream:
    """The default :data:`StreamFactory`: a TCP connection to ``endpoint.host:port``."""
    return await trio.open_tcp_stream(endpoint.host, endpoint.port)


class MeterSession:
    """One connection and the association on it. Use :meth:`open`, then the reads, then
    :meth:`release` (or :meth:`aclose` to drop it).

    ``on_notification`` receives pushed APDUs that arrive between replies. ``open_stream``
    opens the connection (TCP by default; tests pass in-memory streams).
    """

    def __init__(
        self,
        endpoint: MeterEndpoint,
        *,
        on_notification: Callable[[Apdu | bytes], None] | None = None,
        open_stream: StreamFactory = open_tcp,
    ) -> None:
        self.endpoint = endpoint
        self.on_notification = on_notification
        self.open_stream = open_stream
        self.stream: trio.abc.Stream | None = None
        self.association: ClientAssociation | None = None
        self.client: DlmsClient | None = None
        self.negotiated: Negotiated | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- connection --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection (not the association)."""
        ep = self.endpoint
        try:
            with trio.fail_after(ep.connect_timeout):
                self.stream = await self.open_stream(ep)
        except trio.TooSlowError:
            raise MeterIOError(
                f"cannot connect to {ep.label}: no answer within {ep.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise MeterIOError(f"cannot connect to {ep.label}: {_reason(exc)}") from None

    async def associate(self) -> Negotiated:
        """Bring the link up and open the association on the connected stream."""
        if self.stream is None:
            raise RuntimeError("associate() before connect()")
        security = self.endpoint.security
        if security is not None and isinstance(security.counter, PersistentCounter):
            security.counter.sync()  # past counters another process (diagnose) used
        self.association = ClientAssociation(
            self.endpoint.make_link(), self.endpoint.association_settings()
        )
        self.client = None
        self.association.open(trio.current_time())
        while True:
            event = await self._next_event()
            if isinstance(event, Associated):
                self.negotiated = event.negotiated
                self.client = DlmsClient(
                    event.negotiated, max_list_items=self.endpoint.max_list_items
                )
                return event.negotiated
            if isinstance(event, Closed):
                raise LinkError(
                    f"the meter closed the link while associating ({event.reason})",
                    code="link.closed",
                )

    async def read_frame_counter(self) -> int | None:
        """The meter's frame counter read through the public client (SAP 16), if configured.

        The client's invocation counter is moved up to it, so that a counter lost with the
        data directory does not lock the client out.
        """
        ep = self.endpoint
        if ep.frame_counter is None or ep.security is None:
            return None
        public = attrs.evolve(ep, client_sap=16, password=None, security=None, frame_counter=None)
        session = MeterSession(public)
        await session.open()
        try:
            value = await session.get(AttributeDescriptor(1, ep.frame_counter, 2))
        finally:
            await session.release()
        if not isinstance(value.value, int) or isinstance(value.value, bool):
            raise RemoteProtocolError(
                f"the frame counter {ep.frame_counter} is not an integer",
                code="security.frame_counter",
            )
        ep.security.counter.advance_to(value.value)
        return value.value

    async def open(self) -> Negotiated:
        """Connect and associate (reading the frame counter first when configured)."""
        await self.read_frame_counter()
        await self.connect()
        try:
            return await self.associate()
        except BaseException:
            await self.aclose()
            raise

    @property
    def is_open(self) -> bool:
        """True while requests can be sent."""
        return self.client is not None and self.stream is not None

    async def release(self, timeout: float = 3.0) -> None:
        """Release the association (RLRQ, DISC) and close the connection; never raises.

        Runs shielded: it completes (or gives up after ``timeout``) even during cancellation.
        """
        with trio.move_on_after(timeout, shield=True):
            if self.association is not None and self.stream is not None:
                try:
                    # A request cut short (the poller cancelled at shutdown or reload) is still
                    # open: take its reply first, so that the association is released with
                    # RLRQ rather than merely dropped.
                    while self.association.state is AssociationState.WAITING:
                        if isinstance(await self._next_event(), Closed):
                            break
                    self.association.release(trio.current_time())
                    # Closed already: nothing could be sent (the link is down on our side).
                    while self.association.state is not AssociationState.CLOSED:
                        event = await self._next_event()
                        if isinstance(event, Closed):
                            break
                        if isinstance(event, Released):
                            continue
                except (ProtocolError, MeterIOError) as exc:
                    # The connection is closed just below either way; say why it was not clean.
                    log.debug("release of %s ended early: %s", self.endpoint.label, exc)
        self._save_meter_counters()
        await self.aclose()

    def _save_meter_counters(self) -> None:
        """Keep the meter's last invocation counter: a replay floor across restarts."""
        security = self.endpoint.security
        if security is None or not isinstance(security.counter, PersistentCounter):
            return
        if not security.server_counters:
            return
        try:
            security.counter.save_peers(security.server_counters)
        except CounterFileError as exc:
            log.warning("meter=%s cannot keep the meter's counter: %s", self.endpoint.label, exc)

    async def abort(self) -> None:
        """Abandon the association (DISC, best effort) but keep the TCP connection.

        :meth:`associate` can then open a new one on the same connection. Bytes still arriving
        for the old association are discarded. A meter that does not take the DISC within 1 s
        has stopped reading: the connection is closed and :class:`MeterIOError` raised.
        """
        association = self.association
        self.client = None
        if association is None or self.stream is None:
            return
        association.abort(trio.current_time())
        out = association.data_to_send()
        if out:
            with trio.move_on_after(1.0) as scope:
                await self._send(out)
            if scope.cancelled_caught:
                # Part of the DISC may have gone: nothing more can be framed on this stream.
                await self.aclose()
                raise MeterIOError(f"{self.endpoint.label} stopped reading: DISC not sent")
        association.drain()

    async def aclose(self) -> None:
        """Close the TCP connection without releasing anything."""
        self.client = None
        stream, self.stream = self.stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    # -- requests ----------------------------------------------------------------------------

    async def request(self, apdu: Request) -> XdlmsApdu:
        """Send one request APDU and return its complete response APDU."""
        association = self._require()
        association.drain()
        association.request(apdu, trio.current_time())
        while True:
            event = await self._next_event()
            if isinstance(event, Response):
                return event.apdu
            if isinstance(event, Closed):
                self.client = None
                raise LinkError(
                    f"the meter closed the link while a request was open ({event.reason})",
                    code="link.closed",
                )

    async def run(self, procedure: Procedure[T]) -> T:
        """Run a client procedure to completion.

        A request that failed while the association stays usable (the meter answered another
        request but never this one) has its error thrown into the procedure, which may carry
        on (the register client makes it an error of that register only).
        """
        request = next(procedure)
        while True:
            try:
                response = await self.request(request)
            except ProtocolError as exc:
                association = self.association
                if association is None or association.state is not AssociationState.READY:
                    raise
                try:
                    request = procedure.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                continue
            try:
                request = procedure.send(response)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    async def get(
        self, attribute: AttributeDescriptor, access: SelectiveAccess | None = None
    ) -> Data:
        """Read one attribute (raises :class:`~codec.errors.DataAccessError` on refusal)."""
        return await self.run(self._client().get(attribute, access))

    async def read_registers(self, specs: Iterable[RegisterSpec]) -> list[RegisterReading]:
        """Read registers, scaled, with units (see :meth:`DlmsClient.read_registers`)."""
        return await self.run(self._client().read_registers(specs))

    async def object_list(self) -> tuple[ObjectListEntry, ...]:
        """The association's object list."""
        return await self.run(self._client().object_list())

    async def read_profile(self, profile: Obis, **selection: Any) -> ProfileData:
        """Rows of a profile generic (see :meth:`DlmsClient.read_profile`)."""
        return await self.run(self._client().read_profile(profile, **selection))

    def stats(self) -> dict[str, int]:
        """Counters of the link, the scanner and the association."""
        counters = self.association.stats() if self.association is not None else {}
        return {**counters, "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received}

    # -- the pump ----------------------------------------------------------------------------

    def _require(self) -> ClientAssociation:
        if self.association is None or self.stream is None or self.client is None:
            raise RuntimeError("no open association: call open() first")
        return self.association

    def _client(self) -> DlmsClient:
        self._require()
        assert self.client is not None
        return self.client

    async def _send(self, data: bytes) -> None:
        """Write ``data``, within one reply timeout: a peer that stops reading cannot hold us."""
        stream = self.stream
        assert stream is not None
        limit = self.endpoint.timeout
        cut_off = False
        try:
            sent = send_now(stream, data)  # a request fits the socket buffer: no wait
            if sent < len(data):
                with trio.move_on_after(limit) as scope:
                    await stream.send_all(data[sent:])
                cut_off = scope.cancelled_caught
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise MeterIOError(f"connection to {self.endpoint.label} broke: {exc}") from None
        if cut_off:
            # Part of the data may have gone: the stream is unusable now.
            await self.aclose()
            raise MeterIOError(
                f"{self.endpoint.label} stopped reading: {len(data)} bytes could not be sent "
                f"within {limit:g} s"
            )
        self.bytes_sent += len(data)

    async def _next_event(self) -> Event:
        association = self.association
        assert association is not None
        while True:
            event = association.next_event()
            out = association.data_to_send()
            if out:
                await self._send(out)
            if isinstance(event, Notification):
                if self.on_notification is not None:
                    self.on_notification(event.apdu)
                continue
            if isinstance(event, Lenient):
                # Tolerated and counted in stats(); the bytes are worth one debug line.
                log.debug(
                    "%s: %s%s",
                    self.endpoint.label,
                    event.detail,
                    f": {event.data[:64].hex()}" if event.data else "",
                )
                continue
            if not isinstance(event, NeedData):
                return event
            deadline = association.next_deadline()
            data = None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                data = await self._receive()
            if data is None:
                association.handle_timer(trio.current_time())
                continue
            if not data:
                raise MeterIOError(f"{self.endpoint.label} closed the connection")
            association.receive_data(data, trio.current_time())

    async def _receive(self) -> bytes:
        assert self.stream is not None
        try:
            data = await receive_some(self.stream, _RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise MeterIOError(f"connection to {self.endpoint.label} broke: {exc}") from None
        self.bytes_received += len(data)
        return data if isinstance(data, bytes) else bytes(data)
