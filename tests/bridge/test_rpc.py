"""ThingsBoard RPC and shared attributes end to end: requests published to a real Mosquitto, as
ThingsBoard would send them, answered by the running bridge from the simulated meters."""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge import service as service_module
from bridge.config import BridgeConfig, config_from_dict
from bridge.publisher import MAX_ALARMS_PUBLISHED
from bridge.rpc import RpcRequest, fit_answer, parse_message
from bridge.service import BridgeService
from bridge.simulator.meter import MeterSettings
from bridge.simulator.models import FIRMWARE_VERSION
from tests.bridge.conftest import METER_TOKENS
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Mosquitto
from tests.bridge.test_service import bridge_config, events
from tests.bridge.waiting import all_delivered, wait_until

_ids = itertools.count(1)


@asynccontextmanager
async def running(
    config: BridgeConfig, *, synchronised: bool = True
) -> AsyncIterator[BridgeService]:
    async with trio.open_nursery() as nursery:
        service = BridgeService(config, handle_signals=False)
        service.clock_synchronised = lambda: synchronised
        await nursery.start(service.run)
        # ThingsBoard sends RPCs only to connected devices: wait for the connection (its
        # SUBSCRIBE goes out with the CONNACK) before sending any.
        assert service.publisher is not None
        while not all(c.connected for c in service.publisher.clients.values()):
            await trio.sleep(0.02)
        await trio.sleep(0.2)
        try:
            yield service
        finally:
            service.stop()


async def gateway_rpc(
    sub: Collector, meter: str, method: str, params: Any = None, timeout: float = 15
) -> dict[str, Any]:
    """Send a gateway RPC as ThingsBoard does and return the ``data`` of its answer."""
    request_id = next(_ids)
    body: dict[str, Any] = {"device": meter, "data": {"id": request_id, "method": method}}
    if params is not None:
        body["data"]["params"] = params
    sub.publish("v1/gateway/rpc", json.dumps(body))

    def answered(messages: list[Any]) -> bool:
        return any(_answer(m, request_id) is not None for m in messages)

    messages = await sub.wait_for(answered, timeout=timeout)
    answer = next(a for m in messages if (a := _answer(m, request_id)) is not None)
    assert answer["device"] == meter
    data: dict[str, Any] = answer["data"]
    return data


def _answer(message: Any, request_id: int) -> dict[str, Any] | None:
    if message.topic != "v1/gateway/rpc":
        return None
    body = json.loads(message.payload)
    return body if body.get("id") == request_id else None


def config(tmp_path: Path, broker: Mosquitto, ports: tuple[int, ...], **defaults: Any) -> Any:
    return bridge_config(
        tmp_path / "data",
        broker,
        ports,
        defaults={"profiles": [{"obis": "1-0:99.1.0", "backfill_hours": 1}], **defaults},
    )


async def test_gateway_rpc_methods_end_to_end(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=2)
    sub = collector(["v1/gateway/#"])
    document = {
        **_as_document(tmp_path, mosquitto),
        "meters": [
            {"name": "m0", "host": "127.0.0.1", "port": ports[0]},
            {"name": "m1", "host": "127.0.0.1", "port": ports[1], "allow_control": True},
        ],
    }
    cfg = config_from_dict(document)
    with trio.fail_after(60):
        async with running(cfg) as service:
            # read: the configured registers, scaled, with units.
            data = await gateway_rpc(sub, "m0", "read")
            assert set(data) == {"values", "units", "errors"}
            assert 100 < data["values"]["voltage_l1"] < 140, data
            assert data["units"]["voltage_l1"] == "V"
            assert data["errors"] == {}
            # read: an object given by OBIS and class (the firmware id, a Data object).
            data = await gateway_rpc(
                sub, "m0", "read", {"registers": [{"obis": "1-0:0.2.0", "class_id": 1}]}
            )
            assert data["values"] == {"1-0:0.2.0": FIRMWARE_VERSION}
            data = await gateway_rpc(sub, "m0", "read", {"registers": ["0-0:99.99.0"]})
            assert data["values"] == {} and "0-0:99.99.0" in data["errors"]
            # read_profile: one hour of 15-minute entries, with their own timestamps.
            hour = (int(time.time()) // 3600 - 2) * 3600
            start = datetime.datetime.fromtimestamp(hour, datetime.UTC)
            data = await gateway_rpc(
                sub, "m0", "read_profile",
                {"from": start.isoformat(),
                 "to": (start + datetime.timedelta(hours=1)).replace(tzinfo=None).isoformat()},
            )  # fmt: skip
            assert [e["ts"] for e in data["entries"]] == [
                hour * 1000 + k * 900_000 for k in range(5)
            ]
            assert all("1-1:1.8.0" in e["values"] for e in data["entries"])
            # get_clock / sync_clock: the meter's clock is 2 minutes fast.
            sim.meter(0).clock_offset = 120.0
            data = await gateway_rpc(sub, "m0", "get_clock")
            assert 118 < data["drift_s"] < 122, data
            data = await gateway_rpc(sub, "m0", "sync_clock", {"threshold_s": 5})
            assert data["synced"] is True and abs(data["drift_after_s"]) < 2, data
            assert abs(sim.meter(0).clock_offset) < 2
            data = await gateway_rpc(sub, "m0", "sync_clock")
            assert data["synced"] is False  # within the threshold now
            # disconnect/reconnect: refused without allow_control, done with it.
            data = await gateway_rpc(sub, "m0", "disconnect")
            assert data["error"]["code"] == "not_allowed"
            assert sim.meter(0).supply_connected
            data = await gateway_rpc(sub, "m1", "disconnect")
            assert data == {"output_state": False}
            assert not sim.meter(1).supply_connected
            data = await gateway_rpc(sub, "m1", "reconnect")
            assert data == {"output_state": True}
            assert sim.meter(1).supply_connected
            # Every bad request is answered with an error object.
            data = await gateway_rpc(sub, "m0", "reboot")
            assert data["error"]["code"] == "unknown_method"
            assert "read_profile" in data["error"]["message"]
            data = await gateway_rpc(sub, "nope", "read")
            assert data["error"]["code"] == "unknown_device"
            data = await gateway_rpc(sub, "m0", "read", {"registers": ["1-1:99"]})
            assert data["error"]["code"] == "bad_params"
            data = await gateway_rpc(sub, "m0", "set_interval", {"interval_s": 0.1})
            assert data["error"]["code"] == "bad_params"  # not more than timeout_s (0.3)
            data = await gateway_rpc(sub, "m1", "set_interval", {"interval_s": 1e300})
            assert data["error"] == {
                "code": "bad_params",
                "message": "interval_s must be at most 86400 s (one day), got 1e+300",
            }
            data = await gateway_rpc(sub, "m1", "set_interval", {"interval_s": 0.7})
            assert data == {"interval_s": 0.7}
            poller = service.meters["m1"].poller
            assert poller is not None and poller.interval_s == 0.7
            data = await gateway_rpc(sub, "m0", "read_profile", {"from": "yesterday"})
            assert data["error"]["code"] == "bad_params"
            data = await gateway_rpc(
                sub, "m0", "read_profile",
                {"from": "2026-12-01T12:00+00:00", "to": "2026-12-01T11:00+00:00"},
            )  # fmt: skip
            assert data["error"] == {
                "code": "bad_params",
                "message": "to (2026-12-01T11:00:00+00:00) is before from "
                "(2026-12-01T12:00:00+00:00)",
            }


async def test_sync_clock_refused_while_the_box_clock_is_not_synchronised(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=1)
    sub = collector(["v1/gateway/#"])
    with trio.fail_after(30):
        async with running(config(tmp_path, mosquitto, ports), synchronised=False):
            sim.meter(0).clock_offset = -300.0
            data = await gateway_rpc(sub, "m0", "sync_clock")
    assert data["error"]["code"] == "box_clock_unsynchronised"
    assert sim.meter(0).clock_offset == -300.0


async def test_rpcs_are_serialised_with_polling_on_one_association(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    sim, ports = await simulator(meters=1, faults="0:delay=0.05")
    sub = collector(["v1/gateway/#"])
    with trio.fail_after(60):
        async with running(config(tmp_path, mosquitto, ports)) as service:
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(gateway_rpc, sub, "m0", "read")
            poller = service.meters["m0"].poller
            assert poller is not None
            assert poller.stats.requests >= 6
    # One TCP connection, one association at a time: requests never opened a second one.
    assert sim.meter(0).counters.connections == 1


async def test_shared_attributes_change_the_cadence_and_are_kept_across_restarts(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    # The gateway's own attributes are compared every 5 s; a quicker look for the test.
    monkeypatch.setattr(service_module, "GATEWAY_ATTRIBUTES_CHECK_S", 0.2)
    _sim, ports = await simulator(meters=1)
    sub = collector(["v1/gateway/#", "v1/devices/me/attributes"])
    cfg = bridge_config(tmp_path / "data", mosquitto, ports, defaults={"interval_s": 1.0})

    with trio.fail_after(60):
        async with running(cfg) as service:
            poller = service.meters["m0"].poller
            assert poller is not None
            await wait_until(lambda: poller.stats.successes >= 1, 10, "a first poll")
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": "m0", "data": {"interval_s": 0.4}})
            )
            await wait_until(lambda: poller.interval_s == 0.4, 10, "the new interval applied")
            # Polling goes on at the new cadence (its timing is checked exactly on the virtual
            # clock: test_poller.py, test_set_interval_starts_a_new_cadence_at_once).
            start = poller.stats.successes
            await wait_until(lambda: poller.stats.successes >= start + 3, 10, "3 more polls")
            # An interval beyond the bound (which would stop polling) is refused, and logged.
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": "m0", "data": {"interval_s": 1e300}})
            )
            while not events(caplog, "shared_attribute_refused"):
                await trio.sleep(0.05)
            assert "at most 86400 s" in events(caplog, "shared_attribute_refused")[0]["error"]
            assert poller.interval_s == 0.4
            # enabled = false stops the meter, and it stays off across a restart.
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": "m0", "data": {"enabled": False}})
            )
            while "m0" in service.meters:
                await trio.sleep(0.05)
            assert "m0" in service.paused
        async with running(cfg) as service:
            # Switched off from the start (running() waits for the broker's connection).
            assert "m0" not in service.meters and "m0" in service.paused
            sub.publish(
                "v1/gateway/attributes", json.dumps({"device": "m0", "data": {"enabled": True}})
            )
            while "m0" not in service.meters or service.meters["m0"].poller is None:
                await trio.sleep(0.05)
            poller = service.meters["m0"].poller
            assert poller is not None
            assert poller.interval_s == 0.4  # the shared interval, kept across the restart
            # The gateway's own attributes, on its own device.
            await sub.wait_for(
                lambda _m: any(
                    json.loads(m.payload)["meters"] == 1 for m in sub.on("v1/devices/me/attributes")
                )
            )
    overrides = json.loads((tmp_path / "data" / "overrides.json").read_text())
    assert overrides == {"m0": {"enabled": True, "interval_s": 0.4}}
    own = [json.loads(m.payload) for m in sub.on("v1/devices/me/attributes")]
    assert {"bridge_name", "bridge_version", "meters", "alarms"} <= set(own[0])
    # (Published as soon as MQTT connects: the first may come before the meter is started.)
    assert any(o["meters"] == 1 and o["alarms"] == 0 for o in own), own


async def test_device_mode_rpc_on_the_meters_own_connection(
    tmp_path: Path, make_broker: Callable[..., Mosquitto], simulator: Any
) -> None:
    # Device tokens are user names without a password: an anonymous broker takes them.
    broker = make_broker("anonymous", anonymous=True)
    _sim, ports = await simulator(meters=1)
    sub = Collector(
        broker, ["v1/devices/me/rpc/#", "v1/devices/me/attributes/request/+"], client_id="tb"
    ).start()
    document = _as_document(tmp_path, broker)
    document["publish"] = {"mode": "device"}
    document["mqtt"] = {"host": broker.host, "port": broker.port}
    document["meters"] = [
        {"name": "meter-a", "host": "127.0.0.1", "port": ports[0],
         "token": METER_TOKENS["meter-a"]}
    ]  # fmt: skip
    try:
        with trio.fail_after(30):
            async with running(config_from_dict(document)) as service:
                assert service.publisher is not None
                sub.publish("v1/devices/me/rpc/request/42", json.dumps({"method": "get_clock"}))
                messages = await sub.wait_for(
                    lambda ms: any(m.topic == "v1/devices/me/rpc/response/42" for m in ms)
                )
                # The shared attributes asked for at connect, answered as ThingsBoard does.
                (request,) = [m for m in messages if "/attributes/request/" in m.topic]
                assert json.loads(request.payload) == {"sharedKeys": "interval_s,enabled"}
                response = request.topic.replace("request", "response")
                sub.publish(response, json.dumps({"shared": {"interval_s": 0.6}}))
                poller = service.meters["meter-a"].poller
                assert poller is not None
                while poller.interval_s != 0.6:
                    await trio.sleep(0.05)
    finally:
        sub.stop()
    answer = json.loads(next(m for m in messages if m.topic.endswith("response/42")).payload)
    assert "drift_s" in answer and abs(answer["drift_s"]) < 2, answer


def test_parse_message_ignores_echoes_and_answers_bad_requests() -> None:
    assert parse_message(None, "v1/gateway/rpc", b'{"device":"m0","id":1,"data":{}}') is None
    assert parse_message(None, "v1/gateway/attributes", b'{"m0":{"online":true}}') is None
    request = parse_message(
        None, "v1/gateway/rpc", b'{"device":"m0","data":{"id":3,"method":"read"}}'
    )
    assert isinstance(request, RpcRequest) and request.method == "read" and request.id == 3
    bad = parse_message(None, "v1/gateway/rpc", b'{"device":"m0","data":{"id":4}}')
    assert bad is not None and not isinstance(bad, RpcRequest)
    device = parse_message("m0", "v1/devices/me/rpc/request/9", b'{"method":"get_clock"}')
    assert isinstance(device, RpcRequest)
    assert device.reply_topic == "v1/devices/me/rpc/response/9"
    assert device.response({"x": 1}) == b'{"x":1}'


# -- helpers ---------------------------------------------------------------------------------


def _as_document(tmp_path: Path, broker: Mosquitto) -> dict[str, Any]:
    from tests.bridge.conftest import GATEWAY_TOKEN

    return {
        "bridge": {"name": "test", "data_dir": str(tmp_path / "data")},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "username": GATEWAY_TOKEN,
            "password": TOKEN_PASSWORD,
        },
        "defaults": {
            "password": "00000000",
            "registers": "field-meter",
            "interval_s": 0.5,
            "timeout_s": 0.3,
            "profiles": [{"obis": "1-0:99.1.0", "backfill_hours": 1}],
        },
        "meters": [],
    }


def test_an_answer_too_large_is_cut_to_fit_or_refused() -> None:
    request = RpcRequest("m0", 5, "read_profile", None, "v1/gateway/rpc", True)
    entries = [{"ts": 1_000 * k, "values": {"1-1:1.8.0": k}} for k in range(1000)]
    payload = fit_answer(request, {"obis": "1-0:99.1.0", "entries": entries}, 4096)
    assert len(payload) <= 4096
    body = json.loads(payload)["data"]
    assert body["truncated"] is True
    assert 0 < len(body["entries"]) < 1000 and body["entries"] == entries[: len(body["entries"])]
    big = fit_answer(request, {"values": {"x": "y" * 5000}}, 4096)
    assert json.loads(big)["data"]["error"]["code"] == "too_large"


async def test_event_log_entries_follow_a_remote_disconnect(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    """The event log (0-0:99.98.0) is a profile like the others: the disconnect recorded by the
    meter reaches ThingsBoard as an ``event_code`` at the meter's own time of the event."""
    sim, ports = await simulator(meters=1)
    sub = collector(["v1/gateway/#"])
    document = _as_document(tmp_path, mosquitto)
    document["defaults"]["profiles"] = [
        {"obis": "0-0:99.98.0", "every_s": 1, "keys": {"0-0:96.11.0": "event_code"}}
    ]
    document["meters"] = [
        {"name": "m0", "host": "127.0.0.1", "port": ports[0], "allow_control": True}
    ]

    def events() -> list[tuple[int, int]]:
        out = []
        for message in sub.on("v1/gateway/telemetry"):
            for entry in json.loads(message.payload).get("m0", []):
                if "event_code" in entry["values"]:
                    out.append((entry["ts"], entry["values"]["event_code"]))
        return out

    def received() -> int:
        return sum(len(json.loads(m.payload).get("m0", [])) for m in sub.on("v1/gateway/telemetry"))

    with trio.fail_after(30):
        async with running(config_from_dict(document)) as service:
            assert await gateway_rpc(sub, "m0", "disconnect") == {"output_state": False}
            assert await gateway_rpc(sub, "m0", "reconnect") == {"output_state": True}
            await sub.wait_for(lambda _m: len(events()) >= 2, timeout=10)
            # Two more reads of the event log (one a second) and their delivery: an event
            # read twice would be delivered twice by then.
            poller = service.meters["m0"].poller
            assert poller is not None
            reads = poller.work.profiles[0].reads + 2
            await wait_until(lambda: poller.work.profiles[0].reads >= reads, 10, "2 more reads")
            await all_delivered(service, received)
    recorded = [(t * 1000, code) for t, code in sim.meter(0).events]
    assert events() == recorded
    assert [code for _, code in recorded] == [60, 61]


async def test_shared_attributes_changed_while_away_are_asked_for_at_connect(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    """After connecting, the bridge asks for each meter's shared attributes (at QoS 0);
    ThingsBoard's answer (here the test's) applies like an update."""
    _sim, ports = await simulator(meters=1)
    tb = collector(["v1/gateway/attributes/request"])
    cfg = bridge_config(tmp_path / "data", mosquitto, ports, defaults={"interval_s": 1.0})
    with trio.fail_after(30):
        async with running(cfg) as service:
            (request,) = await tb.wait_for(lambda ms: len(ms) >= 1)
            assert request.qos == 0  # asked again after every reconnection: no PUBACK needed
            body = json.loads(request.payload)
            assert body == {
                "id": body["id"], "device": "m0", "client": False,
                "keys": ["interval_s", "enabled"],
            }  # fmt: skip
            answer = {"id": body["id"], "device": "m0", "values": {"interval_s": 0.6}}
            tb.publish("v1/gateway/attributes/response", json.dumps(answer))
            poller = service.meters["m0"].poller
            assert poller is not None
            while poller.interval_s != 0.6:
                await trio.sleep(0.05)
            assert "m0" in service.meters  # "enabled" had no value: untouched


async def test_read_profile_from_a_meter_without_range_access(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    _sim, ports = await simulator(meters=1, settings=MeterSettings(profile_range_access=False))
    sub = collector(["v1/gateway/#"])
    hour = (int(time.time()) // 3600 - 3) * 3600
    with trio.fail_after(30):
        async with running(config(tmp_path, mosquitto, ports)):
            data = await gateway_rpc(
                sub, "m0", "read_profile", {"from": hour * 1000, "to": (hour + 1800) * 1000}
            )
    assert [e["ts"] for e in data["entries"]] == [hour * 1000 + k * 900_000 for k in range(3)]


async def test_the_gateway_names_at_most_a_hundred_alarms_and_counts_them_all(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fleet-wide outage raises one alarm a meter: the gateway's attributes carry the count
    of all and the names of at most MAX_ALARMS_PUBLISHED (not a message of megabytes)."""
    monkeypatch.setattr(service_module, "GATEWAY_ATTRIBUTES_CHECK_S", 0.2)
    _sim, ports = await simulator(meters=1)
    sub = collector(["v1/devices/me/attributes"])
    cfg = bridge_config(tmp_path / "data", mosquitto, ports, defaults={"interval_s": 1.0})
    many = MAX_ALARMS_PUBLISHED + 50
    with trio.fail_after(60):
        async with running(cfg) as service:
            for i in range(many):
                service._set_alarm(f"meter.x{i:04d}.failing", True, "down")

            def published() -> list[dict[str, Any]]:
                bodies = [json.loads(m.payload) for m in sub.on("v1/devices/me/attributes")]
                return [b for b in bodies if b.get("alarms") == many]

            await wait_until(lambda: bool(published()), 20, "the alarms published")
    names = published()[-1]["alarm_names"].split(",")
    assert len(names) == MAX_ALARMS_PUBLISHED
    assert names == sorted(f"meter.x{i:04d}.failing" for i in range(many))[:MAX_ALARMS_PUBLISHED]
