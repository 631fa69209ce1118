"""The operators' console of one running service: its stores, its live state, its web server.

Everything the console shows comes from the live :class:`~bridge.service.BridgeService` (its
pollers, publisher and outbox); the console adds only what the service does not keep: local
history for charts, the alarm store, monotonic totals for metrics, and the event stream. The
service starts it in its own nursery (:meth:`BridgeService.start_extra`).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from bridge.logs import log_event
from bridge.publisher import MAX_ALARMS_PUBLISHED
from bridge.readings import Reading, Value
from bridge.web.alarm_rules import AlarmRules, Facts, MeterFacts
from bridge.web.alarms import AlarmChange, AlarmStore
from bridge.web.auth import Auth, is_loopback, load_or_create_token
from bridge.web.events import EventHub
from bridge.web.history import HistoryStore
from bridge.web.tracker import Tracker

if TYPE_CHECKING:
    from bridge.service import BridgeService

__all__ = ["Console", "LastReading"]

log = logging.getLogger("bridge.web")

#: How often the console follows the service (totals, alarm rules, states, alarm store).
TICK_S = 1.0
#: The alarm rules look at every meter; in a large fleet they run less often than every tick,
#: once per this many meters' worth of seconds (4 s at 2,000 meters, 10 s at 5,000; each round
#: costs some 15-35 us per meter, ~7% of the service's CPU at 2,000 meters every 2 s). Their
#: windows are minutes long, or several intervals: the delay is small beside them.
RULES_METERS_PER_S = 500
HISTORY_FLUSH_S = 2.0
HISTORY_PRUNE_S = 300.0
#: The alarm raised when the web server cannot listen.
ALARM_LISTEN = "web.listen_failed"
#: The alarm raised when the console stopped on an error (the bridge goes on without it).
ALARM_FAILED = "web.console_failed"


#: Key lists of the last readings, shared (bounded: emptied when full).
_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}
_KEYS_MAX = 1024


class LastReading:
    """What the console keeps of a meter's newest reading: its time and values.

    One per meter, so kept small: the values in a tuple beside a tuple of their keys shared by
    the meters reporting the same keys (a :class:`~bridge.readings.Reading` as decoded from a
    worker's line held a kilobyte and more: its own key strings, and four dicts).
    """

    __slots__ = ("_keys", "_values", "ts_ms")

    def __init__(self, reading: Reading) -> None:
        self.take(reading)

    def take(self, reading: Reading) -> None:
        """Keep ``reading`` instead of what was kept (one object a meter, not one a reading)."""
        values = reading.values
        keys = tuple(values)
        shared = _KEYS.get(keys)
        if shared is None:
            if len(_KEYS) >= _KEYS_MAX:
                _KEYS.clear()
            shared = _KEYS[keys] = keys
        self._keys = shared
        self._values = tuple(values.values())
        self.ts_ms = reading.ts_ms

    @property
    def values(self) -> dict[str, Value]:
        """The values by key, in the reading's order."""
        return dict(zip(self._keys, self._values, strict=True))


def rules_every_s(meters: int) -> float:
    """How often the alarm rules run with this many meters (at least every tick)."""
    return max(TICK_S, meters / RULES_METERS_PER_S)


class Console:
    """See the module docstring."""

    def __init__(self, service: BridgeService) -> None:
        self.service = service
        cfg = service.config
        data_dir = cfg.bridge.data_dir
        self.web = cfg.web
        self.tracker = Tracker()
        self.hub = EventHub()
        self.history = HistoryStore(
            data_dir,
            max_age_s=cfg.web.history_max_age_s,
            max_rows=cfg.web.history_max_rows,
            step_s=cfg.web.history_step_s,
        )
        longest = max((m.interval_s for m in cfg.meters), default=15.0)
        self.alarms = AlarmStore(data_dir, grace_s=min(600.0, max(30.0, 6 * longest)))
        self.rules = AlarmRules(cfg.alarms)
        self._rule_alarms: dict[str, str] = {}
        self._rules_due = -math.inf
        #: meter -> its last reading (time in ms and values).
        self.last: dict[str, LastReading] = {}
        self.url: str | None = None
        self.listening = trio.Event()
        self.admin_lock = trio.Lock()
        self.token_path: str | None = None
        self.auth = Auth("", open_reads=False)
        self._oldest_ms: int | None = None
        self._states: dict[str, str] = {}
        self._attributes_sent = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the stores and the token; called by the service before :meth:`run`."""
        data_dir = self.service.config.bridge.data_dir
        if self.web.token is not None or not self.web.enabled:
            token = self.web.token or ""
        else:
            token, path = await trio.to_thread.run_sync(load_or_create_token, data_dir)
            self.token_path = str(path)
        host, _ = self.web.host_port
        self.auth = Auth(token, open_reads=is_loopback(host))
        for store in (self.history, self.alarms):
            await trio.to_thread.run_sync(_open_or_set_aside, store)
        self.service.reading_listeners.append(self._on_readings)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the service and serve the web console until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow)
                nursery.start_soon(self._keep_history)
                if self.web.enabled:
                    await nursery.start(self._serve)
                task_status.started()
        except Exception as exc:  # the bridge keeps delivering without a console
            log.exception("event=console_failed")
            self.service._set_alarm(
                ALARM_FAILED, True, f"the console stopped: {type(exc).__name__}: {exc}"
            )
        finally:
            with trio.CancelScope(shield=True):
                self.hub.close_all()
                if self._on_readings in self.service.reading_listeners:
                    self.service.reading_listeners.remove(self._on_readings)
                await trio.to_thread.run_sync(self.history.close)
                self.alarms.close()

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        from bridge.web.app import make_app

        host, port = self.web.host_port
        try:
            sock = _listen(host, port)
        except OSError as exc:
            message = f"the console cannot listen on {self.web.listen}: {exc.strerror or exc}"
            self.service._set_alarm(ALARM_LISTEN, True, message)
            task_status.started()
            return
        bound = sock.getsockname()
        self.url = f"http://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}"
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("bridge.web.server")
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = 30
        where = {"token_file": self.token_path} if self.token_path else {"token": "from config"}
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, make_app(self), config)
            log_event(log, logging.INFO, "console_listening", url=self.url, **where)
            self.listening.set()
            task_status.started()

    # -- following the service ---------------------------------------------------------------

    def _on_readings(self, readings: Sequence[Reading]) -> None:
        last, add = self.last, self.history.add
        watched = bool(self.hub.subscribers)
        for reading in readings:
            try:
                kept = last.get(reading.meter)
                if kept is None:
                    last[reading.meter] = LastReading(reading)
                else:
                    kept.take(reading)
                add(reading)
                if watched:
                    self._tell_watchers(reading)
            except Exception:  # one reading the console cannot take never costs the others
                log.exception("event=reading_listener_failed meter=%s", reading.meter)

    def _tell_watchers(self, reading: Reading) -> None:
        poller = self.service.polled(reading.meter)
        self.hub.publish(
            "reading",
            {
                "meter": reading.meter,
                "ts": reading.ts_ms,
                "values": dict(reading.values),
                "units": dict(poller.units) if poller is not None else {},
            },
        )

    def sync_totals(self) -> None:
        """Bring the monotonic per-meter totals up to date (meters polled in worker processes
        from what their workers last reported)."""
        service = self.service
        for name, running in service.meters.items():
            self.tracker.update(name, running.poller)
        keep = set(service.meters)
        if service.pool is not None:
            for name in service.pool.meter_names():
                self.tracker.update(name, service.pool.remote.get(name))
                keep.add(name)
        self.tracker.forget(keep)

    def oldest_unsent_age_s(self) -> float | None:
        """Age of the oldest reading still in the outbox (None when it is empty)."""
        if self._oldest_ms is None:
            return None
        return max(0.0, time.time() - self._oldest_ms / 1000)

    def uptime_s(self) -> float:
        """Seconds since the service started."""
        return time.time() - self.service.started_at

    async def _follow(self) -> None:
        episode = _WriteEpisode("alarm_store_write_failed")
        while True:
            try:
                await self.tick()
                episode.ok()
            except sqlite3.Error as exc:  # a full disk: one line per episode, not per tick
                episode.failed(exc)
            except Exception:  # a console bug must not stop the bridge
                log.exception("event=console_tick_failed")
            await trio.sleep(TICK_S)

    async def tick(self) -> None:
        """One round: totals, alarm rules, alarm store, meter states, the outbox's oldest row."""
        service = self.service
        now = trio.current_time()
        if now >= self._rules_due:
            self.sync_totals()
            self._apply_rules()
            self._rules_due = now + rules_every_s(len(self.last))
        changes = self.alarms.sync(self._described(service.all_alarms()))
        for change in changes:
            self.hub.publish("alarm", {"change": change.kind, **change.alarm})
        if changes or not self._attributes_sent:
            self._publish_alarm_attributes(changes)
        states = {
            name: running.poller.stats.state if running.poller is not None else "starting"
            for name, running in service.meters.items()
        }
        if service.pool is not None:
            for name in service.pool.meter_names():
                remote = service.pool.remote.get(name)
                if name not in service.paused:
                    states[name] = remote.stats.state if remote is not None else "starting"
        for name, state in states.items():
            if self._states.get(name) != state:
                self._states[name] = state
                self.hub.publish("state", {"meter": name, "state": state})
        for name in list(self._states):
            if name not in states:
                del self._states[name]
                self.hub.publish("state", {"meter": name, "state": "removed"})
        # Meters polled in worker processes have no poller here, but their readings come in.
        polled = set(service.meters)
        if service.pool is not None:
            polled.update(m.name for m in service.own_meters(service.config))
        for name in list(self.last):
            if name not in polled:
                del self.last[name]
        if service.outbox is not None:
            if service.outbox.depth()[0] == 0:
                self._oldest_ms = None
            else:
                rows = await service.outbox.peek(1)
                self._oldest_ms = rows[0].reading.ts_ms if rows else None

    def _described(self, alarms: dict[str, str]) -> dict[str, str]:
        """Alarms of the MQTT connections and the outbox carry only their name: say more."""
        out = dict(alarms)
        texts = {
            "mqtt.auth_refused": "the MQTT broker refuses the credentials (check the token)",
            "mqtt.connack_refused": "the MQTT broker refuses the connection",
            "mqtt.session_takeover": (
                "the MQTT broker keeps closing the connection right after accepting it: another "
                "client is probably using this token or client id"
            ),
        }
        # Stable texts: a message that changed every second would rewrite the alarm each time.
        for name, message in alarms.items():
            if message == name and name in texts:
                out[name] = texts[name]
            elif message == name and name == "outbox.overflow":
                out[name] = "the outbox is full: the oldest readings make room for new ones"
        return out

    def facts(self) -> Facts:
        """What the alarm rules look at, read from the live service."""
        service = self.service
        meters = {}
        configs = {name: running.meter for name, running in service.meters.items()}
        if service.pool is not None:
            for name in service.pool.meter_names():
                config = service.pool.meter_config(name)
                if config is not None and name not in service.paused:
                    configs[name] = config
        for name, config in configs.items():
            totals = self.tracker.meters.get(name)
            counts = totals.counts if totals is not None else {}
            poller = service.polled(name)
            last = self.last.get(name)
            meters[name] = MeterFacts(
                interval_s=config.interval_s,
                cycles=counts.get("cycles", 0),
                successes=counts.get("successes", 0),
                resyncs=counts.get("resyncs", 0),
                last_reading_s=last.ts_ms / 1000 if last is not None else None,
                state=poller.stats.state if poller is not None else "starting",
                last_error=poller.stats.last_error if poller is not None else None,
            )
        rows, nbytes = service.outbox.depth() if service.outbox is not None else (0, 0)
        return Facts(
            now=time.monotonic(),
            wall=time.time(),
            taken=sum(t.counts["readings"] for t in self.tracker.meters.values()),
            published=service.publisher.stats.published_readings if service.publisher else 0,
            meters=meters,
            outbox_rows=rows,
            outbox_bytes=nbytes,
            outbox_max_rows=service.config.publish.outbox_max_rows,
            outbox_max_bytes=service.config.publish.outbox_max_bytes,
        )

    def _apply_rules(self) -> None:
        """Raise and clear the threshold alarms through the service."""
        active = self.rules.evaluate(self.facts())
        for name, message in active.items():
            if name not in self.service.alarms:
                self.service._set_alarm(name, True, message)
        for name in self._rule_alarms.keys() - active.keys():
            self.service._set_alarm(name, False, "cause gone")
        self._rule_alarms = active

    def _publish_alarm_attributes(self, _changes: list[AlarmChange]) -> None:
        publisher = self.service.publisher
        if publisher is None:
            return
        self._attributes_sent = True
        active = self.alarms.newest_active(MAX_ALARMS_PUBLISHED)
        # The service publishes the count and the names ("alarms", "alarm_names"); these are
        # the details from the store, of the newest MAX_ALARMS_PUBLISHED.
        publisher.publish_gateway_attributes(
            {
                "alarm_details": [
                    {
                        "name": a["name"],
                        "message": a["message"],
                        "since": a["raised_ms"],
                        "acked": a["acked"],
                    }
                    for a in active
                ],
            }
        )

    async def _keep_history(self) -> None:
        last_prune = -HISTORY_PRUNE_S
        episode = _WriteEpisode("history_write_failed")
        while True:
            await trio.sleep(HISTORY_FLUSH_S)
            try:
                await self.history.flush()
                if trio.current_time() - last_prune >= HISTORY_PRUNE_S:
                    last_prune = trio.current_time()
                    await self.history.prune()
                episode.ok()
            except sqlite3.Error as exc:
                # The history is for charts only: a full disk loses chart points, not readings.
                episode.failed(exc)

    def state_summary(self) -> dict[str, Any]:
        """Counts for the status call."""
        return {"event_streams": self.hub.subscribers, "history_dropped": self.history.dropped}


class _WriteEpisode:
    """A store that cannot write: one error line when it starts, one line with the count of
    failed attempts when it writes again."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.failures = 0

    def failed(self, exc: sqlite3.Error) -> None:
        if self.failures == 0:
            log_event(log, logging.ERROR, self.event, error=str(exc))
        self.failures += 1

    def ok(self) -> None:
        if self.failures:
            log_event(log, logging.WARNING, self.event + "_ended", failures=self.failures)
            self.failures = 0


def _open_or_set_aside(store: HistoryStore | AlarmStore) -> None:
    """Open a store; a damaged database file is moved aside (and logged) and a new one made:
    charts and the alarm log are worth less than a console that starts."""
    try:
        store.open()
    except sqlite3.DatabaseError as exc:
        store.close()
        aside = store.path.with_name(f"{store.path.name}.damaged-{int(time.time())}")
        os.replace(store.path, aside)
        log_event(log, logging.ERROR, "store_set_aside", path=str(store.path), moved_to=str(aside),
                  error=str(exc))  # fmt: skip
        store.open()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound here so that errors and the chosen port are ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
