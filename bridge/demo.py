"""The embedded default: simulated meters, a local MQTT broker and the bridge, with a live view.

``dlms-bridge demo`` starts

- a local broker: Mosquitto when it is installed, otherwise amqtt (a pure-Python broker installed
  with dlms-bridge), as a child process on 127.0.0.1;
- the meter simulator in this process (the field meter's model, one meter with faults);
- the bridge service with a generated config (saved next to its data so it can be reused);
- an MQTT subscriber that counts what the broker received, for the live view.

Everything runs until Ctrl-C (or ``--duration``), then stops cleanly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from bridge.config import BridgeConfig, config_from_dict
from bridge.mqtt import MqttClient, MqttSettings
from bridge.service import BridgeService
from bridge.simulator.server import Simulator, SimulatorConfig, SimulatorError, SimulatorPorts

__all__ = ["DEFAULT_FAULTS", "Broker", "DemoOptions", "run_demo"]

log = logging.getLogger("bridge.demo")

GATEWAY_TOKEN = "demo-gateway-token"
#: One meter of the demo shows the stream faults the old system could not survive.
DEFAULT_FAULTS = "2:garbage=0.3,fcs=0.1,chunks"
#: What the demo shows for each meter, by telemetry key.
COLUMNS = (
    ("voltage_l1", "V", 1),
    ("current_l1", "A", 3),
    ("frequency", "Hz", 2),
    ("active_power", "W", 1),
    ("active_energy", "Wh", 0),
)


@attrs.frozen
class DemoOptions:
    """What ``dlms-bridge demo`` was asked for."""

    meters: int = 5
    interval_s: float = 2.0
    faults: str = DEFAULT_FAULTS
    duration_s: float | None = None
    data_dir: Path | None = None
    broker: str = "auto"
    mqtt_port: int | None = None
    sim_port: int = 4061
    live: bool = True
    seed: int = 1
    #: The console's port (None: 8080 when free, else any).
    web_port: int | None = None


def _free_port(preferred: int | None) -> int:
    if preferred:
        return preferred
    for candidate in (1883, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def _console_port() -> int:
    """8080 when it is free, else 0 (any free port)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8080))
        except OSError:
            return 0
    return 8080


def find_mosquitto() -> str | None:
    """The Mosquitto binary, if installed."""
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    return shutil.which("mosquitto")


class Broker:
    """A throw-away local broker in a child process (Mosquitto, else amqtt)."""

    def __init__(self, directory: Path, port: int, kind: str = "auto") -> None:
        self.directory = directory
        self.port = port
        mosquitto = find_mosquitto()
        if kind == "auto":
            kind = "mosquitto" if mosquitto else "amqtt"
        if kind == "mosquitto" and mosquitto is None:
            raise RuntimeError("--broker mosquitto: Mosquitto is not installed")
        self.kind = kind
        self._binary = mosquitto
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / f"{kind}.log"

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "mosquitto":
            conf = self.directory / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            )
            command = [str(self._binary), "-c", str(conf)]
        else:
            conf = self.directory / "amqtt.yaml"
            conf.write_text(
                "listeners:\n  default:\n    type: tcp\n"
                f"    bind: 127.0.0.1:{self.port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                "    allow_anonymous: true\n"
            )
            command = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the {self.kind} broker exited at start; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the {self.kind} broker did not open port {self.port} in 15 s")

    def stop(self) -> None:
        """Stop the broker."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def demo_config(
    ports: SimulatorPorts, options: DemoOptions, data_dir: Path, mqtt_port: int
) -> dict[str, Any]:
    """The bridge config of the demo, as the dict a TOML file would give."""
    web_port = _console_port() if options.web_port is None else options.web_port
    return {
        "bridge": {"name": "demo", "data_dir": str(data_dir), "summary_interval_s": 60},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "token": GATEWAY_TOKEN},
        "publish": {"mode": "gateway"},
        "web": {"listen": f"127.0.0.1:{web_port}"},
        "defaults": {
            "transport": "hdlc",
            "password": "00000000",
            "registers": "field-meter",
            "interval_s": options.interval_s,
            "timeout_s": min(2.0, options.interval_s / 2),
        },
        "meters": [
            {"name": f"meter-{i + 1:02d}", "host": ports.host, "port": port}
            for i, port in enumerate(ports.meters)
        ],
    }


def _toml(document: dict[str, Any]) -> str:
    """A small TOML writer for the demo config (strings, numbers, tables, array of tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v))

    lines = []
    for section, body in document.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"\n[[{section}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
        else:
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {value(v)}" for k, v in body.items()]
    return "\n".join(lines).lstrip() + "\n"


@attrs.define(eq=False)
class _Delivered:
    """What the broker passed on to our subscriber, per meter."""

    readings: dict[str, int] = attrs.Factory(lambda: defaultdict(int))
    last: dict[str, dict[str, Any]] = attrs.Factory(dict)
    messages: int = 0

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic != "v1/gateway/telemetry":
            return
        self.messages += 1
        try:
            body = json.loads(payload)
        except ValueError:
            return
        for meter, entries in body.items():
            self.readings[meter] += len(entries)
            if entries:
                self.last[meter] = entries[-1].get("values", {})


def _render(service: BridgeService, delivered: _Delivered, started: float) -> list[str]:
    snap = service.snapshot()
    head = (
        f"dlms-bridge demo - {len(snap['meters'])} meters, up {time.monotonic() - started:5.0f} s, "
        f"outbox {snap['outbox'].get('rows', 0)} rows, delivered {sum(delivered.readings.values())}"
        f" readings in {delivered.messages} MQTT messages"
    )
    title = f"{'meter':<9} {'state':<11} {'read':>5} {'sent':>5} {'recov':>5}"
    title += "".join(f" {unit:>10}" for _, unit, _ in COLUMNS)
    lines = [head, "", title]
    for name, m in snap["meters"].items():
        values = delivered.last.get(name, {})
        recov = m.get("recovered_in_place", 0) + m.get("reassociations", 0) + m.get("reconnects", 0)
        row = (
            f"{name:<9} {m.get('state', '?'):<11} {m.get('readings', 0):>5} "
            f"{delivered.readings.get(name, 0):>5} {recov:>5}"
        )
        for key, _, digits in COLUMNS:
            v = values.get(key)
            row += f" {v:>10.{digits}f}" if isinstance(v, (int, float)) else f" {'-':>10}"
        lines.append(row)
    alarms = snap["alarms"]
    lines.append("")
    lines.append(f"alarms: {', '.join(sorted(alarms)) if alarms else 'none'}")
    return lines


async def _live_view(
    service: BridgeService, delivered: _Delivered, out: TextIO, live: bool
) -> None:
    started = time.monotonic()
    drawn = 0
    while True:
        lines = _render(service, delivered, started)
        if live:
            if drawn:
                out.write(f"\x1b[{drawn}F")
            out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            drawn = len(lines)
            out.flush()
            await trio.sleep(1)
        else:
            out.write(lines[0] + "\n")
            out.flush()
            await trio.sleep(5)


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the demo until cancelled or ``options.duration_s``; returns a summary."""
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="dlms-bridge-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    mqtt_port = _free_port(options.mqtt_port)
    broker = Broker(data_dir / "broker", mqtt_port, options.broker)
    await trio.to_thread.run_sync(broker.start)
    delivered = _Delivered()
    summary: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            simulator = Simulator(
                SimulatorConfig(
                    meters=options.meters,
                    port=options.sim_port,
                    faults=options.faults,
                    seed=options.seed,
                )
            )
            try:
                ports: SimulatorPorts = await nursery.start(simulator.serve)
            except SimulatorError:
                if not options.sim_port:
                    raise
                # The usual ports are taken (another simulator?): use any free ones.
                simulator = Simulator(attrs.evolve(simulator.config, port=0))
                ports = await nursery.start(simulator.serve)
            document = demo_config(ports, options, data_dir / "bridge", mqtt_port)
            config_path = data_dir / "bridge.toml"
            config_path.write_text(_toml(document))
            config: BridgeConfig = config_from_dict(document, source=str(config_path))
            service = BridgeService(
                config, config_path=config_path, handle_signals=False, console=True
            )
            service_done = trio.Event()

            async def run_service() -> None:
                try:
                    await service.run()
                finally:
                    service_done.set()

            nursery.start_soon(run_service)
            await service.wait_ready()
            watcher = MqttClient(
                MqttSettings(host="127.0.0.1", port=mqtt_port, client_id="dlms-bridge-demo-view"),
                on_message=delivered.on_message,
            )
            await nursery.start(watcher.run)
            watcher.subscribe("v1/gateway/#")
            console_url = "(the console did not start; see the alarms)"
            if service.console is not None:
                with trio.move_on_after(10):
                    await service.console.listening.wait()
                    console_url = (
                        f"{service.console.url}/  (admin token in {service.console.token_path})"
                    )
            first = ports.meters[0]
            contiguous = list(ports.meters) == list(range(first, first + len(ports.meters)))
            where = (
                f"{ports.host}:{first}..{ports.meters[-1]}"
                if contiguous
                else f"{ports.host} ports {', '.join(map(str, ports.meters))}"
            )
            out.write(
                f"Simulated meters: {where} (HDLC, password "
                f"00000000; faults: {options.faults or 'none'})\n"
                f"MQTT broker ({broker.kind}): 127.0.0.1:{mqtt_port} - watch it with\n"
                f"    mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'v1/gateway/#' -v\n"
                f"Read a meter yourself:\n"
                f"    dlms-bridge read --host {ports.host} --port {first} --password 00000000 "
                f"1-1:32.7.0 1-1:1.8.0\n"
                f"Bridge config: {config_path}  (dlms-bridge run --config {config_path})\n"
                f"Bridge data:   {data_dir / 'bridge'}\n"
                f"Console:       {console_url}\n"
                f"Stop with Ctrl-C.\n\n"
            )
            out.flush()
            nursery.start_soon(_live_view, service, delivered, out, options.live)
            try:
                with (
                    trio.move_on_after(
                        options.duration_s if options.duration_s is not None else math.inf
                    ),
                    trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
                ):
                    async for _ in signals:
                        out.write("\nstopping: releasing the meters, flushing to the broker...\n")
                        out.flush()
                        break
            finally:
                with trio.CancelScope(shield=True):
                    service.stop()
                    with trio.move_on_after(30):
                        await service_done.wait()
                    # Let the last flushed messages reach the view's subscriber.
                    await trio.sleep(0.5)
                    snap = service.snapshot()
                    summary = {
                        "meters": len(snap["meters"]),
                        "readings_taken": sum(
                            m.get("readings", 0) for m in snap["meters"].values()
                        ),
                        "readings_delivered": sum(delivered.readings.values()),
                        "mqtt_messages": delivered.messages,
                        "outbox_rows": snap["outbox"].get("rows"),
                        "broker": broker.kind,
                        "console": service.console.url if service.console else None,
                        "data_dir": str(data_dir),
                    }
                    await watcher.disconnect()
                nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(broker.stop)
    return summary
