"""``dlms-bridge health``: the verdict rules, the status socket, and the command against a running
service with simulated meters and a real Mosquitto."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from bridge import cli
from bridge.health import Verdict, evaluate, unreachable
from bridge.status_socket import (
    REQUEST_DEADLINE_S,
    StatusUnavailable,
    query_status,
    serve_status,
)
from tests.bridge.mosquitto import Mosquitto, free_port
from tests.bridge.test_service import bridge_config, running

NOW = 1_800_000_000.0


def _status(**overrides: Any) -> dict[str, Any]:
    """A healthy status document, as the service serves it, at NOW."""
    base: dict[str, Any] = {
        "protocol": 1,
        "name": "box",
        "version": "0.1.0",
        "pid": 42,
        "now": NOW,
        "started_at": NOW - 3600,
        "ready": True,
        "stopping": False,
        "meters": {
            "m0": {"interval_s": 15.0, "last_success_ms": int((NOW - 10) * 1000)},
            "m1": {"interval_s": 60.0, "last_success_ms": int((NOW - 100) * 1000)},
        },
        "mqtt": {"None": {"connected": True, "alarms": [], "last_error": None}},
        "publisher": {"last_delivery_ts": NOW - 5},
        "outbox": {"rows": 2, "bytes": 300, "oldest_ts_ms": int((NOW - 8) * 1000)},
        "alarms": {},
    }
    base.update(overrides)
    return base


def _by_name(status: dict[str, Any], now: float = NOW) -> dict[str, tuple[Verdict, str]]:
    return {c.name: (c.verdict, c.detail) for c in evaluate(status, now).checks}


# -- the rules ---------------------------------------------------------------------------------


def test_healthy_status_is_ok_with_every_check_named() -> None:
    report = evaluate(_status(), NOW)
    assert report.exit_code == 0
    assert [c.name for c in report.checks] == [
        "service", "mqtt", "publish", "outbox", "meter:m0", "meter:m1", "alarms",
    ]  # fmt: skip
    assert report.summary() == "OK: 7 checks passed"
    doc = report.to_json()
    assert doc["status"] == "ok" and doc["exit_code"] == 0 and doc["service"] == "box"
    assert doc["metrics"] == {
        "outbox_rows": 2,
        "meters_ok": 2,
        "meters_stale": 0,
        "mqtt_up": 1,
        "mqtt_down": 0,
        "alarms": 0,
    }


def test_meter_is_fresh_up_to_two_intervals_then_stale() -> None:
    status = _status()
    # m0 polls every 15 s: 30 s is still fresh, 31 s is stale.
    status["meters"]["m0"]["last_success_ms"] = int((NOW - 30) * 1000)
    assert _by_name(status)["meter:m0"][0] is Verdict.OK
    status["meters"]["m0"]["last_success_ms"] = int((NOW - 31) * 1000)
    status["meters"]["m0"]["last_error"] = "cannot connect to 10.0.0.5:4059: Connection refused"
    status["alarms"] = {"meter.m0.failing": "meter m0 failing"}
    verdict, detail = _by_name(status)["meter:m0"]
    assert verdict is Verdict.WARNING
    assert "stale" in detail and "Connection refused" in detail
    report = evaluate(status, NOW)
    assert report.exit_code == 1
    # The meter's own alarm is judged by its check, not repeated under "alarms".
    assert _by_name(status)["alarms"][0] is Verdict.OK


def test_meter_without_reading_is_starting_then_stale() -> None:
    status = _status(started_at=NOW - 20)
    status["meters"]["m0"]["last_success_ms"] = None
    assert _by_name(status)["meter:m0"] == (Verdict.OK, "starting, no reading yet")
    status["started_at"] = NOW - 31
    verdict, detail = _by_name(status)["meter:m0"]
    assert verdict is Verdict.WARNING and detail.startswith("stale: no reading since the start")


def test_broker_down_is_critical_and_names_the_reason() -> None:
    status = _status(
        mqtt={
            "None": {
                "connected": False,
                "alarms": ["mqtt.auth_refused"],
                "last_error": "MQTT broker refused the connection: not authorized",
                "broker": "tb:1883 as 'gw'",
            }
        },
        alarms={"mqtt.auth_refused": "mqtt.auth_refused"},
    )
    report = evaluate(status, NOW)
    assert report.exit_code == 2
    verdict, detail = _by_name(status)["mqtt"]
    assert verdict is Verdict.CRITICAL
    assert "tb:1883" in detail and "not authorized" in detail
    assert report.summary().startswith("CRITICAL: mqtt: 1 of 1 broker connection(s) down")


def test_waiting_readings_warn_after_the_grace_and_overflow_is_critical() -> None:
    # Longest interval 60 s: grace is max(120, 240) = 240 s.
    status = _status(
        publisher={"last_delivery_ts": NOW - 241},
        outbox={"rows": 50, "bytes": 9000, "oldest_ts_ms": int((NOW - 241) * 1000)},
    )
    checks = _by_name(status)
    assert checks["publish"][0] is Verdict.WARNING
    assert checks["outbox"][0] is Verdict.WARNING and "4 min old" in checks["outbox"][1]
    status["publisher"]["last_delivery_ts"] = NOW - 239
    status["outbox"]["oldest_ts_ms"] = int((NOW - 239) * 1000)
    assert evaluate(status, NOW).exit_code == 0
    status["alarms"] = {"outbox.overflow": "outbox.overflow"}
    assert _by_name(status)["outbox"][0] is Verdict.CRITICAL
    assert evaluate(status, NOW).exit_code == 2


def test_other_alarms_warn_and_stopping_warns() -> None:
    status = _status(alarms={"meter.m0.crashed": "the poller of meter m0 crashed 1 time(s)"})
    verdict, detail = _by_name(status)["alarms"]
    assert verdict is Verdict.WARNING and "meter.m0.crashed" in detail
    assert _by_name(_status(stopping=True))["service"][0] is Verdict.WARNING


def test_unreachable_is_critical() -> None:
    report = unreachable("no such file")
    assert report.exit_code == 2
    assert report.to_json()["checks"] == [
        {"name": "service", "status": "critical", "detail": "unreachable: no such file"}
    ]


# -- the socket --------------------------------------------------------------------------------


async def test_status_socket_serves_json_mode_0600_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "status.sock"
    calls = 0

    async def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"name": "box", "calls": calls}

    async with trio.open_nursery() as nursery:
        served = await nursery.start(serve_status, path, status)
        assert served == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        reply = await query_status(path)
        assert reply == {"protocol": 1, "name": "box", "calls": 1}
        assert (await query_status(path))["calls"] == 2
        # An unknown request gets an error, not the status.
        stream = await trio.open_unix_socket(os.fspath(path))
        await stream.send_all(b"shutdown\n")
        answer = json.loads(await stream.receive_some(4096))
        assert answer == {"protocol": 1, "error": "unknown request"}
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert not path.exists()
    with pytest.raises(StatusUnavailable, match="not running"):
        await query_status(path)


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "status.sock"
    path.write_text("left by a crash")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, path, _async_const({"name": "x"}))
        assert (await query_status(path))["name"] == "x"
        nursery.cancel_scope.cancel()


def _async_const(value: dict[str, Any]) -> Callable[[], Any]:
    async def status() -> dict[str, Any]:
        return value

    return status


async def test_silent_and_flooding_clients_are_cut_off(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "status.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, path, _async_const({"name": "x"}))
        silent = await trio.open_unix_socket(os.fspath(path))
        started = trio.current_time()
        # The server gives up on the silent client at its deadline: its stream ends.
        assert await silent.receive_some(100) == b""
        assert trio.current_time() - started == pytest.approx(REQUEST_DEADLINE_S)
        flood = await trio.open_unix_socket(os.fspath(path))
        # Closed with unread bytes: the end of stream or a reset, never a reply.
        with pytest.raises(trio.BrokenResourceError):
            await _send_and_receive(flood, b"x" * 10_000)
        # Neither held up a well-behaved client.
        assert (await query_status(path))["name"] == "x"
        await silent.aclose()
        await flood.aclose()
        nursery.cancel_scope.cancel()


async def _send_and_receive(stream: trio.abc.Stream, data: bytes) -> None:
    await stream.send_all(data)
    if await stream.receive_some(100) == b"":
        raise trio.BrokenResourceError("closed")


async def test_query_of_a_foreign_socket_says_so(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(os.fspath(path))
    listener.listen()

    async def answer_garbage() -> None:
        conn, _ = await listener.accept()
        await conn.recv(100)
        await conn.send(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        conn.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_garbage)
        with pytest.raises(StatusUnavailable, match="not JSON"):
            await query_status(path)
    listener.close()


# -- the command against the running service --------------------------------------------------


async def _health(*argv: str) -> tuple[int, dict[str, Any]]:
    """Run ``dlms-bridge health --json ...`` (its own trio.run, in a thread)."""
    import contextlib
    import io

    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["health", "--json", *argv])

    code = await trio.to_thread.run_sync(call)
    return code, json.loads(out.getvalue())


def _write_config(path: Path, data_dir: Path, broker: Mosquitto, ports: list[int]) -> Path:
    meters = "".join(
        f'[[meters]]\nname = "m{i}"\nhost = "127.0.0.1"\nport = {p}\n' for i, p in enumerate(ports)
    )
    path.write_text(
        f'[bridge]\nname = "box"\ndata_dir = "{data_dir}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        'username = "gateway-token"\npassword = "token-secret"\n'
        '[defaults]\npassword = "00000000"\nregisters = "field-meter"\n'
        "interval_s = 0.5\ntimeout_s = 0.3\n" + meters
    )
    return path


async def _wait_code(expected: int, argv: list[str], timeout: float) -> tuple[int, dict[str, Any]]:
    code, report = -1, {}
    with trio.move_on_after(timeout):
        while True:
            code, report = await _health(*argv)
            if code == expected:
                return code, report
            await trio.sleep(0.2)
    raise AssertionError(f"health stayed at {code}, wanted {expected}: {report}")


async def test_health_goes_critical_when_the_broker_stops_and_back(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any
) -> None:
    with trio.fail_after(60):
        _sim, ports = await simulator(meters=2, seed=1)
        data_dir = tmp_path / "data"
        config_file = _write_config(tmp_path / "bridge.toml", data_dir, mosquitto, list(ports))
        argv = ["--config", str(config_file)]
        # Not running yet: unreachable is critical.
        code, report = await _health(*argv)
        assert code == 2 and report["checks"][0]["name"] == "service"
        assert "unreachable" in report["checks"][0]["detail"]
        config = bridge_config(data_dir, mosquitto, ports)
        async with running(config):
            # --wait asks again until healthy: through the start-up (broker not yet connected,
            # no reading yet), as an ExecStartPost= check would.
            code, report = await _health(*argv, "--wait", "15")
            assert code == 0, report
            assert report["status"] == "ok" and report["service"] == "test"
            names = [c["name"] for c in report["checks"]]
            assert names == [
                "service", "mqtt", "publish", "outbox", "meter:m0", "meter:m1", "alarms",
            ]  # fmt: skip
            mosquitto.stop()
            code, report = await _wait_code(2, argv, 15)
            mqtt = next(c for c in report["checks"] if c["name"] == "mqtt")
            assert mqtt["status"] == "critical"
            # The meters are still read while the broker is away.
            assert all(
                c["status"] == "ok" for c in report["checks"] if c["name"].startswith("meter:")
            )
            mosquitto.start()
            code, report = await _wait_code(0, argv, 30)
        # Stopped: the socket is gone and health says so.
        code, report = await _health(*argv)
        assert code == 2 and "not running" in report["checks"][0]["detail"]


async def test_health_reports_a_stale_meter(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any
) -> None:
    with trio.fail_after(60):
        _sim, ports = await simulator(meters=1, seed=2)
        data_dir = tmp_path / "data"
        closed = free_port()
        config = bridge_config(data_dir, mosquitto, (ports[0], closed), names=["good", "dead"])
        async with running(config) as service:
            argv = ["--socket", str(data_dir / "status.sock")]
            _, report = await _wait_code(1, argv, 15)
            checks = {c["name"]: c for c in report["checks"]}
            assert checks["meter:good"]["status"] == "ok"
            assert checks["meter:dead"]["status"] == "warning"
            assert checks["meter:dead"]["detail"].startswith("stale: no reading since the start")
            assert "Connection refused" in checks["meter:dead"]["detail"]
            assert report["summary"].startswith("WARNING: meter:dead: stale")
            assert service.status_socket == data_dir / "status.sock"


async def test_a_failing_status_is_an_error_reply_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "status.sock"

    async def broken() -> dict[str, Any]:
        raise RuntimeError("bug")

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, path, broken)
        with pytest.raises(StatusUnavailable, match="the status failed"):
            await query_status(path)
        with pytest.raises(StatusUnavailable, match="the status failed"):
            await query_status(path)
        nursery.cancel_scope.cancel()
    assert "event=status_failed" in caplog.text


async def test_a_socket_path_too_long_is_logged_and_the_service_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ("d" * 120) / "status.sock"
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_status, path, _async_const({})) is None
    from bridge.logs import FIELDS_ATTR

    failed = [getattr(r, FIELDS_ATTR, {}) for r in caplog.records]
    assert any(f.get("event") == "status_socket_failed" for f in failed), failed
    assert any("longer than 107 bytes" in str(f.get("error")) for f in failed), failed


def test_malformed_status_is_critical_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket
    import threading

    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b'{"protocol": 1, "meters": {"m": {"interval_s": "x"}}}\n')
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    code = cli.main(["health", "--socket", str(path)])
    thread.join()
    server.close()
    assert code == 2
    assert "a status this program cannot read" in capsys.readouterr().out


def test_json_names_every_documented_metric_even_when_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documented = ["outbox_rows", "meters_ok", "meters_stale", "mqtt_up", "mqtt_down", "alarms"]
    code = cli.main(["health", "--json", "--socket", str(tmp_path / "none.sock")])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and "unreachable" in report["checks"][0]["detail"]
    # The same keys as when the service answers, with no value: nothing is known.
    assert report["metrics"] == dict.fromkeys(documented)
    assert list(evaluate(_status(), NOW).to_json()["metrics"]) == documented
    # The Nagios performance data leaves out what is unknown.
    assert unreachable("x").perfdata() == ""


def test_text_has_colour_only_when_asked() -> None:
    from bridge.commands.health import render

    status = _status()
    status["meters"]["m0"]["last_success_ms"] = int((NOW - 100) * 1000)
    report = evaluate(status, NOW)
    plain = render(report, colour=False)
    assert "\x1b[" not in plain
    lines = plain.splitlines()
    assert lines[0].startswith("WARNING: meter:m0: stale: last reading 100 s ago")
    # Nagios performance data after the bar.
    assert lines[0].endswith(
        " | outbox_rows=2 meters_ok=1 meters_stale=1 mqtt_up=1 mqtt_down=0 alarms=0"
    )
    assert lines[5].split()[:2] == ["WARNING", "meter:m0"]
    coloured = render(report, colour=True)
    assert "\x1b[33mWARNING \x1b[0m meter:m0" in coloured
    assert "\x1b[32mOK      \x1b[0m service" in coloured


async def test_wait_asks_again_until_healthy_or_the_time_is_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    import time

    from bridge.commands.health import _ask

    path = tmp_path / "status.sock"
    start = trio.current_time()
    asked = 0

    async def status() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        now = time.time()
        connected = trio.current_time() - start >= 5  # the broker is back after 5 s
        return _status(
            now=now,
            started_at=now - 60,
            meters={"m0": {"interval_s": 15.0, "last_success_ms": int(now * 1000)}},
            mqtt={"None": {"connected": connected, "alarms": [], "last_error": "refused"}},
            publisher={"last_delivery_ts": now},
            outbox={"rows": 0, "bytes": 0, "oldest_ts_ms": None},
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_status, path, status)
        report = await _ask(path, 1.0, 3.0)
        # Asked at 0, 1, 2 and 3 s, still critical: the last answer is the verdict.
        assert report.exit_code == 2 and asked == 4
        assert trio.current_time() - start == pytest.approx(3.0)
        report = await _ask(path, 1.0, 30.0)
        assert report.exit_code == 0
        assert trio.current_time() - start == pytest.approx(5.0)
        nursery.cancel_scope.cancel()
