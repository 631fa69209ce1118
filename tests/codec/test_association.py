"""The client association and the register client against a meter, with no event loop at all.

The peer is the simulator's sans-IO server side (an implementation of the meter written apart
from the client): bytes go from one to the other in memory, time is a number we advance, and
faults (garbage, lost replies, corrupted frames, silence) are applied on the way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import get_model
from bridge.simulator.server_link import HdlcServerLink, WrapperServerLink
from codec.acse import Conformance
from codec.apdu import (
    DataAccessResult,
    ExceptionResponse,
    ExceptionServiceError,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    InvokeId,
    StateError,
    encode_apdu,
)
from codec.association import (
    Associated,
    AssociationSettings,
    AssociationState,
    ClientAssociation,
    Closed,
    Lenient,
    Negotiated,
    Released,
    Response,
)
from codec.axdr import Data
from codec.client import DlmsClient, Procedure, RegisterSpec
from codec.errors import AssociationError, ProtocolError, ResponseTimeout
from codec.hdlc import NEED_DATA, HdlcAddress
from codec.link import HdlcClientLink, WrapperClientLink
from codec.obis import Obis
from codec.wrapper import WrapperFrame

FIELD_METER = [
    RegisterSpec("1-1:32.7.0", key="voltage_l1"),
    RegisterSpec("1-1:31.7.0", key="current_l1"),
    RegisterSpec("1-1:14.7.0", key="frequency"),
    RegisterSpec("1-1:1.7.0", key="active_power"),
    RegisterSpec("1-1:1.8.0", key="active_energy"),
]
PASSWORD = b"00000000"


class Wire:
    """A client association and a simulated meter joined by an in-memory byte pipe."""

    def __init__(
        self,
        *,
        transport: str = "hdlc",
        password: bytes | None = PASSWORD,
        conformance: Conformance | None = None,
        timeout: float = 1.0,
        seed: int = 1,
    ) -> None:
        self.meter = Meter.create(0, seed, MeterSettings(), get_model("single-phase"))
        self.tolerated: list[Lenient] = []
        server = CosemServer(self.meter)
        if transport == "hdlc":
            self.server: Any = HdlcServerLink(self.meter, server)
            link: Any = HdlcClientLink(
                HdlcAddress.client(1), HdlcAddress.server(0, 1), timeout=timeout, retries=2
            )
        else:
            self.server = WrapperServerLink(self.meter, server)
            link = WrapperClientLink(1, 1, timeout=timeout, retries=2)
        kwargs: dict[str, Any] = {"password": password}
        if conformance is not None:
            kwargs["conformance"] = conformance
        self.assoc = ClientAssociation(link, AssociationSettings(**kwargs))
        self.now = 0.0
        self.rng = random.Random(seed)
        # Faults applied to what the meter sends next.
        self.lose_next_reply = False
        self.garbage_next = b""
        self.corrupt_next = False
        self.replies_lost = 0

    def deliver(self) -> bool:
        """Carry what the client wants to send to the meter, and the meter's answer back.

        Returns whether anything reached the client.
        """
        out = self.assoc.data_to_send()
        if not out:
            return False
        replies = self.server.receive_data(out, time.time())
        data = b"".join(replies)
        if not data:
            return False
        if self.lose_next_reply:
            self.lose_next_reply = False
            self.replies_lost += 1
            return False
        if self.corrupt_next:
            self.corrupt_next = False
            mangled = bytearray(data)
            mangled[len(mangled) // 2] ^= 0x5A
            data = bytes(mangled)
        data, self.garbage_next = self.garbage_next + data, b""
        # Arbitrary TCP chunking.
        i = 0
        while i < len(data):
            n = self.rng.randint(1, max(1, len(data) - i))
            self.now += 0.001
            self.assoc.receive_data(data[i : i + n], self.now)
            i += n
        return True

    def next_event(self, *, max_wait: float = 30.0) -> Any:
        """Run until the association has an event; time jumps to deadlines when nothing moves."""
        limit = self.now + max_wait
        while True:
            event = self.assoc.next_event()
            moved = self.deliver()
            if event is not NEED_DATA:
                return event
            if moved:
                continue
            deadline = self.assoc.next_deadline()
            if deadline is None or deadline > limit:
                raise AssertionError(f"stuck: no event and no deadline (state {self.assoc.state})")
            self.now = max(self.now, deadline)
            self.assoc.handle_timer(self.now)
            self.deliver()

    def open(self) -> Negotiated:
        self.assoc.open(self.now)
        self.deliver()
        event = self.next_event()
        assert isinstance(event, Associated), event
        return event.negotiated

    def request(self, apdu: Any) -> Any:
        self.assoc.request(apdu, self.now)
        self.deliver()
        event = self.next_event()
        while isinstance(event, Lenient):
            self.tolerated.append(event)
            event = self.next_event()
        assert isinstance(event, Response), event
        return event.apdu

    def run(self, procedure: Procedure[Any]) -> Any:
        request = next(procedure)
        while True:
            response = self.request(request)
            try:
                request = procedure.send(response)
            except StopIteration as done:
                return done.value

    def release(self) -> list[Any]:
        self.assoc.release(self.now)
        self.deliver()
        events = []
        while not isinstance(events[-1] if events else None, Closed):
            events.append(self.next_event())
        return events


def check_field_meter_values(readings: list[Any]) -> None:
    by_key = {r.spec.name: r for r in readings}
    assert all(r.ok for r in readings), [r.error for r in readings]
    assert 100 < by_key["voltage_l1"].value < 140
    assert (by_key["voltage_l1"].scaler, by_key["voltage_l1"].unit.symbol) == (-2, "V")
    assert (by_key["current_l1"].scaler, by_key["current_l1"].unit.symbol) == (-3, "A")
    assert by_key["frequency"].unit.code == 44
    assert 59 < by_key["frequency"].value < 61
    assert by_key["active_power"].unit.code == 27
    assert by_key["active_energy"].unit.code == 30
    assert isinstance(by_key["active_energy"].value, int)
    # Scaled values are exact decimals of the raw ones.
    volts = by_key["voltage_l1"]
    assert volts.value == pytest.approx(volts.raw.value / 100, abs=1e-9)


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
def test_read_registers_then_release(transport: str) -> None:
    wire = Wire(transport=transport)
    negotiated = wire.open()
    assert negotiated.multiple_references
    assert negotiated.conformance & Conformance.GET
    client = DlmsClient(negotiated)
    first = wire.run(client.read_registers(FIELD_METER))
    check_field_meter_values(first)
    # Scalers and values in one GET-with-list the first time...
    assert wire.assoc.requests == 1
    second = wire.run(client.read_registers(FIELD_METER))
    check_field_meter_values(second)
    # ...and only the values afterwards, again in one request.
    assert wire.assoc.requests == 2
    events = wire.release()
    assert isinstance(events[0], Released)
    assert wire.assoc.state is AssociationState.CLOSED
    assert wire.meter.counters.releases == 1


def test_one_get_per_register_without_multiple_references() -> None:
    proposal = (
        Conformance.GET
        | Conformance.SET
        | Conformance.ACTION
        | Conformance.SELECTIVE_ACCESS
        | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
    )
    wire = Wire(conformance=proposal)
    negotiated = wire.open()
    assert not negotiated.multiple_references
    client = DlmsClient(negotiated)
    check_field_meter_values(wire.run(client.read_registers(FIELD_METER)))
    assert wire.assoc.requests == 10  # five scalers, five values
    check_field_meter_values(wire.run(client.read_registers(FIELD_METER)))
    assert wire.assoc.requests == 15  # values only


def test_wrong_password_is_refused_by_name() -> None:
    wire = Wire(password=b"12345678")
    wire.assoc.open(wire.now)
    wire.deliver()
    with pytest.raises(AssociationError) as err:
        wire.next_event()
    assert err.value.code == "association.authentication_failure"
    assert "password" in str(err.value)


def test_undefined_object_does_not_fail_the_others() -> None:
    wire = Wire()
    client = DlmsClient(wire.open())
    specs = [*FIELD_METER[:2], RegisterSpec("1-1:99.99.9", key="nothing")]
    readings = wire.run(client.read_registers(specs))
    assert [r.ok for r in readings] == [True, True, False]
    assert readings[2].error == "object-undefined"


def test_long_reply_arrives_by_blocks_and_segments() -> None:
    wire = Wire()
    client = DlmsClient(wire.open())
    profile = wire.run(client.read_profile(Obis.parse("1-0:99.1.0")))
    assert len(profile.rows) > 500
    assert wire.assoc.blocks_received > 1
    assert wire.assoc.link.stats()["frames"] > wire.assoc.blocks_received
    energies = [row[1] for row in profile.rows]
    assert energies == sorted(energies)  # energy only grows


def test_lost_reply_is_retransmitted_in_place() -> None:
    wire = Wire()
    client = DlmsClient(wire.open())
    wire.lose_next_reply = True
    check_field_meter_values(wire.run(client.read_registers(FIELD_METER)))
    stats = wire.assoc.stats()
    assert stats["retransmissions"] == 1
    assert wire.replies_lost == 1


def test_corrupted_reply_is_dropped_and_fetched_again() -> None:
    wire = Wire()
    client = DlmsClient(wire.open())
    wire.corrupt_next = True
    check_field_meter_values(wire.run(client.read_registers(FIELD_METER)))
    stats = wire.assoc.stats()
    assert stats["bad_fcs"] + stats["bad_hcs"] + stats["resyncs"] >= 1
    assert stats["retransmissions"] >= 1


def test_silent_meter_times_out() -> None:
    wire = Wire(timeout=0.5)
    client = DlmsClient(wire.open())
    wire.assoc.request(next(client.read_registers(FIELD_METER)), wire.now)
    wire.assoc.data_to_send()  # the request never reaches the meter
    timeouts = 0
    for _ in range(10):
        assert wire.assoc.next_event() is NEED_DATA
        wire.assoc.data_to_send()
        deadline = wire.assoc.next_deadline()
        assert deadline is not None
        wire.now = deadline
        try:
            wire.assoc.handle_timer(wire.now)
        except ResponseTimeout:
            timeouts += 1
            break
    assert timeouts == 1
    assert wire.assoc.stats()["retransmissions"] == 2
    assert wire.assoc.state is AssociationState.CLOSED


def test_stale_reply_is_not_taken_for_the_current_one() -> None:
    wire = Wire(transport="wrapper")
    wire.open()
    invoke = wire.assoc.request(GetRequestNormal(InvokeId(), FIELD_METER[0].descriptor), wire.now)
    fresh = b"".join(wire.server.receive_data(wire.assoc.data_to_send(), time.time()))
    # A late reply to a request given up on earlier (another invoke-id) arrives first.
    other = InvokeId(invoke.invoke_id % 15 + 1)
    stale = WrapperFrame(
        1, 1, encode_apdu(GetResponseNormal(other, Data.long_unsigned(1)))
    ).encode()
    wire.assoc.receive_data(stale + fresh, wire.now)
    event = wire.next_event()
    assert isinstance(event, Response)
    assert event.apdu.invoke == invoke
    assert 10000 < event.apdu.result.value < 14000  # centivolts, not the stale 1
    assert wire.assoc.stale_responses == 1


# -- the client's procedures, answered by hand ---------------------------------------------------


def answer(procedure: Procedure[Any], reply: Callable[[Any], Any]) -> Any:
    request = next(procedure)
    while True:
        try:
            request = procedure.send(reply(request))
        except StopIteration as done:
            return done.value


def scaler_unit(scaler: int, unit: int) -> Data:
    return Data.structure((Data.integer(scaler), Data.enum(unit)))


NEGOTIATED = Negotiated(
    conformance=Conformance.GET | Conformance.MULTIPLE_REFERENCES, server_max_pdu_size=512,
    dlms_version=6,
)  # fmt: skip


def table_meter(request: Any) -> Any:
    """Answers from a fixed table; refuses lists with an exception-response."""
    values = {
        (Obis.parse("1-1:32.7.0"), 2): Data.long_unsigned(12345),
        (Obis.parse("1-1:32.7.0"), 3): scaler_unit(-2, 35),
        (Obis.parse("1-1:1.8.0"), 2): Data.double_long_unsigned(56297),
        (Obis.parse("1-1:1.8.0"), 3): scaler_unit(0, 30),
    }
    if isinstance(request, GetRequestWithList):
        return ExceptionResponse(
            StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.SERVICE_NOT_SUPPORTED
        )
    assert isinstance(request, GetRequestNormal)
    attribute = request.attribute
    result = values.get((attribute.obis, attribute.attribute_id), DataAccessResult.OBJECT_UNDEFINED)
    return GetResponseNormal(request.invoke, result)


def test_refused_list_falls_back_to_single_gets_and_is_remembered() -> None:
    client = DlmsClient(NEGOTIATED)
    specs = [RegisterSpec("1-1:32.7.0"), RegisterSpec("1-1:1.8.0")]
    asked: list[str] = []

    def meter(request: Any) -> Any:
        asked.append(type(request).__name__)
        return table_meter(request)

    readings = answer(client.read_registers(specs), meter)
    assert [r.value for r in readings] == [123.45, 56297]
    assert [r.unit.symbol for r in readings] == ["V", "Wh"]
    assert asked == ["GetRequestWithList"] + ["GetRequestNormal"] * 4
    assert client.list_refused
    asked.clear()
    answer(client.read_registers(specs), meter)
    assert asked == ["GetRequestNormal"] * 2  # no list tried again, no scaler read again


def test_list_reply_with_the_wrong_length_counts_as_refused() -> None:
    client = DlmsClient(NEGOTIATED)

    def meter(request: Any) -> Any:
        if isinstance(request, GetRequestWithList):
            return GetResponseWithList(request.invoke, (Data.long_unsigned(1),))
        return table_meter(request)

    readings = answer(
        client.read_registers([RegisterSpec("1-1:32.7.0"), RegisterSpec("1-1:1.8.0")]), meter
    )
    assert [r.value for r in readings] == [123.45, 56297]
    assert client.list_refused


def test_unreadable_scaler_is_an_error_for_that_register_only() -> None:
    client = DlmsClient(NEGOTIATED)

    def meter(request: Any) -> Any:
        if isinstance(request, GetRequestWithList):
            results = []
            for attribute, _ in request.items:
                if attribute.attribute_id == 3 and attribute.obis == Obis.parse("1-1:1.8.0"):
                    results.append(DataAccessResult.READ_WRITE_DENIED)
                else:
                    results.append(table_meter(GetRequestNormal(request.invoke, attribute)).result)
            return GetResponseWithList(request.invoke, tuple(results))
        return table_meter(request)

    volts, energy = answer(
        client.read_registers([RegisterSpec("1-1:32.7.0"), RegisterSpec("1-1:1.8.0")]), meter
    )
    assert volts.value == 123.45
    assert energy.error == "scaler_unit unreadable: read-write-denied"


# -- a stateful model of the whole exchange ------------------------------------------------------


#: Garbage that looks like the start of an HDLC frame or of a wrapper header.
TRICKY_GARBAGE = [
    b"\x7e",
    b"\x7e\xa0\x7e",
    b"\x7d\x7e",
    b"\x00\x01\x00\x01",
    b"\x00\x01\x00\x01\x00",
]


class AssociationMachine(RuleBasedStateMachine):
    """Connect, read, garbage, lost replies, corruption, silence and release, in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.wire: Wire | None = None
        self.client: DlmsClient | None = None
        self.reads = 0

    @initialize(transport=st.sampled_from(["hdlc", "wrapper"]), seed=st.integers(0, 1000))
    def start(self, transport: str, seed: int) -> None:
        self.transport = transport
        self.seed = seed
        self.connect()

    def _fresh(self) -> None:
        self.wire = Wire(transport=self.transport, seed=self.seed, timeout=1.0)
        self.client = None

    @precondition(lambda self: self.client is None)
    @rule()
    def connect(self) -> None:
        self._fresh()
        assert self.wire is not None
        self.client = DlmsClient(self.wire.open())

    @precondition(lambda self: self.client is not None)
    @rule()
    def read(self) -> None:
        assert self.wire is not None and self.client is not None
        try:
            readings = self.wire.run(self.client.read_registers(FIELD_METER))
        except ProtocolError:
            # Given up after the retransmissions: the association is gone, as it must be.
            assert self.wire.assoc.state is AssociationState.CLOSED
            event(f"{self.transport}: a read gave up")
            self.client = None
            return
        check_field_meter_values(readings)
        self.reads += 1
        event(f"{self.transport}: a read succeeded")

    @precondition(lambda self: self.client is not None)
    @rule(
        data=st.binary(max_size=40) | st.sampled_from([b"\x7e", b"\x7e\xa0\x7e", b"\x7d\x7e\x7e"])
    )
    def garbage_before_next_reply(self, data: bytes) -> None:
        assert self.wire is not None
        self.wire.garbage_next = data

    @precondition(lambda self: self.client is not None)
    @rule()
    def lose_next_reply(self) -> None:
        assert self.wire is not None
        self.wire.lose_next_reply = True

    @precondition(lambda self: self.client is not None and self.transport == "hdlc")
    @rule()
    def corrupt_next_reply(self) -> None:
        assert self.wire is not None
        self.wire.corrupt_next = True

    @precondition(lambda self: self.client is not None)
    @rule()
    def release(self) -> None:
        assert self.wire is not None
        events = self.wire.release()
        assert isinstance(events[-1], Closed)
        assert self.wire.assoc.state is AssociationState.CLOSED
        self.client = None

    @invariant()
    def state_is_consistent(self) -> None:
        if self.wire is None:
            return
        state = self.wire.assoc.state
        if self.client is not None:
            assert state is AssociationState.READY
        assert self.wire.assoc.next_deadline() is None or state is not AssociationState.READY


# max_examples comes from the active profile (quick "ci" default, DLMS_BRIDGE_HYPOTHESIS=deep).
AssociationMachine.TestCase.settings = settings(
    stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestAssociationMachine = AssociationMachine.TestCase
