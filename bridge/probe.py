"""Light-touch probes that tell DLMS meters from other TCP listeners (for ``scan`` and
``diagnose``).

Each probe opens its own TCP connection and only ever acts on what it opened itself, so a meter
serving an association on another connection is not disturbed:

- :func:`probe_hdlc` sends one SNRM to each candidate server address in a single write and
  collects the UA, DM or FRMR answers; the link a UA opened is closed again with DISC (DISC is
  never sent to an address that did not answer our SNRM).
- :func:`probe_wrapper` sends one AARQ of the public client (no authentication) in a wrapper
  PDU to each candidate server wPort and collects the AAREs; an association it opened is
  released with RLRQ before the connection is closed.

Both return a :class:`ProbeResult` saying what answered and how many bytes came back that were
neither HDLC frames nor wrapper PDUs (a web server's banner, say). Every probe has one overall
deadline and reads at most :data:`MAX_PROBE_BYTES`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import attrs
import trio

from codec import acse
from codec.acse import AARE, AARQ, RLRQ, AssociationResult, InitiateRequest
from codec.errors import EncodeError, FrameError, ProtocolError
from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, HdlcAddress, encode_frame
from codec.hdlc_params import LinkParameters
from codec.wrapper import WrapperFrame, WrapperScanner

__all__ = [
    "HDLC_ADDRESSES",
    "MAX_PROBE_BYTES",
    "PUBLIC_CLIENT_SAP",
    "WRAPPER_WPORTS",
    "ProbeAnswer",
    "ProbeResult",
    "connect_errno",
    "connect_reason",
    "probe_hdlc",
    "probe_wrapper",
]

#: The public client: associates without a password on every DLMS meter.
PUBLIC_CLIENT_SAP = 16
#: Usual HDLC server addresses (logical, physical): the management logical device 1 at the
#: physical addresses meters ship with, and logical 0 (the field meter's default, 1 byte).
HDLC_ADDRESSES: tuple[tuple[int, int], ...] = ((0, 1), (1, 16), (1, 17), (1, 1), (0, 16), (0, 17))
#: Usual server wPorts of the wrapper: the management logical device first.
WRAPPER_WPORTS: tuple[int, ...] = (1, 16, 17)
#: A probe reads no more than this from a peer.
MAX_PROBE_BYTES = 64 * 1024
_RELEASE_WAIT_S = 1.0


@attrs.frozen
class ProbeAnswer:
    """One answer to a probe: who answered (the server address it came from) and how."""

    transport: Literal["hdlc", "wrapper"]
    #: HDLC: the logical and physical server address; wrapper: the wPort (as ``logical``).
    logical: int
    physical: int | None
    #: ``UA``, ``DM``, ``FRMR`` (HDLC); ``accepted``, ``rejected (...)`` (wrapper AARE)
    reply: str

    @property
    def opened(self) -> bool:
        """The probe's SNRM or AARQ was accepted."""
        return self.reply in ("UA", "accepted")

    def address(self) -> str:
        """``logical 1, physical 17`` or ``wPort 1``."""
        if self.transport == "wrapper":
            return f"wPort {self.logical}"
        return f"logical {self.logical}, physical {self.physical}"


@attrs.frozen
class ProbeResult:
    """What one probe saw on its connection."""

    transport: Literal["hdlc", "wrapper"]
    answers: tuple[ProbeAnswer, ...] = ()
    #: Bytes received in all.
    received: int = 0
    #: Bytes that were neither frames nor PDUs of the probed transport.
    unrecognised: int = 0
    #: The peer closed the connection (or reset it) during the probe.
    closed_by_peer: bool = False
    #: Why the connection could not be used, if it could not.
    error: str | None = None

    @property
    def is_dlms(self) -> bool:
        """A DLMS server answered (with whatever verdict)."""
        return bool(self.answers)

    @property
    def opened(self) -> ProbeAnswer | None:
        """The first answer that accepted the probe."""
        return next((a for a in self.answers if a.opened), None)


def _public_aarq() -> bytes:
    return acse.encode_acse(AARQ(initiate=InitiateRequest()))


async def _connect(host: str, port: int, timeout: float) -> trio.SocketStream | str:
    """The connection, or why there is none."""
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        return f"no connection within {timeout:g} s"
    except OSError as exc:
        return connect_reason(exc)


def _causes(exc: OSError) -> list[OSError]:
    causes: list[BaseException] = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        causes = list(cause.exceptions)
    elif cause is not None:
        causes.append(cause)
    return [c for c in causes if isinstance(c, OSError)]


def connect_errno(exc: OSError) -> int | None:
    """The errno of a failed connect (ECONNREFUSED...), looking through trio's summary."""
    return next((c.errno for c in _causes(exc) if c.errno is not None), None)


def connect_reason(exc: OSError) -> str:
    """The root cause of a failed connect ("Connection refused"), not trio's summary."""
    reasons = sorted(
        {os.strerror(c.errno) if c.errno else (c.strerror or str(c)) for c in _causes(exc)} - {""}
    )
    return "; ".join(reasons) if reasons else str(exc)


async def probe_hdlc(
    host: str,
    port: int,
    *,
    timeout: float,
    client_sap: int = PUBLIC_CLIENT_SAP,
    addresses: Sequence[tuple[int, int]] = HDLC_ADDRESSES,
) -> ProbeResult:
    """SNRM to every address in ``addresses``; returns at the first UA or after ``timeout``."""
    client = HdlcAddress.client(client_sap)
    targets: dict[tuple[int, int], HdlcAddress] = {}
    for logical, physical in addresses:
        try:
            targets[(logical, physical)] = HdlcAddress.server(logical, physical)
        except EncodeError:
            continue
    snrm = LinkParameters().encode()
    request = b"".join(encode_frame(FrameKind.SNRM, a, client, info=snrm) for a in targets.values())
    by_value = {(a.value, a.size): key for key, a in targets.items()}
    answers: list[ProbeAnswer] = []
    scanner = FrameScanner()
    received = 0
    closed = False
    opened: HdlcAddress | None = None
    stream = await _connect(host, port, timeout)
    if isinstance(stream, str):
        return ProbeResult("hdlc", error=stream)
    async with stream:
        try:
            with trio.move_on_after(timeout):
                await stream.send_all(request)
                while opened is None and received < MAX_PROBE_BYTES:
                    data = await stream.receive_some(4096)
                    if not data:
                        closed = True
                        break
                    received += len(data)
                    try:
                        scanner.receive_data(data)
                    except FrameError:
                        scanner.drain()
                        continue
                    while (frame := scanner.next_frame()) is not NEED_DATA:
                        key = by_value.get((frame.src, frame.src_size))
                        if key is None or frame.dst != client.value:
                            continue
                        if frame.kind in (FrameKind.UA, FrameKind.DM, FrameKind.FRMR):
                            answers.append(ProbeAnswer("hdlc", key[0], key[1], frame.kind.value))
                            if frame.kind is FrameKind.UA and opened is None:
                                opened = targets[key]
            if opened is not None:
                # Close the link our SNRM opened, and only that one.
                with trio.move_on_after(min(timeout, _RELEASE_WAIT_S)):
                    await stream.send_all(encode_frame(FrameKind.DISC, opened, client))
                    await stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            closed = True
    stats = scanner.stats()
    return ProbeResult(
        "hdlc",
        tuple(answers),
        received=received,
        unrecognised=int(stats["bytes_discarded"]) + int(stats["pending"]) * (not answers),
        closed_by_peer=closed,
    )


async def probe_wrapper(
    host: str,
    port: int,
    *,
    timeout: float,
    client_wport: int = PUBLIC_CLIENT_SAP,
    wports: Sequence[int] = WRAPPER_WPORTS,
) -> ProbeResult:
    """A public AARQ to every wPort in ``wports``; returns at the first accepting AARE or after
    ``timeout``."""
    aarq = _public_aarq()
    request = b"".join(WrapperFrame(client_wport, w, aarq).encode() for w in wports)
    answers: list[ProbeAnswer] = []
    scanner = WrapperScanner()
    received = 0
    closed = False
    opened: int | None = None
    stream = await _connect(host, port, timeout)
    if isinstance(stream, str):
        return ProbeResult("wrapper", error=stream)
    async with stream:
        try:
            with trio.move_on_after(timeout):
                await stream.send_all(request)
                while opened is None and received < MAX_PROBE_BYTES:
                    data = await stream.receive_some(4096)
                    if not data:
                        closed = True
                        break
                    received += len(data)
                    try:
                        scanner.receive_data(data)
                    except FrameError:
                        scanner.drain()
                        continue
                    while (pdu := scanner.next_frame()) is not NEED_DATA:
                        assert isinstance(pdu, WrapperFrame)
                        if pdu.dst_wport != client_wport or pdu.src_wport not in wports:
                            continue
                        reply = _aare_verdict(pdu.payload)
                        if reply is None:
                            continue
                        answers.append(ProbeAnswer("wrapper", pdu.src_wport, None, reply))
                        if reply == "accepted" and opened is None:
                            opened = pdu.src_wport
            if opened is not None:
                with trio.move_on_after(min(timeout, _RELEASE_WAIT_S)):
                    rlrq = acse.encode_acse(RLRQ())
                    await stream.send_all(WrapperFrame(client_wport, opened, rlrq).encode())
                    await stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            closed = True
    stats = scanner.stats()
    return ProbeResult(
        "wrapper",
        tuple(answers),
        received=received,
        unrecognised=int(stats["bytes_discarded"]) + int(stats["pending"]) * (not answers),
        closed_by_peer=closed,
    )


def _aare_verdict(payload: bytes) -> str | None:
    """``accepted`` or ``rejected (diagnostic)`` for an AARE, None for anything else."""
    try:
        decoded = acse.decode_acse(payload)
    except ProtocolError:
        return None
    if not isinstance(decoded, AARE):
        return None
    if decoded.result == AssociationResult.ACCEPTED:
        return "accepted"
    return f"rejected ({decoded.diagnostic.label})"
