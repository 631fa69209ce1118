"""The value contract end to end: whatever a meter sends, the poller delivers strict JSON.

A real simulator meter (TCP, HDLC, association, GET-with-list) serves extra Data objects whose
encoded values hypothesis draws: every A-XDR type, nested, NaN and infinities included, and
bytes that are no valid A-XDR at all. Each example runs one poll cycle into a real SQLite
outbox and formats every publisher payload from the stored rows; the plain registers must be
delivered every time and every payload must be strict JSON.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import PRESETS, MeterConfig
from bridge.outbox import Outbox
from bridge.poller import MeterPoller
from bridge.publisher import (
    PayloadShape,
    PublisherSettings,
    PublishMode,
    device_telemetry,
    gateway_telemetry,
    topic_message,
)
from bridge.readings import Reading
from codec.axdr import Data, DataType
from tests.bridge.valuemeter import ValueMeter, value_meter
from tests.codec.strategies import data_values

EXTRA = 3
PLAIN = PRESETS["field-meter"][:2]  # voltage_l1 and current_l1: class 3 registers


def strict_loads(payload: bytes | str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity literals."""

    def refuse(literal: str) -> Any:
        raise AssertionError(f"non-strict JSON literal {literal} in {payload!r}")

    return json.loads(payload, parse_constant=refuse)


_special = [math.nan, math.inf, -math.inf, -0.0, 3.4e38, 1e-45]
floats_of_every_kind = st.builds(
    Data, st.just(DataType.FLOAT32), st.sampled_from(_special)
) | st.builds(Data, st.just(DataType.FLOAT64), st.sampled_from([*_special, 1.7e308]))
values = st.one_of(
    data_values(max_leaves=12),
    floats_of_every_kind,
    st.lists(floats_of_every_kind | data_values(max_leaves=3), max_size=4).map(Data.structure),
    st.binary(max_size=40),  # anything at all, valid A-XDR or not
)


def meter_config(port: int) -> MeterConfig:
    return MeterConfig(
        name="m0",
        host="127.0.0.1",
        port=port,
        password="00000000",
        registers=(*PLAIN, *(ValueMeter.register(i) for i in range(EXTRA))),
        interval_s=1.0,
        timeout_s=2.0,
    )


async def one_cycle(served: list[Data | bytes], outbox: Outbox) -> tuple[bool, MeterPoller]:
    async with value_meter(EXTRA) as meter:
        for index, value in enumerate(served):
            meter.set(index, value)

        async def sink(reading: Reading) -> None:
            outbox.append([reading])

        poller = MeterPoller(meter_config(meter.port), sink)
        try:
            with trio.fail_after(20):
                ok = await poller.cycle()
        finally:
            await poller._close(release=True)
    return ok, poller


def check_payloads(outbox: Outbox) -> list[Reading]:
    """Every payload the publisher makes of the stored rows is strict JSON, and ThingsBoard's
    carry no null value (older releases refuse the whole message)."""
    rows = outbox.peek(10)
    for row in rows:
        # What the outbox stored is strict JSON and reads back as the same reading.
        assert Reading.from_json(row.reading.to_json()) == row.reading
        strict_loads(row.reading.to_json())
    tb_values: list[dict[str, Any]] = []
    gateway, _ = gateway_telemetry(rows, 1 << 20)
    for entries in strict_loads(gateway.payload).values():
        tb_values.extend(e["values"] for e in entries)
    device, _ = device_telemetry(rows, 1 << 20)
    tb_values.extend(e["values"] for e in strict_loads(device.payload))
    for row in rows:
        tb = topic_message(row, PublisherSettings(mode=PublishMode.TOPIC))
        tb_values.append(strict_loads(tb.payload)["values"])
        flat = PublisherSettings(mode=PublishMode.TOPIC, payload_shape=PayloadShape.FLAT)
        strict_loads(topic_message(row, flat).payload)
    assert len(tb_values) == 3 * len(rows)
    for values in tb_values:
        assert None not in values.values(), values
    return [row.reading for row in rows]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(served=st.lists(values, min_size=EXTRA, max_size=EXTRA))
def test_any_value_a_meter_sends_reaches_the_publisher_as_strict_json(
    served: list[Data | bytes], tmp_path: Path
) -> None:
    # A fresh outbox for each example (the fixture's directory is shared by all of them).
    with (
        tempfile.TemporaryDirectory(dir=tmp_path) as directory,
        Outbox(Path(directory) / "outbox.db") as outbox,
    ):
        ok, poller = trio.run(one_cycle, served, outbox)
        assert ok, poller.stats.last_error
        assert poller.stats.failures == 0
        (reading,) = check_payloads(outbox)
    # The plain registers are delivered whatever the others hold.
    assert isinstance(reading.values["voltage_l1"], float)
    assert isinstance(reading.values["current_l1"], float)
    # Every extra register is a value or an error of its own, never lost.
    for index in range(EXTRA):
        key = f"x{index}"
        assert (key in reading.values) != (key in reading.errors), reading
    for index, value in enumerate(served):
        key = f"x{index}"
        if (
            isinstance(value, Data)
            and value.type in (DataType.FLOAT32, DataType.FLOAT64)
            and not math.isfinite(value.value)  # type: ignore[arg-type]
        ):
            assert reading.values[key] is None
            assert reading.quality[key] in ("nan", "+inf", "-inf")


async def test_structure_nan_enum_and_text_registers_keep_the_voltage_flowing(
    tmp_path: Path,
) -> None:
    """The reported case: odd registers next to plain ones; every cycle delivers all of it."""
    outbox = Outbox(tmp_path / "outbox.db")
    async with value_meter(EXTRA) as meter:
        meter.set(0, Data.structure([Data.unsigned(1), Data.visible_string("pair")]))
        meter.set(1, Data.float32(math.nan))
        meter.set(2, Data.enum(3))

        async def sink(reading: Reading) -> None:
            outbox.append([reading])

        poller = MeterPoller(meter_config(meter.port), sink)
        for _ in range(3):
            assert await poller.cycle()
        await poller._close(release=True)
    readings = check_payloads(outbox)
    assert len(readings) == 3
    for reading in readings:
        assert reading.values["x0"] == [1, "pair"]
        assert reading.values["x1"] is None
        assert reading.quality == {"x1": "nan"}
        assert reading.values["x2"] == 3
        assert 50 < reading.values["voltage_l1"] < 300  # type: ignore[operator]
    telemetry = strict_loads(readings[0].values_json())
    assert telemetry["x0"] == [1, "pair"]
    assert "x1" not in telemetry and telemetry["x1_quality"] == "nan"
    outbox.close()


async def test_a_value_that_is_no_axdr_is_an_error_of_its_register_only(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    async with value_meter(EXTRA) as meter:
        meter.set(0, b"\x02\x05\x11")  # a structure of 5 that ends after its header
        meter.set(1, Data.visible_string("ok"))

        async def sink(reading: Reading) -> None:
            outbox.append([reading])

        poller = MeterPoller(meter_config(meter.port), sink)
        assert await poller.cycle()
        await poller._close(release=True)
    (reading,) = check_payloads(outbox)
    assert reading.values["x1"] == "ok"
    assert "voltage_l1" in reading.values
    assert "x0" not in reading.values
    assert reading.errors["x0"].code.startswith(("decode", "apdu"))
    assert poller.stats.register_errors == 1
    outbox.close()


async def test_attributes_are_published_on_connect_and_on_change(
    tmp_path: Path, mosquitto: Any, collector: Any
) -> None:
    """Registers configured as ``attributes`` go to v1/gateway/attributes once per connection
    and when they change, never as telemetry; structures go as JSON arrays."""
    from tests.bridge.test_service import bridge_config, running, telemetry

    with trio.fail_after(40):
        async with value_meter(EXTRA) as meter:
            meter.set(0, Data.visible_string("FW 1.0"))
            meter.set(1, Data.structure([Data.unsigned(1), Data.float32(math.nan)]))
            sub = collector(["v1/gateway/attributes", "v1/gateway/telemetry"])
            firmware = {"key": "firmware", "obis": "0-0:96.99.0", "class_id": 1}
            serial = {"key": "serial", "obis": "0-0:96.1.0", "class_id": 1}
            config = bridge_config(
                tmp_path / "data", mosquitto, (meter.port,),
                defaults={
                    "interval_s": 0.2, "timeout_s": 0.15, "attributes": [firmware, serial],
                    "registers": [
                        {"key": "voltage", "obis": "1-1:32.7.0"},
                        {"key": "pair", "obis": "0-0:96.99.1", "class_id": 1},
                    ],
                },
            )  # fmt: skip

            def attributes() -> list[dict[str, Any]]:
                out = []
                for m in sub.on("v1/gateway/attributes"):
                    body = strict_loads(m.payload)
                    if "firmware" in body.get("m0", {}):
                        out.append(body["m0"])
                return out

            async with running(config):
                await sub.wait_for(lambda ms: len(telemetry(sub)) >= 5, 15)
                assert attributes() == [
                    {"firmware": "FW 1.0", "serial": meter.sim.meters[0].serial}
                ]
                meter.set(0, Data.visible_string("FW 1.1"))
                await sub.wait_for(lambda ms: len(attributes()) >= 2, 10)
                await sub.wait_for(lambda ms: len(telemetry(sub)) >= 15, 15)
    assert [a["firmware"] for a in attributes()] == ["FW 1.0", "FW 1.1"]
    for message in sub.on("v1/gateway/telemetry"):
        strict_loads(message.payload)
    for _, _, values in telemetry(sub):
        assert "firmware" not in values and "serial" not in values
        assert values["pair"] == [1, None]
        assert values["pair_quality"] == "nan"
        assert isinstance(values["voltage"], float)
