"""Per-poll client cost of the steady state, without I/O: the codec's client side of one poll
(request, reply, values, the reading) against the simulator's sans-IO meter in the same
process, timed on the client side only.

``python benchmarks/pollpath.py [--polls N] [--profile] [--methods]``: microseconds per poll for
each step the polling engine takes (request out, reply in, reading built), best of three runs.
The steady path goes through ``codec.steady``'s ``steady_send`` / ``steady_receive``, as the
engine does (in C over HDLC when the extension is built); ``--methods`` times the association's
own ``steady_request`` / ``receive_steady`` instead, their pure-Python reference.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.config import PRESETS, MeterConfig
from bridge.poller import MeterPoller
from bridge.session import MeterSession
from bridge.simulator.cosem_server import CosemServer
from bridge.simulator.server import Simulator, SimulatorConfig
from bridge.simulator.server_link import HdlcServerLink
from codec.association import Associated, ClientAssociation, Response, SteadyResponse
from codec.client import DlmsClient
from codec.hdlc import IMPLEMENTATION as HDLC
from codec.hdlc import NeedData
from codec.steady import IMPLEMENTATION as STEADY_IMPLEMENTATION
from codec.steady import SteadyDecoder, steady_receive, steady_send

#: The steady poll's calls timed (see steady_poll).
SEND, RECEIVE = steady_send, steady_receive


def setup() -> tuple[MeterPoller, ClientAssociation, DlmsClient, HdlcServerLink]:
    meter = MeterConfig(
        name="m0", host="127.0.0.1", port=1, password="00000000",
        registers=PRESETS["field-meter"], interval_s=1.0, timeout_s=0.9,
    )  # fmt: skip
    sim = Simulator(SimulatorConfig(port=0))
    server = HdlcServerLink(sim.meter(0), CosemServer(sim.meter(0)))
    poller = MeterPoller(meter, lambda r: None)  # type: ignore[arg-type, return-value]
    session = MeterSession(poller.endpoint)
    association = ClientAssociation(
        poller.endpoint.make_link(), poller.endpoint.association_settings()
    )
    now = 1.0
    association.open(now)
    while True:
        out = association.data_to_send()
        for reply in server.receive_data(out, now):
            association.receive_data(reply, now)
        event = association.next_event()
        if isinstance(event, Associated):
            break
    client = DlmsClient(event.negotiated)
    session.association, session.client = association, client
    poller.session = session
    return poller, association, client, server


def poll(
    poller: MeterPoller, association: ClientAssociation, client: DlmsClient,
    server: HdlcServerLink, now: float, t: list[float],
) -> None:  # fmt: skip
    t0 = time.perf_counter()
    proc = client.read_registers(poller.specs)
    association.drain()
    association.request(next(proc), now)
    out = association.data_to_send()
    t1 = time.perf_counter()
    replies = server.receive_data(out, now)  # the meter: not timed
    t2 = time.perf_counter()
    for reply in replies:
        association.receive_data(reply, now)
    while True:
        event = association.next_event()
        if isinstance(event, Response):
            try:
                proc.send(event.apdu)
            except StopIteration as stop:
                readings = stop.value
                break
        elif isinstance(event, NeedData):
            raise RuntimeError("no reply")
    t3 = time.perf_counter()
    poller.took(readings, 1_700_000_000_000, 0.001, False, now)
    t4 = time.perf_counter()
    t[0] += t1 - t0
    t[1] += t3 - t2
    t[2] += t4 - t3


def steady_poll(
    poller: MeterPoller, association: ClientAssociation, client: DlmsClient,
    server: HdlcServerLink, now: float, t: list[float], decoder: SteadyDecoder,
) -> None:  # fmt: skip
    """The polling engine's steady path: the same request sent as one frame, the reply decoded
    straight to values (codec.steady's steady_send and steady_receive, as the engine calls
    them: in C over HDLC when the extension is built; ``--methods``: the association's own
    steady_request and receive_steady, their pure-Python reference)."""
    t0 = time.perf_counter()
    request = client._list_request  # what the engine keeps from client.steady_request()
    assert request is not None
    association.drain()
    out = SEND(association, request, now, decoder)  # one frame, nothing else open
    if out is None:  # the first time: the request's encoding is made
        association.request(request, now, steady=decoder)
        out = association.data_to_send()
    t1 = time.perf_counter()
    replies = server.receive_data(out, now)  # the meter: not timed
    t2 = time.perf_counter()
    assert len(replies) == 1
    reading = RECEIVE(association, replies[0], now)
    if reading is None:
        event = association.next_event()
        assert isinstance(event, SteadyResponse), event
        reading = event.reading
    t3 = time.perf_counter()
    poller.took_steady(reading, decoder.units, 1_700_000_000_000, 0.001, False, now)
    t4 = time.perf_counter()
    t[0] += t1 - t0
    t[1] += t3 - t2
    t[2] += t4 - t3


def measure(args: argparse.Namespace, steady: bool) -> list[float]:
    poller, association, client, server = setup()
    readings: list[object] = []
    for i in range(50):
        poll(poller, association, client, server, 2.0 + i, [0.0, 0.0, 0.0])
    proc = client.read_registers(poller.specs)
    association.request(next(proc), 60.0)
    for reply in server.receive_data(association.data_to_send(), 60.0):
        association.receive_data(reply, 60.0)
    event = association.next_event()
    assert isinstance(event, Response)
    try:
        proc.send(event.apdu)
    except StopIteration as stop:
        readings = stop.value
    decoder = SteadyDecoder(poller.specs, readings)  # type: ignore[arg-type]
    best: list[float] | None = None
    for _ in range(3):
        t = [0.0, 0.0, 0.0]
        for i in range(args.polls):
            if steady:
                steady_poll(poller, association, client, server, 100.0 + i, t, decoder)
            else:
                poll(poller, association, client, server, 100.0 + i, t)
        if best is None or sum(t) < sum(best):
            best = t
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--methods", action="store_true",
        help="time the association's own methods (the pure-Python reference of the calls)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.methods:
        global SEND, RECEIVE
        SEND, RECEIVE = ClientAssociation.steady_request, ClientAssociation.receive_steady
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        measure(args, steady=True)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    n = args.polls
    rows = [("general", measure(args, steady=False)), ("steady", measure(args, steady=True))]
    calls = "the association's methods" if args.methods else f"codec.steady's ({HDLC})"
    print(f"steady decoder: {STEADY_IMPLEMENTATION}; steady calls: {calls}")
    print(f"{'us per poll':<12} {'request':>8} {'reply':>8} {'reading':>8} {'total':>8}")
    for name, best in rows:
        parts = [x / n * 1e6 for x in best]
        print(f"{name:<12} {parts[0]:8.1f} {parts[1]:8.1f} {parts[2]:8.1f} {sum(parts):8.1f}")
    general, steady = (sum(b) for _, b in rows)
    print(f"steady / general: {steady / general:.2f}")


if __name__ == "__main__":
    main()
