"""Regenerate the pcap captures in benchmarks/captures/.

Each capture is one scenario: the simulated meter (with one fault, or none) serves our
:class:`~bridge.session.MeterSession` client through the recording proxy
(:class:`~bridge.capture.RecordingProxy`), which writes both directions to ``NAME.pcap``.
Everything runs in this process on 127.0.0.1 with ephemeral ports.

Usage (from the repository root)::

    python benchmarks/record_captures.py [--out benchmarks/captures] [--only clean,fcs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.capture import PcapWriter, RecordingProxy
from bridge.pcap import read_sessions
from bridge.session import MeterEndpoint, MeterIOError, MeterSession
from bridge.simulator.server import Simulator, SimulatorConfig
from codec.client import RegisterSpec
from codec.errors import ProtocolError
from codec.obis import Obis

#: The five registers of the field meter.
REGISTERS = (
    RegisterSpec("1-1:32.7.0", key="voltage_l1"),
    RegisterSpec("1-1:31.7.0", key="current_l1"),
    RegisterSpec("1-1:14.7.0", key="frequency"),
    RegisterSpec("1-1:1.7.0", key="active_power"),
    RegisterSpec("1-1:1.8.0", key="active_energy"),
)
LOAD_PROFILE = Obis.parse("1-0:99.1.0")
PASSWORD = b"00000000"
SEED = 7


@attrs.frozen
class Scenario:
    """One capture: the simulator's faults and what the client does."""

    name: str
    faults: str
    about: str
    #: The client's reply timeout; short where the fault makes it wait.
    timeout: float = 2.0
    #: Sessions the client opens (a fault that breaks one gets another try).
    sessions: int = 1
    profile: bool = False
    reads: int = 2


SCENARIOS = (
    Scenario(
        "clean",
        "",
        "SNRM/UA, AARQ/AARE, 3 reads of the five registers, a load-profile read by entry "
        "(block transfer, segmented I-frames), RLRQ/RLRE, DISC/UA",
        profile=True,
        reads=3,
    ),
    Scenario("garbage", "garbage=0.5", "random bytes rich in 0x7E/0x7D before half the replies"),
    Scenario("residual", "residual", "the tail of a previous frame on connect"),
    Scenario("chunks", "chunks", "every reply split into random TCP chunks"),
    Scenario("drip", "drip=0.002", "every reply sent byte by byte, 2 ms apart", reads=1),
    Scenario("flags", "flags", "0x7E and 0x7D inside frames (values, names, address alias)"),
    Scenario(
        "fcs",
        "fcs=0.3",
        "30% of replies with a corrupted FCS: the client retransmits",
        timeout=0.3,
    ),
    Scenario("delay", "delay=0.05", "every reply 50 ms late"),
    Scenario(
        "silence",
        "silence=0.5@0.2",
        "the meter stops answering for 0.5 s at 20% of replies: the client retransmits",
        timeout=0.4,
    ),
    Scenario(
        "reset",
        "reset=0.3",
        "the connection reset in the middle of 30% of reply frames; the client reconnects",
        sessions=3,
    ),
    Scenario("refuse", "refuse", "the association refused (AARE rejected-transient)"),
)


def endpoint_for(scenario: Scenario, host: str, port: int) -> MeterEndpoint:
    """The client's settings: a small PDU size, so the profile comes in several blocks."""
    return MeterEndpoint(
        host, port, password=PASSWORD, timeout=scenario.timeout, retries=3, max_pdu_size=256
    )


async def run_client(endpoint: MeterEndpoint, scenario: Scenario) -> list[str]:
    """The client's side of a scenario; returns what happened, one line per session."""
    notes = []
    for _ in range(scenario.sessions):
        session = MeterSession(endpoint)
        try:
            with trio.fail_after(30):
                await session.open()
                for _ in range(scenario.reads):
                    readings = await session.read_registers(REGISTERS)
                    if not all(r.ok for r in readings):
                        notes.append(f"read errors: {[r.error for r in readings if not r.ok]}")
                if scenario.profile:
                    data = await session.read_profile(LOAD_PROFILE, from_entry=1, to_entry=24)
                    notes.append(f"profile: {len(data.rows)} rows")
                await session.release()
            notes.append(f"session ok: {session.stats().get('retransmissions', 0)} retransmissions")
            break
        except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
            notes.append(f"session failed: {type(exc).__name__}: {exc}")
            await session.aclose()
    return notes


async def record(scenario: Scenario, out: Path) -> str:
    """Record one scenario to ``out/NAME.pcap``; returns a summary line."""
    path = out / f"{scenario.name}.pcap"
    simulator = Simulator(SimulatorConfig(port=0, faults=scenario.faults, seed=SEED))
    with PcapWriter(path) as writer:
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(simulator.serve)
            proxy = RecordingProxy(writer, (ports.host, ports.meters[0]), linger=0.5)
            addresses = await nursery.start(proxy.serve, 0, "127.0.0.1")
            endpoint = endpoint_for(scenario, *addresses[0])
            notes = await run_client(endpoint, scenario)
            # Let the proxy see both sides close before the file is closed.
            with trio.move_on_after(2):
                while len(proxy.sessions) < len([n for n in notes if n.startswith("session")]):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    sessions = read_sessions(path)
    sizes = ", ".join(f"{len(s.client_bytes)}/{len(s.server_bytes)} B" for s in sessions)
    return (
        f"{path.name}: {path.stat().st_size} bytes, {len(sessions)} session(s) "
        f"(client/meter {sizes}); {'; '.join(notes)}"
    )


async def main(out: Path, names: set[str] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for scenario in SCENARIOS:
        if names is None or scenario.name in names:
            print(await record(scenario, out), flush=True)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "captures",
        help="directory for the captures (default: benchmarks/captures)",
    )
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    known = {s.name for s in SCENARIOS}
    chosen = set(args.only.split(",")) if args.only else None
    if chosen is not None and chosen - known:
        sys.exit(
            f"unknown scenario(s): {', '.join(sorted(chosen - known))}; known: {sorted(known)}"
        )
    trio.run(main, args.out, chosen)
