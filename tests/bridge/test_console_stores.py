"""The console's stores on their own: local history (bounds, thinning), the alarm store
(persistence, grace after a restart, acknowledgement), the API's meter store, and ``[web]`` /
``[alarms]`` config errors."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from bridge.api_meters import ApiMeters, api_meters_path, load_effective_config
from bridge.config import ConfigError, parse_config
from bridge.readings import Reading
from bridge.web.alarms import AlarmStore
from bridge.web.auth import is_loopback, load_or_create_token
from bridge.web.history import HistoryStore

BASE = """
[bridge]
name = "t"
data_dir = "{data}"
[mqtt]
host = "127.0.0.1"
[defaults]
registers = "field-meter"
[[meters]]
name = "a"
host = "127.0.0.1"
port = 4061
"""


async def test_history_bounds_and_thinning(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path, max_age_s=3600, max_rows=1000)
    store.open()
    try:
        now = 10_000_000_000
        for i in range(1200):
            store.add(Reading("a", now - (1200 - i) * 1000, {"v": float(i), "s": "text"}))
        raw = await store.query("a", now - 100_000, now, "v")
        assert raw["bucket_ms"] is None
        assert [p[1] for p in raw["series"]["v"]][:2] == [1100.0, 1101.0]
        thinned = await store.query("a", 0, now, "v", max_points=100)
        assert thinned["bucket_ms"] > 0
        assert 50 <= len(thinned["series"]["v"]) <= 101  # averaged buckets, not 1200 points
        assert "s" not in thinned["series"]  # strings are not charted
        # Age bound (one hour) and row bound (1000).
        deleted = await store.prune(now)
        assert deleted == 200
        assert await store.rows() == 1000
        store.max_rows = 300
        await store.prune(now)
        assert await store.rows() == 300
        oldest = (await store.query("a", 0, now, "v"))["series"]["v"][0]
        assert oldest[1] == 900.0  # the oldest went first
    finally:
        store.close()


def test_alarm_store_persists_and_clears_after_grace(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path, grace_s=0.0)
    store.open()
    changes = store.sync({"meter.a.failing": "a fails"})
    assert [c.kind for c in changes] == ["raised"]
    alarm_id = changes[0].alarm["id"]
    assert store.ack(alarm_id)["acked"] is True  # type: ignore[index]
    assert store.listing()["active"][0]["acked"] is True  # listed until it clears
    assert store.sync({"meter.a.failing": "a fails"}) == []
    assert [c.kind for c in store.sync({"meter.a.failing": "worse"})] == ["changed"]
    store.close()
    assert os.stat(tmp_path / "alarms.sqlite").st_mode & 0o777 == 0o600

    # After a restart the alarm is still active; the service raising it keeps the same id.
    again = AlarmStore(tmp_path, grace_s=3600.0)
    again.open()
    assert again.listing()["active"][0]["id"] == alarm_id
    assert again.sync({}) == []  # within the grace period
    assert again.sync({"meter.a.failing": "worse"}) == []
    changes = again.sync({})
    assert [c.kind for c in changes] == ["cleared"] and changes[0].alarm["id"] == alarm_id
    listing = again.listing()
    assert listing["active"] == [] and listing["recent"][0]["id"] == alarm_id
    assert again.ack(12345) is None
    again.close()

    # Not raised again within the grace period: cleared.
    third = AlarmStore(tmp_path, grace_s=0.0)
    third.open()
    third.sync({"outbox.high": "full"})
    third.close()
    fourth = AlarmStore(tmp_path, grace_s=0.0)
    fourth.open()
    assert [c.kind for c in fourth.sync({})] == ["cleared"]
    fourth.close()


def test_api_meters_overlay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = tmp_path / "bridge.toml"
    path.write_text(BASE.format(data=data))
    assert load_effective_config(path).api_meters == ()
    store = ApiMeters(
        added={"b": {"host": "127.0.0.1", "port": 4062}, "a": {"host": "x", "port": 1}},
        patched={"a": {"interval_s": 7.0}},
    )
    store.save(data)
    assert api_meters_path(data).stat().st_mode & 0o777 == 0o600
    config = load_effective_config(path)
    by_name = {m.name: m for m in config.meters}
    assert set(by_name) == {"a", "b"}  # the file's "a" wins over the API's "a"
    assert by_name["a"].interval_s == 7.0 and by_name["a"].host == "127.0.0.1"
    assert sorted(config.api_meters) == ["a", "b"]
    # Removing a file meter; a broken store is ignored (the file still runs).
    ApiMeters(removed=["a"], added={"b": {"host": "127.0.0.1", "port": 4062}}).save(data)
    assert [m.name for m in load_effective_config(path).meters] == ["b"]
    api_meters_path(data).write_text("{not json")
    assert [m.name for m in load_effective_config(path).meters] == ["a"]
    # A change that no longer fits the file (same address) is left out.
    api_meters_path(data).write_text(
        json.dumps({"added": {"c": {"host": "127.0.0.1", "port": 4061}}})
    )
    assert [m.name for m in load_effective_config(path).meters] == ["a"]


def test_web_and_alarm_config(tmp_path: Path) -> None:
    config = parse_config(BASE.format(data=tmp_path))
    assert config.web.enabled and config.web.listen == "127.0.0.1:8080"
    assert config.web.token is None and config.alarms.publish_ratio_min == 0.5
    with pytest.raises(ConfigError) as info:
        parse_config(
            BASE.format(data=tmp_path)
            + '[web]\nlisten = "8080"\ntoken_env = "NOPE_TOKEN_VAR"\nport = 1\n'
            + "[alarms]\nsuccess_rate_min = 1.5\nno_reading_intervals = 0\n",
            env={},
        )
    text = "\n".join(info.value.errors)
    for where in (
        "web.listen: expected host:port",
        "web.token_env: environment variable NOPE_TOKEN_VAR is not set",
        "web.port: unknown key",
        "alarms.success_rate_min: must be between 0 and 1",
        "alarms.no_reading_intervals: must be between 1",
    ):
        assert where in text, text
    ok = parse_config(
        BASE.format(data=tmp_path) + '[web]\nlisten = "[::1]:9000"\ntoken_env = "T"\n',
        env={"T": "s3cret"},
    )
    assert ok.web.host_port == ("::1", 9000) and ok.web.token == "s3cret"
    assert "s3cret" not in repr(ok)


def test_token_file_and_loopback(tmp_path: Path) -> None:
    token, path = load_or_create_token(tmp_path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(tmp_path)[0] == token  # kept across restarts
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


async def test_event_hub_bounds_slow_and_extra_subscribers() -> None:
    from bridge.web.events import MAX_SUBSCRIBERS, QUEUE_SIZE, EventHub, sse_stream

    hub = EventHub()
    slow = hub.subscribe()
    assert slow is not None
    for i in range(QUEUE_SIZE):
        hub.publish("reading", {"i": i})
    assert hub.subscribers == 1
    hub.publish("reading", {"i": QUEUE_SIZE})  # one too many: the slow one is dropped
    assert hub.subscribers == 0 and hub.dropped_subscribers == 1
    received = [item async for item in slow]  # what it had is still delivered, then the end
    assert len(received) == QUEUE_SIZE
    others = [hub.subscribe() for _ in range(MAX_SUBSCRIBERS)]
    assert all(o is not None for o in others)
    assert hub.subscribe() is None  # capped
    hub.close_all()
    stream = sse_stream(others[0], {"name": "t"})  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert chunks[0].startswith(b"retry: 2000\nevent: hello\ndata: ")
    assert len(chunks) == 1  # closed: the stream ends


def test_a_damaged_store_is_set_aside(tmp_path: Path) -> None:
    from bridge.web.console import _open_or_set_aside

    (tmp_path / "history.sqlite").write_bytes(b"this is not a database" * 100)
    store = HistoryStore(tmp_path, max_age_s=60, max_rows=1000)
    _open_or_set_aside(store)
    store.add(Reading("a", 1, {"v": 1.0}))
    store.close()
    aside = list(tmp_path.glob("history.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_loopback_host_header() -> None:
    from bridge.web.auth import _loopback_host

    for ok in ("127.0.0.1:8080", "localhost:8080", "localhost", "[::1]:8080", "127.0.0.2"):
        assert _loopback_host(ok), ok
    for bad in ("evil.example:8080", "bridge.example.net", "10.0.0.1:8080", "[fe80::1]:80", ""):
        assert not _loopback_host(bad), bad


async def test_history_journal_stays_small(tmp_path: Path) -> None:
    """The chart history shares the data directory with the outbox: its WAL journal must not
    grow to SQLite's default of 4 MB and stay there (it filled a small data directory alone)."""
    from bridge.web.history import WAL_SIZE_LIMIT

    store = HistoryStore(tmp_path, max_age_s=3600, max_rows=100_000)
    store.open()
    try:
        now = 10_000_000_000
        for i in range(600):
            values = {f"k{j}": float(i * j) for j in range(8)}
            store.add(Reading(f"m{i % 5}", now + i * 1000, values))
            await store.flush()
        wal = tmp_path / "history.sqlite-wal"
        assert wal.stat().st_size <= WAL_SIZE_LIMIT + 64 * 1024, wal.stat().st_size
    finally:
        store.close()


async def test_history_keeps_one_reading_per_meter_and_step(tmp_path: Path) -> None:
    """``history_step_s``: a meter read every second keeps one reading per 10 s; each meter
    has its own step; a step of 0 keeps them all."""
    store = HistoryStore(tmp_path, max_age_s=3600, max_rows=100_000, step_s=10)
    every = HistoryStore(tmp_path / "all", max_age_s=3600, max_rows=100_000)
    for s in (store, every):
        s.open()
    try:
        now = 10_000_000_000
        for i in range(60):
            for meter in ("a", "b"):
                reading = Reading(meter, now + i * 1000 + (500 if meter == "b" else 0), {"v": i})
                store.add(reading)
                every.add(reading)
        a = (await store.query("a", 0, now + 10**6, "v"))["series"]["v"]
        assert [p[1] for p in a] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
        b = (await store.query("b", 0, now + 10**6, "v"))["series"]["v"]
        assert len(b) == 6
        assert len((await every.query("a", 0, now + 10**6, "v"))["series"]["v"]) == 60
    finally:
        for s in (store, every):
            s.close()


def test_alarm_store_writes_a_fleet_of_alarms_in_one_transaction(tmp_path: Path) -> None:
    """Thousands of alarms raised at once (a fleet-wide outage) are one commit; a sync that
    fails half-way writes nothing and leaves the store as it was."""
    store = AlarmStore(tmp_path, grace_s=0.0)
    store.open()
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    raised = {f"meter.m{i}.failing": f"m{i} fails" for i in range(2000)}
    assert len(store.sync(raised)) == 2000
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1

    # The 1,500th message cannot be stored: nothing of this sync is.
    broken: dict[str, object] = {f"meter.n{i}.failing": f"n{i} fails" for i in range(1500)}
    broken["meter.bad.failing"] = ["not", "text"]
    with pytest.raises(sqlite3.Error):
        store.sync({**raised, **broken})  # type: ignore[dict-item]
    assert len(store.listing()["active"]) == 2000
    assert set(store.active()) == set(raised)
    # The store goes on: the next sync clears what is gone and raises what is new.
    changes = store.sync({"meter.m0.failing": "m0 fails", "outbox.high": "full"})
    kinds = [c.kind for c in changes]
    assert kinds.count("cleared") == 1999 and kinds.count("raised") == 1
    assert {a["name"] for a in store.listing()["active"]} == {"meter.m0.failing", "outbox.high"}
    store.close()


def test_alarm_store_lists_the_newest_active_alarms(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path, grace_s=0.0)
    store.open()
    store.sync({"a": "1"})
    store.sync({"a": "1", "b": "2"})
    store.sync({"a": "1", "b": "2", "c": "3"})
    store.sync({"b": "2", "c": "3"})  # a cleared
    assert [a["name"] for a in store.newest_active(5)] == ["c", "b"]
    assert [a["name"] for a in store.newest_active(1)] == ["c"]
    store.close()
