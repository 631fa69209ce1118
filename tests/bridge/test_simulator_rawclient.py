"""A raw DLMS client built from codec pieces, and the simulator read end to end over real TCP.

:class:`RawClient` does only what a test needs, in plain sight: SNRM/UA, I-frames with N(S)/N(R),
segmentation both ways, AARQ/AARE, GET with block transfer. Other simulator tests import it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from bridge.simulator import MeterSettings, Simulator, SimulatorConfig, SimulatorPorts
from bridge.simulator.server_link import LLC_REQUEST, LLC_RESPONSE
from codec.acse import (
    AARE,
    AARQ,
    RLRE,
    RLRQ,
    AcseServiceUser,
    AssociationResult,
    AuthenticationMechanism,
    Conformance,
    InitiateRequest,
)
from codec.apdu import (
    AttributeDescriptor,
    DataAccessResult,
    ExceptionResponse,
    ExceptionServiceError,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDatablock,
    GetResponseWithList,
    InvokeId,
    SelectiveAccess,
    StateError,
    decode_apdu,
    encode_apdu,
)
from codec.axdr import Data, decode_data
from codec.cosem import ScalerUnit, parse_object_list, range_descriptor
from codec.cosem_time import CosemDateTime
from codec.hdlc import NEED_DATA, Frame, FrameKind, FrameScanner, HdlcAddress, encode_frame
from codec.hdlc_params import LinkParameters
from codec.obis import Obis
from codec.wrapper import WrapperFrame, WrapperScanner

TIMEOUT = 10
FIELD_REGISTERS = {
    "1-1:32.7.0": (-2, 35),
    "1-1:31.7.0": (-3, 33),
    "1-1:14.7.0": (-2, 44),
    "1-1:1.7.0": (0, 27),
    "1-1:1.8.0": (0, 30),
}


@contextlib.asynccontextmanager
async def running(
    config: SimulatorConfig, **kwargs: Any
) -> AsyncIterator[tuple[Simulator, SimulatorPorts]]:
    """A simulator serving in the background for the duration of the block."""
    sim = Simulator(config, **kwargs)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(sim.serve)
        try:
            yield sim, ports
        finally:
            nursery.cancel_scope.cancel()


class RawClient:
    """A test client speaking HDLC or the wrapper over one TCP stream."""

    def __init__(
        self,
        stream: trio.SocketStream,
        *,
        transport: str = "hdlc",
        client_sap: int = 1,
        server: HdlcAddress | None = None,
        params: LinkParameters | None = None,
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.client = HdlcAddress.client(client_sap)
        self.server = server or HdlcAddress.server(0, 1)
        self.proposal = params or LinkParameters()
        self.params = self.proposal
        self.scanner: FrameScanner | WrapperScanner = (
            FrameScanner() if transport == "hdlc" else WrapperScanner()
        )
        self.vs = 0
        self.vr = 0
        self.invoke = 1
        self.frames_received: list[Frame] = []
        #: Every byte received, and how many reads it took.
        self.received = bytearray()
        self.reads = 0

    @classmethod
    async def open(cls, port: int, **kwargs: Any) -> RawClient:
        """Connect to ``127.0.0.1:port``."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream, **kwargs)

    async def aclose(self) -> None:
        """Close the TCP connection."""
        await self.stream.aclose()

    # -- raw I/O ---------------------------------------------------------------------------------

    async def next_unit(self) -> Any:
        """The next frame or wrapper PDU from the meter."""
        while True:
            unit = self.scanner.next_frame()
            if unit is not NEED_DATA:
                if isinstance(unit, Frame):
                    self.frames_received.append(unit)
                return unit
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the meter closed the connection")
            self.received += data
            self.reads += 1
            self.scanner.receive_data(data)

    async def send_frame(self, kind: FrameKind, **kwargs: Any) -> None:
        """Send one HDLC frame from this client to the meter."""
        await self.stream.send_all(encode_frame(kind, self.server, self.client, **kwargs))

    # -- HDLC link -------------------------------------------------------------------------------

    async def connect(self) -> LinkParameters:
        """SNRM -> UA; returns the negotiated parameters from the client's point of view."""
        if self.transport != "hdlc":
            return self.params
        await self.send_frame(FrameKind.SNRM, info=self.proposal.encode())
        ua = await self.next_unit()
        assert ua.kind is FrameKind.UA, ua
        self.params = LinkParameters.decode(ua.info).swapped()
        self.vs = self.vr = 0
        return self.params

    async def disconnect(self) -> Frame:
        """DISC; returns the UA or DM."""
        await self.send_frame(FrameKind.DISC)
        frame: Frame = await self.next_unit()
        return frame

    async def exchange(self, apdu: bytes) -> bytes:
        """Send one APDU and return the response APDU (segments reassembled)."""
        if self.transport != "hdlc":
            await self.stream.send_all(WrapperFrame(self.client.value, 1, apdu).encode())
            pdu = await self.next_unit()
            assert isinstance(pdu, WrapperFrame)
            assert (pdu.src_wport, pdu.dst_wport) == (1, self.client.value)
            return pdu.payload
        info = LLC_REQUEST + apdu
        size = self.params.max_info_tx
        pieces = [info[i : i + size] for i in range(0, len(info), size)]
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            await self.send_frame(
                FrameKind.I, ns=self.vs, nr=self.vr, info=piece, segmented=not last
            )
            self.vs = (self.vs + 1) & 7
            if not last:
                rr = await self.next_unit()
                assert rr.kind is FrameKind.RR and rr.nr == self.vs, rr
        payload = bytearray()
        while True:
            frame = await self.next_unit()
            assert frame.kind is FrameKind.I, frame
            assert frame.ns == self.vr and frame.nr == self.vs, frame
            assert len(frame.info) <= self.params.max_info_rx
            self.vr = (self.vr + 1) & 7
            payload += frame.info
            if not frame.segmented:
                break
            await self.send_frame(FrameKind.RR, nr=self.vr)
        assert payload.startswith(LLC_RESPONSE), payload.hex()
        return bytes(payload[3:])

    async def request(self, apdu: Any) -> Any:
        """Encode, exchange, decode."""
        return decode_apdu(await self.exchange(encode_apdu(apdu)))

    # -- application -----------------------------------------------------------------------------

    async def associate(
        self,
        password: bytes | None = b"00000000",
        *,
        max_pdu: int = 0xFFFF,
        conformance: Conformance | None = None,
    ) -> AARE:
        """AARQ with LLS (or none when ``password`` is None); returns the AARE."""
        initiate = InitiateRequest(client_max_receive_pdu_size=max_pdu)
        if conformance is not None:
            initiate = InitiateRequest(conformance, max_pdu)
        aarq = AARQ(
            mechanism=AuthenticationMechanism.NONE
            if password is None
            else AuthenticationMechanism.LOW,
            password=password,
            initiate=initiate,
        )
        aare = await self.request(aarq)
        assert isinstance(aare, AARE)
        return aare

    async def release(self) -> RLRE:
        """RLRQ -> RLRE."""
        rlre = await self.request(RLRQ())
        assert isinstance(rlre, RLRE)
        return rlre

    def _next_invoke(self) -> InvokeId:
        self.invoke = (self.invoke + 1) & 0x0F
        return InvokeId(self.invoke)

    async def _complete(self, response: Any, blocks: list[int] | None) -> bytes | DataAccessResult:
        """Raw data of a GET answered in blocks: fetch the rest with GET-next."""
        raw = bytearray()
        while True:
            assert isinstance(response, GetResponseWithDatablock), response
            if isinstance(response.raw_data, DataAccessResult):
                return response.raw_data
            raw += response.raw_data
            if blocks is not None:
                blocks.append(response.block_number)
            if response.last_block:
                return bytes(raw)
            response = await self.request(GetRequestNext(response.invoke, response.block_number))

    async def get(
        self,
        class_id: int,
        obis: str,
        attribute: int,
        access: SelectiveAccess | None = None,
        *,
        blocks: list[int] | None = None,
    ) -> Data | DataAccessResult:
        """GET one attribute; block transfer handled (block numbers go to ``blocks``)."""
        invoke = self._next_invoke()
        descriptor = AttributeDescriptor(class_id, Obis.parse(obis), attribute)
        response = await self.request(GetRequestNormal(invoke, descriptor, access))
        if isinstance(response, GetResponseNormal):
            assert response.invoke == invoke
            return response.result
        raw = await self._complete(response, blocks)
        if isinstance(raw, DataAccessResult):
            return raw
        value, end = decode_data(raw)
        assert end == len(raw)
        return value

    async def get_list(
        self, items: list[tuple[int, str, int]]
    ) -> tuple[Data | DataAccessResult, ...]:
        """GET-with-list of (class, OBIS, attribute)."""
        invoke = self._next_invoke()
        request = GetRequestWithList(
            invoke,
            tuple((AttributeDescriptor(c, Obis.parse(o), a), None) for c, o, a in items),
        )
        response = await self.request(request)
        assert isinstance(response, GetResponseWithList), response
        assert response.invoke == invoke
        return response.results


def data(result: Data | DataAccessResult) -> Data:
    """A successful GET result."""
    assert isinstance(result, Data), result
    return result


def value_of(result: Data | DataAccessResult) -> Any:
    """The Python value of a successful GET result."""
    return data(result).value


# -- end-to-end tests over TCP --------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_reads_the_five_field_registers_with_scaler_and_unit(transport: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0, transport=transport)) as (sim, ports):
            client = await RawClient.open(ports.meters[0], transport=transport)
            await client.connect()
            aare = await client.associate()
            assert aare.result == AssociationResult.ACCEPTED
            assert aare.initiate_response is not None
            assert aare.initiate_response.server_max_receive_pdu_size == 1024
            scalers = await client.get_list([(3, obis, 3) for obis in FIELD_REGISTERS])
            values = await client.get_list([(3, obis, 2) for obis in FIELD_REGISTERS])
            units = {
                obis: ScalerUnit.from_data(data(r))
                for obis, r in zip(FIELD_REGISTERS, scalers, strict=True)
            }
            for obis, (scaler, unit) in FIELD_REGISTERS.items():
                assert (units[obis].scaler, units[obis].unit) == (scaler, unit), obis
            volts, amps, hertz, watts, wh = (
                units[o].apply(value_of(r)) for o, r in zip(FIELD_REGISTERS, values, strict=True)
            )
            assert 110 < volts < 130
            assert 0.2 < amps < 5
            assert 59.9 < hertz < 60.1
            assert 0.9 * volts * amps < watts <= volts * amps * 1.0001
            assert wh > 40_000
            assert isinstance(value_of(values[4]), int)
            assert (await client.release()).reason is not None
            if transport == "hdlc":
                assert (await client.disconnect()).kind is FrameKind.UA
            await client.aclose()
            counters = sim.meter(0).snapshot()
            assert counters["associations"] == 1
            assert counters["releases"] == 1


@pytest.mark.parametrize(
    ("password", "diagnostic"),
    [
        (b"12345678", AcseServiceUser.AUTHENTICATION_FAILURE),
        (None, AcseServiceUser.AUTHENTICATION_REQUIRED),
    ],
)
async def test_wrong_or_missing_password_is_refused(
    password: bytes | None, diagnostic: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0)) as (sim, ports):
            client = await RawClient.open(ports.meters[0])
            await client.connect()
            aare = await client.associate(password)
            assert aare.result == AssociationResult.REJECTED_PERMANENT
            assert aare.diagnostic.value == diagnostic
            # Not associated: a GET gets an exception-response, not data.
            response = await client.request(
                GetRequestNormal(InvokeId(1), AttributeDescriptor(3, Obis.parse("1-1:32.7.0"), 2))
            )
            assert response == ExceptionResponse(
                StateError.SERVICE_NOT_ALLOWED, ExceptionServiceError.OPERATION_NOT_POSSIBLE
            )
            await client.aclose()
            assert sim.meter(0).counters.auth_failures == 1
            assert sim.meter(0).counters.associations == 0


async def test_object_list_by_block_transfer_and_segmented_frames() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0)) as (_, ports):
            client = await RawClient.open(ports.meters[0])
            params = await client.connect()
            assert params.max_info_rx == 128
            await client.associate(max_pdu=256)
            blocks: list[int] = []
            result = await client.get(15, "0-0:40.0.0.255", 2, blocks=blocks)
            assert isinstance(result, Data)
            entries = {entry.obis: entry for entry in parse_object_list(result)}
            assert len(blocks) > 1
            assert blocks == list(range(1, len(blocks) + 1))
            assert any(f.segmented for f in client.frames_received)
            for obis in FIELD_REGISTERS:
                entry = entries[Obis.parse(obis)]
                assert entry.class_id == 3
                assert entry.attribute_access[1].readable
            assert entries[Obis.parse("1-0:99.1.0.255")].attribute_access[1].access_selectors == (
                1,
                2,
            )
            assert entries[Obis.parse("0-0:1.0.0.255")].class_id == 8
            assert entries[Obis.parse("0-0:42.0.0.255")].class_id == 1
            await client.aclose()


async def test_profile_range_read_matches_the_energy_register() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0)) as (_, ports):
            client = await RawClient.open(ports.meters[0], params=LinkParameters(128, 128))
            await client.connect()
            await client.associate(max_pdu=512)
            clock = value_of(await client.get(8, "0-0:1.0.0.255", 2))
            now = CosemDateTime.from_bytes(clock).to_datetime()
            blocks: list[int] = []
            rows = await client.get(
                7,
                "1-0:99.1.0.255",
                2,
                range_descriptor(now - dt.timedelta(hours=6), now),
                blocks=blocks,
            )
            entries = value_of(rows)
            assert 23 <= len(entries) <= 24
            assert len(blocks) > 1
            times = [CosemDateTime.from_bytes(e.value[0].value).to_datetime() for e in entries]
            assert all(b - a == dt.timedelta(minutes=15) for a, b in itertools.pairwise(times))
            assert all(t.minute % 15 == 0 and t.second == 0 for t in times)
            energies = [e.value[1].value for e in entries]
            assert energies == sorted(energies)
            # The average power of a period is the energy it added.
            for before, after in itertools.pairwise(entries):
                added = after.value[1].value - before.value[1].value
                assert abs(after.value[2].value / 4 - added) <= 1.0
            energy_now = value_of(await client.get(3, "1-1:1.8.0", 2))
            assert energies[-1] <= energy_now < energies[-1] + 100
            await client.aclose()


async def test_segmented_request_is_reassembled() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0)) as (_, ports):
            # The client may send only 32-byte information fields: a 10-item GET-with-list spans
            # several I-frames with the S bit.
            client = await RawClient.open(ports.meters[0], params=LinkParameters(32, 128))
            params = await client.connect()
            assert params.max_info_tx == 32
            await client.associate()
            results = await client.get_list([(3, obis, 2) for obis in FIELD_REGISTERS] * 2)
            assert all(isinstance(r, Data) for r in results)
            await client.aclose()


async def test_many_meters_have_their_own_ports_and_values() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(meters=3, port=0, seed=7)) as (sim, ports):
            assert len(set(ports.meters)) == 3
            serials = []
            for port in ports.meters:
                client = await RawClient.open(port)
                await client.connect()
                await client.associate()
                serials.append(value_of(await client.get(1, "0-0:96.1.0.255", 2)))
                await client.aclose()
            assert len(set(serials)) == 3
            assert [m.serial for m in sim.meters] == serials


async def test_meter_settings_are_honoured() -> None:
    settings = MeterSettings(password=b"secret", max_pdu=512)
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0, settings=settings)) as (_, ports):
            client = await RawClient.open(ports.meters[0])
            await client.connect()
            assert (await client.associate()).result == AssociationResult.REJECTED_PERMANENT
            aare = await client.associate(b"secret")
            assert aare.initiate_response is not None
            assert aare.initiate_response.server_max_receive_pdu_size == 512
            await client.aclose()
