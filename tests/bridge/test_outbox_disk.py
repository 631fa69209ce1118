"""Disk full, read-only and I/O errors under the outbox: readings wait in a bounded in-memory
spill, one alarm per episode, and everything is written (in order) once the disk is back.

The file systems are real: a small tmpfs mounted under the test's data directory (root only;
skipped with the reason otherwise), filled with a file or remounted read-only, then freed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.health import Verdict, evaluate
from bridge.outbox import (
    ALARM_WRITE_FAILED,
    SPILL_OVERHEAD,
    AsyncOutbox,
    Outbox,
    OutboxError,
    OutboxWriter,
)
from bridge.readings import Reading
from bridge.web import console as console_module
from tests.bridge.delivery import check_order, missing, received
from tests.bridge.mosquitto import Collector, Mosquitto
from tests.bridge.test_service import bridge_config, events, running, stored, wait_delivered
from tests.bridge.tmpfs import fill, small_tmpfs

T0 = 1_700_000_000_000


def reading(i: int, meter: str = "m1") -> Reading:
    return Reading(
        meter=meter, ts_ms=1_700_000_000_000 + i, values={"i": f"{i:05d}", "pad": "x" * 40}
    )


class Alarms:
    """Records ``on_alarm`` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str]] = []

    def __call__(self, name: str, active: bool, message: str) -> None:
        self.calls.append((name, active, message))


def _failed_retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "spilled readings failed" in r.getMessage()]


class CallCounter:
    """Counts the calls of ``obj.<name>`` from now on (the method still runs)."""

    def __init__(self, obj: Any, name: str) -> None:
        self.calls = 0
        method = getattr(obj, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await method(*args, **kwargs)

        setattr(obj, name, counted)


async def _wait(predicate: Callable[[], object], timeout: float) -> float:
    """Seconds until `predicate` holds (fails the test after `timeout`)."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
    return trio.current_time() - start


async def test_writer_spills_while_the_disk_is_full_and_writes_everything_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    with small_tmpfs(tmp_path / "data") as data:
        box = await AsyncOutbox.open(data)
        alarms = Alarms()
        writer = OutboxWriter(box, spill_retry_s=0.2, on_alarm=alarms)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for i in range(5):
                assert isinstance(await writer.put(reading(i)), int)
            filler = fill(data)
            with trio.fail_after(5):  # producers are never held up by the failing disk
                # Space the journal had already reserved may take a few more first.
                n = 5
                while await writer.put(reading(n)) is not None:
                    n += 1
                    assert n < 20, "the full disk never failed a write"
                results = [await writer.put(reading(i)) for i in range(n + 1, n + 50)]
            assert results == [None] * 49
            assert not writer.writable and writer.alarms == {ALARM_WRITE_FAILED}
            assert writer.spill_depth()[0] == 50
            # Several retries fail meanwhile (one every 0.2 s).
            await _wait(lambda: len(_failed_retries(caplog)) >= 3, 5.0)
            assert writer.spill_depth()[0] == 50 and box.depth()[0] == n
            assert [(n, a) for n, a, _ in alarms.calls] == [(ALARM_WRITE_FAILED, True)]
            assert "cannot write" in alarms.calls[0][2]

            filler.unlink()
            took = await _wait(lambda: writer.writable, 3.0)
            nursery.cancel_scope.cancel()
        assert took < 1.0, took  # within one retry period (0.2 s) and a write
        assert writer.spill_depth() == (0, 0)
        assert [(n, a) for n, a, _ in alarms.calls] == [
            (ALARM_WRITE_FAILED, True),
            (ALARM_WRITE_FAILED, False),
        ]
        assert "50 readings kept in memory were written, none lost" in alarms.calls[1][2]
        rows = await box.peek(1000)
        assert [r.reading.ts_ms - 1_700_000_000_000 for r in rows] == list(range(n + 50))
        assert writer.stats.spilled == 50 and writer.stats.spill_episodes == 1
        await box.aclose()
    # No traceback, no per-write error lines: the alarm is the only report.
    assert not [r for r in caplog.records if r.exc_info], "tracebacks logged"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("code", "kind"),
    [(13, "disk full"), (8, "read-only"), (10 | (3 << 8), "I/O error"), (14, "cannot open")],
)
def test_storage_failures_are_told_apart_from_database_errors(
    tmp_path: Path, code: int, kind: str
) -> None:
    # SQLite reports read-only and I/O errors by these codes; a remount or a failing card
    # cannot be staged in a test, a full tmpfs can (above).
    with Outbox(tmp_path) as box:

        def fail() -> None:
            exc = sqlite3.OperationalError("simulated")
            exc.sqlite_errorcode = code  # type: ignore[attr-defined]
            raise exc

        with pytest.raises(OutboxError) as info:
            box._guard(fail)
        assert info.value.disk and kind in str(info.value) and str(box.path) in str(info.value)

        def corrupt() -> None:
            exc = sqlite3.DatabaseError("database disk image is malformed")
            exc.sqlite_errorcode = 11  # type: ignore[attr-defined]
            raise exc

        with pytest.raises(OutboxError) as info:
            box._guard(corrupt)
        assert not info.value.disk


async def test_spill_is_bounded_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data") as data:
        box = await AsyncOutbox.open(data)
        size = len(reading(0).to_json()) + SPILL_OVERHEAD  # what one costs in the spill
        writer = OutboxWriter(box, spill_retry_s=0.2, spill_max_bytes=20 * size)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.put(reading(0))
            filler = fill(data)
            # Space the journal had already reserved may take a few more before it fails.
            results = [await writer.put(reading(i)) for i in range(1, 101)]
            first = results.index(None) + 1
            assert all(r is None for r in results[first - 1 :])
            spilled = 101 - first
            assert spilled >= 50, first
            rows, nbytes = writer.spill_depth()
            assert rows <= 20 and nbytes <= 20 * size
            assert writer.stats.spilled == spilled
            assert writer.stats.spill_dropped >= spilled - 21
            filler.unlink()
            await _wait(lambda: writer.writable, 3.0)
            nursery.cancel_scope.cancel()
        kept = [r.reading.ts_ms - 1_700_000_000_000 for r in await box.peek(1000)]
        # What was written before, then spilled readings (the newest: the oldest were dropped;
        # one a retry was writing as the bound was reached may be among them), in order.
        assert kept[:first] == list(range(first)) and kept == sorted(set(kept))
        assert kept[-19:] == list(range(82, 101))
        # Every spilled reading is either written or counted as dropped, never both.
        assert len(kept) - first == spilled - writer.stats.spill_dropped
        await box.aclose()


async def test_service_keeps_polling_through_a_full_disk_and_recovers(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")
    with small_tmpfs(tmp_path / "data") as data, trio.fail_after(60):
        _sim, ports = await simulator(meters=3, seed=9)
        sub = collector(["v1/gateway/telemetry"])
        config = bridge_config(data, mosquitto, ports)
        async with running(config) as service:
            await sub.wait_for(lambda ms: len(received(sub)) == 3)
            filler = fill(data)
            await _wait(lambda: "outbox.write_failed" in service.all_alarms(), 3.0)
            before = {n: m["successes"] for n, m in service.snapshot()["meters"].items()}
            # Polling goes on while the disk is full: every meter takes several more readings
            # (none would come if a poller waited for the disk).
            await _wait(
                lambda: (
                    all(
                        m["successes"] - before[n] >= 4
                        for n, m in service.snapshot()["meters"].items()
                    )
                    # A poll is counted a moment before its reading is handed over.
                    and service.snapshot()["outbox"]["spill_rows"] >= 3 * 4
                ),
                10.0,
            )
            during = service.snapshot()
            status = service._status_line()
            verdict = evaluate(await service.status(), time.time())
            filler.unlink()
            took = await _wait(lambda: "outbox.write_failed" not in service.all_alarms(), 5.0)
            await wait_delivered(caplog, sub, 10)
            after = service.snapshot()

    # Polling went on while the disk was full, and what it took waits in the spill.
    for name, meter in during["meters"].items():
        assert meter["successes"] - before[name] >= 4, (name, meter)
        assert meter["crashes"] == 0 and meter["state"] == "ok", (name, meter)
        assert meter["online"] is True
    outbox = during["outbox"]
    assert outbox["writable"] is False and outbox["spill_rows"] >= 3 * 4, outbox
    assert "cannot be written (disk full" in outbox["problem"]
    assert "OUTBOX CANNOT WRITE" in status
    # `dlms-bridge health` names it in its outbox check, not "OK".
    outbox_check = next(c for c in verdict.checks if c.name == "outbox")
    assert outbox_check.verdict is Verdict.WARNING, outbox_check
    assert "cannot be written (disk full" in outbox_check.detail
    # Written again within one interval (0.5 s: the retry period follows the shortest interval)
    # and a write, with room for a loaded machine.
    assert took < 0.5 + 1.0, took
    assert after["outbox"]["writable"] is True and after["outbox"]["spill_rows"] == 0
    assert after["alarms"] == {}
    # Nothing taken was lost: the spilled readings reached the broker, in order.
    taken = stored(caplog)
    got = received(sub)
    assert not missing(taken, got)
    check_order(got)
    # One error line for the episode, no traceback, no crash.
    assert not [r for r in caplog.records if r.exc_info]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert [e["alarm"] for e in events(caplog, "alarm")] == ["outbox.write_failed"]
    cleared = events(caplog, "alarm_cleared")
    assert [e["alarm"] for e in cleared] == ["outbox.write_failed"]
    assert "kept in memory were written" in cleared[0]["message"]
    assert not events(caplog, "poller_crashed")


async def test_an_existing_outbox_opens_on_a_full_disk_and_spills(tmp_path: Path) -> None:
    # A restart while the disk is full (systemd restarts the bridge, say) must not be refused.
    with small_tmpfs(tmp_path / "data") as data:
        box = await AsyncOutbox.open(data)
        await box.append([reading(0)])
        await box.aclose()
        filler = fill(data)
        box = await AsyncOutbox.open(data)
        assert box.depth()[0] == 1
        writer = OutboxWriter(box, spill_retry_s=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.put(reading(1)) is None
            assert not writer.writable
            filler.unlink()
            await _wait(lambda: writer.writable, 3.0)
            nursery.cancel_scope.cancel()
        assert [r.reading.ts_ms - 1_700_000_000_000 for r in await box.peek(10)] == [0, 1]
        await box.aclose()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_spill_memory_stays_within_its_bound(tmp_path: Path) -> None:
    # The bound counts each reading's JSON plus SPILL_OVERHEAD: what the process really holds.
    bound = 4 * 1024 * 1024
    values = {
        "voltage_l1": 230.12, "current_l1": 4.321, "frequency": 50.01,
        "active_power": 994.2, "active_energy": 123456.7,
    }  # fmt: skip
    with small_tmpfs(tmp_path / "data") as data:
        box = await AsyncOutbox.open(data)
        writer = OutboxWriter(box, spill_retry_s=3600, spill_max_bytes=bound)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            fill(data)
            i = 0
            while writer.writable:
                await writer.put(Reading("m", T0 + i, values))
                i += 1
            before = _rss_kib()
            for j in range(50_000):
                await writer.put(Reading(f"meter-{j % 1000:04d}", T0 + j, values))
            growth = (_rss_kib() - before) * 1024
            rows, accounted = writer.spill_depth()
            nursery.cancel_scope.cancel()
        await box.aclose()
    print(f"\nspill: {rows} readings, {accounted} bytes accounted, RSS grew {growth} bytes")
    assert accounted <= bound and writer.stats.spill_dropped > 0
    assert growth < 1.5 * bound, (growth, bound)


async def test_put_many_spills_too_and_keeps_the_order(tmp_path: Path) -> None:
    # Readings from worker processes and backfilled profiles arrive in groups (put_many).
    with small_tmpfs(tmp_path / "data") as data:
        box = await AsyncOutbox.open(data)
        writer = OutboxWriter(box, spill_retry_s=0.2)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            filler = fill(data)
            n = 0
            while writer.writable:
                await writer.put(reading(n))
                n += 1
                assert n < 30, "the full disk never failed a write"
            ids = await writer.put_many([reading(i) for i in range(n, n + 10)])
            assert ids == [None] * 10
            filler.unlink()
            await _wait(lambda: writer.writable, 3.0)
            nursery.cancel_scope.cancel()
        kept = [r.reading.ts_ms - T0 for r in await box.peek(1000)]
        assert kept == list(range(n + 10))
        await box.aclose()


async def test_console_stores_on_a_full_disk_log_one_line_per_episode(
    tmp_path: Path,
    mosquitto: Mosquitto,
    collector: Callable[[list[str]], Collector],
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The console's alarm and history stores share the data directory: a full disk gives one
    error line per episode (no traceback each tick), and the console goes on afterwards."""
    caplog.set_level(logging.DEBUG, logger="bridge")
    # The console's tick, shortened: several failed attempts of the alarm store in a second.
    monkeypatch.setattr(console_module, "TICK_S", 0.2)
    with small_tmpfs(tmp_path / "data") as data, trio.fail_after(60):
        _sim, ports = await simulator(meters=2, seed=3)
        sub = collector(["v1/gateway/telemetry"])
        config = bridge_config(data, mosquitto, ports)
        async with running(config, console=True) as service:
            assert service.console is not None
            await sub.wait_for(lambda ms: len(received(sub)) == 2)
            filler = fill(data)
            await _wait(lambda: "outbox.write_failed" in service.all_alarms(), 3.0)
            # Both stores fail to write (the history store flushes every 2 s).
            await _wait(lambda: events(caplog, "alarm_store_write_failed"), 10.0)
            await _wait(lambda: events(caplog, "history_write_failed"), 10.0)
            ticks = CallCounter(service.console, "tick")
            await _wait(lambda: ticks.calls >= 3, 10.0)
            filler.unlink()
            await _wait(lambda: "outbox.write_failed" not in service.all_alarms(), 5.0)
            # The console goes on: each store writes again and says after how many failures.
            await _wait(lambda: events(caplog, "alarm_store_write_failed_ended"), 10.0)
            await _wait(lambda: events(caplog, "history_write_failed_ended"), 10.0)
            await wait_delivered(caplog, sub, 10)
    # Several failed ticks of the alarm store, one error line.
    (ended,) = events(caplog, "alarm_store_write_failed_ended")
    assert ended["failures"] >= 3, ended
    assert not [r.getMessage() for r in caplog.records if r.exc_info]
    web_errors = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("bridge.web") and r.levelno >= logging.ERROR
    ]
    # At most one line for each of the two stores (alarms, history).
    assert len(web_errors) <= 2, web_errors
