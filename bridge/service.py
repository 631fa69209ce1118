"""The bridge service: one Trio nursery running every part.

- one :class:`~bridge.poller.MeterPoller` task per enabled meter, each supervised on its own: a
  meter that fails, or even a bug that crashes its poller, never disturbs another;
- the outbox writer (group commit) that every reading passes through before it counts as taken;
- the publisher and its MQTT connection(s);
- signals: SIGTERM/SIGINT stop polling, release the associations, flush what the broker will take
  within a deadline, and exit; SIGHUP reloads the config and adds, removes or changes meters
  without disturbing the others;
- a summary log line every ``summary_interval_s``, systemd readiness and watchdog pings (only
  while the pollers, the writer and the publisher are alive).

Web and operations tasks (dashboard, admin API, metrics) join the same nursery through
:meth:`BridgeService.start_extra`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bridge import __version__, heap, systemd
from bridge.api_meters import load_effective_config
from bridge.config import (
    DEFAULT_TOPIC,
    BridgeConfig,
    ConfigError,
    MeterConfig,
    diff_meters,
)
from bridge.engine import COMMIT_LIMIT_S, PollEngine
from bridge.lock import InstanceLock
from bridge.logs import log_event
from bridge.meter_work import box_clock_synchronised
from bridge.mqtt import MqttSettings, TlsSettings
from bridge.outbox import DEFAULT_SPILL_RETRY_S, AsyncOutbox, OutboxError, OutboxWriter
from bridge.overrides import RuntimeOverrides, check_override
from bridge.poller import OPENING_SLOTS, MeterPoller
from bridge.profiles import HighWaterMarks
from bridge.publisher import (
    MAX_ALARMS_PUBLISHED,
    PayloadShape,
    Publisher,
    PublisherSettings,
    PublishMode,
)
from bridge.readings import Reading, dumps_compact
from bridge.rpc import (
    DEVICE_ATTRIBUTES,
    DEVICE_ATTRIBUTES_RESPONSE,
    DEVICE_RPC_REQUEST,
    GATEWAY_ATTRIBUTES,
    GATEWAY_ATTRIBUTES_RESPONSE,
    GATEWAY_RPC,
    RpcError,
    RpcServer,
)
from bridge.sharding import SHARD_SALT, split
from bridge.status_socket import serve_status, socket_path
from bridge.supervision import (
    CrashTracker,
    SupervisionSettings,
    clear_if_healthy,
    crashed_alarm,
    faulted_alarm,
    poller_crashed,
)
from bridge.worker_link import RemoteMeter, WorkerRequestError
from bridge.workers import WorkerPool, backfill_share, worker_count

if TYPE_CHECKING:
    from bridge.web import Console

__all__ = ["BridgeService", "mqtt_settings", "publisher_settings"]

log = logging.getLogger("bridge.service")

#: How long shutdown may spend releasing associations and flushing to the broker.
SHUTDOWN_RELEASE_S = 5.0
SHUTDOWN_FLUSH_S = 10.0
#: Meters that may read a profile range at the same moment (backfill pacing, box-wide); each
#: worker process gets an even share (`bridge.workers.backfill_share`).
BACKFILL_SLOTS = 2
#: How often the gateway's own attributes are compared with what was last published.
GATEWAY_ATTRIBUTES_CHECK_S = 5.0
#: From this many meters on, their first cycles are spread over one interval (at most
#: STAGGER_MAX_S seconds).
STAGGER_FROM_METERS = 100
STAGGER_MAX_S = 60.0
#: How long a worker may take to apply a changed setting (it is kept by the service anyway).
WORKER_SETTING_S = 5.0


def mqtt_settings(config: BridgeConfig, *, meter: MeterConfig | None = None) -> MqttSettings:
    """The broker connection of the service (or, in device mode, of one meter)."""
    m = config.mqtt
    tls = None
    if m.tls is not None:
        tls = TlsSettings(
            ca_file=m.tls.ca_file,
            cert_file=m.tls.cert_file,
            key_file=m.tls.key_file,
            insecure=m.tls.insecure,
        )
    if meter is not None:
        return MqttSettings(
            host=m.host,
            port=m.port,
            client_id=f"{m.client_id}-{meter.name}",
            username=meter.token,
            backoff_max=m.reconnect_max_s,
            puback_alarm_s=m.puback_alarm_s,
            credential_source=(
                None
                if meter.token_source is None
                else f"the token of meter {meter.name} from {meter.token_source}"
            ),
            tls=tls,
            keepalive=m.keepalive,
            qos=m.qos,
        )
    username = m.token if m.token is not None else m.username
    password = None if m.token is not None else m.password
    if m.token is not None:
        source: str | None = f"the token from {m.credential_source}"
    elif m.username is not None:
        # A user name may be a ThingsBoard access token too: never shown, only where it is.
        source = "mqtt.username in the config file"
        if m.password is not None:
            source += f" with the password from {m.credential_source}"
    else:
        source = None
    return MqttSettings(
        host=m.host,
        port=m.port,
        client_id=m.client_id,
        username=username,
        password=password,
        tls=tls,
        keepalive=m.keepalive,
        qos=m.qos,
        backoff_max=m.reconnect_max_s,
        puback_alarm_s=m.puback_alarm_s,
        credential_source=source,
    )


def publisher_settings(config: BridgeConfig) -> PublisherSettings:
    """Payload format and pacing from the ``[publish]`` section."""
    p = config.publish
    return PublisherSettings(
        mode=PublishMode(p.mode),
        topic_template=(p.topic or DEFAULT_TOPIC).replace("{bridge}", config.bridge.name),
        payload_shape=PayloadShape(p.payload),
        max_messages_per_s=p.max_messages_per_s,
        max_payload_bytes=p.max_payload_bytes,
        max_bytes_per_s=p.max_bytes_per_s,
        batch_rows=p.max_readings_per_message,
        backlog_alarm_s=p.backlog_alarm_s,
        qos=config.mqtt.qos,
    )


@attrs.define(eq=False)
class _Running:
    """A supervised poller: its task's cancel scope and the current poller object."""

    meter: MeterConfig
    scope: trio.CancelScope
    poller: MeterPoller | None = None
    crashes: int = 0
    done: trio.Event = attrs.Factory(trio.Event)
    tracker: CrashTracker = attrs.Factory(CrashTracker)
    #: Trio time the current poller was started.
    started: float = 0.0


class BridgeService:
    """The whole service; :meth:`run` until a signal (or :meth:`stop`) ends it."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        config_path: Path | None = None,
        handle_signals: bool = True,
        shutdown_flush_s: float = SHUTDOWN_FLUSH_S,
        poller_options: Mapping[str, Any] | None = None,
        supervision: SupervisionSettings | None = None,
        console: bool = False,
        manage_heap: bool = False,
    ) -> None:
        self.config = config
        #: Tune the cycle collector and freeze the settled heap (`bridge.heap`): for a process
        #: that is the service (`dlms-bridge run`), not for one that only embeds it.
        self.manage_heap = manage_heap
        self.config_path = config_path
        self.handle_signals = handle_signals
        self.shutdown_flush_s = shutdown_flush_s
        #: Extra keyword arguments of every :class:`MeterPoller` (``breaker_threshold``,
        #: ``backoff_initial``, ``backoff_max``), e.g. for a demo that shows recovery quickly.
        self.poller_options = dict(poller_options or {})
        #: Runs the steady polls of the meters polled in this process.
        self.engine = PollEngine(self._sink_batch)
        #: Connections being opened at once by the pollers of this process, at most.
        self.openings = trio.CapacityLimiter(OPENING_SLOTS)
        #: How crashed pollers are restarted, and when a meter is put in the faulted state.
        self.supervision = supervision or SupervisionSettings()
        #: Start the operators' console (web server, alarm rules, local history) with the
        #: service; ``[web] enabled = false`` keeps only its web server off.
        self.console_enabled = console
        self.console: Console | None = None
        #: Called with every reading once it is durable (the console's history and events).
        self.reading_listeners: list[Callable[[Sequence[Reading]], None]] = []
        self.meters: dict[str, _Running] = {}
        self.alarms: dict[str, str] = {}
        self.online: dict[str, bool] = {}
        self.started_at = time.time()
        self.outbox: AsyncOutbox | None = None
        self.writer: OutboxWriter | None = None
        self.publisher: Publisher | None = None
        #: The worker processes when ``[bridge] workers`` asks for more than one.
        self.pool: WorkerPool | None = None
        self.reloads = 0
        self._stop = trio.Event()
        self._ready = trio.Event()
        self._alive: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._pollers: trio.Nursery | None = None
        self._rng = random.Random()
        self._reload_lock = trio.Lock()
        #: Profile high-water marks (opened with the outbox, in the data directory).
        self.marks: HighWaterMarks | None = None
        self.backfill_limiter = trio.CapacityLimiter(BACKFILL_SLOTS)
        #: Whether the box's clock is synchronised (sync_clock refuses otherwise).
        self.clock_synchronised: Callable[[], bool] = box_clock_synchronised
        #: Settings changed from ThingsBoard, kept in the data directory.
        self.overrides = RuntimeOverrides(None)
        #: Meters switched off with the ``enabled`` shared attribute.
        self.paused: set[str] = set()
        self._own_cache: (
            tuple[BridgeConfig, tuple[int, int] | None, tuple[MeterConfig, ...]] | None
        ) = None
        self.rpc = RpcServer(self)
        #: Where the status socket is served (None until running, or if it could not be made).
        self.status_socket: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def wait_ready(self) -> None:
        """Return once every part is running."""
        await self._ready.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped; raises :class:`~bridge.lock.AlreadyRunning` if another bridge
        holds the data directory."""
        cfg = self.config
        lock = InstanceLock(cfg.bridge.data_dir)
        lock.acquire()
        if self.manage_heap:
            heap.tune_collector()
        try:
            self.outbox = await AsyncOutbox.open(
                cfg.bridge.data_dir,
                max_rows=cfg.publish.outbox_max_rows,
                max_bytes=cfg.publish.outbox_max_bytes,
                synchronous=cfg.publish.outbox_synchronous,
            )
            try:
                await self._run(task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await self.outbox.aclose()
        finally:
            lock.release()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        cfg = self.config
        assert self.outbox is not None
        # While the disk cannot write, retry at least once per polling interval, so that the
        # readings are written within one interval of space returning.
        intervals = [m.interval_s for m in cfg.meters if m.enabled]
        self.writer = OutboxWriter(
            self.outbox,
            spill_max_bytes=cfg.publish.outbox_spill_max_bytes,
            spill_retry_s=min([DEFAULT_SPILL_RETRY_S, *intervals]),
            on_alarm=self._set_alarm,
        )
        self.marks = await trio.to_thread.run_sync(HighWaterMarks, cfg.bridge.data_dir)
        self.overrides = await trio.to_thread.run_sync(RuntimeOverrides, cfg.bridge.data_dir)
        if cfg.publish.mode == "device":
            devices = {m.name: mqtt_settings(cfg, meter=m) for m in self.own_meters(cfg)}
            self.publisher = Publisher(
                self.outbox,
                publisher_settings(cfg),
                devices=devices,
                on_message=self.rpc.on_message,
                subscriptions=(DEVICE_RPC_REQUEST, DEVICE_ATTRIBUTES, DEVICE_ATTRIBUTES_RESPONSE),
                on_connected=self.rpc.on_connected,
            )
        else:
            gateway = cfg.publish.mode == "gateway"
            self.publisher = Publisher(
                self.outbox,
                publisher_settings(cfg),
                mqtt=mqtt_settings(cfg),
                on_message=self.rpc.on_message if gateway else None,
                subscriptions=(
                    (GATEWAY_RPC, GATEWAY_ATTRIBUTES, GATEWAY_ATTRIBUTES_RESPONSE)
                    if gateway
                    else ()
                ),
                on_connected=self.rpc.on_connected if gateway else None,
            )
        depth = self.outbox.depth()
        log_event(
            log, logging.INFO, "starting",
            name=cfg.bridge.name, meters=len(self.own_meters(cfg)), shard=cfg.bridge.shard,
            mode=cfg.publish.mode, broker=f"{cfg.mqtt.host}:{cfg.mqtt.port}",
            outbox_rows=depth[0], data_dir=cfg.bridge.data_dir,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.handle_signals:
                nursery.start_soon(self._signals)
            if self.console_enabled:
                # Before the pollers: the console sees (and keeps) every reading from the first.
                await self._start_console()
            await nursery.start(self._keep_alive, "writer", self.writer.run)
            await nursery.start(self._keep_alive, "publisher", self.publisher.run)
            await nursery.start(self.rpc.run)
            if cfg.publish.mode == "gateway":
                nursery.start_soon(self._gateway_attributes)
            pollers_scope = trio.CancelScope()
            await nursery.start(self._run_pollers, pollers_scope)
            # Always served (with or without the web console): `dlms-bridge health` asks it.
            self.status_socket = await nursery.start(
                serve_status, socket_path(cfg.bridge.data_dir), self.status
            )
            own = self.own_meters(cfg)
            count = worker_count(cfg.bridge.workers, len(own), sum(1 / m.interval_s for m in own))
            if count > 1:
                self.pool = WorkerPool(
                    count,
                    own,
                    on_readings=self._sink_from_workers,
                    on_alarm=self._on_meter_alarm,
                    set_alarm=self._set_alarm,
                    log_level=cfg.bridge.log_level,
                    # The data directory: where secured meters keep their invocation counters.
                    poller_options={**self.poller_options, "data_dir": cfg.bridge.data_dir},
                    overrides=self._worker_overrides,
                    marks=self.marks,
                    supervision=self.supervision,
                    backfill_slots=backfill_share(BACKFILL_SLOTS, count),
                )
                self.paused = {
                    m.name for m in own if self.overrides.get(m.name, "enabled") is False
                }
                await nursery.start(self._keep_alive, "workers", self.pool.run)
            else:
                for meter in own:
                    await self._start_meter(meter)
            nursery.start_soon(self._summaries)
            nursery.start_soon(self._watchdog)
            if self.manage_heap:
                nursery.start_soon(functools.partial(heap.settle, self._settled, where="service"))
            self._ready.set()
            task_status.started()
            self._notify(ready=True, status=self._status_line())
            log_event(log, logging.INFO, "running", meters=len(self.meters))
            await self._stop.wait()
            await self._shutdown(pollers_scope)
            nursery.cancel_scope.cancel()

    async def _shutdown(self, pollers_scope: trio.CancelScope) -> None:
        log_event(log, logging.INFO, "stopping", meters=len(self.meters))
        self._notify(stopping=True, status="stopping")
        with trio.CancelScope(shield=True):
            # Stop polling: each poller releases its association (RLRQ, DISC) on the way out.
            for running in self.meters.values():
                running.scope.cancel()
            if self.pool is not None:
                await self.pool.stop(SHUTDOWN_RELEASE_S + 1)
            with trio.move_on_after(SHUTDOWN_RELEASE_S + 1):
                for running in list(self.meters.values()):
                    await running.done.wait()
            pollers_scope.cancel()
            if self.engine.started:
                # The polling engine commits the readings it took in its last moments.
                with trio.move_on_after(COMMIT_LIMIT_S):
                    await self.engine.stopped.wait()
            assert self.publisher is not None and self.outbox is not None
            deadline = trio.current_time() + self.shutdown_flush_s
            if not any(c.connected for c in self.publisher.clients.values()):
                # No broker to flush to (down, or refusing us): the outbox keeps the readings
                # for the next start; waiting the whole deadline would only delay the stop.
                deadline = min(deadline, trio.current_time() + 2.0)
            flushed = await self.publisher.flush(deadline)
            rows, _ = self.outbox.depth()
            log_event(
                log, logging.INFO, "flushed" if flushed else "flush_incomplete",
                outbox_rows=rows, deadline_s=self.shutdown_flush_s,
            )  # fmt: skip
            with trio.move_on_after(3):
                await self.publisher.disconnect()
        log_event(log, logging.INFO, "stopped")

    async def _keep_alive(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a core task, marking it alive for the watchdog while it runs."""
        self._alive.add(name)
        try:
            await run(task_status=task_status)
        finally:
            self._alive.discard(name)

    async def _run_pollers(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            async with trio.open_nursery() as pollers:
                self._pollers = pollers
                # Serves the steady polls of every meter from one task (bridge.engine).
                await pollers.start(self.engine.run)
                task_status.started()
                await trio.sleep_forever()

    async def _start_console(self) -> None:
        from bridge.web import Console

        console = Console(self)
        try:
            await console.open()
        except (OSError, sqlite3.Error) as exc:
            # The bridge delivers readings without its console rather than not at all.
            self._set_alarm("web.console_failed", True, f"the console cannot open its files: {exc}")
            return
        self.console = console
        self.start_extra(console.run)

    def start_extra(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run another task (dashboard, metrics) in the service's nursery."""
        if self._nursery is None:
            raise RuntimeError("the service is not running")
        self._nursery.start_soon(fn, *args)

    # -- meters ------------------------------------------------------------------------------

    def own_meters(self, config: BridgeConfig) -> list[MeterConfig]:
        """The enabled meters this bridge polls: all of them, or its ``shard``'s share (worked
        out once per configuration: the console asks every second)."""
        shard = self.config.bridge.shard
        cached = self._own_cache
        if cached is not None and cached[0] is config and cached[1] == shard:
            return list(cached[2])
        enabled = [m for m in config.meters if m.enabled]
        if shard is None:
            own = enabled
        else:
            k, n = shard
            own = split(enabled, n, k - 1, salt=SHARD_SALT)
        self._own_cache = (config, shard, tuple(own))
        return list(own)

    async def _start_meter(self, meter: MeterConfig) -> None:
        assert self._pollers is not None
        if self.overrides.get(meter.name, "enabled") is False:
            # Switched off from ThingsBoard: stays off until switched on again.
            self.paused.add(meter.name)
            log_event(log, logging.INFO, "meter_paused", meter=meter.name, reason="enabled=false")
            return
        self.paused.discard(meter.name)
        running = _Running(
            meter,
            trio.CancelScope(),
            tracker=CrashTracker(self.supervision, self._rng),
        )
        self.meters[meter.name] = running
        # start_soon, not start: waiting for each of thousands of tasks to report in, while
        # those already started connect, made the start of a large fleet take minutes.
        self._pollers.start_soon(self._supervise, running)

    def _start_delay(self, running: _Running) -> float:
        """Spread the first cycles of a large fleet over one interval (a random phase per
        meter), so that thousands of meters are not connected and read in the same instant;
        small fleets start at once."""
        if running.crashes or len(self.meters) < STAGGER_FROM_METERS:
            return 0.0
        return self._rng.random() * min(running.meter.interval_s, STAGGER_MAX_S)

    async def _stop_meter(self, name: str) -> None:
        running = self.meters.pop(name, None)
        if running is None:
            return
        running.scope.cancel()
        with trio.move_on_after(SHUTDOWN_RELEASE_S + 1):
            await running.done.wait()

    async def _supervise(
        self, running: _Running, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run one meter's poller; a crash (a bug) is logged and the poller started again,
        until the same crash keeps coming back (:mod:`bridge.supervision`)."""
        name = running.meter.name
        tracker = running.tracker
        # Report at once: a poller's first cycle may take long, and the others must not wait.
        task_status.started()
        try:
            with running.scope:
                while True:
                    options = dict(self.poller_options)
                    work_options = {
                        "marks": self.marks,
                        "limiter": self.backfill_limiter,
                        "synchronised": self.clock_synchronised,
                        **options.pop("work_options", {}),
                    }
                    poller = MeterPoller(
                        running.meter,
                        self._sink,
                        on_alarm=self._on_meter_alarm,
                        rng=self._rng,  # one for all: a Random is 2.5 KB of state
                        data_dir=self.config.bridge.data_dir,
                        sink_many=self._sink_many,
                        work_options=work_options,
                        engine=self.engine,
                        openings=self.openings,
                        **options,
                    )
                    interval = self.overrides.get(name, "interval_s")
                    if interval is not None:
                        try:
                            poller.set_interval(interval)
                        except ValueError as exc:
                            log_event(
                                log, logging.WARNING, "override_ignored", meter=name,
                                key="interval_s", error=str(exc),
                            )  # fmt: skip
                    running.poller = poller
                    running.started = trio.current_time()
                    try:
                        await poller.run(start_delay=self._start_delay(running))
                    except Exception as exc:
                        ran_s = trio.current_time() - running.started
                        delay = poller_crashed(name, tracker, exc, ran_s, self._set_alarm)
                        running.crashes = tracker.crashes
                        log.exception(
                            "meter=%s event=poller_crashed crashes=%d identical=%d",
                            name, tracker.crashes, tracker.identical,
                        )  # fmt: skip
                        if tracker.faulted:
                            poller.stats.state = "faulted"
                        await trio.sleep(delay)
        finally:
            running.done.set()

    def _check_faulted(self) -> int:
        """Clear the faulted state of meters whose poller has run healthy long enough;
        returns how many meters are still faulted."""
        now = trio.current_time()
        faulted = 0
        for name, running in self.meters.items():
            tracker = running.tracker
            if tracker.faulted and not clear_if_healthy(
                name, tracker, now - running.started, self._set_alarm
            ):
                faulted += 1
        # Meters polled in worker processes: their worker keeps the state (and its alarms).
        if self.pool is not None:
            faulted += sum(1 for remote in self.pool.remote.values() if remote.fault is not None)
        return faulted

    async def _sink(self, reading: Reading) -> None:
        assert self.writer is not None and self.publisher is not None
        await self.writer.put(reading)
        self._tell_listeners((reading,))
        if not self.online.get(reading.meter):
            self.online[reading.meter] = True
            self.publisher.set_meter_online(reading.meter, True)

    async def apply_override(
        self, meter: str, key: str, value: Any, *, quiet: bool = False
    ) -> None:
        """Change ``interval_s`` or ``enabled`` of a meter now and keep it across restarts
        (``value=None`` returns to the config file's value); raises
        :class:`~bridge.rpc.RpcError` for an unknown meter or a bad value."""
        config = next((m for m in self.config.meters if m.name == meter and m.enabled), None)
        if config is None:
            raise RpcError("unknown_device", f"no meter {meter!r} in the config")
        if value is not None:
            problem = check_override(key, value, config.timeout_s)
            if problem is not None:
                raise RpcError("bad_params", problem)
        try:
            await trio.to_thread.run_sync(self.overrides.set, meter, key, value)
        except OSError as exc:
            message = f"cannot keep the setting in the data directory: {exc}"
            raise RpcError("storage", message) from None
        if not quiet:
            log_event(log, logging.INFO, "override", meter=meter, key=key, value=value)
        if self.pool is not None and self.pool.owns(meter):
            await self._override_in_worker(meter, key, value, config)
        elif key == "interval_s":
            running = self.meters.get(meter)
            if running is not None and running.poller is not None:
                running.poller.set_interval(value if value is not None else config.interval_s)
        elif key == "enabled":
            if value is False and meter in self.meters:
                await self._stop_meter(meter)
                self.paused.add(meter)
            elif value is not False and meter not in self.meters:
                await self._start_meter(config)

    def _worker_overrides(self, meters: Sequence[MeterConfig]) -> dict[str, dict[str, Any]]:
        """The runtime settings of the meters a worker starts with."""
        out = {m.name: dict(self.overrides.values.get(m.name, {})) for m in meters}
        return {name: settings for name, settings in out.items() if settings}

    async def _override_in_worker(
        self, meter: str, key: str, value: Any, config: MeterConfig
    ) -> None:
        """Pass a changed setting on to the worker that polls the meter (kept already: a worker
        that is restarting starts with it)."""
        assert self.pool is not None
        if key == "interval_s":
            interval = value if value is not None else config.interval_s
            op, body = "set_interval", {"interval_s": interval}
        else:
            op, body = "enable", {"enabled": value is not False}
            if value is False:
                self.paused.add(meter)
            else:
                self.paused.discard(meter)
        try:
            await self.pool.request(meter, op, body, WORKER_SETTING_S)
        except WorkerRequestError as exc:
            log_event(
                log, logging.WARNING, "override_not_applied", meter=meter, key=key,
                error=exc.message,
            )  # fmt: skip

    def _settled(self) -> bool:
        """Every meter polled (in this process or a worker) has tried its first cycle."""
        if self.pool is not None:
            names = [n for n in self.pool.meter_names() if n not in self.paused]
            remote = self.pool.remote
            return all(n in remote and remote[n].stats.cycles > 0 for n in names)
        return all(
            r.poller is not None and r.poller.stats.cycles > 0
            for name, r in self.meters.items()
            if name not in self.paused
        )

    def _polled_in_workers(self) -> int:
        """Meters polled in the worker processes (those switched off left out)."""
        if self.pool is None:
            return 0
        return sum(1 for name in self.pool.meter_names() if name not in self.paused)

    def polled(self, name: str) -> MeterPoller | RemoteMeter | None:
        """The poller of a meter: in this process, or as its worker process last reported it."""
        running = self.meters.get(name)
        if running is not None:
            return running.poller
        return self.pool.remote.get(name) if self.pool is not None else None

    async def _gateway_attributes(self) -> None:
        """Publish the gateway's own attributes (on its own device) when they change."""
        last: tuple[int, str] | None = None
        while True:
            publisher = self.publisher
            assert publisher is not None
            client = publisher.clients.get(None)
            if client is not None and client.connected:
                alarms = self.all_alarms()
                body = {
                    "bridge_name": self.config.bridge.name,
                    "bridge_version": _version(),
                    "meters": len(self.meters) + self._polled_in_workers(),
                    "meters_paused": len(self.paused),
                    "meters_online": sum(1 for v in self.online.values() if v),
                    "alarms": len(alarms),
                    "alarm_names": ",".join(sorted(alarms)[:MAX_ALARMS_PUBLISHED]),
                }
                payload = dumps_compact(body)
                if last != (client.generation, payload):
                    publisher.send(None, "v1/devices/me/attributes", payload.encode())
                    last = (client.generation, payload)
                await trio.sleep(GATEWAY_ATTRIBUTES_CHECK_S)
            else:
                # Not connected (yet): published as soon as the connection is up.
                await trio.sleep(GATEWAY_ATTRIBUTES_CHECK_S / 25)

    async def _sink_many(self, readings: Sequence[Reading]) -> None:
        assert self.writer is not None
        await self.writer.put_many(readings)

    async def _sink_batch(self, readings: Sequence[Reading]) -> None:
        """Readings of the polling engine or of the worker processes: committed in one go."""
        await self._sink_from_workers(readings)

    async def _sink_from_workers(self, readings: Sequence[Reading]) -> None:
        """Readings from the worker processes: committed in one go (a polling engine, here or
        in a worker, let them gather already: the writer does not linger on them)."""
        assert self.writer is not None and self.publisher is not None
        await self.writer.put_many(readings, gathered=True)
        self._tell_listeners(readings)
        for reading in readings:
            if not self.online.get(reading.meter):
                self.online[reading.meter] = True
                self.publisher.set_meter_online(reading.meter, True)

    def _tell_listeners(self, readings: Sequence[Reading]) -> None:
        """Hand durable readings to the listeners (the console), a batch at a time."""
        for listener in self.reading_listeners:
            try:
                listener(readings)
            except Exception:  # the console must never stop a poller
                log.exception("event=reading_listener_failed readings=%d", len(readings))

    def _on_meter_alarm(self, name: str, active: bool, message: str) -> None:
        self._set_alarm(name, active, message)
        # Meter names may hold dots: match the whole name, never split it.
        names = self.meters if self.pool is None else (m.name for m in self.own_meters(self.config))
        meter = next((m for m in names if name == _failing_alarm(m)), None)
        if meter is not None and self.publisher is not None:
            self.online[meter] = not active
            self.publisher.set_meter_online(meter, not active)

    def _set_alarm(self, name: str, active: bool, message: str) -> None:
        if active:
            if self.alarms.get(name) != message:
                log_event(log, logging.ERROR, "alarm", alarm=name, message=message)
            self.alarms[name] = message
        elif self.alarms.pop(name, None) is not None:
            log_event(log, logging.WARNING, "alarm_cleared", alarm=name, message=message)

    # -- signals and reload ------------------------------------------------------------------

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    log_event(log, logging.INFO, "signal", signal=signal.Signals(signum).name)
                    self.stop()

    async def reload(self, new: BridgeConfig | None = None) -> bool:
        """Apply a new config (re-read from ``config_path`` by default) to the meters.

        Meters added, removed or changed are started, stopped or restarted; the others keep
        running untouched. Returns False (and keeps the running config) if the new one is bad.
        """
        async with self._reload_lock:  # a SIGHUP and the admin API may reload at once
            return await self._reload(new)

    async def _reload(self, new: BridgeConfig | None) -> bool:
        self._notify(reloading=True, status="reloading")
        if new is None:
            if self.config_path is None:
                log_event(log, logging.ERROR, "reload_failed", error="no config file to re-read")
                self._notify(ready=True)
                return False
            try:
                new = await trio.to_thread.run_sync(load_effective_config, self.config_path)
            except ConfigError as exc:
                for line in exc.errors:
                    log_event(log, logging.ERROR, "reload_refused", error=line)
                self._notify(ready=True, status=self._status_line())
                return False
        old = self.config
        enabled_old = self.own_meters(old)
        enabled_new = self.own_meters(new)
        added, removed, changed = diff_meters(enabled_old, enabled_new)
        for section in ("bridge", "mqtt", "publish", "web", "alarms"):
            if getattr(old, section) != getattr(new, section):
                log_event(
                    log, logging.WARNING, "reload_partial", section=section,
                    message=f"changes to [{section}] take effect at the next restart",
                )  # fmt: skip
        self.config = attrs.evolve(old, meters=new.meters, api_meters=new.api_meters)
        assert self.publisher is not None
        if self.pool is not None:
            restarted = self.pool.update(enabled_new)
            log_event(log, logging.INFO, "workers_restarted", workers=restarted)
            # The workers poll; below, only the publisher and the alarms are brought in line.
            changed = []
        for meter in removed:
            self.paused.discard(meter.name)
            await self._stop_meter(meter.name)
            self.online.pop(meter.name, None)
            self._clear_meter_alarms(meter.name)
            await self.publisher.remove_meter(meter.name)
        for meter in changed:
            await self._stop_meter(meter.name)
            await self._start_meter(meter)
        for meter in added:
            if old.publish.mode == "device":
                await self.publisher.add_device(meter.name, mqtt_settings(old, meter=meter))
            if self.pool is None:
                await self._start_meter(meter)
        self.reloads += 1
        if self.manage_heap and (added or removed or changed):
            # The replaced meters' objects were frozen with the rest: let them be collected.
            heap.refreeze()
        log_event(
            log, logging.INFO, "reloaded",
            added=len(added), removed=len(removed), changed=len(changed), meters=len(self.meters),
        )  # fmt: skip
        self._notify(ready=True, status=self._status_line())
        return True

    def _clear_meter_alarms(self, meter: str) -> None:
        for name in (
            _failing_alarm(meter),
            crashed_alarm(meter),
            faulted_alarm(meter),
            f"meter.{meter}.clock_drift",
        ):
            self._set_alarm(name, False, f"meter {meter} removed")

    # -- health ------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """True while the writer, the publisher and every meter's supervisor are running."""
        if not {"writer", "publisher"} <= self._alive:
            return False
        if self.pool is not None and not ("workers" in self._alive and self.pool.alive()):
            return False
        return all(not r.done.is_set() for r in self.meters.values())

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            # While stopping, the pollers are gone on purpose and shutdown has its own
            # deadlines: keep pinging.
            if self.healthy() or self._stop.is_set():
                self._notify(watchdog=True)
            else:
                log_event(log, logging.ERROR, "watchdog_withheld", alive=sorted(self._alive))
            await trio.sleep(interval / 2)

    def _notify(self, **kwargs: Any) -> None:
        try:
            systemd.notify(**kwargs)
        except OSError as exc:
            log_event(log, logging.WARNING, "sd_notify_failed", error=str(exc))

    # -- reporting ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything worth showing: meters, delivery, outbox, alarms."""
        meters = {}
        for name, running in self.meters.items():
            poller = running.poller
            stats = poller.stats.as_dict() if poller is not None else {}
            meters[name] = {
                "address": running.meter.address,
                "interval_s": running.meter.interval_s,
                "crashes": running.crashes,
                "online": self.online.get(name, False),
                **stats,
                "faulted": running.tracker.faulted,
            }
            if poller is not None:
                meters[name]["interval_s"] = poller.interval_s
                meters[name]["profiles"] = [p.as_dict() for p in poller.work.profiles]
                clock = poller.work.last_clock
                meters[name]["clock"] = clock.to_json() if clock is not None else None
            if running.tracker.faulted:
                meters[name]["state"] = "faulted"
                meters[name]["fault"] = running.tracker.last
        for name, remote in self.pool.remote.items() if self.pool is not None else ():
            config = self.pool.meter_config(name) if self.pool is not None else None
            meters[name] = {
                "address": config.address if config is not None else None,
                "crashes": remote.crashes,
                "online": self.online.get(name, False),
                **remote.stats.as_dict(),
                "faulted": remote.fault is not None,
                "interval_s": remote.interval_s,
                "profiles": remote.profiles,
                "clock": remote.clock,
                "worker": remote.worker,
            }
            if remote.fault is not None:
                meters[name]["state"] = "faulted"
                meters[name]["fault"] = remote.fault
        publisher = self.publisher
        return {
            "name": self.config.bridge.name,
            "uptime_s": time.time() - self.started_at,
            "meters": meters,
            "publisher": attrs.asdict(publisher.stats) if publisher is not None else {},
            "mqtt": {
                str(k): {"connected": c.connected, "alarms": sorted(c.alarms)}
                for k, c in (publisher.clients.items() if publisher is not None else [])
            },
            "outbox": self._outbox_state(),
            "alarms": self.all_alarms(),
            "reloads": self.reloads,
            "workers": [t.as_dict() for t in self.pool.totals] if self.pool is not None else [],
        }

    def _outbox_state(self) -> dict[str, Any]:
        if self.outbox is None:
            return {}
        rows, nbytes = self.outbox.depth()
        state: dict[str, Any] = {"rows": rows, "bytes": nbytes, "writable": True}
        writer = self.writer
        if writer is not None:
            spill_rows, spill_bytes = writer.spill_depth()
            state.update(
                writable=writer.writable,
                problem=writer.problem,
                spill_rows=spill_rows,
                spill_bytes=spill_bytes,
                spilled=writer.stats.spilled,
                spill_dropped=writer.stats.spill_dropped,
            )
        return state

    async def status(self) -> dict[str, Any]:
        """What the status socket serves: :meth:`snapshot` and what a health check needs.

        Adds ``version``, ``pid``, ``now`` (wall clock, s), ``started_at``, ``ready``,
        ``stopping``, ``outbox.oldest_ts_ms`` (when the oldest unsent reading was taken) and,
        per MQTT connection, ``last_error``.
        """
        out = self.snapshot()
        out.update(
            version=__version__,
            pid=os.getpid(),
            now=time.time(),
            started_at=self.started_at,
            ready=self._ready.is_set(),
            stopping=self._stop.is_set(),
        )
        if self.outbox is not None:
            try:
                out["outbox"]["oldest_ts_ms"] = await self.outbox.oldest_ts_ms()
            except OutboxError as exc:
                out["outbox"]["oldest_ts_ms"] = None
                out["outbox"]["error"] = str(exc)
        if self.publisher is not None:
            for key, client in self.publisher.clients.items():
                entry = out["mqtt"].get(str(key))
                if entry is not None:
                    entry["last_error"] = client.last_error
                    entry["broker"] = client.settings.describe()
        return out

    def all_alarms(self) -> dict[str, str]:
        """Alarms of the meters, the MQTT connections and the outbox."""
        out = dict(self.alarms)
        if self.publisher is not None:
            messages = self.publisher.alarm_messages()
            for name in self.publisher.alarms:
                out.setdefault(name, messages.get(name, name))
        if self.outbox is not None:
            for name in self.outbox.alarms:
                out.setdefault(name, name)
        return out

    def _status_line(self) -> str:
        ok = sum(1 for online in self.online.values() if online)
        rows = self.outbox.depth()[0] if self.outbox is not None else 0
        line = f"{ok}/{self._meter_count()} meters online, outbox {rows} rows"
        if self.writer is not None and not self.writer.writable:
            line += f", OUTBOX CANNOT WRITE ({self.writer.spill_depth()[0]} readings in memory)"
        return line

    def _meter_count(self) -> int:
        """Meters polled, in this process or in the workers."""
        in_workers = sum(t.meters for t in self.pool.totals) if self.pool is not None else 0
        return len(self.meters) + in_workers

    async def _summaries(self) -> None:
        interval = self.config.bridge.summary_interval_s
        # Counters at the previous summary, per meter and per poller object: a meter removed,
        # added or restarted since then must not make the differences negative.
        previous: dict[str, tuple[object, int, int, int]] = {}
        published_before = 0
        last = trio.current_time()
        while True:
            await trio.sleep_until(last + interval)
            now = trio.current_time()
            elapsed, last = now - last, now
            cycles = successes = missed = 0
            latencies: list[float] = []
            current: dict[str, tuple[object, int, int, int]] = {}
            for name, running in self.meters.items():
                if running.poller is None:
                    continue
                stats = running.poller.stats
                current[name] = (stats, stats.cycles, stats.successes, stats.missed)
                base = previous.get(name)
                if base is not None and base[0] is stats:
                    cycles += stats.cycles - base[1]
                    new = stats.successes - base[2]
                    missed += stats.missed - base[3]
                else:
                    cycles += stats.cycles
                    new = stats.successes
                    missed += stats.missed
                successes += new
                # The latencies of this interval's polls (the newest of the window).
                if new > 0:
                    latencies += stats.latencies.newest(new)
            for totals in self.pool.totals if self.pool is not None else ():
                key = f"worker.{totals.index}.{totals.pid}"
                current[key] = (totals, totals.cycles, totals.successes, totals.missed)
                base = previous.get(key)
                b = base[1:] if base is not None else (0, 0, 0)
                if totals.cycles < b[0]:
                    # Fewer than before: the worker's pollers are stopping (their counters
                    # leave its sums). Nothing new to count from it this time.
                    b = (totals.cycles, totals.successes, totals.missed)
                cycles += totals.cycles - b[0]
                successes += totals.successes - b[1]
                missed += totals.missed - b[2]
                latencies.extend(totals.latencies)
            previous = current
            published = self.publisher.stats.published_readings if self.publisher else 0
            published_delta, published_before = published - published_before, published
            latencies.sort()
            rows = self.outbox.depth()[0] if self.outbox is not None else 0
            writer = self.writer
            spill: dict[str, Any] = {}
            if writer is not None and (not writer.writable or writer.stats.spilled):
                spill = {
                    "outbox_writable": writer.writable,
                    "spill_rows": writer.spill_depth()[0],
                    "spilled": writer.stats.spilled,
                    "spill_dropped": writer.stats.spill_dropped,
                }
            faulted = self._check_faulted()
            log_event(
                log, logging.INFO, "summary",
                cycles=cycles, readings=successes, missed=missed,
                success_rate=_ratio(successes, cycles),
                published_per_s=round(published_delta / elapsed, 2),
                outbox_rows=rows,
                latency_p50_ms=_ms(latencies, 0.5), latency_p95_ms=_ms(latencies, 0.95),
                latency_p99_ms=_ms(latencies, 0.99),
                meters_online=sum(1 for v in self.online.values() if v),
                meters=self._meter_count(), meters_faulted=faulted,
                alarms=len(self.all_alarms()),
                **spill,
            )  # fmt: skip
            self._notify(status=self._status_line())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dlms-bridge")
    except PackageNotFoundError:
        return "unknown"


def _failing_alarm(meter: str) -> str:
    """The alarm a meter's poller raises while its circuit is open."""
    return f"meter.{meter}.failing"


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _ms(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(
        1000 * sorted_values[min(len(sorted_values) - 1, math.floor(q * len(sorted_values)))], 1
    )
