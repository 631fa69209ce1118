"""Codec benchmark: FCS-16 throughput and HDLC scan + validate + decode rate.

Measures the Cython extension and the pure-Python twin, and, when installed (the ``benchmark``
extra), gurux_dlms's and dlms-cosem's HDLC layers on the same frames, all in one run, and prints
one table with ratios. Recorded captures in ``benchmarks/captures/`` are scanned too.

    python benchmarks/codec.py            # full run (about a minute)
    python benchmarks/codec.py --quick    # a few seconds, for a smoke test
    python benchmarks/codec.py --json out.json

Targets (one core): FCS-16 >= 400 MB/s on 256-byte buffers; scan + validate + decode
>= 2,000,000 frames/s on 40-byte frames and >= 50x gurux_dlms's HDLC layer on the same frames.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec._speedups import available
from codec.hdlc import NEED_DATA, FrameKind, HdlcAddress, encode_frame

CAPTURES = Path(__file__).resolve().parent / "captures"
TARGET_FCS_MBS = 400.0
TARGET_FRAMES_PER_S = 2_000_000.0
TARGET_VS_GURUX = 50.0


def best_rate(work: Callable[[], int], seconds: float, repeats: int) -> float:
    """The best rate (units of ``work()``'s return per second) over ``repeats`` timed runs."""
    best = 0.0
    for _ in range(repeats):
        done = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < seconds / repeats:
            done += work()
            elapsed = time.perf_counter() - start
        best = max(best, done / elapsed)
    return best


def make_frame(total: int) -> bytes:
    """A UI frame of ``total`` bytes, flags included (1-byte addresses, LLC header)."""
    info_len = total - 11
    info = b"\xe6\xe7\x00" + bytes((7 + i) % 256 for i in range(info_len - 3))
    frame = encode_frame(FrameKind.UI, HdlcAddress.client(1), HdlcAddress.server(0, 1), info=info)
    assert len(frame) == total, len(frame)
    return frame


def bench_fcs(mod: ModuleType, size: int, seconds: float, repeats: int) -> float:
    data = bytes((i * 7) % 256 for i in range(size))
    fcs = mod.fcs16
    loops = 1000

    def work() -> int:
        for _ in range(loops):
            fcs(data)
        return loops * size

    return best_rate(work, seconds, repeats) / 1e6


def bench_fcs_references(size: int, seconds: float, repeats: int) -> dict[str, float | None]:
    """FCS-16 of gurux_dlms and dlms-cosem on the same buffer, when installed."""
    data = bytes((i * 7) % 256 for i in range(size))
    loops = 50
    out: dict[str, float | None] = {"gurux_dlms": None, "dlms_cosem": None}
    try:
        from gurux_dlms import GXByteBuffer
        from gurux_dlms._GXFCS16 import _GXFCS16
    except ImportError:
        pass
    else:
        buffer = GXByteBuffer(data)

        def gurux() -> int:
            for _ in range(loops):
                _GXFCS16.countFCS16(buffer, 0, size)
            return loops * size

        out["gurux_dlms"] = best_rate(gurux, seconds, repeats) / 1e6
    try:
        from dlms_cosem.crc import CRCCCITT
    except ImportError:
        pass
    else:
        crc = CRCCCITT()

        def cosem() -> int:
            for _ in range(loops):
                crc.calculate_for(data)
            return loops * size

        out["dlms_cosem"] = best_rate(cosem, seconds, repeats) / 1e6
    return out


def bench_scan(mod: ModuleType, frame: bytes, count: int, seconds: float, repeats: int) -> float:
    stream = frame * count

    def work() -> int:
        scanner = mod.FrameScanner(max_buffer=len(stream) + 4096)
        scanner.receive_data(stream)
        nf = scanner.next_frame
        n = 0
        while nf() is not NEED_DATA:
            n += 1
        assert n == count
        return n

    return best_rate(work, seconds, repeats)


def bench_gurux(frame: bytes, count: int, seconds: float, repeats: int) -> float | None:
    try:
        from gurux_dlms import GXByteBuffer, GXDLMSClient, GXReplyData
        from gurux_dlms.GXDLMS import GXDLMS
    except ImportError:
        return None
    settings = GXDLMSClient(True, 1, 1).settings
    stream = frame * count
    size = len(frame)

    def work() -> int:
        reply = GXByteBuffer(stream)
        n = 0
        while reply.position < len(reply):
            start = reply.position
            if GXDLMS.getHdlcData(False, settings, reply, GXReplyData(), None) == 0:
                break
            n += 1
            # getHdlcData leaves the cursor on the information field, for its APDU layer.
            reply.position = start + size
        assert n == count
        return n

    return best_rate(work, seconds, repeats)


def bench_dlms_cosem(frame: bytes, count: int, seconds: float, repeats: int) -> float | None:
    try:
        from dlms_cosem.hdlc.frames import UnnumberedInformationFrame
    except ImportError:
        return None
    # dlms-cosem's scanner belongs to its connection state machine; decode pre-split frames.
    frames = [frame] * count
    parse = UnnumberedInformationFrame.from_bytes

    def work() -> int:
        for raw in frames:
            parse(raw)
        return count

    return best_rate(work, seconds, repeats)


def capture_streams() -> list[tuple[str, bytes]]:
    """The meter-to-client byte streams of the recorded captures, by file name."""
    if not CAPTURES.is_dir():
        return []
    try:
        from bridge.capture import read_sessions
    except ImportError:
        return []
    out = []
    for path in sorted(CAPTURES.glob("*.pcap")):
        data = b"".join(s.server_bytes for s in read_sessions(path))
        if data:
            out.append((path.stem, data))
    return out


def bench_capture(mod: ModuleType, data: bytes, seconds: float, repeats: int) -> tuple[float, int]:
    frames = 0

    def work() -> int:
        nonlocal frames
        scanner = mod.FrameScanner(max_buffer=len(data) + 4096)
        scanner.receive_data(data)
        n = 0
        while scanner.next_frame() is not NEED_DATA:
            n += 1
        frames = n
        return len(data)

    return best_rate(work, seconds, repeats) / 1e6, frames


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "frames/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    seconds, repeats, count = (0.15, 2, 2000) if args.quick else (1.5, 5, 50_000)
    impls = available()
    rows: list[dict[str, Any]] = []

    for size in (64, 256, 1024):
        row: dict[str, Any] = {"what": f"FCS-16, {size}-byte buffers", "unit": "MB/s"}
        for name, mod in impls.items():
            row[name] = bench_fcs(mod, size, seconds, repeats)
        row.update(bench_fcs_references(size, seconds / 3, repeats))
        rows.append(row)

    for size in (40, 300):
        frame = make_frame(size)
        n = count if size == 40 else count // 4
        row = {"what": f"scan+validate+decode, {size}-byte frames", "unit": "frames/s"}
        for name, mod in impls.items():
            row[name] = bench_scan(mod, frame, n, seconds, repeats)
        row["gurux_dlms"] = bench_gurux(frame, max(200, n // 50), seconds, repeats)
        row["dlms_cosem"] = bench_dlms_cosem(frame, max(200, n // 50), seconds, repeats)
        rows.append(row)

    for name, data in capture_streams():
        row = {"unit": "MB/s"}
        for impl_name, mod in impls.items():
            row[impl_name], row["frames"] = bench_capture(mod, data, seconds / 3, repeats)
        row["what"] = f"capture {name} ({len(data)} B, {row['frames']} frames)"
        rows.append(row)

    columns = [
        c
        for c in ("cython", "python", "gurux_dlms", "dlms_cosem")
        if c in impls or any(r.get(c) is not None for r in rows)
    ]
    print(
        f"dlms-bridge codec benchmark - {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.machine()}, one core"
    )
    header = f"{'measurement':<40} {'unit':<9}" + "".join(f"{c:>14}" for c in columns)
    header += f"{'cy/py':>9}{'cy/gurux':>10}{'cy/cosem':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        line = f"{row['what']:<40} {row['unit']:<9}"
        line += "".join(f"{fmt(row.get(c), row['unit']):>14}" for c in columns)
        cy = row.get("cython")
        for ref in ("python", "gurux_dlms", "dlms_cosem"):
            other = row.get(ref)
            width = 9 if ref == "python" else 10
            line += f"{(f'{cy / other:.0f}x' if cy and other else '-'):>{width}}"
        print(line)

    checks = []
    fcs256 = next(r for r in rows if r["what"].startswith("FCS-16, 256"))
    scan40 = next(r for r in rows if r["what"].startswith("scan+validate+decode, 40"))
    if "cython" in impls:
        checks.append(("FCS-16 >= 400 MB/s on 256 B", fcs256["cython"] >= TARGET_FCS_MBS))
        checks.append(
            ("scan >= 2,000,000 frames/s on 40 B", scan40["cython"] >= TARGET_FRAMES_PER_S)
        )
        if scan40.get("gurux_dlms"):
            ratio = scan40["cython"] / scan40["gurux_dlms"]
            checks.append(
                (f">= 50x gurux_dlms on 40 B (got {ratio:.0f}x)", ratio >= TARGET_VS_GURUX)
            )
    else:
        print("\nthe Cython extension is not built: targets not checked")
    print()
    for label, ok in checks:
        print(f"target {'met' if ok else 'MISSED'}: {label}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "targets": dict(checks)}, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
