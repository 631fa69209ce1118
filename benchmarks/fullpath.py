"""Full-path codec benchmark: one meter reply, from the bytes on the wire to scaled register
values, by our codec and by the reference implementations, on the same bytes in the same run.

The reply is a real one: the simulator's answer to the bridge's steady-state poll (the
``field-meter`` registers in one GET-with-list), recorded over a memory stream. Each
implementation does what a poller does with it:

- ours (steady): ``FrameScanner`` (HDLC framing, HCS/FCS) -> ``SteadyDecoder.decode_info``
  (:mod:`codec.steady`: xDLMS + A-XDR + scaler/unit conversion in one pass, to the values,
  quality flags and errors per key the poller records), the decoder built from the first read;
- ours (general): ``FrameScanner`` -> ``decode_apdu`` -> ``DlmsClient.read_registers`` in its
  steady state (the scalers known), the path the steady decoder falls back to;
- gurux_dlms: ``GXDLMSClient.getData`` (HDLC + APDU + data) -> ``updateValues`` on five
  ``GXDLMSRegister`` objects with their scalers (its frame counter is reset before each reply,
  which is what a live session's exchange does);
- dlms-cosem: ``InformationFrame.from_bytes`` -> ``GetResponseWithList.from_bytes``; it cannot
  decode this reply (it has no FLOAT32 decoding), which the table says.

The values are checked against each other first (float32 to its precision: ours gives its
shortest decimal, gurux the float32 as a double). ``--seconds`` per column, in 5 rounds taken
in turn so that a change of load touches every column alike (the best round counts);
``--json FILE`` writes the numbers. Benchmark-only peers: ``pip install '.[benchmark]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The repository first: this directory's codec.py (the HDLC benchmark) is not the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec import IMPLEMENTATION
from codec.acse import Conformance
from codec.apdu import GetResponseWithList, InvokeId, decode_apdu
from codec.association import Negotiated
from codec.axdr import Data
from codec.client import DlmsClient, RegisterReading, RegisterSpec
from codec.hdlc import NEED_DATA, FrameScanner
from codec.steady import IMPLEMENTATION as STEADY_IMPLEMENTATION
from codec.steady import SteadyDecoder

#: The simulator's reply to the field-meter poll (voltage, current, frequency: long-unsigned;
#: power: float32; energy: double-long-unsigned), an HDLC I-frame with N(S)=2, N(R)=3.
REPLY = bytes.fromhex(
    "7ea02803037497bfe6e700c403c205001230280012033600121770001742bec9ca00060039ca3217f87e"
)
SCALERS = (-2, -3, -2, 0, 0)
UNITS = (35, 33, 44, 27, 30)
EXPECTED = [123.28, 0.822, 60.0, 95.39412, 3787314]
LOGICAL_NAMES = ("1.1.32.7.0.255", "1.1.31.7.0.255", "1.1.14.7.0.255", "1.1.1.7.0.255",
                 "1.1.1.8.0.255")  # fmt: skip


def best_rates(
    works: dict[str, Callable[[], int]], seconds: float, rounds: int = 5
) -> dict[str, float]:
    """The best rate of each work over ``rounds`` short runs, taken in turn (round-robin), so
    that a change of the machine's load during the run touches every column alike."""
    best = dict.fromkeys(works, 0.0)
    for _ in range(rounds):
        for name, work in works.items():
            done, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / rounds:
                done += work()
            best[name] = max(best[name], done / elapsed)
    return best


def _client() -> tuple[DlmsClient, list[RegisterSpec], list[RegisterReading]]:
    """A client in its steady state for the five registers, and the first read's readings
    (scalers and values in one GET-with-list, as a session's first poll)."""
    client = DlmsClient(Negotiated(Conformance.GET | Conformance.MULTIPLE_REFERENCES, 1024, 6))
    specs = [RegisterSpec(ln) for ln in LOGICAL_NAMES]
    scalers = [
        Data.structure([Data.integer(s), Data.enum(u)]) for s, u in zip(SCALERS, UNITS, strict=True)
    ]
    reply = decode_apdu(_apdu())
    assert isinstance(reply, GetResponseWithList)
    first = GetResponseWithList(InvokeId(), (*scalers, *reply.results))
    readings = _run(client, specs, first)
    return client, specs, readings


def _apdu() -> bytes:
    scanner = FrameScanner()
    scanner.receive_data(REPLY)
    frame = scanner.next_frame()
    assert frame is not NEED_DATA
    return bytes(frame.info[3:])  # after the LLC header


def _run(client: DlmsClient, specs: list[RegisterSpec], reply: Any) -> list[RegisterReading]:
    procedure = client.read_registers(specs)
    next(procedure)
    try:
        procedure.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("the client asked for more than one request")


def ours() -> Callable[[], list[Any]]:
    """The steady path: frame -> values per key."""
    _, specs, readings = _client()
    decoder = SteadyDecoder(specs, readings)
    scanner = FrameScanner()

    def parse() -> list[Any]:
        scanner.receive_data(REPLY)
        frame = scanner.next_frame()
        assert frame is not NEED_DATA
        reading = decoder.decode_info(frame.info, 2)
        assert reading is not None
        return list(reading.values.values())

    return parse


def ours_general() -> Callable[[], list[Any]]:
    """The general path: frame -> APDU -> the client's readings."""
    client, specs, _ = _client()
    scanner = FrameScanner()

    def parse() -> list[Any]:
        scanner.receive_data(REPLY)
        frame = scanner.next_frame()
        assert frame is not NEED_DATA
        return [r.value for r in _run(client, specs, decode_apdu(bytes(frame.info[3:])))]

    return parse


def gurux() -> Callable[[], list[Any]] | str:
    try:
        from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
        from gurux_dlms.enums import Authentication, InterfaceType
        from gurux_dlms.objects import GXDLMSRegister
    except ImportError:
        return "not installed"
    client = GXDLMSClient(True, 1, 1, Authentication.LOW, "00000000", InterfaceType.HDLC)
    registers = [GXDLMSRegister(ln) for ln in LOGICAL_NAMES]
    for register, scaler in zip(registers, SCALERS, strict=True):
        register.scaler = 10**scaler
    items = [(r, 2) for r in registers]
    # The receive counter a session has when this reply (N(S)=2, N(R)=3) is the next one.
    expected_frame = 66

    def parse() -> list[Any]:
        client.settings.receiverFrame = expected_frame
        reply = GXReplyData()
        if not client.getData(GXByteBuffer(REPLY), reply, GXReplyData()):
            raise RuntimeError("gurux_dlms did not complete the reply")
        client.updateValues(items, reply.value)
        return [r.value for r in registers]

    return parse


def dlms_cosem() -> Callable[[], list[Any]] | str:
    try:
        from dlms_cosem.hdlc.frames import InformationFrame
        from dlms_cosem.protocol.xdlms.get import GetResponseWithList as CosemList
    except ImportError:
        return "not installed"

    def parse() -> list[Any]:
        frame = InformationFrame.from_bytes(REPLY)
        response = CosemList.from_bytes(bytes(frame.payload[3:]))
        return list(response.response_data)

    try:
        parse()
    except NotImplementedError as exc:
        return f"cannot decode this reply ({exc})"
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per column (3)")
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args()
    rows: dict[str, Any] = {}
    makers: tuple[tuple[str, Callable[[], Callable[[], list[Any]] | str]], ...] = (
        ("ours", ours),
        ("ours_general", ours_general),
        ("gurux_dlms", gurux),
        ("dlms_cosem", dlms_cosem),
    )
    works: dict[str, Callable[[], int]] = {}
    for name, make in makers:
        parse = make()
        if isinstance(parse, str):
            rows[name] = {"replies_per_s": None, "note": parse}
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # gurux prints frame mismatches
            values = parse()
        ok = all(
            abs(float(a) - b) <= 1e-6 * max(1.0, abs(b))
            for a, b in zip(values, EXPECTED, strict=True)
        )
        if not ok:
            rows[name] = {"replies_per_s": None, "note": f"wrong values {values}"}
            continue

        def work(parse: Callable[[], list[Any]] = parse) -> int:
            for _ in range(100):
                parse()
            return 100

        works[name] = work
        rows[name] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        rates = best_rates(works, args.seconds * len(works))
    for name, rate in rates.items():
        rows[name] = {"replies_per_s": round(rate), "us_per_reply": round(1e6 / rate, 2)}
    base = rows["ours"]["replies_per_s"]
    print(
        "full path, one 5-register GET-with-list reply -> scaled values "
        f"(HDLC {IMPLEMENTATION}, steady decoder {STEADY_IMPLEMENTATION})"
    )
    for name, row in rows.items():
        rate = row["replies_per_s"]
        if rate:
            ratio = "" if name == "ours" else f"  ours/{name}: {base / rate:.1f}x"
            if name == "gurux_dlms" and rows["ours_general"]["replies_per_s"]:
                general = rows["ours_general"]["replies_per_s"] / rate
                ratio += f" (general path: {general:.1f}x)"
            print(f"  {name:12} {rate:>10,} replies/s  {row['us_per_reply']:8.2f} us{ratio}")
            row["ours_ratio"] = None if name == "ours" else round(base / rate, 2)
        else:
            print(f"  {name:12} {'n/a':>10}  {row['note']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "implementation": IMPLEMENTATION,
                    "steady_implementation": STEADY_IMPLEMENTATION,
                    "results": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
