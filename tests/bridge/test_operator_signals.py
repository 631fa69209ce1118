"""Signals the operator needs: a broker that withholds PUBACKs, a publisher that cannot keep
up (and which limit to raise), default pacing that keeps up, the reconnect backoff cap.

The withholding broker is a raw-socket MQTT server written here (it accepts the connection and
every PUBLISH, answers pings, and sends PUBACK only when told); the rest runs against a real
Mosquitto and the simulator.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bridge import mqtt as mqtt_module
from bridge.config import PRESETS, config_from_dict
from bridge.mqtt import ALARM_PUBACK_WITHHELD, MqttClient, MqttSettings
from bridge.outbox import AsyncOutbox, OutboxWriter
from bridge.publisher import (
    ALARM_FALLING_BEHIND,
    Publisher,
    PublisherSettings,
    PublishMode,
)
from bridge.readings import Reading
from bridge.service import mqtt_settings, publisher_settings
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Mosquitto
from tests.bridge.test_service import events, running, stored

T0 = 1_700_000_000_000

# -- a broker that never acknowledges --------------------------------------------------------


@attrs.define(eq=False)
class SilentBroker:
    """Accepts MQTT 3.1.1 connections and publishes, answers PINGREQ, withholds PUBACK until
    `release` is called. Counts what it got."""

    port: int = 0
    publishes: list[int] = attrs.Factory(list)  # packet ids of QoS 1 PUBLISH
    released: trio.Event = attrs.Factory(trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._client, listeners)

    async def _client(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        lock = trio.Lock()

        async def send(data: bytes) -> None:
            async with lock:
                await stream.send_all(data)

        async with trio.open_nursery() as nursery:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                buffer += data
                while (packet := _take_packet(buffer)) is not None:
                    kind, body = packet
                    if kind == 0x10:  # CONNECT -> CONNACK accepted
                        await send(b"\x20\x02\x00\x00")
                    elif kind == 0xC0:  # PINGREQ -> PINGRESP
                        await send(b"\xd0\x00")
                    elif kind & 0xF0 == 0x30 and kind & 0x06 == 0x02:  # PUBLISH, QoS 1
                        topic_len = int.from_bytes(body[:2], "big")
                        packet_id = int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")
                        self.publishes.append(packet_id)
                        nursery.start_soon(self._ack_later, send, packet_id)

    async def _ack_later(self, send: Callable[[bytes], Any], packet_id: int) -> None:
        await self.released.wait()
        await send(b"\x40\x02" + packet_id.to_bytes(2, "big"))


def _take_packet(buffer: bytearray) -> tuple[int, bytes] | None:
    """One whole MQTT packet off the front of `buffer` (fixed header, varint length)."""
    length, shift, i = 0, 0, 1
    while True:
        if i >= len(buffer):
            return None
        byte = buffer[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    if len(buffer) < i + length:
        return None
    kind, body = buffer[0], bytes(buffer[i : i + length])
    del buffer[: i + length]
    return kind, body


async def _until(predicate: Callable[[], bool], timeout: float) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
    return trio.current_time() - start


async def test_withheld_pubacks_raise_an_alarm_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    # The client's housekeeping tick (keepalive, PUBACK watch), 1 s, made quicker.
    monkeypatch.setattr(mqtt_module, "_MISC_INTERVAL", 0.2)
    broker = SilentBroker()
    box = await AsyncOutbox.open(tmp_path)
    await box.append([Reading("m1", T0 + i, {"v": i}) for i in range(3)])
    settings = MqttSettings(
        host="127.0.0.1", port=0, client_id="bridge", puback_alarm_s=2.0, backoff_max=1.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        publisher = Publisher(
            box,
            PublisherSettings(mode=PublishMode.GATEWAY, ack_timeout=60.0),
            mqtt=attrs.evolve(settings, port=broker.port),
        )
        await nursery.start(publisher.run)
        await _until(lambda: bool(broker.publishes), 5)
        first = trio.current_time()
        took = await _until(lambda: ALARM_PUBACK_WITHHELD in publisher.alarms, 6)
        raised_after = trio.current_time() - first
        # It stays one alarm and one line while the broker keeps silent: five more checks.
        client = publisher.clients[None]
        checks = 0
        check = client._check_pubacks

        def counted(conn: Any) -> None:
            nonlocal checks
            checks += 1
            check(conn)

        monkeypatch.setattr(client, "_check_pubacks", counted)
        await _until(lambda: checks >= 5, 10)
        message = publisher.alarm_messages()[ALARM_PUBACK_WITHHELD]
        broker.released.set()
        await _until(lambda: ALARM_PUBACK_WITHHELD not in publisher.alarms, 5)
        await _until(lambda: box.depth()[0] == 0, 5)
        nursery.cancel_scope.cancel()
    await box.aclose()
    assert 1.5 <= raised_after <= 3.5, (took, raised_after)
    assert "no PUBACK" in message and "127.0.0.1" in message
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "PUBACK" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert any("acknowledges messages again" in r.getMessage() for r in caplog.records)


# -- a publisher that cannot keep up ---------------------------------------------------------


async def _feed(writer: OutboxWriter, meters: int, per_s: float, seconds: float, pad: int) -> None:
    """`meters` meters each taking `per_s` readings a second for `seconds`."""
    start = trio.current_time()
    tick = 0
    while trio.current_time() - start < seconds:
        for m in range(meters):
            await writer.put(
                Reading(f"m{m}", T0 + tick, {"voltage_l1": 230.1, "pad": "x" * pad, "i": tick})
            )
        tick += 1
        await trio.sleep_until(start + tick / per_s)


async def _publish_while_feeding(
    tmp_path: Path, broker: Mosquitto, settings: PublisherSettings, **feed: Any
) -> tuple[Publisher, AsyncOutbox, dict[str, str]]:
    box = await AsyncOutbox.open(tmp_path / "outbox")
    writer = OutboxWriter(box)
    mqtt = MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id="bridge",
        username=GATEWAY_TOKEN,
        password=TOKEN_PASSWORD,
    )
    publisher = Publisher(box, settings, mqtt=mqtt)
    seen: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await nursery.start(publisher.run)
        await publisher.clients[None].wait_connected()

        async def watch() -> None:
            while True:
                seen.update(publisher.alarm_messages())
                await trio.sleep(0.1)

        nursery.start_soon(watch)
        await _feed(writer, **feed)
        nursery.cancel_scope.cancel()
    return publisher, box, seen


async def test_one_reading_per_message_falls_behind_and_names_the_limit(
    tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    settings = PublisherSettings(
        mode=PublishMode.TOPIC, batch_rows=1, max_messages_per_s=4.0, backlog_alarm_s=2.0
    )
    with trio.fail_after(30):
        _pub, box, seen = await _publish_while_feeding(
            tmp_path, mosquitto, settings, meters=5, per_s=2.0, seconds=5.0, pad=10
        )
    await box.aclose()
    message = seen.get(ALARM_FALLING_BEHIND)
    assert message is not None, seen
    assert "raise publish.max_readings_per_message (now 1)" in message, message
    assert "publish.max_messages_per_s (now 4)" in message
    line = next(r for r in caplog.records if "cannot keep up" in r.getMessage())
    assert line.levelno == logging.WARNING


async def test_bytes_per_second_limit_is_named(tmp_path: Path, mosquitto: Mosquitto) -> None:
    settings = PublisherSettings(
        mode=PublishMode.GATEWAY, max_bytes_per_s=1024, max_payload_bytes=1024,
        backlog_alarm_s=2.0,
    )  # fmt: skip
    with trio.fail_after(30):
        _pub, box, seen = await _publish_while_feeding(
            tmp_path, mosquitto, settings, meters=5, per_s=2.0, seconds=5.0, pad=300
        )
    await box.aclose()
    message = seen.get(ALARM_FALLING_BEHIND)
    assert message is not None, seen
    assert "raise publish.max_bytes_per_s (now 1024)" in message, message


async def test_batched_topic_mode_keeps_up_where_one_per_message_cannot(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The same load as above with the default readings per message: no alarm, no backlog.
    settings = PublisherSettings(
        mode=PublishMode.TOPIC, max_messages_per_s=4.0, backlog_alarm_s=3.0
    )
    with trio.fail_after(30):
        publisher, box, seen = await _publish_while_feeding(
            tmp_path, mosquitto, settings, meters=5, per_s=2.0, seconds=9.0, pad=10
        )
    rows = box.depth()[0]
    await box.aclose()
    assert ALARM_FALLING_BEHIND not in seen, seen
    assert rows <= 2 * 5 * 2, rows  # at most about two intervals of readings waiting
    assert publisher.stats.published_readings > publisher.stats.published_messages


# -- the defaults keep up: topic mode, 5 meters at 1 s, 4 messages/s -------------------------


async def test_default_pacing_keeps_up_in_topic_mode_with_five_meters_at_1_s(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    _sim, ports = await simulator(meters=5, seed=2)
    sub = collector(["meters/#"])
    document = {
        "bridge": {"name": "t", "data_dir": str(tmp_path / "data")},
        "mqtt": {
            "host": mosquitto.host,
            "port": mosquitto.port,
            "username": GATEWAY_TOKEN,
            "password": TOKEN_PASSWORD,
        },
        # Every pacing key at its default; only the alarm window is shortened for the test.
        "publish": {"mode": "topic", "topic": "meters/{meter}/telemetry", "backlog_alarm_s": 5},
        "defaults": {
            "password": "00000000",
            "registers": "field-meter",
            "interval_s": 1.0,
            "timeout_s": 0.5,
        },
        "meters": [
            {"name": f"m{i}", "host": "127.0.0.1", "port": port} for i, port in enumerate(ports)
        ],
    }
    config = config_from_dict(document)
    settings = publisher_settings(config)
    assert settings.max_messages_per_s == 4.0 and settings.batch_rows > 1
    assert mqtt_settings(config).backoff_max == 30.0
    with trio.fail_after(60):
        async with running(config) as service:
            # 13 rounds of the five meters: more than two alarm windows.
            await _until(lambda: _rounds(caplog) >= 13, 30)
            snapshot = service.snapshot()
            rows_at_end = snapshot["outbox"]["rows"]
        await _until(lambda: _topic_readings(sub) >= _stored_count(caplog), 10)
    assert ALARM_FALLING_BEHIND not in snapshot["alarms"], snapshot["alarms"]
    assert rows_at_end <= 2 * 5, rows_at_end  # no more than about two rounds waiting
    taken = stored(caplog)
    assert all(len(v) >= 13 for v in taken.values()), taken
    for message in sub.messages:
        if message.topic.endswith("/telemetry"):
            body = json.loads(message.payload)
            assert isinstance(body, list) and all(set(e) == {"ts", "values"} for e in body)
            assert all(set(e["values"]) == {r.key for r in PRESETS["field-meter"]} for e in body)
    assert not events(caplog, "poller_crashed")


def _topic_readings(sub: Collector) -> int:
    return sum(len(json.loads(m.payload)) for m in sub.messages if m.topic.endswith("/telemetry"))


def _rounds(caplog: pytest.LogCaptureFixture) -> int:
    """Readings taken by the meter that took the fewest (0 until each took one)."""
    taken = stored(caplog)
    return min((len(v) for v in taken.values()), default=0) if len(taken) == 5 else 0


def _stored_count(caplog: pytest.LogCaptureFixture) -> int:
    return sum(len(v) for v in stored(caplog).values())


# -- reconnect backoff ------------------------------------------------------------------------


def test_reconnect_backoff_is_capped_at_30_s_by_default_and_configurable() -> None:
    client = MqttClient(MqttSettings(host="127.0.0.1", client_id="x"))
    delays = [client._backoff() for _ in range(40)]
    assert max(delays) <= 30.0 and max(delays[10:]) >= 15.0
    base = {
        "bridge": {"name": "t", "data_dir": "/tmp/x"},
        "mqtt": {"host": "h"},
        "defaults": {"registers": "field-meter", "port": 1},
        "meters": [{"name": "m", "host": "h"}],
    }
    assert mqtt_settings(config_from_dict(base)).backoff_max == 30.0
    base["mqtt"] = {"host": "h", "reconnect_max_s": 5}
    assert mqtt_settings(config_from_dict(base)).backoff_max == 5.0


# -- the growth test itself, on made-up samples ------------------------------------------------


def _samples(rows: list[int], per_s: float = 10.0) -> list[Any]:
    from bridge.publisher import _Sample

    waited = {"messages": 0.0, "bytes": 0.0, "datapoints": 0.0}
    return [
        _Sample(at=i * 0.5, rows=r, readings=int(i * 0.5 * per_s), messages=i, nbytes=0,
                waited=waited)
        for i, r in enumerate(rows)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "growing"),
    [
        (list(range(0, 40, 2)), True),  # steady growth
        ([5, 12, 3, 11, 4, 12, 5, 11, 3, 12, 4, 11, 5, 12, 3, 11, 4, 12, 5, 11], False),  # sawtooth
        ([0, 3, 6, 8, 10, 11, 12, 12, 12, 12, 11, 12, 12, 12, 12, 11, 12, 12, 12, 12], False),
        ([40 - 2 * i for i in range(20)], False),  # a backlog draining
        ([0] * 20, False),
        ([i // 10 for i in range(20)], False),  # one reading more: not worth an alarm
    ],
)
def test_growth_needs_a_sustained_rise(rows: list[int], growing: bool) -> None:
    from bridge.publisher import _growing

    assert _growing(_samples(rows)) is growing
