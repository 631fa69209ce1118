"""Interoperability: gurux_dlms, an independent DLMS client, reads the simulator.

gurux_dlms is GPL and is used here only as a test peer. Its client is synchronous, so each
session runs in a worker thread against the simulator served by the test's event loop.
"""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

import pytest
import trio
from gurux_dlms import GXByteBuffer, GXDLMSClient, GXDLMSException, GXReplyData
from gurux_dlms.enums import AssociationResult, Authentication, InterfaceType, SourceDiagnostic
from gurux_dlms.objects import GXDLMSClock, GXDLMSData, GXDLMSProfileGeneric, GXDLMSRegister

from bridge.simulator import SimulatorConfig
from tests.bridge.test_simulator_rawclient import FIELD_REGISTERS, running

pytestmark = pytest.mark.interop
TIMEOUT = 30


class GuruxSession:
    """A gurux client over a plain blocking socket, following the call sequence of its examples."""

    def __init__(self, port: int, transport: str, password: str = "00000000") -> None:
        interface = InterfaceType.HDLC if transport == "hdlc" else InterfaceType.WRAPPER
        self.client = GXDLMSClient(True, 1, 1, Authentication.LOW, password, interface)
        # A small PDU: the object list and the profile need GET block transfer.
        self.client.maxReceivePDUSize = 256
        self.transport = transport
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def _exchange(self, data: Any, reply: GXReplyData) -> None:
        self.sock.sendall(bytes(data))
        received = GXByteBuffer()
        notify = GXReplyData()
        while not self.client.getData(received, reply, notify):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the simulator closed the connection")
            received.set(chunk)

    def transfer(self, data: Any, reply: GXReplyData | None = None) -> GXReplyData:
        """Send a request (or a list of frames) and read until the reply is complete."""
        reply = reply or GXReplyData()
        for frame in data if isinstance(data, list) else [data]:
            self._exchange(frame, reply)
            while reply.isMoreData():
                self._exchange(self.client.receiverReady(reply), reply)
        return reply

    def open(self) -> None:
        if self.transport == "hdlc":
            reply = self.transfer(self.client.snrmRequest())
            self.client.parseUAResponse(reply.data)
        reply = self.transfer(self.client.aarqRequest())
        self.client.parseAareResponse(reply.data)

    def read(self, item: Any, attribute: int) -> Any:
        reply = self.transfer(self.client.read(item, attribute))
        return self.client.updateValue(item, attribute, reply.value)

    def close(self) -> None:
        self.transfer(self.client.releaseRequest())
        if self.transport == "hdlc":
            self.transfer(self.client.disconnectRequest())
        self.sock.close()


def _read_everything(port: int, transport: str) -> dict[str, Any]:
    session = GuruxSession(port, transport)
    session.open()
    out: dict[str, Any] = {}
    for ln in FIELD_REGISTERS:
        register = GXDLMSRegister(ln.replace("-", ".").replace(":", ".") + ".255")
        session.read(register, 3)
        session.read(register, 2)
        out[ln] = (register.value, register.scaler, int(register.unit))
    clock = GXDLMSClock()
    session.read(clock, 2)
    out["clock"] = clock.time.value
    serial = GXDLMSData("0.0.96.1.0.255")
    session.read(serial, 2)
    out["serial"] = serial.value
    objects = session.client.parseObjects(
        session.transfer(session.client.getObjectsRequest()).data, True
    )
    out["objects"] = {str(o.logicalName) for o in objects}
    profile = GXDLMSProfileGeneric("1.0.99.1.0.255")
    session.read(profile, 3)
    now = dt.datetime.now(dt.UTC)
    reply = session.transfer(
        session.client.readRowsByRange(profile, now - dt.timedelta(hours=2), now)
    )
    profile.buffer = []
    session.client.updateValue(profile, 2, reply.value)
    out["range_rows"] = [list(row) for row in profile.buffer]
    reply = session.transfer(session.client.readRowsByEntry(profile, 1, 3))
    profile.buffer = []
    session.client.updateValue(profile, 2, reply.value)
    out["entry_rows"] = len(profile.buffer)
    message = GXDLMSData("0.0.96.13.0.255")
    message.value = "interop"
    session.transfer(session.client.write(message, 2))
    message.value = None
    session.read(message, 2)
    out["message"] = message.value
    session.close()
    return out


@pytest.mark.parametrize("transport", ["hdlc", "wrapper"])
async def test_gurux_reads_registers_objects_and_profile(transport: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(meters=2, port=0, transport=transport, seed=9)) as (
            sim,
            ports,
        ):
            result = await trio.to_thread.run_sync(_read_everything, ports.meters[1], transport)
    for ln, (scaler, unit) in FIELD_REGISTERS.items():
        _, got_scaler, got_unit = result[ln]
        assert got_scaler == pytest.approx(10.0**scaler), ln
        assert got_unit == unit, ln
    volts = result["1-1:32.7.0"][0]
    amps = result["1-1:31.7.0"][0]
    watts = result["1-1:1.7.0"][0]
    assert 110 < volts < 130
    assert 0.9 * volts * amps < watts < 1.0001 * volts * amps
    assert 59.9 < result["1-1:14.7.0"][0] < 60.1
    assert result["1-1:1.8.0"][0] > 40_000
    assert result["serial"] == sim.meter(1).serial
    assert abs((result["clock"] - dt.datetime.now(dt.UTC)).total_seconds()) < 10
    assert len(result["objects"]) == len(sim.meter(1).model.objects)
    assert "1.1.32.7.0.255" in result["objects"]
    assert 7 <= len(result["range_rows"]) <= 8
    energies = [row[1] for row in result["range_rows"]]
    assert energies == sorted(energies)
    assert result["entry_rows"] == 3
    assert result["message"] in ("interop", b"interop")
    # The object list did not fit in gurux's 256-byte PDU: it came in blocks.
    assert sim.meter(1).counters.blocks >= 3


def _wrong_password(port: int) -> GXDLMSException:
    session = GuruxSession(port, "hdlc", password="99999999")
    reply = session.transfer(session.client.snrmRequest())
    session.client.parseUAResponse(reply.data)
    reply = session.transfer(session.client.aarqRequest())
    try:
        session.client.parseAareResponse(reply.data)
    except GXDLMSException as exc:
        return exc
    finally:
        session.sock.close()
    raise AssertionError("gurux accepted an association with the wrong password")


async def test_gurux_sees_authentication_failure() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SimulatorConfig(port=0)) as (_, ports):
            error = await trio.to_thread.run_sync(_wrong_password, ports.meters[0])
    assert error.result == AssociationResult.PERMANENT_REJECTED
    assert error.diagnostic == SourceDiagnostic.AUTHENTICATION_FAILURE
