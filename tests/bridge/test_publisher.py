"""Publisher: payload formats, pacing, and delivery through outages against a real Mosquitto."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mqtt import MqttSettings
from bridge.outbox import AsyncOutbox, OutboxRow, OutboxWriter
from bridge.publisher import (
    ANNOUNCE_BURST,
    Pacer,
    PayloadShape,
    Publisher,
    PublisherSettings,
    PublishMode,
    device_telemetry,
    gateway_telemetry,
    topic_batch,
    topic_message,
)
from bridge.readings import Reading
from tests.bridge.conftest import GATEWAY_TOKEN, METER_TOKENS
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Message, Mosquitto

T0 = 1_700_000_000_000


def mqtt_for(
    broker: Mosquitto, username: str = GATEWAY_TOKEN, client_id: str = "bridge"
) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        client_id=client_id,
        username=username,
        password=TOKEN_PASSWORD,
        backoff_initial=0.05,
        backoff_max=0.3,
        connect_timeout=2.0,
    )


def fast(**overrides: object) -> PublisherSettings:
    values: dict[str, object] = {"max_messages_per_s": 1000.0, "max_bytes_per_s": 10e6}
    values.update(overrides)
    return PublisherSettings(**values)  # type: ignore[arg-type]


async def counted(publisher: Publisher, readings: int) -> None:
    """Until the publisher's statistics count ``readings`` delivered: the outbox may be seen
    empty (its counters follow the deleting thread) a moment before they do."""
    with trio.fail_after(10):
        while publisher.stats.published_readings < readings:
            await trio.sleep(0.01)


def row(i: int, reading: Reading) -> OutboxRow:
    return OutboxRow(id=i, reading=reading, size=len(reading.to_json()))


def telemetry_readings(messages: list[Message]) -> dict[str, list[int]]:
    """meter -> ts values in the order they arrived, over all gateway telemetry messages."""
    out: dict[str, list[int]] = {}
    for m in messages:
        if m.topic == "v1/gateway/telemetry":
            for meter, entries in json.loads(m.payload).items():
                out.setdefault(meter, []).extend(e["ts"] for e in entries)
    return out


def first_occurrences(seq: list[int]) -> list[int]:
    return list(dict.fromkeys(seq))


# -- pure parts: pacing and payloads ---------------------------------------------------------


async def test_pacer_message_rate(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(messages_per_s=4, bytes_per_s=1e9)
    stamps = []
    for _ in range(400):
        await pacer.acquire(100)
        stamps.append(trio.current_time())
    start = stamps[0]
    assert stamps[3] == start  # the burst goes at once
    assert stamps[-1] - start == pytest.approx((400 - 4) / 4)
    # ThingsBoard's default device limit "10:1,300:60" holds in every window.
    for i, t in enumerate(stamps):
        assert sum(1 for s in stamps[i:] if s < t + 1) <= 10
        assert sum(1 for s in stamps[i:] if s < t + 60) <= 300


async def test_pacer_bytes_and_datapoints(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(messages_per_s=1000, bytes_per_s=64 * 1024, datapoints_per_s=100)
    start = trio.current_time()
    for _ in range(10):
        await pacer.acquire(32 * 1024)
    assert trio.current_time() - start == pytest.approx(4.0)  # 2 from the burst, then 2/s

    points = Pacer(messages_per_s=1000, bytes_per_s=1e9, datapoints_per_s=100)
    start = trio.current_time()
    for _ in range(5):
        await points.acquire(10, datapoints=50)
    assert trio.current_time() - start == pytest.approx(1.5)


async def test_pacer_oversized_message_is_slow_not_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(messages_per_s=100, bytes_per_s=1000)
    start = trio.current_time()
    await pacer.acquire(5000)  # five times the bucket: goes now, leaves a debt
    assert trio.current_time() == start
    await pacer.acquire(1000)  # waits for the debt (4000) plus itself
    assert trio.current_time() - start == pytest.approx(5.0)


def test_gateway_payload_exact() -> None:
    rows = [
        row(1, Reading("meter A", T0, {"energy": 12.5, "power": 3})),
        row(2, Reading("meter B", T0 + 10, {"energy": 7})),
        row(3, Reading("meter A", T0 + 1000, {"energy": 12.75, "power": None, "ok": True})),
    ]
    message, taken = gateway_telemetry(rows, 10_000)
    assert taken == 3
    assert message.topic == "v1/gateway/telemetry"
    assert message.payload == (
        b'{"meter A":[{"ts":1700000000000,"values":{"energy":12.5,"power":3}},'
        # No null: ThingsBoard releases before 3.x refuse a message holding one.
        b'{"ts":1700000001000,"values":{"energy":12.75,"ok":true}}],'
        b'"meter B":[{"ts":1700000000010,"values":{"energy":7}}]}'
    )
    assert json.loads(message.payload)  # valid JSON
    assert message.datapoints == 5


def test_payload_budget_is_respected() -> None:
    rows = [row(i, Reading(f"m{i % 3}", T0 + i, {"v": i, "w": "x" * 20})) for i in range(200)]
    for build in (gateway_telemetry, device_telemetry):
        rest, total = rows, 0
        while rest:
            message, taken = build(rest, 1024)
            assert len(message.payload) <= 1024
            assert taken >= 1
            json.loads(message.payload)
            total += taken
            rest = rest[taken:]
        assert total == 200
    # A single reading over budget still forms a message of one (the publisher drops it).
    big = [row(1, Reading("m", T0, {"v": "x" * 2000}))]
    assert gateway_telemetry(big, 1024)[1] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m2", 'm"3', "mètre 4"]),
            st.dictionaries(
                st.sampled_from(["v", "w", "énergie"]),
                st.one_of(st.integers(-(10**6), 10**6), st.text(max_size=30)),
                min_size=1,
            ),
        ),
        min_size=1,
        max_size=30,
    ),
    st.data(),
)
def test_gateway_message_takes_the_longest_prefix_that_fits(
    drawn: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    """The message holds the longest prefix of the rows within the budget (at least one
    row), each meter's readings under its name in the order taken, meters in the order
    they first come. Budgets at, just under and just over a prefix's exact size."""
    rows = [row(i, Reading(meter, T0 + i, values)) for i, (meter, values) in enumerate(drawn)]
    k = data.draw(st.integers(1, len(rows)), label="prefix")
    exact = len(gateway_telemetry(rows[:k], 1 << 30)[0].payload)
    budget = exact + data.draw(st.sampled_from([-1, 0, 1]), label="budget - size")
    message, taken = gateway_telemetry(rows, budget)
    assert 1 <= taken <= len(rows)
    assert len(message.payload) <= budget or taken == 1
    if budget >= exact:
        assert taken >= k
    if taken < len(rows):  # one more would not have fitted
        assert len(gateway_telemetry(rows[: taken + 1], 1 << 30)[0].payload) > budget
    expected: dict[str, list[dict[str, Any]]] = {}
    for r in rows[:taken]:
        expected.setdefault(r.reading.meter, []).append(
            {"ts": r.reading.ts_ms, "values": dict(r.reading.values)}
        )
    decoded = json.loads(message.payload)
    assert decoded == expected
    assert list(decoded) == list(expected)
    assert message.rows == tuple(rows[:taken])


def test_topic_batches_group_each_meters_readings_in_order() -> None:
    rows = [row(i, Reading(f"m{i % 2}", T0 + i, {"v": i})) for i in range(1, 8)]
    settings = PublisherSettings(mode=PublishMode.TOPIC, batch_rows=3, max_payload_bytes=1000)
    message, taken = topic_batch([r for r in rows if r.reading.meter == "m1"], settings, 1000)
    assert (message.topic, taken) == ("meters/m1/telemetry", 3)
    assert json.loads(message.payload) == [{"ts": T0 + i, "values": {"v": i}} for i in (1, 3, 5)]
    # The byte budget cuts a batch short, never below one reading.
    one = len(b'{"ts":1700000000001,"values":{"v":1}}')
    assert topic_batch(rows[:1] * 3, settings, one + 2)[1] == 1
    assert topic_batch(rows[:1] * 3, settings, 2 * one + 3)[1] == 2
    flat = PublisherSettings(mode=PublishMode.TOPIC, payload_shape=PayloadShape.FLAT)
    assert (
        topic_batch(rows[:1], flat, 1000)[0].payload == b'[{"meter":"m1","ts":1700000000001,"v":1}]'
    )


def test_device_and_topic_payloads() -> None:
    r = Reading("m1", T0, {"e": 1.5, "s": "ok"})
    message, _ = device_telemetry([row(1, r)], 1000)
    assert message.topic == "v1/devices/me/telemetry"
    assert message.payload == b'[{"ts":1700000000000,"values":{"e":1.5,"s":"ok"}}]'
    tb = topic_message(row(1, r), PublisherSettings(mode=PublishMode.TOPIC))
    assert tb.topic == "meters/m1/telemetry"
    assert tb.payload == b'{"ts":1700000000000,"values":{"e":1.5,"s":"ok"}}'
    flat = topic_message(
        row(1, r),
        PublisherSettings(
            mode=PublishMode.TOPIC, topic_template="x/{meter}", payload_shape=PayloadShape.FLAT
        ),
    )
    assert flat.topic == "x/m1"
    assert flat.payload == b'{"e":1.5,"meter":"m1","s":"ok","ts":1700000000000}'
    with pytest.raises(ValueError, match="clash"):
        topic_message(
            row(1, Reading("m1", T0, {"ts": 1})),
            PublisherSettings(mode=PublishMode.TOPIC, payload_shape=PayloadShape.FLAT),
        )
    # One meter may have a topic of its own; the config requires {meter} when several share it.
    fixed = topic_message(
        row(1, r), PublisherSettings(mode=PublishMode.TOPIC, topic_template="fixed/topic")
    )
    assert fixed.topic == "fixed/topic"


# -- against the broker ----------------------------------------------------------------------


async def test_gateway_mode_end_to_end(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/gateway/#"])
    box = await AsyncOutbox.open(tmp_path)
    readings = [
        Reading("meter A", T0, {"energy": 12.5, "power": 3}),
        Reading("meter B", T0 + 10, {"energy": 7}),
        Reading("meter A", T0 + 1000, {"energy": 12.75, "power": None}),
    ]
    await box.append(readings)
    publisher = Publisher(box, fast(device_type="dlms-meter"), mqtt=mqtt_for(mosquitto))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            msgs = await sub.wait_for(lambda m: len(m) >= 3)
            # Telemetry first: the announcements go only once no reading waits.
            assert [(m.topic, m.payload) for m in msgs] == [
                (
                    "v1/gateway/telemetry",
                    b'{"meter A":[{"ts":1700000000000,"values":{"energy":12.5,"power":3}},'
                    b'{"ts":1700000001000,"values":{"energy":12.75}}],'
                    b'"meter B":[{"ts":1700000000010,"values":{"energy":7}}]}',
                ),
                ("v1/gateway/connect", b'{"device":"meter A","type":"dlms-meter"}'),
                ("v1/gateway/connect", b'{"device":"meter B","type":"dlms-meter"}'),
            ]
            assert await publisher.flush(trio.current_time() + 30)
            assert box.depth() == (0, 0)
            await counted(publisher, 3)
            assert publisher.stats.published_readings == 3
            assert publisher.stats.published_messages == 1
            assert publisher.stats.last_delivery_ts is not None
            latency = publisher.latency_ms()
            assert latency is not None
            assert latency[0] <= latency[1]

            publisher.set_meter_online("meter A", False)
            publisher.set_meter_online("meter C", True)
            await publisher.remove_meter("meter B")
            await sub.wait_for(lambda m: len(m) >= 6)
            tail = [(m.topic, m.payload) for m in sub.messages[3:]]
            assert ("v1/gateway/disconnect", b'{"device":"meter B"}') in tail
            # meter C was never announced: going online announces it (after its status).
            assert tail.index(
                ("v1/gateway/connect", b'{"device":"meter C","type":"dlms-meter"}')
            ) > tail.index(
                ("v1/gateway/attributes", b'{"meter A":{"online":false},"meter C":{"online":true}}')
            )
            await publisher.disconnect()
            nursery.cancel_scope.cancel()
    await box.aclose()


async def test_outage_loses_nothing_and_keeps_order(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/gateway/telemetry"])
    box = await AsyncOutbox.open(tmp_path)
    writer = OutboxWriter(box)
    meters = ["m0", "m1", "m2"]
    sent: dict[str, list[int]] = {m: [] for m in meters}

    async def produce(start: int, count: int) -> None:
        for i in range(start, start + count):
            meter = meters[i % 3]
            sent[meter].append(T0 + i)
            await writer.put(Reading(meter, T0 + i, {"i": i, "pad": "p" * 40}))

    # Small messages at a modest pace (the 300 readings take ~3 s), so that the outage lands
    # in the middle of a flush however slow the machine.
    settings = fast(max_payload_bytes=400, max_messages_per_s=20, max_in_flight=3)
    publisher = Publisher(box, settings, mqtt=mqtt_for(mosquitto))
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await produce(0, 300)
            await nursery.start(publisher.run)
            await sub.wait_for(lambda m: len(m) >= 10, 30)
            mosquitto.stop()
            await produce(300, 150)  # taken while the broker is away
            with trio.fail_after(10):
                while box.depth()[0] <= 150:
                    await trio.sleep(0.02)
            mosquitto.start()
            assert await publisher.flush(trio.current_time() + 90)
            got = telemetry_readings(
                await sub.wait_for(
                    lambda m: all(
                        set(sent[k]) <= set(telemetry_readings(m).get(k, [])) for k in meters
                    ),
                    30,
                )
            )
            for meter in meters:
                # Every reading arrived; the first arrival of each is in the order taken.
                assert first_occurrences(got[meter]) == sent[meter]
            assert publisher.clients[None].stats.connects >= 2
            await publisher.disconnect()
            nursery.cancel_scope.cancel()
    assert box.depth() == (0, 0)
    await box.aclose()


async def test_restart_delivers_the_backlog(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/gateway/telemetry"])
    box = await AsyncOutbox.open(tmp_path)
    await box.append([Reading("m", T0 + i, {"i": i}) for i in range(50)])
    await box.aclose()
    # A new process would open the same file and find the backlog.
    box = await AsyncOutbox.open(tmp_path)
    publisher = Publisher(box, fast(), mqtt=mqtt_for(mosquitto))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            assert await publisher.flush(trio.current_time() + 10)
            nursery.cancel_scope.cancel()
    msgs = await sub.wait_for(lambda m: len(telemetry_readings(m).get("m", [])) >= 50)
    assert telemetry_readings(msgs)["m"] == [T0 + i for i in range(50)]
    await box.aclose()


async def test_pacing_against_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/gateway/telemetry"])
    box = await AsyncOutbox.open(tmp_path)
    await box.append([Reading("m", T0 + i, {"pad": "x" * 200}) for i in range(25)])
    # One reading per message (payload budget), 20 messages/s with a burst of 5.
    settings = PublisherSettings(
        max_messages_per_s=20, burst_s=0.25, max_payload_bytes=300, max_bytes_per_s=1e6
    )
    publisher = Publisher(box, settings, mqtt=mqtt_for(mosquitto))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            await publisher.clients[None].wait_connected()
            start = time.monotonic()
            assert await publisher.flush(trio.current_time() + 10)
            elapsed = time.monotonic() - start
            nursery.cancel_scope.cancel()
    await sub.wait_for(lambda m: len(m) >= 25)
    await counted(publisher, 25)
    assert publisher.stats.published_messages == 25
    assert 0.9 <= elapsed < 5, elapsed  # (25 - 5) / 20 = 1.0 s
    await box.aclose()


async def test_device_mode_one_connection_per_meter(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/devices/me/#"])
    box = await AsyncOutbox.open(tmp_path)
    await box.append(
        [Reading(meter, T0 + i, {"who": meter}) for i in range(20) for meter in METER_TOKENS]
        + [Reading("meter-c", T0, {"who": "nobody"})]
    )
    devices = {
        meter: mqtt_for(mosquitto, username=token, client_id=f"dev-{meter}")
        for meter, token in METER_TOKENS.items()
    }
    publisher = Publisher(box, fast(mode=PublishMode.DEVICE), devices=devices)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            publisher.set_meter_online("meter-a", True)
            await sub.wait_for(
                lambda m: (
                    sum(len(json.loads(x.payload)) for x in m if x.topic.endswith("telemetry"))
                    >= 40
                    and any(x.topic.endswith("attributes") for x in m)
                )
            )
            await trio.sleep(0.1)
            # meter-c has no connection: its reading stays stored.
            assert box.depth()[0] == 1
            await publisher.disconnect()
            nursery.cancel_scope.cancel()
    telemetry = [json.loads(m.payload) for m in sub.on("v1/devices/me/telemetry")]
    for meter in METER_TOKENS:
        entries = [e for msg in telemetry for e in msg if e["values"]["who"] == meter]
        assert [e["ts"] for e in entries] == [T0 + i for i in range(20)]
    # Each message belongs to one meter only.
    assert all(len({e["values"]["who"] for e in msg}) == 1 for msg in telemetry)
    assert [m.payload for m in sub.on("v1/devices/me/attributes")] == [b'{"online":true}']
    log = mosquitto.log_text()
    for meter in METER_TOKENS:
        assert re.search(rf"Received PUBLISH from dev-{meter} .*v1/devices/me/telemetry", log)
    await box.aclose()


async def test_topic_mode_flat(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["site/#"])
    box = await AsyncOutbox.open(tmp_path)
    await box.append(
        [
            Reading("bad+name", T0, {"e": 0}),  # cannot be in a topic: dropped, not blocking
            Reading("m1", T0, {"e": 1}),
            Reading("m2", T0 + 1, {"e": 2}),
        ]
    )
    settings = fast(
        mode=PublishMode.TOPIC,
        topic_template="site/{meter}/data",
        status_topic_template="site/{meter}/status",
        payload_shape=PayloadShape.FLAT,
    )
    publisher = Publisher(box, settings, mqtt=mqtt_for(mosquitto))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            publisher.set_meter_online("m2", False)
            await sub.wait_for(lambda m: len(m) >= 3)
            nursery.cancel_scope.cancel()
    # Several readings per message (the default): a JSON array, here of one reading each.
    assert [(m.topic, m.payload) for m in sub.on("site/m1/data")] == [
        ("site/m1/data", b'[{"e":1,"meter":"m1","ts":1700000000000}]')
    ]
    assert [m.payload for m in sub.on("site/m2/data")] == [
        b'[{"e":2,"meter":"m2","ts":1700000000001}]'
    ]
    assert [m.payload for m in sub.on("site/m2/status")] == [b'{"meter":"m2","online":false}']
    assert len(sub.messages) == 3
    assert publisher.stats.undeliverable_dropped == 1
    assert box.depth() == (0, 0)
    await box.aclose()


async def test_flush_gives_up_at_the_deadline(tmp_path: Path, mosquitto: Mosquitto) -> None:
    box = await AsyncOutbox.open(tmp_path)
    await box.append([Reading("m", T0, {"e": 1})])
    mosquitto.stop()
    publisher = Publisher(box, fast(), mqtt=mqtt_for(mosquitto))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            start = trio.current_time()
            assert not await publisher.flush(start + 0.5)
            assert trio.current_time() - start < 2
            assert box.depth()[0] == 1
            nursery.cancel_scope.cancel()
    await box.aclose()


async def test_oversize_reading_is_dropped_not_blocking(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/gateway/telemetry"])
    box = await AsyncOutbox.open(tmp_path)
    await box.append([Reading("m", T0, {"big": "x" * 500}), Reading("m", T0 + 1, {"e": 1})])
    publisher = Publisher(box, fast(max_payload_bytes=200), mqtt=mqtt_for(mosquitto))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            assert await publisher.flush(trio.current_time() + 5)
            nursery.cancel_scope.cancel()
    msgs = await sub.wait_for(lambda m: len(m) >= 1)
    assert telemetry_readings(msgs) == {"m": [T0 + 1]}
    assert publisher.stats.undeliverable_dropped == 1
    await box.aclose()


async def test_announcements_never_hold_telemetry_back(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    """60 meters to announce at 10 messages/s would take 6 s before the first reading if
    the announcements went first. Telemetry goes first, in few messages, and keeps going
    first while new readings arrive; the announcements use the pacer's spare room."""
    sub = collector(["v1/gateway/#"])
    box = await AsyncOutbox.open(tmp_path)
    meters = [f"m{i:03d}" for i in range(60)]
    await box.append([Reading(m, T0, {"energy": i}) for i, m in enumerate(meters)])
    settings = PublisherSettings(max_messages_per_s=10.0, max_bytes_per_s=10e6, burst_s=1.0)
    publisher = Publisher(box, settings, mqtt=mqtt_for(mosquitto))
    peeks = [0]
    peek = box.peek

    async def counted_peek(*args: Any, **kwargs: Any) -> Any:
        peeks[0] += 1
        return await peek(*args, **kwargs)

    box.peek = counted_peek  # type: ignore[method-assign]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            for meter in meters:
                publisher.set_meter_online(meter, True)
            await sub.wait_for(lambda m: len(telemetry_readings(m)) == len(meters))
            started = trio.current_time()
            # The whole backlog went before any announcement: nothing but telemetry and the
            # online attributes came before the last meter's reading.
            messages = sub.messages
            last = max(
                i for i, x in enumerate(messages) if x.topic == "v1/gateway/telemetry"
            )  # fmt: skip
            assert {x.topic for x in messages[:last]} <= {
                "v1/gateway/attributes",
                "v1/gateway/telemetry",
            }
            # Live readings keep arriving; each goes out at the next free slot, ahead of the
            # announcements still waiting.
            for k in range(1, 5):
                await box.append([Reading(meters[0], T0 + 1000 * k, {"energy": k})])
                await sub.wait_for(
                    lambda m, k=k: T0 + 1000 * k in telemetry_readings(m).get(meters[0], [])
                )
            assert trio.current_time() - started < 3.0
            connects = [x for x in sub.messages if x.topic == "v1/gateway/connect"]
            assert len(connects) < 60
            await sub.wait_for(
                lambda m: sum(x.topic == "v1/gateway/connect" for x in m) == 60, timeout=20
            )
            announced = [json.loads(x.payload)["device"] for x in sub.on("v1/gateway/connect")]
            assert sorted(announced) == meters  # each once
            # At QoS 0 (re-sent after any reconnection), telemetry at the connection's QoS 1.
            assert {x.qos for x in sub.on("v1/gateway/connect")} == {0}
            assert {x.qos for x in sub.on("v1/gateway/telemetry")} == {1}
            # The outbox is asked again only when something was stored or sent since it last
            # had nothing: not at each of the 60 announcements' turns.
            assert peeks[0] <= 25, peeks[0]
            await publisher.disconnect()
            nursery.cancel_scope.cancel()
    await box.aclose()


@pytest.mark.parametrize("rate", [1e6, 100.0], ids=["unpaced", "paced"])
async def test_a_fleet_is_announced_in_bursts(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    rate: float,
) -> None:
    """A fleet's start: hundreds of meters to announce and nothing else to send. They go in
    bursts while the pacer has room, and (paced) after waits for room for several, not one
    round of the delivery loop each (each round asks for control messages, deletes and the
    outbox: a fleet's start cost more in rounds than in announcements)."""
    sub = collector(["v1/gateway/#"])
    box = await AsyncOutbox.open(tmp_path)
    meters = [f"m{i:03d}" for i in range(4 * ANNOUNCE_BURST)]
    await box.append([Reading(m, T0, {"energy": i}) for i, m in enumerate(meters)])
    settings = PublisherSettings(max_messages_per_s=rate, max_bytes_per_s=1e9, burst_s=1.0)
    publisher = Publisher(box, settings, mqtt=mqtt_for(mosquitto))
    rounds = [0]
    status_messages = publisher._status_messages

    def counted(*args: Any) -> Any:
        rounds[0] += 1
        return status_messages(*args)

    publisher._status_messages = counted  # type: ignore[method-assign]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            await sub.wait_for(
                lambda m: sum(x.topic == "v1/gateway/connect" for x in m) == len(meters)
            )
            announced = [json.loads(x.payload)["device"] for x in sub.on("v1/gateway/connect")]
            assert sorted(announced) == meters
            # Unpaced: bursts of ANNOUNCE_BURST; paced at 100/s: the bucket's 100, then waits
            # for room for 16 (without them, a round for each of the other 156).
            assert rounds[0] <= len(meters) // 16 + 10, rounds[0]
            await publisher.disconnect()
            nursery.cancel_scope.cancel()
    await box.aclose()


async def test_device_mode_attributes_on_connect_and_on_change(
    tmp_path: Path, mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["v1/devices/me/#"])
    box = await AsyncOutbox.open(tmp_path)

    def readings(first: int, fw: str) -> list[Reading]:
        attributes = {"fw": fw, "serial": "S1"}
        return [
            Reading("meter-a", T0 + i, {"v": i}, attributes=attributes)
            for i in range(first, first + 5)
        ]

    def delivered(messages: list[Message]) -> int:
        return sum(len(json.loads(x.payload)) for x in messages if x.topic.endswith("telemetry"))

    await box.append(readings(0, "1.0"))
    devices = {"meter-a": mqtt_for(mosquitto, username=METER_TOKENS["meter-a"], client_id="d-a")}
    publisher = Publisher(
        box, fast(mode=PublishMode.DEVICE, online_attribute=None), devices=devices
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(publisher.run)
            await sub.wait_for(lambda m: delivered(m) >= 5)
            # Unchanged attributes are not sent again; changed ones are.
            await box.append(readings(5, "1.0"))
            await sub.wait_for(lambda m: delivered(m) >= 10)
            await box.append(readings(10, "1.1"))
            await sub.wait_for(lambda m: delivered(m) >= 15)
            await publisher.disconnect()
            nursery.cancel_scope.cancel()
    attributes = [json.loads(m.payload) for m in sub.on("v1/devices/me/attributes")]
    assert attributes == [{"fw": "1.0", "serial": "S1"}, {"fw": "1.1", "serial": "S1"}]
    for message in sub.on("v1/devices/me/telemetry"):
        for entry in json.loads(message.payload):
            assert set(entry["values"]) == {"v"}  # attributes are not telemetry
    await box.aclose()
