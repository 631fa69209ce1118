"""BridgeService end to end, in process: simulated meters over TCP, the real SQLite outbox, a
real Mosquitto broker and a subscriber that sees what ThingsBoard would see.

Ground truth of what the bridge took is its own ``event=reading_stored`` DEBUG lines, logged
after each reading's durable commit.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bridge.config import PRESETS, BridgeConfig, config_from_dict
from bridge.logs import FIELDS_ATTR
from bridge.service import BridgeService
from bridge.simulator.meter import Meter
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.delivery import check_order, missing, received
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Mosquitto
from tests.bridge.waiting import wait_until

FIELD_KEYS = {r.key for r in PRESETS["field-meter"]}

# -- helpers -----------------------------------------------------------------------------------


def bridge_config(
    data_dir: Path,
    broker: Mosquitto,
    ports: tuple[int, ...],
    *,
    bridge: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
    publish: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    names: list[str] | None = None,
    meter_extra: dict[str, dict[str, Any]] | None = None,
) -> BridgeConfig:
    """A gateway-mode config for meters m0..mN-1 (or ``names``) of the simulator, as a file
    would give it; ``meter_extra`` adds settings to some meters' own tables."""
    names = names or [f"m{i}" for i in range(len(ports))]
    document: dict[str, Any] = {
        "bridge": {"name": "test", "data_dir": str(data_dir), **(bridge or {})},
        "mqtt": mqtt
        or {
            "host": broker.host,
            "port": broker.port,
            "username": GATEWAY_TOKEN,
            "password": TOKEN_PASSWORD,
        },
        "publish": publish or {},
        "defaults": {
            "password": "00000000",
            "registers": "field-meter",
            "interval_s": 0.5,
            "timeout_s": 0.3,
            **(defaults or {}),
        },
        "meters": [
            {"name": name, "host": "127.0.0.1", "port": port, **(meter_extra or {}).get(name, {})}
            for name, port in zip(names, ports, strict=True)
        ],
    }
    return config_from_dict(document)


@asynccontextmanager
async def running(config: BridgeConfig, **kwargs: Any) -> AsyncIterator[BridgeService]:
    """The service running in a nursery; stopped (gracefully, with its flush) on exit."""
    async with trio.open_nursery() as nursery:
        service = BridgeService(config, handle_signals=False, **kwargs)
        await nursery.start(service.run)
        try:
            yield service
        finally:
            service.stop()


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return dict(getattr(record, FIELDS_ATTR, None) or {})


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of every captured record with ``event=<event>``."""
    out = []
    for record in caplog.records:
        f = fields(record)
        if f.get("event") == event:
            out.append({**f, "_created": record.created, "_level": record.levelno})
    return out


def stored(caplog: pytest.LogCaptureFixture) -> dict[str, list[int]]:
    """What the bridge took: meter -> timestamps, from its ``reading_stored`` lines."""
    out: dict[str, list[int]] = {}
    for f in events(caplog, "reading_stored"):
        out.setdefault(f["meter"], []).append(f["ts"])
    return out


def telemetry(collector: Collector) -> list[tuple[str, int, dict[str, Any]]]:
    """Every reading in the gateway telemetry received, in arrival order."""
    out = []
    for message in collector.on("v1/gateway/telemetry"):
        body = json.loads(message.payload)
        assert isinstance(body, dict), body
        for meter, entries in body.items():
            assert isinstance(entries, list), body
            for entry in entries:
                assert list(entry) == ["ts", "values"], entry
                out.append((meter, entry["ts"], entry["values"]))
    return out


async def wait_delivered(
    caplog: pytest.LogCaptureFixture, collector: Collector, timeout: float
) -> None:
    """Until every reading stored so far (not those stored meanwhile) reached the subscriber."""
    so_far = stored(caplog)
    with trio.move_on_after(timeout):
        while missing(so_far, received(collector)):
            await trio.sleep(0.1)
        return
    lost = {m: len(t) for m, t in missing(so_far, received(collector)).items()}
    raise AssertionError(f"not delivered within {timeout} s: {lost}")


def check_plausible(meter: Meter, ts_ms: int, values: dict[str, Any], window_s: float) -> None:
    """The published values are the simulator's model at some instant in [ts, ts + window]
    (the meter computes them when the request arrives, a moment after ts)."""
    t0 = ts_ms / 1000
    samples = [t0 + window_s * k / 20 for k in range(21)]
    physics = meter.physics
    model = {
        "voltage_l1": ([physics.voltage(t) for t in samples], 0.02),
        "current_l1": ([physics.current(t) for t in samples], 0.002),
        "frequency": ([physics.frequency_at(t) for t in samples], 0.02),
        "active_power": ([physics.power(t) for t in samples], 0.5),
        "active_energy": ([meter.energy_wh(t) for t in samples], 1.0),
    }
    assert set(values) == FIELD_KEYS, values
    for key, (expected, tolerance) in model.items():
        value = values[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        low, high = min(expected) - tolerance, max(expected) + tolerance
        assert low <= value <= high, f"{key}={value} at ts {ts_ms}, model says {low}..{high}"


def store_windows(caplog: pytest.LogCaptureFixture) -> dict[tuple[str, int], float]:
    """(meter, ts) -> seconds from the reading's timestamp to its durable commit: the meter
    computed the values somewhere in that window, however slow the machine was."""
    return {
        (f["meter"], f["ts"]): max(0.0, f["_created"] - f["ts"] / 1000)
        for f in events(caplog, "reading_stored")
    }


# -- tests -------------------------------------------------------------------------------------


async def test_gateway_telemetry_format_values_and_timestamps(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    with trio.fail_after(30):
        sim, ports = await simulator(meters=2, seed=3)
        sub = collector(["v1/gateway/#"])
        config = bridge_config(tmp_path / "data", mosquitto, ports)
        t_start = int(time.time() * 1000)
        async with running(config):
            while min(len(stored(caplog).get(m, [])) for m in ("m0", "m1")) < 6:
                await trio.sleep(0.05)
        t_end = int(time.time() * 1000)
        await wait_delivered(caplog, sub, 30)

    messages = sub.messages
    topics = {m.topic for m in messages}
    assert topics <= {
        "v1/gateway/connect",
        "v1/gateway/telemetry",
        "v1/gateway/attributes",
        "v1/gateway/attributes/request",  # the meters' shared attributes, asked for
        "v1/devices/me/attributes",  # the gateway's own
    }
    # Each meter is announced once (one connection), after its first telemetry: announcements
    # never hold readings back.
    connects = [json.loads(m.payload) for m in sub.on("v1/gateway/connect")]
    assert sorted(c["device"] for c in connects) == ["m0", "m1"]
    for name in ("m0", "m1"):
        first_connect = next(
            i for i, m in enumerate(messages)
            if m.topic == "v1/gateway/connect" and json.loads(m.payload)["device"] == name
        )  # fmt: skip
        first_telemetry = next(
            i for i, m in enumerate(messages)
            if m.topic == "v1/gateway/telemetry" and name in json.loads(m.payload)
        )  # fmt: skip
        assert first_connect > first_telemetry
    online = [json.loads(m.payload) for m in sub.on("v1/gateway/attributes")]
    merged = {meter: status for body in online for meter, status in body.items()}
    assert merged == {"m0": {"online": True}, "m1": {"online": True}}

    readings = telemetry(sub)
    taken = stored(caplog)
    assert {m for m, _, _ in readings} == {"m0", "m1"}
    for name in ("m0", "m1"):
        mine = [(ts, values) for m, ts, values in readings if m == name]
        ts_list = [ts for ts, _ in mine]
        # Each reading taken was delivered once, in order. (The cadence itself is shown on
        # the virtual clock, in test_poller.py.)
        assert len(ts_list) == len(taken[name]) >= 6, ts_list
        assert sorted(ts_list) == sorted(taken[name])
        assert ts_list == sorted(ts_list) and len(set(ts_list)) == len(ts_list)
        assert all(t_start <= ts <= t_end for ts in ts_list), (t_start, ts_list, t_end)
        # On the 0.5 s grid or later: never two readings within one interval.
        gaps = [b - a for a, b in itertools.pairwise(ts_list)]
        assert all(g >= 250 for g in gaps), gaps
    # Taken at read time: each value is the model's between the reading's timestamp and its
    # commit (which comes after the timestamp, never before).
    windows = store_windows(caplog)
    for f in events(caplog, "reading_stored"):
        assert f["_created"] * 1000 - f["ts"] >= 0, f
        assert f["values"] == len(FIELD_KEYS)
    for meter, ts, values in readings:
        check_plausible(sim.meter(int(meter[1:])), ts, values, window_s=windows[(meter, ts)] + 0.05)


async def test_broker_outage_loses_nothing_and_keeps_order(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    with trio.fail_after(240):
        _sim, ports = await simulator(meters=3, seed=5)
        sub = collector(["v1/gateway/telemetry"])
        # A deadline no loaded machine misses: the meters must never fail here.
        config = bridge_config(
            tmp_path / "data", mosquitto, ports, defaults={"interval_s": 0.5, "timeout_s": 0.45}
        )
        async with running(config) as service:
            await sub.wait_for(lambda ms: len({m for m, _, _ in telemetry(sub)}) == 3, 30)
            mosquitto.stop()
            outage_start = trio.current_time()
            stopped_at = time.time()
            # The outage lasts until every meter was read 10 more times and the bridge failed
            # to reconnect more than once (its backoff growing meanwhile).
            assert service.publisher is not None
            client = service.publisher.clients[None]
            await wait_until(
                lambda: client.stats.connect_failures >= 2
                and all(
                    len([f for f in events(caplog, "reading_stored") if f["meter"] == m
                         and f["_created"] > stopped_at]) >= 11
                    for m in ("m0", "m1", "m2")
                ),
                60,
                "10 readings of each meter during the outage and failed reconnects",
            )  # fmt: skip
            snapshot_at = time.time()
            during = service.snapshot()
            assert during["mqtt"]["None"]["connected"] is False
            backlog = during["outbox"]["rows"]
            mosquitto.start()
            restarted = trio.current_time()
            await wait_delivered(caplog, sub, 120)
            caught_up = trio.current_time()
            final = service.snapshot()
        # Shutdown flushed what was taken after catching up.
        await wait_delivered(caplog, sub, 30)

    taken = stored(caplog)
    got = received(sub)
    assert not missing(taken, got)
    duplicates = check_order(got)
    # The outage never touched polling: every meter went on being read, without a failure.
    # (That a poller keeps its cadence is shown on the virtual clock, in test_poller.py.)
    during_outage = [
        f for f in events(caplog, "reading_stored") if stopped_at < f["_created"] < snapshot_at
    ]
    for name, meter in final["meters"].items():
        assert meter["failures"] == 0, (name, meter)
        assert len([f for f in during_outage if f["meter"] == name]) >= 10, (name, meter)
    # Every reading taken during the outage waited in the outbox.
    assert backlog >= len(during_outage), (backlog, len(during_outage))
    # The backlog drained: at shutdown the flush found (nearly) nothing left and emptied it.
    assert [f["outbox_rows"] for f in events(caplog, "flushed")] == [0]
    print(
        f"\noutage {restarted - outage_start:.1f} s, backlog {backlog} readings, caught up "
        f"{caught_up - restarted:.1f} s after the restart; taken "
        f"{sum(len(v) for v in taken.values())}, delivered {sum(len(v) for v in got.values())} "
        f"({duplicates} duplicates), lost 0"
    )


async def test_faulty_meter_recovers_and_nothing_taken_is_lost_or_corrupted(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real TCP and a real broker: meter 1's line garbles, corrupts, resets, drips and goes
    silent. It recovers and keeps producing readings; the healthy meters next to it never
    fail; every reading taken reaches the broker in order with the values the meter had.
    (That the others keep their cadence to the millisecond is shown on the virtual clock in
    test_poller.py; here the machine's speed decides the timing.)"""
    caplog.set_level(logging.DEBUG, logger="bridge")
    faults = "1:garbage=0.3,fcs=0.15,reset=0.1,drip=0.002,silence=0.7@0.03"
    healthy = ("m0", "m2", "m3")
    with trio.fail_after(120):
        sim, ports = await simulator(meters=4, seed=11, faults=faults)
        sub = collector(["v1/gateway/telemetry"])
        # The healthy meters get a deadline no loaded machine misses; meter 1 the tight one
        # its silences must trip.
        config = bridge_config(
            tmp_path / "data", mosquitto, ports,
            meter_extra={name: {"interval_s": 1.0, "timeout_s": 0.9} for name in healthy},
        )  # fmt: skip
        async with running(config) as service:

            def recovered() -> bool:
                injected = sim.meter(1).faults.injected
                readings = service.snapshot()["meters"]
                bad = readings["m1"]
                return (
                    all(injected.get(f, 0) > 0 for f in ("garbage", "fcs", "reset", "drip"))
                    and bad["successes"] >= 10
                    and bad["recovered_in_place"] >= 1
                    and bad["reassociations"] + bad["reconnects"] >= 1
                    and all(readings[name]["successes"] >= 5 for name in healthy)
                )

            with trio.move_on_after(90):
                while not recovered():
                    await trio.sleep(0.1)
            snapshot = service.snapshot()
        await wait_delivered(caplog, sub, 30)

    injected = sim.meter(1).faults.injected
    for fault in ("garbage", "fcs", "reset", "drip"):
        assert injected.get(fault, 0) > 0, injected
    bad = snapshot["meters"]["m1"]
    assert bad["successes"] >= 10, bad  # it kept producing readings
    assert bad["recovered_in_place"] >= 1, bad
    assert bad["reassociations"] + bad["reconnects"] >= 1, bad
    for name in healthy:
        good = snapshot["meters"][name]
        assert good["successes"] >= 5 and good["failures"] == 0, (name, good)
        assert good["recovered_in_place"] == 0 and good["reconnects"] == 0, (name, good)
    for i in (0, 2, 3):
        assert sim.meter(i).faults.injected == {}
    # Everything taken arrived, each meter's readings in the order taken.
    taken = stored(caplog)
    got = received(sub)
    assert not missing(taken, got)
    check_order(got)
    assert len(taken["m1"]) >= 10
    # Whatever the faults did to the bytes, no corrupted value got through: each value is the
    # model's somewhere between the reading's timestamp and its commit.
    windows = store_windows(caplog)
    for meter, ts, values in telemetry(sub):
        window = windows[(meter, ts)] + 0.05
        check_plausible(sim.meter(int(meter[1:])), ts, values, window_s=window)
    # No alarm but (perhaps) the faulty meter's own.
    assert not [a for a in snapshot["alarms"] if not a.startswith("meter.m1.")], snapshot
    print(f"\nfaulty meter: {bad['successes']} readings, injected {injected}, counters {bad}")


async def test_wrong_token_gives_one_error_line_and_an_alarm(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    with trio.fail_after(60):
        _sim, ports = await simulator(meters=1)
        config = bridge_config(
            tmp_path / "data",
            mosquitto,
            ports,
            mqtt={"host": mosquitto.host, "port": mosquitto.port, "token": "not-a-known-token"},
        )
        # Nothing can be flushed at shutdown: do not wait the default 10 s for it.
        async with running(config, shutdown_flush_s=0.5) as service:
            await wait_until(
                lambda: "mqtt.auth_refused" in service.snapshot()["alarms"], 30, "the alarm"
            )

            # Long enough for a retry loop to show itself: 8 more polls (4 s) meanwhile, their
            # readings in the outbox (a poll is counted a moment before its reading is stored).
            def polls() -> int:  # 0 until the meter's poller has started
                return int(service.snapshot()["meters"]["m0"].get("successes", 0))

            before = polls()
            await wait_until(
                lambda: (
                    polls() >= before + 8 and service.snapshot()["outbox"]["rows"] >= before + 8
                ),
                30,
                "8 more polls stored",
            )
            snapshot = service.snapshot()
    assert "mqtt.auth_refused" in snapshot["alarms"], snapshot["alarms"]
    assert snapshot["mqtt"]["None"]["connected"] is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "refused" in message and "access token" in message, message
    # One attempt reached the broker: no reconnect loop.
    assert mosquitto.log_text().count("not authorised") == 1, mosquitto.log_text()[-2000:]
    # The meters were read all along; their readings wait in the outbox.
    assert snapshot["meters"]["m0"]["successes"] >= 8
    assert snapshot["outbox"]["rows"] >= 8


class SummaryProbe(logging.Handler):
    """Notes, at the very moment each summary line is logged, every running poller's cycle
    count: the summaries can then be checked against the pollers exactly, however slow the
    machine (logging is synchronous, in the service's own thread)."""

    def __init__(self, service: BridgeService) -> None:
        super().__init__(logging.DEBUG)
        self.service = service
        #: Per summary: meter -> (poller id, cycles).
        self.seen: list[dict[str, tuple[int, int]]] = []
        #: Per summary: meter -> successes; readings published so far; Trio time.
        self.successes: list[dict[str, int]] = []
        self.published: list[int] = []
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if fields(record).get("event") != "summary":
            return
        pollers = {
            name: r.poller for name, r in self.service.meters.items() if r.poller is not None
        }
        self.seen.append({name: (id(p), p.stats.cycles) for name, p in pollers.items()})
        self.successes.append({name: p.stats.successes for name, p in pollers.items()})
        publisher = self.service.publisher
        self.published.append(publisher.stats.published_readings if publisher else 0)
        self.times.append(trio.current_time())


async def test_summary_line_reports_cycles_rates_outbox_and_latency(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each summary reports exactly what the pollers and the publisher did since the previous
    one (checked against their counters at the moment the line is logged, so however slow
    the machine is)."""
    caplog.set_level(logging.INFO, logger="bridge")
    with trio.fail_after(60):
        _sim, ports = await simulator(meters=2)
        config = bridge_config(
            tmp_path / "data",
            mosquitto,
            ports,
            bridge={"summary_interval_s": 1.0},
            defaults={"interval_s": 0.25, "timeout_s": 0.2},
        )
        service_log = logging.getLogger("bridge.service")
        async with running(config) as service:
            probe = SummaryProbe(service)
            service_log.addHandler(probe)
            try:
                # Until delivery has gone on for a whole summary interval.
                while len(probe.published) < 3 or probe.published[-1] == probe.published[-2]:
                    await trio.sleep(0.05)
            finally:
                service_log.removeHandler(probe)
    # (A summary logged during the shutdown, after the probe left, is not checked.)
    summaries = events(caplog, "summary")[: len(probe.seen)]
    assert len(summaries) == len(probe.seen) >= 3, summaries
    for i, summary in enumerate(summaries):
        assert summary["_level"] == logging.INFO
        before = probe.seen[i - 1] if i else {}
        cycles = sum(c - before.get(name, (0, 0))[1] for name, (_, c) in probe.seen[i].items())
        done_before = probe.successes[i - 1] if i else {}
        successes = sum(n - done_before.get(name, 0) for name, n in probe.successes[i].items())
        assert (summary["cycles"], summary["readings"]) == (cycles, successes), (i, summary)
        expected_rate = round(successes / cycles, 4) if cycles else None
        assert summary["success_rate"] == expected_rate, summary
        assert isinstance(summary["outbox_rows"], int) and summary["outbox_rows"] >= 0
        assert 0 < summary["latency_p50_ms"] <= summary["latency_p95_ms"], summary
        assert summary["meters"] == 2 and summary["alarms"] == 0
        if i:
            rate = (probe.published[i] - probe.published[i - 1]) / (
                probe.times[i] - probe.times[i - 1]
            )
            # The probe's clock is read when the line is logged, a moment after the summary
            # read its own: the rates agree to within that moment.
            assert summary["published_per_s"] == pytest.approx(rate, rel=0.02, abs=0.02), (
                summary,
                rate,
            )
    # The meters were read, and delivery went on within the last interval.
    assert sum(s["readings"] for s in summaries) > 0
    assert summaries[-1]["published_per_s"] > 0, summaries
    # The line itself, as an operator sees it.
    line = next(r for r in caplog.records if fields(r).get("event") == "summary")
    from bridge.logs import LogfmtFormatter

    text = LogfmtFormatter(journald_prefix=True).format(line)
    assert text.startswith("<6>service event=summary cycles=")
    for key in ("success_rate=", "published_per_s=", "outbox_rows=", "latency_p50_ms=",
                "latency_p95_ms="):  # fmt: skip
        assert key in text, text
    assert math.isfinite(float(text.split("latency_p95_ms=")[1].split()[0]))


async def test_reload_in_process_and_summaries_across_it(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """reload() with a new config: a removed meter stops (released, gateway disconnect), an
    added one starts, the others go on untouched; the summaries around it count only live
    meters, each cycle exactly once, and never go negative."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    with trio.fail_after(60):
        sim, ports = await simulator(meters=3)
        sub = collector(["v1/gateway/#"])
        options: dict[str, Any] = {
            "bridge": {"summary_interval_s": 0.5},
            # A deadline no loaded machine misses: every cycle here must succeed.
            "defaults": {"interval_s": 0.25, "timeout_s": 0.24},
        }
        first = bridge_config(tmp_path / "data", mosquitto, ports[:2], **options)
        second = bridge_config(tmp_path / "data", mosquitto, ports, **options)
        # m1 goes away, m2 arrives: m0 and m2 only.
        second = attrs.evolve(second, meters=(second.meters[0], second.meters[2]))
        service_log = logging.getLogger("bridge.service")
        async with running(first) as service:
            probe = SummaryProbe(service)
            service_log.addHandler(probe)
            try:
                while len(probe.seen) < 3 or len(stored(caplog).get("m1", [])) < 3:
                    await trio.sleep(0.05)
                m0_poller = service.meters["m0"].poller
                assert await service.reload(second) is True
                reloaded_at = time.time()
                assert service.meters["m0"].poller is m0_poller  # m0 untouched
                before = len(probe.seen)
                while (
                    len(probe.seen) < before + 3
                    or len([ts for ts in stored(caplog).get("m2", []) if ts > reloaded_at * 1000])
                    < 3
                ):
                    await trio.sleep(0.05)
                snapshot = service.snapshot()
            finally:
                service_log.removeHandler(probe)
            seen = list(probe.seen)
        await sub.wait_for(lambda ms: any(m.topic == "v1/gateway/disconnect" for m in ms), 30)
    assert sorted(snapshot["meters"]) == ["m0", "m2"]
    assert snapshot["reloads"] == 1
    assert sim.meter(1).counters.releases == 1
    assert sim.meter(0).counters.connections == 1  # m0 untouched
    assert sim.meter(0).counters.associations == 1
    taken = stored(caplog)
    assert not [ts for ts in taken["m1"] if ts > reloaded_at * 1000]
    # m0 was read on both sides of the reload, and never failed.
    assert [ts for ts in taken["m0"] if ts > reloaded_at * 1000]
    assert snapshot["meters"]["m0"]["failures"] == 0
    summaries = events(caplog, "summary")[: len(seen)]
    assert len(summaries) == len(seen) >= 6
    for summary, running_then in zip(summaries, seen, strict=True):
        assert summary["meters"] == 2 and len(running_then) == 2, (summary, running_then)
        assert summary["cycles"] >= 0 and summary["readings"] == summary["cycles"], summary
        assert summary["success_rate"] in (1.0, None), summary
    # Each cycle counted once: the summaries add up to the cycles every poller had done at
    # the last summary it was running for (m1's until the reload).
    last: dict[int, int] = {}
    for running_then in seen:
        last.update(running_then.values())
    assert sum(s["cycles"] for s in summaries) == sum(last.values()), (summaries, seen)
    assert len(last) == 3  # m0's one poller, m1's and m2's
    disconnects = [json.loads(m.payload) for m in sub.on("v1/gateway/disconnect")]
    assert disconnects == [{"device": "m1"}]


async def test_failing_meter_raises_its_alarm_and_goes_offline_then_back(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
) -> None:
    """The circuit of a meter that stops answering opens: its alarm is in the snapshot and
    ThingsBoard is told it is offline; when it answers again both are undone. The meter's name
    has dots, which must not be taken for alarm-name separators."""
    with trio.fail_after(180):
        sim, ports = await simulator(meters=2)
        sub = collector(["v1/gateway/attributes"])
        config = bridge_config(
            tmp_path / "data", mosquitto, ports, names=["m0", "site.b.meter"],
            defaults={"interval_s": 0.2, "timeout_s": 0.19},
            # m0 must never fail: a deadline no loaded machine misses.
            meter_extra={"m0": {"interval_s": 0.5, "timeout_s": 0.45}},
        )  # fmt: skip
        options = {"breaker_threshold": 3, "backoff_initial": 0.1, "backoff_max": 0.3}
        async with running(config, poller_options=options) as service:
            # Both come online (one attributes message each, or one for both).
            await sub.wait_for(
                lambda ms: {k for m in ms for k in json.loads(m.payload)} >= {"m0", "site.b.meter"},
                30,
            )
            sim.set_faults("1:silence=1000")
            with trio.move_on_after(60):
                while "meter.site.b.meter.failing" not in service.snapshot()["alarms"]:
                    await trio.sleep(0.05)
            snapshot = service.snapshot()
            alarm = snapshot["alarms"].get("meter.site.b.meter.failing", "")
            assert "keeps failing" in alarm and "3 cycles in a row" in alarm, snapshot["alarms"]
            assert snapshot["meters"]["site.b.meter"]["online"] is False
            assert snapshot["meters"]["m0"]["online"] is True
            await sub.wait_for(
                lambda ms: (
                    {"site.b.meter": {"online": False}} in [json.loads(m.payload) for m in ms]
                ),
                30,
            )
            sim.clear_faults()
            with trio.move_on_after(60):
                while service.snapshot()["alarms"]:
                    await trio.sleep(0.05)
            snapshot = service.snapshot()
            assert snapshot["alarms"] == {}
            assert snapshot["meters"]["site.b.meter"]["online"] is True
            assert snapshot["meters"]["site.b.meter"]["circuit_opens"] == 1
            assert snapshot["meters"]["m0"]["failures"] == 0
            await sub.wait_for(
                lambda ms: (
                    [json.loads(m.payload) for m in ms][-1] == {"site.b.meter": {"online": True}}
                ),
                30,
            )
    statuses = [json.loads(m.payload) for m in sub.messages]
    # Only the two meters' own names, never a fragment such as "site".
    assert {name for body in statuses for name in body} == {"m0", "site.b.meter"}
