"""Hostile meters for the bound tests: honest until the first GET, then they misbehave.

:class:`HostileMeter` is sans-IO: feed it what the client sends (:meth:`receive`), send what it
returns, and ask :meth:`push` for what it sends on its own (endless segments, a drip). The
handshake (SNRM/UA, AARQ/AARE) is answered by the simulator's server side, so the client really
associates; from the first GET request on, the mode decides:

- ``endless``: HDLC I-frames whose segmentation bit is never cleared (each answers the RR, and
  :meth:`push` sends more without waiting), 100 bytes of information each;
- ``drip``: one 1-byte segment per :meth:`push` (the test calls it every 2 s);
- ``blocks``: GET answered in blocks that never end (``last_block`` never set), each block as
  large as the client's max PDU allows;
- ``oversized``: (wrapper) one reply far longer than the client's max PDU;
- ``deaf``: nothing more (the driver stops reading its socket too).

:func:`serve_socket` runs one on a real TCP socket on 127.0.0.1 in a thread, for subprocess tests.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import get_model
from bridge.simulator.server_link import HdlcServerLink, WrapperServerLink
from codec.apdu import GetRequestNext, GetResponseWithDatablock, decode_apdu, encode_apdu
from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, HdlcAddress, encode_frame
from codec.wrapper import WrapperFrame, WrapperScanner

PASSWORD = b"00000000"
CLIENT = HdlcAddress.client(1)
SERVER = HdlcAddress.server(0, 1)
GET_REQUEST = 0xC0


class HostileMeter:
    """See the module docstring."""

    def __init__(self, mode: str, *, transport: str = "hdlc", block_size: int = 1000) -> None:
        self.mode = mode
        self.transport = transport
        self.block_size = block_size
        meter = Meter.create(0, 1, MeterSettings(password=PASSWORD), get_model("single-phase"))
        server = CosemServer(meter)
        self.honest: Any = (
            HdlcServerLink(meter, server)
            if transport == "hdlc"
            else WrapperServerLink(meter, server)
        )
        self.scanner: Any = FrameScanner() if transport == "hdlc" else WrapperScanner()
        self.hostile = False
        self.vs = 1  # N(S) of our next I-frame: the AARE was frame 0
        self.vr = 0
        self.sent = 0  # bytes sent while hostile
        self.invoke: Any = None
        self.block = 0

    def receive(self, data: bytes) -> bytes:
        """What to answer to ``data`` from the client."""
        if not self.hostile:
            self.scanner.receive_data(data)
            while (frame := self.scanner.next_frame()) is not NEED_DATA:
                if self._apdu(frame)[:1] == bytes([GET_REQUEST]):
                    self.hostile = True
                    self.vr = (frame.ns + 1) % 8 if self.transport == "hdlc" else 0
                    self.invoke = decode_apdu(self._apdu(frame)).invoke  # type: ignore[union-attr]
                    self.scanner = FrameScanner() if self.transport == "hdlc" else WrapperScanner()
                    return self.push()
            return b"".join(self.honest.receive_data(data, time.time()))
        self.scanner.receive_data(data)
        answers = []
        while (frame := self.scanner.next_frame()) is not NEED_DATA:
            if self.mode == "endless" and frame.kind is FrameKind.RR:
                answers.append(self.push())
            elif self.mode == "blocks":
                request = decode_apdu(self._apdu(frame))
                if isinstance(request, GetRequestNext):
                    answers.append(self.push())
        return b"".join(answers)

    def honest_receive(self, data: bytes) -> bytes:
        """Answer like the simulator, never turning hostile."""
        return b"".join(self.honest.receive_data(data, time.time()))

    def push(self) -> bytes:
        """What the meter sends next on its own."""
        if self.mode == "endless":
            return self._segment(b"\x55" * 100)
        if self.mode == "drip":
            return self._segment(b"\x55")
        if self.mode == "oversized":
            out = WrapperFrame(1, 1, b"\xc4" + b"\x00" * 60_000).encode()
            self.sent += len(out)
            return out
        if self.mode == "blocks":
            self.block += 1
            apdu = encode_apdu(
                GetResponseWithDatablock(self.invoke, False, self.block, b"\x00" * self.block_size)
            )
            if self.transport == "hdlc":
                return self._segment(b"\xe6\xe7\x00" + apdu, segmented=False)
            out = WrapperFrame(1, 1, apdu).encode()
            self.sent += len(out)
            return out
        return b""

    def _segment(self, info: bytes, *, segmented: bool = True) -> bytes:
        frame = encode_frame(
            FrameKind.I, CLIENT, SERVER, ns=self.vs, nr=self.vr, info=info, segmented=segmented
        )
        self.vs = (self.vs + 1) % 8
        self.sent += len(frame)
        return frame

    def _apdu(self, frame: Any) -> bytes:
        if self.transport == "hdlc":
            if frame.kind is not FrameKind.I:
                return b""
            return bytes(frame.info[3:])
        return bytes(frame.payload)


def serve_socket(mode: str, *, transport: str = "hdlc", drip_every: float = 2.0) -> socket.socket:
    """A listening socket on 127.0.0.1 whose connections get a :class:`HostileMeter` each.

    Served by daemon threads until the listening socket is closed. ``endless`` floods segments
    as fast as the socket takes them; ``drip`` sends one segment every ``drip_every`` seconds;
    ``deaf`` answers the handshake, then never reads or writes again.
    """
    listener = socket.create_server(("127.0.0.1", 0))

    def connection(conn: socket.socket) -> None:
        meter = HostileMeter(mode, transport=transport)
        with conn:
            try:
                while not meter.hostile:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(meter.receive(data))
                if mode == "deaf":
                    time.sleep(60)  # never reads nor writes again, never closes
                    return
                conn.settimeout(0.0 if mode == "endless" else None)
                while True:
                    if mode == "endless":
                        try:
                            conn.recv(65536)  # RRs: the flood does not wait for them
                        except BlockingIOError:
                            pass
                        conn.settimeout(5.0)
                        conn.sendall(meter.push())
                        conn.settimeout(0.0)
                    else:
                        time.sleep(drip_every)
                        conn.sendall(meter.push())
            except OSError:
                return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener
