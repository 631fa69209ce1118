"""The admin API, metrics and health through real HTTP against ``dlms-bridge run`` with the
simulator and Mosquitto: auth, bad input, a meter added (its readings reach the broker), read,
changed, removed, and the API's meters kept across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.bridge.console_harness import ConsoleClient, console_config, start_console
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_run_cli import REPO, bridge_process  # noqa: F401 (fixture)

PASSWORD = "00000000"


def _has_values(meters: list[dict[str, Any]], names: set[str]) -> bool:
    by_name = {m["name"]: m for m in meters}
    return all(n in by_name and by_name[n]["values"] for n in names)


async def test_api_end_to_end(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Any,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    _sim, ports = await simulator(meters=3)
    telemetry: Collector = collector(["v1/gateway/telemetry"])
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "m1": ports[1]},
        data_dir=tmp_path / "data",
    )
    process, api = await start_console(bridge_process, config, port)
    token = api.token
    assert token
    token_file = tmp_path / "data" / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600

    # Health and the read-only API (open on loopback).
    health = await api.get("/healthz")
    assert health.status == 200 and health.json == {"status": "ok"}
    meters = await api.wait_until(
        "/api/v1/meters", lambda d: _has_values(d["meters"], {"m0", "m1"}), 20, "values"
    )
    m0 = next(m for m in meters["meters"] if m["name"] == "m0")
    assert m0["source"] == "file" and m0["state"] == "ok"
    assert m0["values"]["voltage_l1"]["unit"] == "V"
    assert m0["values"]["active_energy"]["unit"] == "Wh"
    assert m0["age_s"] is not None and m0["age_s"] < 10
    detail = (await api.get("/api/v1/meters/m0")).json
    assert detail["config"]["has_password"] is True
    assert "password" not in detail["config"]
    assert detail["success_rate"] > 0
    assert set(detail["recoveries"]) == {"in_place", "reassociate", "reconnect"}
    status = (await api.get("/api/v1/status")).json
    assert status["mqtt"]["connected"] is True
    assert status["counters"]["readings_taken"] > 0
    assert {"rows", "oldest_unsent_age_s", "dropped"} <= set(status["outbox"])
    assert (await api.get("/api/v1/meters/nope")).status == 404
    doc = (await api.get("/api/v1/openapi.json")).json
    assert doc["openapi"].startswith("3.") and "/meters/{name}/history" in doc["paths"]

    # The event stream: server-sent events with live readings.
    def first_events(wanted: int) -> list[tuple[str, dict[str, Any]]]:
        request = urllib.request.Request(api.base + "/api/v1/events")
        out: list[tuple[str, dict[str, Any]]] = []
        with urllib.request.urlopen(request, timeout=20) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            kind = ""
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    out.append((kind, json.loads(line[6:])))
                    if len(out) >= wanted:
                        return out
        return out

    events = await trio.to_thread.run_sync(first_events, 4)
    assert events[0][0] == "hello"
    readings = [data for kind, data in events if kind == "reading"]
    assert readings and readings[0]["meter"] in {"m0", "m1"}
    assert readings[0]["units"]["voltage_l1"] == "V" and "voltage_l1" in readings[0]["values"]

    # Reads are open on loopback only for requests addressed to a loopback name.
    def get_with_host(host: str) -> int:
        request = urllib.request.Request(api.base + "/api/v1/status", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await trio.to_thread.run_sync(get_with_host, "rebound.example:80") == 401
    assert await trio.to_thread.run_sync(get_with_host, f"localhost:{port}") == 200

    # Auth: no token 401, wrong token 403, for every mutating call.
    table = {"name": "m2", "host": "127.0.0.1", "port": ports[2]}
    for method, path, body in (
        ("POST", "/api/v1/meters", table),
        ("PATCH", "/api/v1/meters/m0", {"interval_s": 1}),
        ("DELETE", "/api/v1/meters/m0", None),
        ("POST", "/api/v1/meters/m0/read", None),
        ("POST", "/api/v1/meters/m0/disable", None),
        ("POST", "/api/v1/alarms/1/ack", None),
    ):
        missing = await api.call(method, path, body, token=None)
        assert missing.status == 401, (method, path, missing.text)
        wrong = await api.call(method, path, body, token="not-the-token")
        assert wrong.status == 403, (method, path, wrong.text)

    # Bad input: 400/422 with the field's path, never a 500.
    bad_json = await api.call("POST", "/api/v1/meters", raw=b'{"name": ')
    assert bad_json.status == 400 and "JSON" in bad_json.json["error"]
    not_object = await api.call("POST", "/api/v1/meters", [1, 2])
    assert not_object.status == 400
    wrong = await api.call("POST", "/api/v1/meters", {**table, "port": "abc", "intervall": 3})
    assert wrong.status == 422, wrong.text
    paths = {e["path"]: e["message"] for e in wrong.json["errors"]}
    assert "port" in paths and "int" in paths["port"]
    assert "intervall" in paths and "interval_s" in paths["intervall"]  # did you mean
    negative = await api.call("POST", "/api/v1/meters", {**table, "timeout_s": -1})
    assert negative.status == 422 and negative.json["errors"][0]["path"] == "timeout_s"
    dup = await api.call("POST", "/api/v1/meters", {**table, "name": "m0"})
    assert dup.status == 409
    same_address = await api.call("POST", "/api/v1/meters", {**table, "port": ports[0]})
    assert same_address.status == 422 and same_address.json["errors"][0]["path"] == "host"
    bad_patch = await api.call("PATCH", "/api/v1/meters/m0", {"port": 70000})
    assert bad_patch.status == 422 and bad_patch.json["errors"][0]["path"] == "port"
    endless = await api.call("PATCH", "/api/v1/meters/m0", {"interval_s": 1e300})
    assert endless.status == 422, endless.text
    assert endless.json["errors"] == [
        {"path": "interval_s", "message": "must be at most 86400 s (one day), got 1e+300"}
    ]
    assert (await api.call("PATCH", "/api/v1/meters/m0", {"name": "zz"})).status == 422
    bad_time = await api.get("/api/v1/meters/m0/history?since=yesterday")
    assert bad_time.status == 400 and bad_time.json["errors"][0]["path"] == "since"

    # Odd input of every kind: a 4xx naming the problem, never a 500.
    odd_bodies: list[Any] = [
        None,
        "text",
        12,
        {"name": ["x"]},
        {"name": ""},
        {"name": "odd", "host": "127.0.0.1", "port": 1, "registers": {"a": 1}},
        {"name": "odd", "host": "127.0.0.1", "port": 1, "registers": [{"key": "k"}]},
        {"name": "odd", "host": "127.0.0.1", "port": 1, "registers": "no-such-preset"},
        {"name": "odd", "host": "127.0.0.1", "port": 2**70},
        {"name": "odd", "host": "127.0.0.1", "port": 1, "password_env": "NO_SUCH_VAR_X"},
        {"name": "odd", "host": "127.0.0.1", "port": 1, "interval_s": "fast"},
        {"name": "odd\u0000", "host": "127.0.0.1", "port": 1},
    ]
    for body in odd_bodies:
        result = await api.call(
            "POST", "/api/v1/meters", body, raw=b"null" if body is None else None
        )
        assert 400 <= result.status < 500, (body, result.status, result.text)
        assert result.json["errors"][0]["message"], result.text
    deep = await api.call("POST", "/api/v1/meters", raw=b"[" * 200_000 + b"]" * 200_000)
    assert deep.status in (400, 413), deep.text
    for query in ("since=99999999999999999999999", "until=-5", "since=2026-13-45", "key=%00"):
        result = await api.get(f"/api/v1/meters/m0/history?{query}")
        assert result.status in (200, 400), (query, result.text)
    assert (await api.call("POST", "/api/v1/alarms/99999999999999999999999/ack")).status == 400
    assert (await api.call("PUT", "/api/v1/meters")).status == 405
    assert (await api.get("/api/v1/nothing")).status == 404

    # Add a meter: its readings reach the broker; the file is not touched.
    before = config.read_text()
    connects = len(process.events("connected", meter="m0"))
    added = await api.call("POST", "/api/v1/meters", {**table, "password": PASSWORD})
    assert added.status == 201, added.text
    assert added.json["source"] == "api"
    assert config.read_text() == before
    store = tmp_path / "data" / "api-meters.json"
    assert store.stat().st_mode & 0o777 == 0o600

    def m2_delivered() -> bool:
        return any("m2" in json.loads(m.payload) for m in telemetry.messages)

    with trio.fail_after(20):
        while not m2_delivered():
            await trio.sleep(0.1)
    await api.wait_until(
        "/api/v1/meters", lambda d: _has_values(d["meters"], {"m0", "m1", "m2"}), 20, "m2"
    )
    # Applied like a reload: the other meters kept their connections.
    assert len(process.events("connected", meter="m0")) == connects
    assert process.events("reloaded", added="1", removed="0", changed="0")

    # Read now, history, change, disable/enable.
    read = await api.call("POST", "/api/v1/meters/m2/read")
    assert read.status == 200, read.text
    assert read.json["values"]["frequency"]["unit"] == "Hz"
    assert isinstance(read.json["values"]["frequency"]["value"], float)
    history = await api.wait_until(
        "/api/v1/meters/m0/history?key=voltage_l1",
        lambda d: len(d["series"].get("voltage_l1", [])) >= 2,
        20,
        "history",
    )
    assert set(history["series"]) == {"voltage_l1"}
    thinned = (await api.get("/api/v1/meters/m0/history?since=0")).json
    assert thinned["bucket_ms"] is None or thinned["bucket_ms"] > 0
    patched = await api.call("PATCH", "/api/v1/meters/m1", {"interval_s": 0.5})
    assert patched.status == 200 and patched.json["interval_s"] == 0.5
    assert patched.json["source"] == "api"  # a file meter changed by the API
    disabled = await api.call("POST", "/api/v1/meters/m1/disable")
    assert disabled.status == 200 and disabled.json["state"] == "disabled"
    enabled = await api.call("POST", "/api/v1/meters/m1/enable")
    assert enabled.status == 200 and enabled.json["enabled"] is True

    # Metrics, parsed by prometheus-client's own parser.
    metrics = await api.get("/metrics")
    assert metrics.status == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    ok = {
        s.labels["meter"]: s.value
        for s in families["dlms_bridge_meter_reads"].samples
        if s.name.endswith("_total") and s.labels["result"] == "ok"
    }
    assert ok["m0"] > 0 and ok["m2"] > 0
    assert "dlms_bridge_meter_cycle_latency_seconds" in families
    assert families["dlms_bridge_mqtt_connected"].samples[0].value == 1
    assert "dlms_bridge_outbox_oldest_age_seconds" in families
    levels = {s.labels["level"] for s in families["dlms_bridge_meter_recoveries"].samples}
    assert levels == {"in_place", "reassociate", "reconnect"}

    # Secrets never come back, and the token is never logged.
    everything = "".join(
        [
            (await api.get("/api/v1/meters")).text,
            (await api.get("/api/v1/meters/m2")).text,
            (await api.get("/api/v1/status")).text,
            metrics.text,
        ]
    )
    assert PASSWORD not in everything and token not in everything
    assert not any(token in line for line in process.stdout + process.stderr)

    # check-config says which meters come from the API.
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "check-config", "--json", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["api_meters"]) == ["m1", "m2"]

    # Restart: the API's meters are still there.
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0
    process, api = await start_console(bridge_process, config, api.base.rsplit(":", 1)[1])
    after = await api.wait_until(
        "/api/v1/meters", lambda d: _has_values(d["meters"], {"m0", "m1", "m2"}), 20, "restart"
    )
    by_name = {m["name"]: m for m in after["meters"]}
    assert by_name["m2"]["source"] == "api" and by_name["m1"]["interval_s"] == 0.5

    # Remove: gone now and after a restart.
    removed = await api.call("DELETE", "/api/v1/meters/m2")
    assert removed.status == 200
    names = {m["name"] for m in (await api.get("/api/v1/meters")).json["meters"]}
    assert names == {"m0", "m1"}
    removed_file_meter = await api.call("DELETE", "/api/v1/meters/m0")
    assert removed_file_meter.status == 200
    assert (await api.get("/api/v1/meters/m0")).status == 404
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0
    process, api = await start_console(bridge_process, config, api.base.rsplit(":", 1)[1])
    names = {m["name"] for m in (await api.get("/api/v1/meters")).json["meters"]}
    assert names == {"m1"}
    assert config.read_text() == before
    # The file's meter comes back through the API, with the given keys on top of the file's.
    back = await api.call("POST", "/api/v1/meters", {"name": "m0", "interval_s": 0.4})
    assert back.status == 201, back.text
    assert back.json["interval_s"] == 0.4 and back.json["config"]["port"] == ports[0]
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_reads_need_the_token_off_loopback(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    _sim, ports = await simulator(meters=1)
    secret = tmp_path / "token"
    secret.write_text("operator-token-123\n")
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0]},
        data_dir=tmp_path / "data",
        web={"token_file": str(secret)},
    )
    # Listen on every address: reads are no longer open.
    config.write_text(config.read_text().replace("127.0.0.1:", "0.0.0.0:", 1))
    process: Any = await bridge_process(config)
    await process.wait_event("console_listening", timeout=30)
    api = ConsoleClient(f"http://127.0.0.1:{port}", "operator-token-123")
    assert not (tmp_path / "data" / "admin-token").exists()
    assert (await api.get("/api/v1/meters", token=None)).status == 401
    assert (await api.get("/metrics", token=None)).status == 401
    assert (await api.get("/api/v1/meters", token="wrong")).status == 403
    assert (await api.get("/api/v1/meters")).status == 200
    assert (await api.get("/healthz", token=None)).status == 200
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_refused_mqtt_token_is_an_alarm(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    _sim, ports = await simulator(meters=1)
    config, port = console_config(
        tmp_path / "bridge.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "data"
    )
    config.write_text(config.read_text().replace('password = "token-secret"', 'password = "no"'))
    process, api = await start_console(bridge_process, config, port)
    await api.wait_until(
        "/api/v1/alarms",
        lambda d: any(a["name"] == "mqtt.auth_refused" for a in d["active"]),
        20,
        "the refused token's alarm",
    )
    status = (await api.get("/api/v1/status")).json
    assert status["mqtt"]["connected"] is False and "mqtt.auth_refused" in status["mqtt"]["alarms"]
    assert status["outbox"]["rows"] > 0  # readings are kept for later
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_client_id_conflict_and_taken_port_are_alarms(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    from tests.bridge.test_mqtt import kick

    _sim, ports = await simulator(meters=1)
    config, port = console_config(
        tmp_path / "bridge.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "data"
    )
    config.write_text(config.read_text().replace("[mqtt]\n", '[mqtt]\nclient_id = "shared"\n'))
    process, api = await start_console(bridge_process, config, port)

    async def reconnects() -> float:
        text = (await api.get("/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return float(families["dlms_bridge_mqtt_reconnects"].samples[0].value)

    for _ in range(4):  # another client with the same client id keeps taking the session over
        await api.wait_until("/api/v1/status", lambda d: d["mqtt"]["connected"], 20, "MQTT up")
        before = await reconnects()
        await trio.to_thread.run_sync(kick, mosquitto, "shared")
        with trio.fail_after(20):
            while await reconnects() <= before:
                await trio.sleep(0.1)
    alarms = await api.wait_until(
        "/api/v1/alarms",
        lambda d: any(a["name"] == "mqtt.session_takeover" for a in d["active"]),
        20,
        "the takeover alarm",
    )
    takeover = next(a for a in alarms["active"] if a["name"] == "mqtt.session_takeover")
    assert "token or client id" in takeover["message"]

    # A second bridge whose console port is taken: an alarm, and the bridge runs on.
    other, other_port = console_config(
        tmp_path / "other.toml", mosquitto, {"m0": ports[0]}, data_dir=tmp_path / "other"
    )
    other.write_text(other.read_text().replace(f":{other_port}", f":{port}"))
    second: Any = await bridge_process(other)
    await second.wait_event("alarm", timeout=20, alarm="web.listen_failed")
    await second.wait_event("reading_stored", timeout=20, meter="m0")
    for p in (process, second):
        p.signal(signal.SIGTERM)
        assert await p.wait_exit() == 0


async def test_console_off_keeps_the_alarms(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    from tests.bridge.mosquitto import free_port

    _sim, ports = await simulator(meters=1)
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "dead": free_port()},
        data_dir=tmp_path / "data",
        web={"enabled": False},
        alarms={"no_reading_intervals": 3},
    )
    process: Any = await bridge_process(config)
    await process.wait_event("alarm", timeout=20, alarm="meter.dead.no_reading")
    assert not process.events("console_listening")
    assert (tmp_path / "data" / "alarms.sqlite").exists()
    assert not (tmp_path / "data" / "admin-token").exists()
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
        )
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0


async def test_meters_polled_in_worker_processes_show_their_values(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    _sim, ports = await simulator(meters=2)
    config, port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": ports[0], "m1": ports[1]},
        data_dir=tmp_path / "data",
        bridge={"workers": 2},
    )
    process, api = await start_console(bridge_process, config, port)
    await api.wait_until(
        "/api/v1/meters", lambda d: _has_values(d["meters"], {"m0", "m1"}), 30, "values"
    )
    # The state their pollers report from the worker processes.
    await api.wait_until(
        "/api/v1/meters", lambda d: {m["state"] for m in d["meters"]} == {"ok"}, 10, "states"
    )
    await api.wait_until(
        "/api/v1/meters/m1/history",
        lambda d: len(d["series"].get("frequency", [])) >= 2,
        20,
        "history",
    )
    process.signal(signal.SIGTERM)
    assert await process.wait_exit() == 0
