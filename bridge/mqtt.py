"""paho-mqtt 2.x driven from Trio: one broker connection, reconnect, PUBACK tracking.

paho's "external event loop" mode does the protocol work; this module owns the socket waiting.
paho tells us about its socket through ``on_socket_open``/``on_socket_close`` and
``on_socket_register_write``/``on_socket_unregister_write``; we call ``loop_read()`` when the
socket is readable, ``loop_write()`` when paho has bytes queued and the socket is writable,
and ``loop_misc()`` once a second for keepalive. Only the blocking TCP/TLS connect runs in a
worker thread.

Every connection attempt uses a fresh paho client. When a connection ends, every publish still
waiting for its PUBACK fails with `PublishError` (the caller keeps the data and retries), and
the old client, with whatever it still had queued, is dropped: nothing is silently re-sent or
kept in memory.

The old deployment lost most of its data to two clients sharing one ThingsBoard token and
kicking each other off, so two situations get one clear log line and an alarm each instead of
a log line per retry: the broker refusing our credentials (``mqtt.auth_refused``) and the
broker closing the connection again and again right after accepting it
(``mqtt.session_takeover``).
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import threading
from collections.abc import Callable
from typing import Any

import attrs
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import PUBACK_ALARM_S, RECONNECT_MAX_S

__all__ = [
    "ALARM_AUTH_REFUSED",
    "ALARM_CONNACK_REFUSED",
    "ALARM_PUBACK_WITHHELD",
    "ALARM_SESSION_TAKEOVER",
    "Delivery",
    "MqttClient",
    "MqttSettings",
    "MqttStats",
    "PublishError",
    "TlsSettings",
    "WillSettings",
]

log = logging.getLogger("bridge.mqtt")
paho_log = logging.getLogger("bridge.mqtt.paho")

ALARM_AUTH_REFUSED = "mqtt.auth_refused"
ALARM_CONNACK_REFUSED = "mqtt.connack_refused"
ALARM_SESSION_TAKEOVER = "mqtt.session_takeover"
ALARM_PUBACK_WITHHELD = "mqtt.puback_withheld"

# CONNACK reason codes as paho reports them for MQTT 3.1.1 (return codes 4 and 5).
_BAD_CREDENTIALS = 134
_NOT_AUTHORIZED = 135
_MISC_INTERVAL = 1.0
#: Longest wait between reconnect attempts (seconds) and seconds without any PUBACK for an
#: outstanding publish before the alarm: the configuration's defaults (one home for each).
DEFAULT_BACKOFF_MAX_S = RECONNECT_MAX_S
DEFAULT_PUBACK_ALARM_S = PUBACK_ALARM_S


@attrs.frozen
class TlsSettings:
    """TLS for the broker connection; no CA file means the system's trusted CAs."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@attrs.frozen
class WillSettings:
    """The last-will message the broker publishes if we vanish without DISCONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 1
    retain: bool = False


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"mqtt {attr.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class MqttSettings:
    """One broker connection.

    ThingsBoard device tokens go in `username` with no `password`. `backoff_initial` and
    `backoff_max` bound the reconnect delay (doubling, with jitter; a refused login waits
    `backoff_max`). A publish left without PUBACK for `puback_alarm_s` seconds (no PUBACK at
    all meanwhile) raises ``mqtt.puback_withheld`` with one warning line; the next PUBACK
    clears it. A session that ends within `takeover_window` seconds of the CONNACK counts
    as "closed right after accepting"; `takeover_count` of them in a row raise the takeover
    alarm, which clears once a session lasts `takeover_clear_after` seconds. Repeated refusal
    and takeover messages are logged again at most every `log_repeat_interval` seconds.
    """

    host: str
    port: int = 1883
    client_id: str
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    keepalive: int = 60
    qos: int = 1
    clean_session: bool = True
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    backoff_initial: float = attrs.field(default=1.0, validator=_positive)
    backoff_max: float = attrs.field(default=DEFAULT_BACKOFF_MAX_S, validator=_positive)
    puback_alarm_s: float = attrs.field(default=DEFAULT_PUBACK_ALARM_S, validator=_positive)
    will: WillSettings | None = None
    max_inflight: int = 100
    takeover_window: float = 5.0
    takeover_count: int = 3
    takeover_clear_after: float = 300.0
    log_repeat_interval: float = 600.0
    #: What the credentials are and where they came from, for the refused-login message
    #: (e.g. ``the token from file /etc/x (mqtt.token_file)``); never their characters.
    credential_source: str | None = None

    def describe(self) -> str:
        """``host:port as 'client-id'``, for log lines."""
        return f"{self.host}:{self.port} as {self.client_id!r}"


class PublishError(Exception):
    """A publish was not acknowledged by the broker; the caller should retry later."""


@attrs.define(eq=False)
class MqttStats:
    """Counters over the life of one `MqttClient`."""

    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    connack_refusals: int = 0
    published: int = 0
    acked: int = 0
    failed: int = 0


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.Factory(trio.Event)
    error: str | None = None


@attrs.define(eq=False)
class _Connection:
    """One paho client and its socket: lives for one connection attempt."""

    paho: paho.Client
    sock: Any = None
    # Callbacks act only once Trio owns the socket (not while the worker thread connects).
    active: bool = False
    closed: trio.Event = attrs.Factory(trio.Event)
    connack: trio.Event = attrs.Factory(trio.Event)
    connack_reason: ReasonCode | None = None
    write_wanted: trio.Event = attrs.Factory(trio.Event)
    pending: dict[int, _Pending] = attrs.Factory(dict)
    close_reason: str | None = None
    last_paho_error: str | None = None
    connected_at: float | None = None
    # Since when a publish has waited for its PUBACK with no PUBACK at all meanwhile.
    unacked_since: float | None = None
    closing_on_purpose: bool = False
    # Hand-over between the connecting thread and Trio if Trio stops waiting for it.
    lock: threading.Lock = attrs.Factory(threading.Lock)
    thread_done: bool = False
    abandoned: bool = False


@attrs.define(eq=False)
class _Repeat:
    """Decides whether a recurring condition deserves another log line."""

    interval: float
    key: object = None
    last: float = -math.inf

    def due(self, key: object, now: float) -> bool:
        if key != self.key or now - self.last >= self.interval:
            self.key, self.last = key, now
            return True
        return False

    def reset(self) -> None:
        self.key, self.last = None, -math.inf


def _describe_rc(conn: _Connection, rc: MQTTErrorCode) -> str:
    text = paho.error_string(rc).rstrip(".")
    return f"{text}: {conn.last_paho_error}" if conn.last_paho_error else text


def _close_socket(sock: Any) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError as exc:
            log.debug("closing an abandoned MQTT socket failed: %s", exc)


class Delivery:
    """A message handed to the connection; `wait` for its PUBACK."""

    def __init__(
        self, client: MqttClient, conn: _Connection, mid: int, topic: str, pending: _Pending
    ) -> None:
        self._client = client
        self._conn = conn
        self.mid = mid
        self.topic = topic
        self._pending = pending

    async def wait(self, timeout: float | None = None) -> None:
        """Return once acknowledged; `PublishError` if the connection drops first, the broker
        rejects it, or `timeout` seconds pass."""
        pending = self._pending
        try:
            if timeout is None:
                await pending.done.wait()
            else:
                with trio.move_on_after(timeout):
                    await pending.done.wait()
                if not pending.done.is_set():
                    pending.error = f"no PUBACK within {timeout:g} s"
        finally:
            self._conn.pending.pop(self.mid, None)
        stats = self._client.stats
        if pending.error is not None:
            stats.failed += 1
            raise PublishError(f"publish to {self.topic!r} not acknowledged: {pending.error}")
        stats.acked += 1


class MqttClient:
    """One MQTT connection driven from Trio; see the module docstring.

    Run `run` as a task (``await nursery.start(client.run)``); use `publish` from any task.
    `on_message`, if given, is called as ``on_message(topic, payload)`` for messages on topics
    added with `subscribe`.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_message: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = MqttStats()
        self.last_error: str | None = None
        self._on_message = on_message
        self._ssl_context = _make_ssl_context(settings.tls) if settings.tls else None
        self._alarms: set[str] = set()
        #: What each active alarm is about, for alarms that carry more than their name.
        self.alarm_messages: dict[str, str] = {}
        self._conn: _Connection | None = None
        self._connected = False
        self._state_changed = trio.Event()
        self._subscriptions: dict[str, int] = {}
        self._closing = False
        self._wake = trio.Event()
        self._running = False
        self._short_sessions = 0
        self._attempt = 0
        self._refusal_log = _Repeat(settings.log_repeat_interval)
        self._failure_log = _Repeat(settings.log_repeat_interval)
        self._takeover_log = _Repeat(settings.log_repeat_interval)

    # -- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the end of that connection."""
        return self._connected

    @property
    def alarms(self) -> frozenset[str]:
        """Active alarm names (``mqtt.auth_refused``, ``mqtt.session_takeover``, ...)."""
        return frozenset(self._alarms)

    @property
    def generation(self) -> int:
        """Number of successful connects so far; changes with every reconnect."""
        return self.stats.connects

    @property
    def pending_publishes(self) -> int:
        """Publishes waiting for their PUBACK on the current connection."""
        return len(self._conn.pending) if self._conn else 0

    async def wait_connected(self) -> None:
        """Return once the client is connected (at once if it already is)."""
        while not self._connected:
            await self._state_changed.wait()

    async def wait_disconnected(self) -> None:
        """Return once the client is not connected (at once if it is not)."""
        while self._connected:
            await self._state_changed.wait()

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self._state_changed.set()
        self._state_changed = trio.Event()

    # -- public operations -------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int | None = None,
        *,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish and, for QoS 1, return only once the broker has sent PUBACK.

        Raises `PublishError` if not connected, if the connection drops before the PUBACK, if
        the broker rejects the message, or if `timeout` seconds pass without a PUBACK.
        """
        await self.start_publish(topic, payload, qos, retain=retain).wait(timeout)

    def start_publish(
        self, topic: str, payload: bytes, qos: int | None = None, *, retain: bool = False
    ) -> Delivery:
        """Hand the message to the connection now (no checkpoint) and return a `Delivery`
        whose `Delivery.wait` waits for the PUBACK.

        Messages go on the wire in the order of `start_publish` calls, which is what keeps
        several messages in flight without reordering them. Raises `PublishError` at once if
        not connected.
        """
        qos = self.settings.qos if qos is None else qos
        conn = self._conn
        if conn is None or not self._connected:
            self.stats.failed += 1
            raise PublishError(f"not connected to the MQTT broker {self.settings.describe()}")
        info = conn.paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.stats.failed += 1
            raise PublishError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        self.stats.published += 1
        pending = _Pending()
        if qos == 0:
            pending.done.set()
        else:
            conn.pending[info.mid] = pending
            if conn.unacked_since is None:
                conn.unacked_since = trio.current_time()
        return Delivery(self, conn, info.mid, topic, pending)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now if connected and again after every reconnect."""
        self._subscriptions[topic] = qos
        conn = self._conn
        if conn is not None and self._connected:
            conn.paho.subscribe(topic, qos)

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT, close the socket and make `run` return; no reconnect follows."""
        self._closing = True
        self._wake.set()
        conn = self._conn
        if conn is None or conn.closed.is_set():
            return
        conn.closing_on_purpose = True
        if conn.active and self._connected:
            conn.paho.disconnect()
            with trio.move_on_after(timeout):
                await conn.closed.wait()
        if not conn.closed.is_set():
            self._force_close(conn, "closed by us")

    # -- the connection task -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and stay connected, reconnecting with backoff, until cancelled or
        `disconnect` is called."""
        if self._running:
            raise RuntimeError(f"MqttClient for {self.settings.describe()} is already running")
        self._running = True
        task_status.started()
        try:
            while not self._stop_requested():
                delay = await self._one_connection()
                if self._stop_requested():
                    break
                log.debug("reconnecting to %s in %.2f s", self.settings.describe(), delay)
                with trio.move_on_after(delay):
                    await self._wake.wait()
        finally:
            self._running = False

    def _stop_requested(self) -> bool:
        # A method, not the attribute, so type checkers do not assume it cannot change.
        return self._closing

    def _backoff(self) -> float:
        s = self.settings
        base = min(s.backoff_max, s.backoff_initial * 2 ** min(self._attempt, 30))
        self._attempt += 1
        # Jitter spreads the reconnects of many bridges after a broker restart.
        return random.uniform(base / 2, base)

    async def _one_connection(self) -> float:
        """One connection attempt and, if it succeeds, its whole life; returns the delay
        before the next attempt."""
        s = self.settings
        conn = self._new_connection()
        try:
            await self._open_socket(conn)
        except (OSError, ValueError) as exc:
            self.stats.connect_failures += 1
            self._note_failure(f"cannot connect to MQTT broker {s.describe()}: {exc}")
            return self._backoff()
        self._conn = conn
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, conn)
                nursery.start_soon(self._writer, conn)
                nursery.start_soon(self._ticker, conn)
                with trio.move_on_after(s.connect_timeout):
                    await conn.connack.wait()
                if not conn.connack.is_set():
                    self._force_close(conn, f"no CONNACK within {s.connect_timeout:g} s")
                elif conn.connack_reason is not None and not conn.connack_reason.is_failure:
                    self._on_connected(conn)
                await conn.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._force_close(conn, "connection task stopped")
            self._conn = None
            self._end_connection(conn)
        return self._after_connection(conn)

    def _new_connection(self) -> _Connection:
        s = self.settings
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=s.clean_session,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout
        client.max_inflight_messages_set(s.max_inflight)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self._ssl_context is not None:
            # paho derives its own "insecure" flag from the context's check_hostname.
            client.tls_set_context(self._ssl_context)
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        conn = _Connection(paho=client)
        self._install_callbacks(conn)
        return conn

    def _install_callbacks(self, conn: _Connection) -> None:
        client = conn.paho

        def on_socket_close(_c: Any, _u: Any, sock: Any) -> None:
            if conn.active and not conn.closed.is_set():
                # Wake the tasks blocked on this socket before paho closes it.
                trio.lowlevel.notify_closing(sock)
                conn.closed.set()

        def on_socket_register_write(_c: Any, _u: Any, _sock: Any) -> None:
            if conn.active:
                conn.write_wanted.set()

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
            conn.connack_reason = reason
            conn.connack.set()
            if not reason.is_failure:
                for topic, qos in self._subscriptions.items():
                    client.subscribe(topic, qos)

        def on_disconnect(_c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
            # Only a DISCONNECT packet from the broker carries a meaningful reason; for a lost
            # socket paho reports "Unspecified error" and the socket error is in its log.
            if conn.close_reason is None and flags.is_disconnect_packet_from_server:
                conn.close_reason = f"broker sent DISCONNECT ({reason})"

        def on_log(_c: Any, _u: Any, level: int, message: str) -> None:
            # paho logs a lost socket at ERROR on every reconnect; keep its chatter at DEBUG and
            # remember the last error as the reason of the connection's end.
            paho_log.debug("%s", message)
            if level == paho.MQTT_LOG_ERR:
                conn.last_paho_error = message

        def on_publish(_c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            pending = conn.pending.get(mid)
            if pending is not None:
                if reason.is_failure:
                    pending.error = f"broker answered {reason}"
                pending.done.set()
            if conn.active:
                # The broker acknowledges: whatever still waits, waits since now.
                waiting = any(not p.done.is_set() for p in conn.pending.values())
                conn.unacked_since = trio.current_time() if waiting else None
                self._puback_received()

        def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
            if self._on_message is not None:
                try:
                    self._on_message(message.topic, bytes(message.payload))
                except Exception:
                    log.exception("MQTT message handler failed on topic %r", message.topic)

        client.on_socket_close = on_socket_close
        client.on_socket_register_write = on_socket_register_write
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        client.on_log = on_log

    async def _open_socket(self, conn: _Connection) -> None:
        s = self.settings

        def connect() -> None:
            try:
                conn.paho.connect(s.host, s.port, keepalive=s.keepalive)
            finally:
                with conn.lock:
                    conn.thread_done = True
                    abandoned = conn.abandoned
                if abandoned:
                    _close_socket(conn.paho.socket())

        try:
            # Abandonable, so that shutdown never waits for a connect to a black-holed host;
            # whichever side finishes last closes the socket of an abandoned attempt.
            await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except trio.Cancelled:
            with conn.lock:
                conn.abandoned = True
                done = conn.thread_done
            if done:
                _close_socket(conn.paho.socket())
            raise
        conn.sock = conn.paho.socket()
        if conn.sock is None:
            raise OSError("paho returned no socket")
        conn.active = True
        # The CONNECT packet was queued while the thread owned the socket.
        if conn.paho.want_write():
            conn.write_wanted.set()

    async def _reader(self, conn: _Connection) -> None:
        sock = conn.sock
        while not conn.closed.is_set():
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            rc = conn.paho.loop_read()
            # TLS may hold decrypted bytes that the kernel no longer reports as readable.
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not conn.closed.is_set():
                pending = getattr(sock, "pending", None)
                if pending is None or pending() == 0:
                    break
                rc = conn.paho.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._force_close(conn, _describe_rc(conn, rc))
                return

    async def _writer(self, conn: _Connection) -> None:
        sock = conn.sock
        while not conn.closed.is_set():
            if not conn.paho.want_write():
                conn.write_wanted = trio.Event()
                await conn.write_wanted.wait()
                continue
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError:
                return
            rc = conn.paho.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._force_close(conn, _describe_rc(conn, rc))
                return

    async def _ticker(self, conn: _Connection) -> None:
        # Keepalive: paho sends PINGREQ and notices a missing PINGRESP from loop_misc().
        while not conn.closed.is_set():
            await trio.sleep(_MISC_INTERVAL)
            self._check_pubacks(conn)
            rc = conn.paho.loop_misc()
            if rc == MQTTErrorCode.MQTT_ERR_CONN_LOST:
                self._force_close(
                    conn, f"no answer to PINGREQ within {self.settings.keepalive} s (keepalive)"
                )

    def _check_pubacks(self, conn: _Connection) -> None:
        s = self.settings
        since = conn.unacked_since
        if since is None or ALARM_PUBACK_WITHHELD in self._alarms:
            return
        waited = trio.current_time() - since
        if waited < s.puback_alarm_s:
            return
        message = (
            f"MQTT broker {s.describe()} has sent no PUBACK for {waited:.0f} s although "
            f"{len(conn.pending)} message(s) wait for one: it takes the messages but does not "
            "acknowledge them (overloaded, or refusing them silently); the readings stay in the "
            "outbox"
        )
        self._alarms.add(ALARM_PUBACK_WITHHELD)
        self.alarm_messages[ALARM_PUBACK_WITHHELD] = message
        log.warning("%s", message)

    def _puback_received(self) -> None:
        if ALARM_PUBACK_WITHHELD in self._alarms:
            self._alarms.discard(ALARM_PUBACK_WITHHELD)
            self.alarm_messages.pop(ALARM_PUBACK_WITHHELD, None)
            log.info("MQTT broker %s acknowledges messages again", self.settings.describe())

    def _force_close(self, conn: _Connection, reason: str) -> None:
        if conn.close_reason is None:
            conn.close_reason = reason
        if conn.closed.is_set():
            return
        conn.closed.set()
        if conn.active and conn.sock is not None:
            trio.lowlevel.notify_closing(conn.sock)
            _close_socket(conn.sock)

    # -- bookkeeping -------------------------------------------------------------------------

    def _on_connected(self, conn: _Connection) -> None:
        conn.connected_at = trio.current_time()
        self.stats.connects += 1
        self._refusal_log.reset()
        self._failure_log.reset()
        for alarm in (ALARM_AUTH_REFUSED, ALARM_CONNACK_REFUSED):
            if alarm in self._alarms:
                self._alarms.discard(alarm)
                log.info("MQTT broker %s accepted the connection again", self.settings.describe())
        log.info("connected to MQTT broker %s", self.settings.describe())
        self._set_connected(True)

    def _end_connection(self, conn: _Connection) -> None:
        reason = conn.close_reason or "connection closed"
        # The alarm was about this connection; the next one is judged on its own.
        if ALARM_PUBACK_WITHHELD in self._alarms:
            self._alarms.discard(ALARM_PUBACK_WITHHELD)
            self.alarm_messages.pop(ALARM_PUBACK_WITHHELD, None)
        for pending in conn.pending.values():
            pending.error = f"connection lost ({reason})"
            pending.done.set()
        conn.pending.clear()
        # The client is discarded; make sure nothing it queued survives in memory.
        conn.paho.drop_out_messages()
        if self._connected:
            self._set_connected(False)

    def _after_connection(self, conn: _Connection) -> float:
        s = self.settings
        now = trio.current_time()
        reason = conn.close_reason or "connection closed"
        if conn.closing_on_purpose or self._closing:
            if conn.connected_at is not None:
                self.stats.disconnects += 1
            return 0.0
        if conn.connected_at is None:
            refused = conn.connack_reason
            if refused is not None and refused.is_failure:
                return self._on_refused(refused)
            self.stats.connect_failures += 1
            self._note_failure(
                f"MQTT broker {s.describe()} did not accept the connection: {reason}"
            )
            return self._backoff()
        self.stats.disconnects += 1
        lasted = now - conn.connected_at
        self.last_error = f"connection lost after {lasted:.1f} s: {reason}"
        if lasted < s.takeover_window:
            self._short_sessions += 1
        else:
            self._short_sessions = 0
            self._attempt = 0
        if lasted >= s.takeover_clear_after and ALARM_SESSION_TAKEOVER in self._alarms:
            self._alarms.discard(ALARM_SESSION_TAKEOVER)
            self._takeover_log.reset()
            log.info("MQTT connection to %s is stable again", s.describe())
        if self._short_sessions >= s.takeover_count:
            self._alarms.add(ALARM_SESSION_TAKEOVER)
            if self._takeover_log.due("takeover", now):
                log.error(
                    "MQTT broker %s: the broker keeps closing the connection right after accepting "
                    "it (%d times in a row): another client is probably using this token or "
                    "client id",
                    s.describe(),
                    self._short_sessions,
                )
        elif self._failure_log.due(("lost", reason), now):
            log.warning("MQTT connection to %s lost after %.1f s: %s", s.describe(), lasted, reason)
        return self._backoff()

    def _on_refused(self, reason: ReasonCode) -> float:
        s = self.settings
        self.stats.connack_refusals += 1
        code = reason.value
        if code in (_BAD_CREDENTIALS, _NOT_AUTHORIZED):
            what = "bad credentials" if code == _BAD_CREDENTIALS else "not authorized"
            # The username is often the ThingsBoard access token: never log any of it.
            if s.credential_source is not None:
                who = s.credential_source
            elif s.username is not None:
                who = f"a username of {len(s.username)} characters"
            else:
                who = "no username"
            message = (
                f"MQTT broker refused the connection: {what} for {who} "
                f"(check the ThingsBoard access token) [{s.describe()}]"
            )
            alarm = ALARM_AUTH_REFUSED
        else:
            message = f"MQTT broker refused the connection: {reason} [{s.describe()}]"
            alarm = ALARM_CONNACK_REFUSED
        self._alarms.add(alarm)
        self.last_error = message
        if self._refusal_log.due(code, trio.current_time()):
            log.error("%s", message)
        # Retrying a refused login quickly cannot help and may get us banned: wait long.
        base = s.backoff_max
        return random.uniform(base / 2, base)

    def _note_failure(self, message: str) -> None:
        self.last_error = message
        if self._failure_log.due(message, trio.current_time()):
            log.warning("%s", message)


def _make_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"MQTT TLS settings: cannot load certificates: {exc}") from exc
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
