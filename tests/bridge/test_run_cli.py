"""``dlms-bridge run`` as a real process: signals, reload, kill -9, the instance lock, bad
configs and systemd notifications, against the simulator and a real Mosquitto broker.

Ground truth of what the bridge took is its ``event=reading_stored`` DEBUG lines on stdout,
each written after the reading's durable commit.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bridge.outbox import Outbox
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.delivery import check_order, merge, missing, received
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Mosquitto

REPO = Path(__file__).resolve().parents[2]

# -- config files ------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(
    path: Path,
    broker: Mosquitto,
    meters: dict[str, int],
    *,
    data_dir: Path,
    bridge: dict[str, Any] | None = None,
    publish: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    meter_extra: dict[str, dict[str, Any]] | None = None,
    web: dict[str, Any] | None = None,
    alarms: dict[str, Any] | None = None,
) -> Path:
    """Write a gateway-mode config: ``meters`` maps names to simulator ports.

    The console listens on a free port (``[web] listen = "127.0.0.1:0"``) unless ``web`` says
    otherwise, so that test bridges never compete for the default port."""
    sections: dict[str, dict[str, Any]] = {
        "bridge": {"name": "cli-test", "data_dir": str(data_dir), "log_level": "debug"},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "username": GATEWAY_TOKEN,
            "password": TOKEN_PASSWORD,
        },
        "publish": publish or {},
        "web": {"listen": "127.0.0.1:0", **(web or {})},
        "alarms": alarms or {},
        "defaults": {
            "password": "00000000",
            "registers": "field-meter",
            "interval_s": 0.3,
            "timeout_s": 0.25,
            **(defaults or {}),
        },
    }
    sections["bridge"].update(bridge or {})
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    for name, port in meters.items():
        lines += ["[[meters]]", f"name = {_toml_value(name)}", 'host = "127.0.0.1"']
        lines.append(f"port = {port}")
        for k, v in (meter_extra or {}).get(name, {}).items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


# -- the process -------------------------------------------------------------------------------

_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
_LINE = re.compile(r"^(?:<(\d)>)?(\S+)(.*)$")
_FIELD = re.compile(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_line(line: str) -> dict[str, Any]:
    """A logfmt line as the journal gets it: ``<N>logger key=value ...``."""
    match = _LINE.match(line)
    if match is None:
        return {}
    priority, logger, rest = match.groups()
    out: dict[str, Any] = {"_priority": int(priority) if priority else None, "_logger": logger}
    for key, raw in _FIELD.findall(rest):
        out[key] = json.loads(raw) if raw.startswith('"') else raw
    return out


@attrs.define(eq=False)
class BridgeProcess:
    """``python -m bridge.cli run --config FILE`` with its output collected line by line."""

    config: Path
    env: dict[str, str] = attrs.Factory(dict)
    stdout: list[str] = attrs.Factory(list)
    stderr: list[str] = attrs.Factory(list)
    proc: trio.Process | None = None
    changed: trio.Event = attrs.Factory(trio.Event)
    closed: trio.Event = attrs.Factory(trio.Event)

    async def start(self, nursery: trio.Nursery) -> BridgeProcess:
        # Not under the test runner's systemd, if any: only what the test gives.
        inherited = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
        env = {**inherited, "PYTHONPATH": str(REPO), **self.env}
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(REPO),
            env=env,
        )
        nursery.start_soon(self._pump, self.proc.stdout, self.stdout)
        nursery.start_soon(self._pump, self.proc.stderr, self.stderr)
        return self

    async def _pump(self, stream: Any, lines: list[str]) -> None:
        buffer = b""
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                buffer += data
                *complete, buffer = buffer.split(b"\n")
                lines.extend(c.decode("utf-8", "replace") for c in complete)
                self.changed.set()
                self.changed = trio.Event()
        if buffer:
            lines.append(buffer.decode("utf-8", "replace"))
        self.closed.set()
        self.changed.set()

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        out = []
        for line in self.stdout:
            f = parse_line(line)
            if event is not None and f.get("event") != event:
                continue
            if all(str(f.get(k)) == str(v) for k, v in match.items()):
                out.append(f)
        return out

    def stored(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for f in self.events("reading_stored"):
            out.setdefault(f["meter"], []).append(int(f["ts"]))
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                if self.proc is not None and self.proc.poll() is not None and self.closed.is_set():
                    break
                await trio.sleep(0.02)
            if predicate():
                return
        tail = "\n".join([*self.stdout[-30:], "-- stderr --", *self.stderr[-30:]])
        raise AssertionError(f"bridge: no {what} within {timeout} s\n{tail}")

    async def wait_event(self, event: str, timeout: float = 15, **match: Any) -> dict[str, Any]:
        await self.wait_for(lambda: bool(self.events(event, **match)), timeout, f"event={event}")
        return self.events(event, **match)[0]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            code = await self.proc.wait()
            await self.closed.wait()
        return code


@pytest.fixture
async def bridge_process(nursery: trio.Nursery) -> Any:
    """Factory of bridge processes; any still running at the end is killed."""
    started: list[BridgeProcess] = []

    async def start(config: Path, env: dict[str, str] | None = None) -> BridgeProcess:
        process = await BridgeProcess(config, env or {}).start(nursery)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            with trio.move_on_after(5):
                await process.proc.wait()


# -- tests -------------------------------------------------------------------------------------


async def test_bad_config_exits_2_naming_every_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[bridge]\nname = "x"\ndata_dir = "data"\n[mqtt]\nhost = "127.0.0.1"\n'
        '[defaults]\nregisters = "field-meter"\n'
        '[[meters]]\nname = "a"\nhost = "h"\nport = 4061\ninterval_s = -1\n'
        '[[meters]]\nname = "b"\nhost = "h"\nport = "abc"\n'
        '[[meters]]\nname = "c"\nhost = "h"\nport = 70000\n'
        '[[meters]]\nname = "d"\nhost = "h"\nport = 4062\nintervall = 3\n'
    )
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(path)],
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert str(path) in err
    for where in (
        "meters[0].interval_s",
        "meters[1].port",
        "meters[2].port",
        "meters[3].intervall",
    ):
        assert where in err, err
    assert "did you mean 'interval_s'" in err
    assert not (tmp_path / "data").exists(), "a refused config must not touch the data dir"

    path.write_text('[bridge]\nname = "x"\n[mqtt\nhost = "h"\n')
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(path)],
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert "line 3" in result.stderr.decode(), result.stderr

    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(tmp_path / "nope.toml")],
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert "nope.toml" in result.stderr.decode()


async def test_unusable_data_dir_exits_1_with_a_clear_message(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(
        tmp_path / "bridge.toml", mosquitto, {"m0": 4061}, data_dir=blocker / "data"
    )
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "bridge.cli", "run", "--config", str(config)],
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert f"cannot use the data directory {blocker / 'data'}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_shuts_down_cleanly_releasing_associations(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    bridge_process: Any,
    signum: int,
) -> None:
    with trio.fail_after(60):
        sim, ports = await simulator(meters=2)
        sub = collector(["v1/gateway/telemetry"])
        config = write_config(
            tmp_path / "bridge.toml", mosquitto, {"m0": ports[0], "m1": ports[1]},
            data_dir=tmp_path / "data",
        )  # fmt: skip
        bridge = await bridge_process(config)
        await bridge.wait_event("running")
        await bridge.wait_for(lambda: len(bridge.events("reading_stored")) >= 6, 10, "readings")
        bridge.signal(signum)
        code = await bridge.wait_exit()
        assert code == 0, bridge.stderr
        assert bridge.stderr == []
        # The final lines: why it stops, that the outbox was flushed, and the last word.
        service = [f for f in map(parse_line, bridge.stdout) if f.get("_logger") == "service"]
        assert [f["event"] for f in service[-4:]] == ["signal", "stopping", "flushed", "stopped"]
        assert service[-4]["signal"] == signal.Signals(signum).name
        assert service[-2]["outbox_rows"] == "0"
        assert parse_line(bridge.stdout[-1]).get("event") == "stopped"
        # Every association was released (RLRQ answered) before the process exited.
        for i in range(2):
            counters = sim.meter(i).counters
            assert counters.releases == counters.associations == 1, counters
        # The flush at shutdown delivered everything taken.
        taken = bridge.stored()
        await sub.wait_for(lambda _m: not missing(taken, received(sub)), timeout=5)


async def test_second_bridge_on_the_same_data_dir_is_refused(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any, bridge_process: Any
) -> None:
    with trio.fail_after(60):
        _sim, ports = await simulator(meters=1)
        config = write_config(
            tmp_path / "bridge.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "data"
        )
        first = await bridge_process(config)
        await first.wait_event("running")
        second = await bridge_process(config)
        code = await second.wait_exit()
        assert code == 3
        message = "\n".join(second.stderr)
        assert f"pid {first.proc.pid}" in message, message
        assert "already using" in message and str(tmp_path / "data") in message
        assert second.events("reading_stored") == []
        # The first one was not disturbed.
        before = len(first.events("reading_stored"))
        await first.wait_for(
            lambda: len(first.events("reading_stored")) >= before + 3, 5, "more readings"
        )
        first.signal(signal.SIGTERM)
        assert await first.wait_exit() == 0


async def test_kill_9_in_the_middle_of_a_backlog_flush_loses_nothing(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    bridge_process: Any,
) -> None:
    with trio.fail_after(90):
        _sim, ports = await simulator(meters=3, seed=9)
        sub = collector(["v1/gateway/telemetry"])
        meters = {f"m{i}": p for i, p in enumerate(ports)}
        data_dir = tmp_path / "data"
        # 15 readings/s are taken; 2 messages of 2 readings per second are delivered.
        slow = write_config(
            tmp_path / "slow.toml", mosquitto, meters, data_dir=data_dir,
            defaults={"interval_s": 0.2, "timeout_s": 0.15},
            publish={"max_messages_per_s": 2, "max_readings_per_message": 2},
        )  # fmt: skip
        first = await bridge_process(slow)
        await first.wait_event("running")
        await sub.wait_for(lambda _m: sum(map(len, received(sub).values())) >= 12, timeout=20)
        # A backlog builds up (taken faster than delivered) before the kill.
        await first.wait_for(
            lambda: (
                sum(map(len, first.stored().values())) - sum(map(len, received(sub).values())) >= 40
            ),
            20,
            "a backlog of 40 readings",
        )
        first.proc.kill()  # SIGKILL: no shutdown, no flush, in the middle of a delivery
        assert await first.wait_exit() == -signal.SIGKILL
        taken_first = first.stored()
        delivered_at_kill = sum(map(len, received(sub).values()))
        with Outbox(data_dir) as outbox:
            backlog = outbox.depth()[0]
        assert backlog >= 30, backlog

        fast = write_config(
            tmp_path / "fast.toml", mosquitto, meters, data_dir=data_dir,
            defaults={"interval_s": 0.2, "timeout_s": 0.15},
        )  # fmt: skip
        second = await bridge_process(fast)
        await second.wait_event("running")
        assert second.events("starting")[0]["outbox_rows"] == str(backlog)
        # Everything taken so far (new readings keep coming) reaches the broker.
        so_far = merge(taken_first, second.stored())
        await sub.wait_for(lambda _m: not missing(so_far, received(sub)), timeout=30)
        second.signal(signal.SIGTERM)
        assert await second.wait_exit() == 0
        taken = merge(taken_first, second.stored())
        await sub.wait_for(lambda _m: not missing(taken, received(sub)), timeout=10)
    got = received(sub)
    duplicates = check_order(got)
    total = sum(len(v) for v in taken.values())
    print(
        f"\nkill -9: {sum(map(len, taken_first.values()))} taken by the first process, "
        f"{delivered_at_kill} delivered before the kill, backlog {backlog}; {total} taken in "
        f"all, {sum(len(v) for v in got.values())} delivered ({duplicates} duplicates), lost 0"
    )


async def test_sighup_reloads_meters_and_refuses_a_broken_config(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    bridge_process: Any,
) -> None:
    with trio.fail_after(150):
        sim, ports = await simulator(meters=3)
        sub = collector(["v1/gateway/#"])
        path = tmp_path / "bridge.toml"
        data_dir = tmp_path / "data"
        # A deadline no loaded machine misses: m0 must never need a new connection.
        timing = {"interval_s": 0.3, "timeout_s": 0.29}
        write_config(
            path, mosquitto, {"m0": ports[0], "m1": ports[1]}, data_dir=data_dir, defaults=timing
        )
        bridge = await bridge_process(path)
        await bridge.wait_event("running")
        await bridge.wait_for(lambda: len(bridge.stored().get("m1", [])) >= 3, 30, "readings of m1")
        write_config(
            path, mosquitto, {"m0": ports[0], "m2": ports[2]}, data_dir=data_dir, defaults=timing
        )
        bridge.signal(signal.SIGHUP)
        reloaded = await bridge.wait_event("reloaded", timeout=30)
        m0_before = len(bridge.stored()["m0"])
        assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == ("1", "1", "0")
        index = len(bridge.stdout)
        await bridge.wait_for(lambda: len(bridge.stored().get("m2", [])) >= 4, 30, "m2 readings")
        after = [parse_line(line) for line in bridge.stdout[index:]]
        assert not [f for f in after if f.get("event") == "reading_stored" and f["meter"] == "m1"]
        # The removed meter's association was released; ThingsBoard is told it is gone.
        assert sim.meter(1).counters.releases == 1
        await sub.wait_for(
            lambda ms: any(
                m.topic == "v1/gateway/disconnect" and json.loads(m.payload) == {"device": "m1"}
                for m in ms
            ),
            timeout=30,
        )
        await sub.wait_for(lambda _m: "m2" in received(sub), timeout=30)
        # Announced too, at low priority (after its telemetry).
        await sub.wait_for(
            lambda ms: any(
                m.topic == "v1/gateway/connect" and json.loads(m.payload) == {"device": "m2"}
                for m in ms
            ),
            timeout=30,
        )

        # A broken config: refused with its errors, and the service goes on as it was.
        path.write_text(path.read_text().replace(f"port = {ports[2]}", "port = 0"))
        bridge.signal(signal.SIGHUP)
        refused = await bridge.wait_event("reload_refused")
        assert "meters[1].port" in refused["error"], refused
        assert int(refused["_priority"]) == 3  # an error in the journal
        count = {m: len(ts) for m, ts in bridge.stored().items()}
        await bridge.wait_for(
            lambda: all(len(bridge.stored()[m]) >= count[m] + 3 for m in ("m0", "m2")),
            30,
            "readings after the refused reload",
        )
        assert len(bridge.events("reloaded")) == 1
        bridge.signal(signal.SIGTERM)
        assert await bridge.wait_exit() == 0
    # m0 ran through both reloads untouched: one connection, one association, read all along.
    assert 0 < m0_before < len(bridge.stored()["m0"])
    assert sim.meter(0).counters.connections == 1
    assert sim.meter(0).counters.associations == 1
    # Nothing taken was lost across the reloads and the stop, each meter's readings in order.
    await sub.wait_for(lambda _m: not missing(bridge.stored(), received(sub)), timeout=30)
    check_order(received(sub))


async def test_systemd_ready_watchdog_and_stopping(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any, bridge_process: Any
) -> None:
    notify_path = tmp_path / "notify"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(str(notify_path))
    received_at: list[tuple[float, str]] = []

    async def listen() -> None:
        while True:
            data = await sock.recv(4096)
            received_at.append((trio.current_time(), data.decode()))

    def with_line(line: str) -> list[float]:
        return [t for t, text in received_at if line in text.splitlines()]

    with sock, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            _sim, ports = await simulator(meters=1)
            config = write_config(
                tmp_path / "bridge.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "d"
            )
            bridge = await bridge_process(
                config, {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
            )
            await bridge.wait_event("running")
            with trio.move_on_after(30):
                while not with_line("READY=1"):
                    await trio.sleep(0.01)
            ready = with_line("READY=1")
            assert len(ready) == 1, received_at
            with trio.move_on_after(30):
                while len([t for t in with_line("WATCHDOG=1") if t >= ready[0]]) < 10:
                    await trio.sleep(0.05)
            pings = [t for t in with_line("WATCHDOG=1") if t >= ready[0]]
            assert len(pings) >= 10, received_at
            # Every 0.2 s (half of WATCHDOG_USEC) on average: well within the watchdog, and
            # no flood. (The mean over ten pings; a loaded machine may delay single ones.)
            mean_gap = (pings[-1] - pings[0]) / (len(pings) - 1)
            assert 0.15 <= mean_gap < 0.4, [b - a for a, b in itertools.pairwise(pings)]
            bridge.signal(signal.SIGTERM)
            assert await bridge.wait_exit() == 0
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert len(with_line("READY=1")) == 1
    stopping = with_line("STOPPING=1")
    assert len(stopping) == 1 and stopping[0] > ready[0]
    ready_text = next(text for _, text in received_at if "READY=1" in text.splitlines())
    assert "STATUS=" in ready_text, ready_text
