"""gurux_dlms as an independent meter over TCP (IEC 62056-47 wrapper), serving a voltage
register next to the values real meters send that are not plain numbers: a serial number
(text), a structure, a NaN float register and an enum.

gurux_dlms is GPL: it is used here only as a test peer. Its server is synchronous; it runs in
a thread, one connection at a time.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

gurux_dlms = pytest.importorskip("gurux_dlms")

from gurux_dlms import GXDLMSServer  # noqa: E402
from gurux_dlms.enums import Authentication, InterfaceType  # noqa: E402
from gurux_dlms.enums import DataType as GxDataType  # noqa: E402
from gurux_dlms.enums.SourceDiagnostic import SourceDiagnostic as GxDiagnostic  # noqa: E402
from gurux_dlms.GXDLMSLNParameters import GXDLMSLNParameters  # noqa: E402
from gurux_dlms.GXDLMSLongTransaction import GXDLMSLongTransaction  # noqa: E402
from gurux_dlms.objects import (  # noqa: E402
    GXDLMSAssociationLogicalName,
    GXDLMSData,
    GXDLMSRegister,
)
from gurux_dlms.ValueEventArgs import ValueEventArgs  # noqa: E402

from codec.obis import Obis  # noqa: E402
from tests.gurux_server import ServerCallbacks  # noqa: E402

PASSWORD = b"12345678"
SERIAL = "0-0:96.1.0"
STRUCTURE = "0-0:96.99.1"
NAN = "1-1:33.7.0"
ENUM = "0-0:96.99.2"
VOLTAGE = "1-1:32.7.0"
SERIAL_TEXT = "GX0012345"


def _dotted(obis: str) -> str:
    return Obis.parse(obis).dotted()


class _Reply:
    """What GXDLMSServer.handleRequest expects of its argument in this release."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reply: bytes | None = None
        self.count = 0
        self.connectionInfo = None

    def isStreaming(self) -> bool:
        return self.count != 0

    def setReply(self, reply: bytes) -> None:
        self.reply = reply

    def getConnectionInfo(self) -> None:
        return None

    def getCount(self) -> int:
        return self.count

    def setCount(self, count: int) -> None:
        self.count = count


class GuruxMeter(ServerCallbacks, GXDLMSServer):  # type: ignore[misc]
    """A gurux LN server with LLS over the wrapper."""

    def __init__(self) -> None:
        super().__init__(True, InterfaceType.WRAPPER)
        voltage = GXDLMSRegister(_dotted(VOLTAGE))
        voltage.value = 23012
        voltage.scaler = 0.01
        voltage.unit = 35
        serial = GXDLMSData(_dotted(SERIAL))
        serial.value = SERIAL_TEXT
        serial.setDataType(2, GxDataType.STRING)
        structure = GXDLMSData(_dotted(STRUCTURE))
        structure.value = [1, "pair"]
        structure.setDataType(2, GxDataType.STRUCTURE)
        nan = GXDLMSRegister(_dotted(NAN))
        nan.value = math.nan
        nan.setDataType(2, GxDataType.FLOAT32)
        nan.scaler = 1
        nan.unit = 33
        enum = GXDLMSData(_dotted(ENUM))
        enum.value = 3
        enum.setDataType(2, GxDataType.ENUM)
        association = GXDLMSAssociationLogicalName("0.0.40.0.0.255")
        association.authenticationMechanismName.mechanismId = Authentication.LOW
        association.secret = PASSWORD
        for item in (voltage, serial, structure, nan, enum, association):
            self.items.append(item)
            association.objectList.append(item)
        self.initialize()
        self.settings.gbtWndowSize = 1

    def answer(self, frame: bytes) -> bytes | None:
        reply = _Reply(frame)
        self.handleRequest(reply)
        return bytes(reply.reply) if reply.reply else None

    def onValidateAuthentication(self, authentication: int, password: bytes) -> int:
        if authentication == Authentication.NONE or bytes(password or b"") == PASSWORD:
            return GxDiagnostic.NONE
        return GxDiagnostic.AUTHENTICATION_FAILURE


def _serve(
    listener: socket.socket, stop: threading.Event, factory: Callable[[], Any] = GuruxMeter
) -> None:
    """Answer one connection at a time with a fresh meter from ``factory`` (its ``answer``
    takes one complete wrapper PDU)."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        meter = factory()
        with conn:
            conn.settimeout(0.2)
            buffer = b""
            while not stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 8:
                    size = int.from_bytes(buffer[6:8], "big")
                    if len(buffer) < 8 + size:
                        break
                    frame, buffer = buffer[: 8 + size], buffer[8 + size :]
                    reply = meter.answer(frame)
                    if reply:
                        conn.sendall(reply)


def patch_missing_members(monkeypatch: pytest.MonkeyPatch) -> None:
    """Members the server code of this gurux release calls but never defines."""
    monkeypatch.setattr(ValueEventArgs, "isSkipMaxPduSize", False, raising=False)
    monkeypatch.setattr(ValueEventArgs, "__iter__", lambda self: iter((self,)), raising=False)
    monkeypatch.setattr(
        GXDLMSLNParameters, "isMultipleBlocks", lambda self: self.multipleBlocks, raising=False
    )
    monkeypatch.setattr(
        GXDLMSLongTransaction, "setData", lambda self, data: setattr(self, "data", data),
        raising=False,
    )  # fmt: skip


@contextmanager
def gurux_meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Serve a gurux meter on a loopback port (yielded) until the block ends."""
    patch_missing_members(monkeypatch)
    GuruxMeter()  # fails here, not in the thread, if gurux refuses the objects
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, stop), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def read_args(port: int) -> list[Any]:
    """The `read` options that reach the gurux meter."""
    return [
        "--host", "127.0.0.1", "--port", str(port), "--transport", "wrapper",
        "--client-sap", "16", "--server-logical", "1", "--password", PASSWORD.decode(),
    ]  # fmt: skip
