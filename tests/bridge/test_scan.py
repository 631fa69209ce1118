"""``dlms-bridge scan``: finds exactly the simulated meters of both transports on 127.0.0.1 and
labels the other listeners; target and port parsing; ``--config-out``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge import cli
from bridge.config import parse_config
from bridge.scan import MAX_TARGETS, ScanError, parse_ports, parse_targets, scan
from bridge.session import MeterEndpoint, MeterSession
from codec.client import RegisterSpec
from tests.bridge.mosquitto import free_port

PASSWORD = "00000000"


async def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli.main(["scan", *argv])

    code = await trio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


async def serve_banner(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A non-DLMS service: reads a request, answers like a web server, closes."""

    async def handler(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            await stream.receive_some(1024)
            await stream.send_all(b"HTTP/1.0 400 Bad Request\r\nServer: test\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def serve_silent(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A listener that accepts and never says anything."""

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(1024):
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


# -- parsing -----------------------------------------------------------------------------------


def test_targets_cidr_ranges_and_hosts() -> None:
    count, hosts = parse_targets(["10.0.0.0/30", "10.0.1.5-7", "10.0.2.254-10.0.3.1", "meter.lan"])
    assert count == 4 + 3 + 4 + 1
    assert list(hosts) == [
        "10.0.0.1", "10.0.0.2",
        "10.0.1.5", "10.0.1.6", "10.0.1.7",
        "10.0.2.254", "10.0.2.255", "10.0.3.0", "10.0.3.1",
        "meter.lan",
    ]  # fmt: skip
    assert list(parse_targets(["127.0.0.1,127.0.0.2"])[1]) == ["127.0.0.1", "127.0.0.2"]


def test_more_than_a_slash_16_is_refused_unless_forced() -> None:
    assert parse_targets(["10.1.0.0/16"])[0] == MAX_TARGETS
    with pytest.raises(ScanError, match=r"more than a /16 \(65536\).*--force"):
        parse_targets(["10.0.0.0/15"])
    count, hosts = parse_targets(["10.0.0.0/8"], force=True)
    # Lazily generated: a forced /8 costs no memory up front.
    assert count == 2**24 and next(hosts) == "10.0.0.1"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("10.0.0.0/33", "not a CIDR block"),
        ("10.0.0.9-3", "ends before it starts"),
        ("10.0.0.1-x", "not a range"),
        ("", "no targets"),
    ],
)
def test_bad_targets_say_what_is_wrong(target: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_targets([target])


def test_ports() -> None:
    assert parse_ports("4061,3333,4059-4060") == [3333, 4059, 4060, 4061]
    for bad, message in (("0", "not a TCP port"), ("80-79", "ends before"), ("x", "not a port")):
        with pytest.raises(ScanError, match=message):
            parse_ports(bad)


async def test_cli_refuses_a_slash_8_with_one_line() -> None:
    code, out, err = await run_cli("10.0.0.0/8", "--ports", "4059")
    assert code == 2 and out == ""
    assert err.startswith("scan: 16777216 addresses is more than a /16") and err.count("\n") == 1


@pytest.mark.parametrize("timeout", ["inf", "nan", "0", "-1"])
async def test_cli_refuses_a_timeout_that_is_not_a_finite_positive_number(timeout: str) -> None:
    with trio.fail_after(10):  # an infinite timeout would wait for ever on a silent listener
        code, out, err = await run_cli("127.0.0.1", "--ports", "4059", "--timeout", timeout)
    assert code == 2 and out == ""
    assert "--timeout" in err and err.count("\n") == 1


async def test_cli_refuses_a_name_that_does_not_resolve() -> None:
    code, out, err = await run_cli("127.0.0.1", "no-such-meter.invalid", "--ports", "4059")
    assert code == 2 and out == ""
    assert err.startswith("scan: 'no-such-meter.invalid': cannot resolve it")


# -- against the simulator ---------------------------------------------------------------------


async def test_scan_finds_exactly_the_meters_and_labels_the_rest(
    simulator: Any, nursery: trio.Nursery, tmp_path: Path
) -> None:
    _hdlc, hdlc_ports = await simulator(meters=2, seed=1)
    _wrap, wrapper_ports = await simulator(meters=1, transport="wrapper", seed=2)
    banner = await nursery.start(serve_banner)
    silent = await nursery.start(serve_silent)
    closed = free_port()
    ports = [*hdlc_ports, *wrapper_ports, banner, silent, closed]
    out_file = tmp_path / "found.toml"
    with trio.fail_after(30):
        code, out, _ = await run_cli(
            "127.0.0.1", "--ports", ",".join(map(str, ports)), "--timeout", "1.5",
            "--password", PASSWORD, "--json", "--config-out", str(out_file),
        )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    assert report["addresses"] == 1 and report["ports"] == sorted(ports)
    by_port = {f["port"]: f for f in report["found"]}
    # The closed port is not reported; every open one is, once.
    assert sorted(by_port) == sorted([*hdlc_ports, *wrapper_ports, banner, silent])
    meters = {p: f["transport"] for p, f in by_port.items() if f["transport"] != "other"}
    assert meters == {hdlc_ports[0]: "hdlc", hdlc_ports[1]: "hdlc", wrapper_ports[0]: "wrapper"}
    for port in hdlc_ports:
        f = by_port[port]
        assert (f["server_logical"], f["server_physical"]) == (0, 1)
        assert f["public"] is True and f["configured"] is True
    w = by_port[wrapper_ports[0]]
    assert w["server_logical"] == 1 and w["public"] is True and w["configured"] is True
    assert by_port[banner]["transport"] == "other"
    assert by_port[banner]["detail"].startswith("not DLMS: answered")
    assert by_port[silent]["transport"] == "other"
    assert by_port[silent]["detail"].startswith("no answer to SNRM or AARQ")
    # The tables written are a valid config once [bridge], [mqtt] and [defaults] are added.
    tables = out_file.read_text()
    config = parse_config(
        '[bridge]\nname = "x"\ndata_dir = "/tmp/x"\n[mqtt]\nhost = "localhost"\n'
        f'[defaults]\npassword = "{PASSWORD}"\nregisters = "field-meter"\n' + tables
    )
    assert sorted((m.port, m.transport) for m in config.meters) == sorted(meters.items())
    assert PASSWORD not in tables


async def test_wrong_password_shows_as_no(simulator: Any) -> None:
    _sim, ports = await simulator()
    with trio.fail_after(30):
        code, out, _ = await run_cli(
            "127.0.0.1", "--ports", str(ports[0]), "--timeout", "1.5", "--password", "nope"
        )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "address", "port", "transport", "server", "address", "public", "password", "detail",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["127.0.0.1", str(ports[0]), "hdlc", "0/1", "yes", "no"]
    assert lines[-1] == "1 address(es) x 1 port(s): 1 open, 1 meter(s)"


async def test_configured_password_comes_from_the_config(simulator: Any, tmp_path: Path) -> None:
    _sim, ports = await simulator(transport="wrapper")
    config = tmp_path / "b.toml"
    config.write_text(
        '[bridge]\nname = "x"\n[mqtt]\nhost = "localhost"\n'
        f'[[meters]]\nname = "m"\nhost = "10.9.9.9"\nport = 4059\npassword = "{PASSWORD}"\n'
        'registers = "field-meter"\n'
    )
    with trio.fail_after(30):
        code, out, _ = await run_cli(
            "127.0.0.1", "--ports", str(ports[0]), "--timeout", "1.5", "--config", str(config),
            "--json",
        )  # fmt: skip
    assert code == 0
    [found] = json.loads(out)["found"]
    assert found["transport"] == "wrapper" and found["configured"] is True
    assert found["configured_detail"] == "associated"


async def test_scan_does_not_disturb_an_open_association(simulator: Any) -> None:
    sim, ports = await simulator()
    session = MeterSession(
        MeterEndpoint("127.0.0.1", ports[0], password=PASSWORD.encode(), timeout=1.0)
    )
    await session.open()
    try:
        energy = [RegisterSpec("1-1:1.8.0")]
        assert (await session.read_registers(energy))[0].ok
        with trio.fail_after(30):
            code, out, _ = await run_cli(
                "127.0.0.1", "--ports", str(ports[0]), "--timeout", "1.5", "--json"
            )
        assert code == 0 and json.loads(out)["found"][0]["transport"] == "hdlc"
        # Our association is still there, on the same link, with no retransmission needed.
        before = session.stats()
        assert (await session.read_registers(energy))[0].ok
        after = session.stats()
        assert after.get("retransmissions", 0) == before.get("retransmissions", 0)
    finally:
        await session.release()
    assert sim.meter(0).counters.connections >= 3


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness: loopback I/O completes long
    before, so only the scan's own timeouts are skipped over."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_concurrency_bounds_connections_and_timeouts_set_the_pace(
    patient_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    active = peak = accepted = 0

    async def hold(stream: trio.SocketStream) -> None:
        nonlocal active, peak, accepted
        accepted += 1
        active += 1
        peak = max(peak, active)
        try:
            async with stream:
                while await stream.receive_some(1024):
                    pass
        finally:
            active -= 1

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, hold, listeners)
    started = trio.current_time()
    found = await scan(
        ["127.0.0.1"] * 20, [port], host_count=20, concurrency=4, timeout=5.0, credentials=None
    )
    elapsed = trio.current_time() - started
    assert len(found) == 20 and all(f.transport == "other" for f in found)
    # Each target: a connect check, then an HDLC and a wrapper probe that wait out their 5 s.
    assert accepted == 60
    assert peak == 4
    # 20 targets, 4 at a time, 2 silent probes of 5 s each: 5 rounds of 10 s.
    assert 50 <= elapsed < 51
