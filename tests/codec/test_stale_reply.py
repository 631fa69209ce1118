"""A reply with the wrong invoke-id is dropped without dropping the wait for the right one.

Some meters (gurux_dlms, for an object asked with the wrong interface class) answer a GET with
the invoke-id of an earlier request. The association drops that reply as stale; the request
must then still end within its reply timeout, as one failed request of a usable association,
and the register client must turn it into an error of that register only.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.server_link import HdlcServerLink, WrapperServerLink
from codec.acse import Conformance
from codec.apdu import (
    ExceptionResponse,
    ExceptionServiceError,
    GetRequestNormal,
    GetResponseNormal,
    InvokeId,
    StateError,
)
from codec.association import AssociationSettings, AssociationState, ClientAssociation, Response
from codec.axdr import Data
from codec.client import DlmsClient, Procedure, RegisterSpec
from codec.errors import ProtocolError, ResponseTimeout
from codec.hdlc import NEED_DATA, HdlcAddress
from codec.link import HdlcClientLink, WrapperClientLink
from codec.obis import Obis
from tests.codec.test_association import NEGOTIATED, PASSWORD, Wire, scaler_unit, table_meter

VOLTAGE = RegisterSpec("1-1:32.7.0", key="voltage")
FREQUENCY = RegisterSpec("1-1:14.7.0", key="frequency")
#: Answered with the invoke-id of the request before it.
ODD = RegisterSpec("1-1:1.8.0", key="energy")
TIMEOUT = 2.0
#: What the association allows a whole request: far more than one reply timeout.
REQUEST_TIMEOUT = 60.0


class WrongInvokeServer:
    """The simulator's COSEM server, except that a GET of one object is answered with the
    invoke-id of another request."""

    def __init__(self, server: CosemServer, obis: Obis) -> None:
        self.server = server
        self.obis = obis.to_bytes()
        self.answered_wrong = 0

    def handle(self, apdu: bytes, client_sap: int, wall: float) -> bytes | None:
        reply = self.server.handle(apdu, client_sap, wall)
        if reply is not None and apdu[:2] == b"\xc0\x01" and apdu[5:11] == self.obis:
            invoke = apdu[2]
            other = (invoke & 0xF0) | ((invoke & 0x0F) % 15 + 1)
            reply = reply[:2] + bytes((other,)) + reply[3:]
            self.answered_wrong += 1
        return reply

    def release(self) -> None:
        self.server.release()


class SloppyWire(Wire):
    """:class:`Wire` to a meter that answers GETs of ``ODD`` with the wrong invoke-id."""

    def __init__(self, transport: str, conformance: Conformance | None = None) -> None:
        super().__init__(transport=transport, timeout=TIMEOUT)
        self.sloppy = WrongInvokeServer(CosemServer(self.meter), ODD.obis)
        if transport == "hdlc":
            self.server = HdlcServerLink(self.meter, self.sloppy)  # type: ignore[arg-type]
            link: Any = HdlcClientLink(
                HdlcAddress.client(1), HdlcAddress.server(0, 1), timeout=TIMEOUT, retries=2
            )
        else:
            self.server = WrapperServerLink(self.meter, self.sloppy)  # type: ignore[arg-type]
            link = WrapperClientLink(1, 1, timeout=TIMEOUT, retries=2)
        settings = AssociationSettings(password=PASSWORD, request_timeout=REQUEST_TIMEOUT)
        if conformance is not None:
            settings = attrs.evolve(settings, conformance=conformance)
        self.assoc = ClientAssociation(link, settings)

    def run_throwing(self, procedure: Procedure[Any]) -> Any:
        """Run a procedure as MeterSession.run does: a request that failed while the
        association stays usable is thrown into the procedure."""
        request = next(procedure)
        while True:
            try:
                response = self.request(request)
            except ProtocolError as exc:
                if self.assoc.state is not AssociationState.READY:
                    raise
                try:
                    request = procedure.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                request = procedure.send(response)
            except StopIteration as done:
                return done.value


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
def test_a_dropped_stale_reply_keeps_the_reply_timer(transport: str) -> None:
    wire = SloppyWire(transport)
    wire.open()
    sent_at = wire.now
    wire.assoc.request(GetRequestNormal(InvokeId(), ODD.descriptor), sent_at)
    assert wire.deliver()  # the reply came, with the wrong invoke-id
    assert wire.assoc.next_event() is NEED_DATA
    assert wire.assoc.stale_responses == 1
    # Still waiting for the reply, by the reply timer: not only by the overall deadline.
    assert wire.assoc.next_deadline() == pytest.approx(sent_at + TIMEOUT)
    wire.now = sent_at + TIMEOUT
    with pytest.raises(ResponseTimeout):
        wire.assoc.handle_timer(wire.now)
    # The meter answered, just not this request: the association is still usable.
    assert wire.assoc.state is AssociationState.READY
    invoke = wire.assoc.request(GetRequestNormal(InvokeId(), VOLTAGE.descriptor), wire.now)
    wire.deliver()
    event = wire.next_event()
    assert isinstance(event, Response) and event.apdu.invoke == invoke
    assert 10000 < event.apdu.result.value < 14000


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
def test_a_register_without_its_reply_is_an_error_of_its_own(transport: str) -> None:
    # One GET per register (no GET-with-list), as after a meter's malformed list reply.
    wire = SloppyWire(transport, conformance=Conformance.GET)
    client = DlmsClient(wire.open())
    started = wire.now
    readings = wire.run_throwing(client.read_registers([VOLTAGE, ODD, FREQUENCY]))
    by_key = {r.spec.name: r for r in readings}
    assert 100 < by_key["voltage"].value < 140
    assert 59 < by_key["frequency"].value < 61
    energy = by_key["energy"]
    assert not energy.ok and energy.value is None
    assert energy.error_code == "link.timeout", energy
    assert "no reply" in (energy.error or "")
    # About one reply timeout per odd register (its scaler and its value): not the overall
    # deadline of the request.
    assert wire.sloppy.answered_wrong == 2
    assert wire.now - started < 2 * TIMEOUT + 1
    assert wire.assoc.state is AssociationState.READY


def answer_or_throw(procedure: Procedure[Any], reply: Any) -> Any:
    """Answer each request with ``reply(request)``; an exception it returns is thrown in."""
    request = next(procedure)
    while True:
        answer = reply(request)
        try:
            if isinstance(answer, ProtocolError):
                request = procedure.throw(answer)
            else:
                request = procedure.send(answer)
        except StopIteration as done:
            return done.value


def test_a_failed_get_in_the_fallback_fails_that_register_only() -> None:
    client = DlmsClient(NEGOTIATED)  # lists are refused by table_meter: one GET each
    voltage = RegisterSpec("1-1:32.7.0")
    energy = RegisterSpec("1-1:1.8.0")
    frequency = RegisterSpec("1-1:14.7.0")

    def meter(request: Any) -> Any:
        if isinstance(request, GetRequestNormal) and request.attribute.obis == energy.obis:
            if request.attribute.attribute_id == 3:
                return ResponseTimeout("no reply to the request", code="link.timeout")
            return ExceptionResponse(
                StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE
            )
        if isinstance(request, GetRequestNormal) and request.attribute.obis == frequency.obis:
            attribute_id = request.attribute.attribute_id
            value = Data.long_unsigned(6000) if attribute_id == 2 else scaler_unit(-2, 44)
            return GetResponseNormal(request.invoke, value)
        return table_meter(request)

    volts, joules, hertz = answer_or_throw(
        client.read_registers([voltage, energy, frequency]), meter
    )
    assert volts.value == 123.45
    assert hertz.value == 60.0 and hertz.unit is not None and hertz.unit.symbol == "Hz"
    assert not joules.ok
    assert joules.error_code == "service.exception.operation_not_possible", joules
    # The scaler that got no reply is remembered as unreadable, with why.
    assert "no reply" in str(client.scalers[(energy.class_id, energy.obis)])
