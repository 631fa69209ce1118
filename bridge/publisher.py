"""Paced, ordered delivery of readings from the outbox to the broker.

Formats (`PublishMode`):

- ``gateway``: the ThingsBoard gateway MQTT API over one connection (the gateway device's
  token). ``v1/gateway/connect`` ``{"device": "<meter>"}`` announces each meter once per
  connection, at low priority: only while no telemetry waits (ThingsBoard creates the device
  from its telemetry; the announcement matters only for RPC and attribute updates), at QoS 0
  (every meter is announced again after a reconnection, so one lost with a connection is
  sent again; a PUBACK apiece cost a fleet's start more than the announcements themselves);
  ``v1/gateway/telemetry`` carries many readings of many meters per message,
  ``{"<meter>": [{"ts": ms, "values": {...}}, ...], ...}``;
  ``v1/gateway/disconnect`` ``{"device": "<meter>"}`` is sent when a meter is removed; the
  online flag goes to ``v1/gateway/attributes`` ``{"<meter>": {"online": true}}``.
- ``device``: the ThingsBoard device MQTT API, one connection per meter (each meter's own
  token): ``v1/devices/me/telemetry`` ``[{"ts": ms, "values": {...}}, ...]`` and
  ``v1/devices/me/attributes`` ``{"online": true}``.
- ``topic``: any broker. The readings of one meter on `PublisherSettings.topic_template`
  (``{meter}`` is replaced) as a JSON array, oldest first, of up to ``batch_rows`` readings
  shaped ``thingsboard`` ``{"ts": ms, "values": {...}}`` or ``flat`` ``{"meter": "<meter>",
  "ts": ms, <key>: <value>, ...}``; with ``batch_rows = 1`` each message is one such object.
  The online flag is a retained ``{"meter": "<meter>", "online": true}`` on
  `status_topic_template`.

Values: a reading's values go as they are (structures and arrays as JSON arrays, text as
strings), except that ThingsBoard takes no null: a null value is left out and its cause goes
under ``<key>_quality`` / ``<key>_error`` (`Reading.telemetry`). A meter's configured
``attributes`` (serial number, firmware) are published as device attributes
(``v1/gateway/attributes`` ``{"<meter>": {...}}`` or ``v1/devices/me/attributes``) once per
connection and again whenever they change; in ``topic`` mode they travel with the values.

Delivery: rows are read from the outbox in insertion order, published with QoS 1 (a few
messages in flight per connection), and deleted only after their PUBACK. After any failure the
lane starts again from the oldest row still stored, so readings of one meter always reach the
broker in order, across outages and restarts (a reading may arrive twice, never not at all).

Pacing defaults are chosen for ThingsBoard, which closes the connection and never PUBACKs a
message over its limits:

- ``max_messages_per_s = 4`` (burst 4): ThingsBoard's transport rate limit per device, when
  enabled, defaults to ``10:1,300:60`` (``TB_TRANSPORT_RATE_LIMITS_DEVICE``: 10 messages per
  second and 300 per minute, i.e. 5/s sustained); a gateway's messages count against the
  gateway device. 4/s with a burst of 4 stays under both windows.
- ``max_payload_bytes = 32 KiB``: ThingsBoard's MQTT transport refuses messages above
  ``NETTY_MAX_PAYLOAD_SIZE`` (65536 bytes by default); half of it leaves room for other setups.
- ``max_bytes_per_s = 64 KiB/s``: keeps a backlog flush from saturating a cellular uplink.
- Several readings per message in every mode (up to ``batch_rows`` = 500 and
  ``max_payload_bytes``): with 4 messages/s the default config never falls behind, not even in
  topic mode with a message per meter. A publisher that does fall behind (the outbox grows for
  ``backlog_alarm_s`` while connected) raises ``publisher.falling_behind``, naming the limit
  that held it back.
- ``max_datapoints_per_s = None``: self-hosted ThingsBoard has no data-point limit by default;
  set it for ThingsBoard Cloud plans, whose tenant profiles limit telemetry data points.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import trio

from bridge.config import DEFAULT_TOPIC, PublishConfig
from bridge.mqtt import Delivery, MqttClient, MqttSettings, PublishError
from bridge.outbox import AsyncOutbox, OutboxError, OutboxRow
from bridge.readings import Reading, dumps_compact, json_string

__all__ = [
    "ALARM_FALLING_BEHIND",
    "DEFAULT_BACKLOG_ALARM_S",
    "Pacer",
    "PayloadShape",
    "PublishMode",
    "Publisher",
    "PublisherSettings",
    "PublisherStats",
    "TokenBucket",
    "UndeliverableError",
]

log = logging.getLogger("bridge.publisher")

GATEWAY_CONNECT = "v1/gateway/connect"
GATEWAY_DISCONNECT = "v1/gateway/disconnect"
GATEWAY_TELEMETRY = "v1/gateway/telemetry"
GATEWAY_ATTRIBUTES = "v1/gateway/attributes"
DEVICE_TELEMETRY = "v1/devices/me/telemetry"
DEVICE_ATTRIBUTES = "v1/devices/me/attributes"
#: The gateway's alarm attributes name and detail at most this many alarms (``alarms`` is the
#: count of all): a fleet-wide outage raises one alarm a meter, and a list of thousands in one
#: attribute message, sent again on each change, would be megabytes.
MAX_ALARMS_PUBLISHED = 100

_RETRY_DELAY = 1.0
#: While telemetry keeps the pacer busy, one gateway ``connect`` may go after this many
#: telemetry messages, so announcements cannot starve (telemetry keeps >= 90% of the pace).
ANNOUNCE_EVERY = 10
#: Announcements sent back to back, at most, while no telemetry waits and the pacer has room.
ANNOUNCE_BURST = 64
#: While the pacer limits them, announcements wait for room for this many at once.
ANNOUNCE_WAIT_FOR = 16
#: The QoS of gateway ``connect`` messages (see the module docstring).
ANNOUNCE_QOS = 0
#: The configuration's defaults are the publisher's (one home for each default).
_CONFIG = PublishConfig()
#: Seconds of outbox growth (while connected) before ``publisher.falling_behind``, by default.
DEFAULT_BACKLOG_ALARM_S = _CONFIG.backlog_alarm_s
ALARM_FALLING_BEHIND = "publisher.falling_behind"
# Samples of the outbox depth per backlog window.
_BACKLOG_SAMPLES = 20
#: Rows delivered but not yet deleted (the outbox could not write) that are remembered so that
#: they are not sent again; beyond this many, delivery pauses until the deletes succeed.
_MAX_UNDELETED = 100_000
_LATENCY_SAMPLES = 4096


class PublishMode(enum.Enum):
    """Which API the readings are published with; see the module docstring."""

    GATEWAY = "gateway"
    DEVICE = "device"
    TOPIC = "topic"


class PayloadShape(enum.Enum):
    """Payload of the ``topic`` mode."""

    THINGSBOARD = "thingsboard"
    FLAT = "flat"


def _at_least(minimum: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not value >= minimum:
            raise ValueError(f"publisher {attr.name} must be >= {minimum}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class PublisherSettings:
    """How readings are formatted and paced; the defaults suit ThingsBoard (module docstring).

    `qos` 1 gives at-least-once delivery: rows are deleted after the PUBACK. With `qos` 0 rows
    are deleted as soon as the connection has taken the message (at-most-once).
    """

    mode: PublishMode = PublishMode.GATEWAY
    topic_template: str = DEFAULT_TOPIC
    payload_shape: PayloadShape = PayloadShape.THINGSBOARD
    status_topic_template: str = "meters/{meter}/status"
    device_type: str | None = None
    online_attribute: str | None = "online"
    max_messages_per_s: float = attrs.field(
        default=_CONFIG.max_messages_per_s, validator=_at_least(0.001)
    )
    max_payload_bytes: int = attrs.field(default=_CONFIG.max_payload_bytes, validator=_at_least(64))
    max_bytes_per_s: float = attrs.field(default=_CONFIG.max_bytes_per_s, validator=_at_least(64))
    max_datapoints_per_s: float | None = attrs.field(default=None, validator=_at_least(0.001))
    burst_s: float = attrs.field(default=1.0, validator=_at_least(0.001))
    max_in_flight: int = attrs.field(default=4, validator=_at_least(1))
    ack_timeout: float = attrs.field(default=30.0, validator=_at_least(0.001))
    #: Readings read from the outbox at a time, and the most one message carries (in mode
    #: ``topic`` 1 means one reading per message, a JSON object; more, a JSON array).
    batch_rows: int = attrs.field(default=_CONFIG.max_readings_per_message, validator=_at_least(1))
    backlog_alarm_s: float = attrs.field(
        default=DEFAULT_BACKLOG_ALARM_S, validator=_at_least(0.001)
    )
    qos: int = 1


# -- pacing ------------------------------------------------------------------------------------


@attrs.define(eq=False)
class TokenBucket:
    """`rate` tokens per second, at most `capacity` saved up; time comes from the caller.

    A request larger than the capacity waits for a full bucket and then leaves it in debt, so
    an oversized message is slow but never stuck.
    """

    rate: float
    capacity: float
    tokens: float = attrs.field(default=math.nan)
    stamp: float | None = None

    def __attrs_post_init__(self) -> None:
        if math.isnan(self.tokens):
            self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def delay(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 if it can be taken now)."""
        self._refill(now)
        missing = min(amount, self.capacity) - self.tokens
        return max(0.0, missing / self.rate)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens -= amount


class Pacer:
    """Messages, bytes and (optionally) data points per second, as token buckets."""

    def __init__(
        self,
        messages_per_s: float,
        bytes_per_s: float,
        datapoints_per_s: float | None = None,
        burst_s: float = 1.0,
    ) -> None:
        self.messages = TokenBucket(messages_per_s, max(1.0, messages_per_s * burst_s))
        self.bytes = TokenBucket(bytes_per_s, max(1.0, bytes_per_s * burst_s))
        self.datapoints = (
            TokenBucket(datapoints_per_s, max(1.0, datapoints_per_s * burst_s))
            if datapoints_per_s
            else None
        )
        self.waited = 0.0
        #: Seconds waited, by the limit that made us wait: messages, bytes, datapoints.
        self.waited_by: dict[str, float] = {"messages": 0.0, "bytes": 0.0, "datapoints": 0.0}

    def delay(self, nbytes: int, count: int = 1) -> float:
        """Seconds until `count` messages of `nbytes` each may go (0: now); a count beyond
        what the buckets hold waits for full buckets."""
        now = trio.current_time()
        return max(self.messages.delay(count, now), self.bytes.delay(nbytes * count, now))

    async def acquire(self, nbytes: int, datapoints: int = 0) -> None:
        """Wait until one message of `nbytes` (carrying `datapoints` values) may go."""
        while True:
            now = trio.current_time()
            delays = {
                "messages": self.messages.delay(1, now),
                "bytes": self.bytes.delay(nbytes, now),
            }
            if self.datapoints is not None and datapoints:
                delays["datapoints"] = self.datapoints.delay(datapoints, now)
            limit = max(delays, key=lambda k: delays[k])
            wait = delays[limit]
            if wait <= 0:
                break
            self.waited += wait
            self.waited_by[limit] += wait
            await trio.sleep(wait)
        now = trio.current_time()
        self.messages.take(1, now)
        self.bytes.take(nbytes, now)
        if self.datapoints is not None and datapoints:
            self.datapoints.take(datapoints, now)


# -- messages ----------------------------------------------------------------------------------


@attrs.frozen
class Message:
    """One MQTT message and the outbox rows it carries (none for control messages)."""

    topic: str
    payload: bytes
    rows: tuple[OutboxRow, ...] = ()
    retain: bool = False
    # Sent again after a failure (regenerated messages such as statuses are not).
    requeue: bool = False
    # Why these rows can never be delivered (they are then removed, loudly).
    problem: str | None = None
    # The QoS it goes with (None: the connection's). QoS 0 is for control messages only.
    qos: int | None = None

    @property
    def datapoints(self) -> int:
        return sum(row.reading.datapoints() for row in self.rows)


def gateway_telemetry(rows: Sequence[OutboxRow], max_bytes: int) -> tuple[Message, int]:
    """The gateway telemetry message for the longest prefix of `rows` within `max_bytes`
    (at least one row); returns the message and how many rows it took."""
    groups: dict[str, list[bytes]] = {}
    size = 2  # the braces
    taken = 0
    for row in rows:
        entry = row.reading.telemetry_entry()
        meter = row.reading.meter
        if meter in groups:
            extra = len(entry) + 1
        else:
            extra = len(json_string(meter)) + 3 + len(entry) + (1 if groups else 0)
        if taken and size + extra > max_bytes:
            break
        groups.setdefault(meter, []).append(entry)
        size += extra
        taken += 1
    body = b",".join(b"%b:[%b]" % (json_string(m), b",".join(e)) for m, e in groups.items())
    return Message(GATEWAY_TELEMETRY, b"{%b}" % body, tuple(rows[:taken])), taken


def device_telemetry(rows: Sequence[OutboxRow], max_bytes: int) -> tuple[Message, int]:
    """The device API telemetry array for the longest prefix of `rows` within `max_bytes`."""
    entries: list[bytes] = []
    size = 2
    for row in rows:
        entry = row.reading.telemetry_entry()
        extra = len(entry) + (1 if entries else 0)
        if entries and size + extra > max_bytes:
            break
        entries.append(entry)
        size += extra
    payload = b"[%b]" % b",".join(entries)
    return Message(DEVICE_TELEMETRY, payload, tuple(rows[: len(entries)])), len(entries)


class UndeliverableError(ValueError):
    """A reading that no retry can deliver (e.g. its meter name cannot be in a topic)."""


def topic_message(row: OutboxRow, settings: PublisherSettings) -> Message:
    """One reading on the configured topic, in the configured shape (a JSON object)."""
    reading = row.reading
    topic = settings.topic_template.replace("{meter}", reading.meter)
    if any(c in reading.meter for c in "+#\0"):
        raise UndeliverableError(
            f"meter name {reading.meter!r} cannot be part of an MQTT topic ({topic!r})"
        )
    return Message(topic, _topic_object(reading, settings), (row,))


def _topic_object(reading: Reading, settings: PublisherSettings) -> bytes:
    """One reading in the topic mode's shape; `ValueError` if its keys clash with the flat
    shape's own fields."""
    # A plain broker has no device attributes: they travel with the values.
    values: dict[str, object] = {**reading.attributes_json(), **reading.telemetry()}
    if settings.payload_shape is PayloadShape.FLAT:
        clash = {"meter", "ts"} & values.keys()
        if clash:
            raise ValueError(
                f"reading of meter {reading.meter!r}: keys {sorted(clash)} clash with the flat "
                "payload's own fields"
            )
        values["meter"] = reading.meter
        values["ts"] = reading.ts_ms
        return dumps_compact(values).encode()
    return f'{{"ts":{reading.ts_ms},"values":{dumps_compact(values)}}}'.encode()


def _topic_entry(reading: Reading, settings: PublisherSettings) -> bytes:
    """`_topic_object`, falling back to the thingsboard shape (logged) on a key clash."""
    try:
        return _topic_object(reading, settings)
    except ValueError as exc:
        log.error("%s; the reading is sent in the thingsboard shape instead", exc)
        return _topic_object(
            reading, attrs.evolve(settings, payload_shape=PayloadShape.THINGSBOARD)
        )


def topic_batch(
    rows: Sequence[OutboxRow], settings: PublisherSettings, max_bytes: int
) -> tuple[Message, int]:
    """Topic mode: one message with the longest prefix of `rows` (all of one meter) that fits
    `max_bytes` and ``settings.batch_rows``: a JSON array of readings, oldest first.

    Returns the message and how many rows it took (at least one).
    """
    reading = rows[0].reading
    topic = settings.topic_template.replace("{meter}", reading.meter)
    if any(c in reading.meter for c in "+#\0"):
        problem = f"meter name {reading.meter!r} cannot be part of an MQTT topic ({topic!r})"
        return Message("", b"", tuple(rows), problem=problem), len(rows)
    entries: list[bytes] = []
    size = 2
    for row in rows[: settings.batch_rows]:
        entry = _topic_entry(row.reading, settings)
        if entries and size + len(entry) + 1 > max_bytes:
            break
        entries.append(entry)
        size += len(entry) + (1 if len(entries) > 1 else 0)
    payload = b"[" + b",".join(entries) + b"]"
    return Message(topic, payload, tuple(rows[: len(entries)])), len(entries)


# -- the publisher -----------------------------------------------------------------------------


@attrs.define(eq=False)
class PublisherStats:
    """Counters of the publisher over its lifetime."""

    published_messages: int = 0
    published_readings: int = 0
    published_bytes: int = 0
    publish_failures: int = 0
    control_messages: int = 0
    undeliverable_dropped: int = 0
    last_delivery_ts: float | None = None
    last_error: str | None = None


@attrs.frozen
class _Sample:
    """The outbox depth and the publisher's counters at one moment."""

    at: float
    rows: int
    readings: int
    messages: int
    nbytes: int
    waited: dict[str, float]


@attrs.define(eq=False)
class _Lane:
    """One connection and the meters it carries (None: all meters)."""

    client: MqttClient
    meter: str | None
    pacer: Pacer
    window: trio.Semaphore
    control: list[Message] = attrs.Factory(list)
    dirty_status: set[str] = attrs.Factory(set)
    announced: set[str] = attrs.Factory(set)
    #: Gateway ``connect`` messages still to send, at low priority (see ``_announce``).
    to_announce: dict[str, None] = attrs.Factory(dict)
    sent_since_announce: int = 0
    #: The device attributes last published per meter on this connection.
    attributes_sent: dict[str, dict[str, Any]] = attrs.Factory(dict)
    wake: trio.Event = attrs.Factory(trio.Event)
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    failure: str | None = None

    def poke(self) -> None:
        self.wake.set()


class Publisher:
    """Moves readings from the outbox to the broker; see the module docstring.

    `mqtt` is the one connection of the ``gateway`` and ``topic`` modes; `devices` maps meter
    name -> connection settings (its token) for the ``device`` mode. The publisher owns and runs
    its `MqttClient` objects (`clients`). Run `run` as a task.
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        settings: PublisherSettings,
        *,
        mqtt: MqttSettings | None = None,
        devices: Mapping[str, MqttSettings] | None = None,
        on_message: Callable[[str | None, str, bytes], None] | None = None,
        subscriptions: Sequence[str] = (),
        on_connected: Callable[[str | None], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        #: Incoming messages (RPC requests, shared attributes) on `subscriptions`, as
        #: ``on_message(meter, topic, payload)``: meter is the device-mode lane's meter, or None.
        self.on_message = on_message
        self.subscriptions = tuple(subscriptions)
        #: Told ``on_connected(meter)`` after each (re)connect of a lane, before its telemetry.
        self.on_connected = on_connected
        self.stats = PublisherStats()
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._lanes: dict[str | None, _Lane] = {}
        #: The last body given to `publish_gateway_attributes` (replaced while still waiting).
        self._gateway_attributes: Message | None = None
        self._online: dict[str, bool] = {}
        self._delivered = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Row ids acknowledged by the broker whose delete failed (the outbox cannot write).
        self._undeleted: set[int] = set()
        self._alarms: dict[str, str] = {}
        if settings.mode is PublishMode.DEVICE:
            if mqtt is not None:
                raise ValueError("publisher in device mode takes `devices`, not `mqtt`")
            for meter, mqtt_settings in (devices or {}).items():
                self._lanes[meter] = self._make_lane(mqtt_settings, meter)
        else:
            if mqtt is None or devices:
                raise ValueError(f"publisher in {settings.mode.value} mode takes `mqtt` only")
            self._lanes[None] = self._make_lane(mqtt, None)

    def _make_lane(self, mqtt: MqttSettings, meter: str | None) -> _Lane:
        s = self.settings
        handler = None if self.on_message is None else functools.partial(self.on_message, meter)
        client = MqttClient(mqtt, on_message=handler)
        for topic in self.subscriptions:
            client.subscribe(topic, 1)
        return _Lane(
            client=client,
            meter=meter,
            pacer=Pacer(s.max_messages_per_s, s.max_bytes_per_s, s.max_datapoints_per_s, s.burst_s),
            window=trio.Semaphore(s.max_in_flight),
        )

    # -- public API --------------------------------------------------------------------------

    @property
    def clients(self) -> dict[str | None, MqttClient]:
        """The MQTT clients by meter (key None for the single gateway/topic connection)."""
        return {key: lane.client for key, lane in self._lanes.items()}

    @property
    def alarms(self) -> frozenset[str]:
        """The publisher's own alarms and those of every connection."""
        out: set[str] = set(self._alarms)
        for lane in self._lanes.values():
            out |= lane.client.alarms
        return frozenset(out)

    def alarm_messages(self) -> dict[str, str]:
        """What the active alarms that carry a message say."""
        out = dict(self._alarms)
        for lane in self._lanes.values():
            for name, text in lane.client.alarm_messages.items():
                out.setdefault(name, text)
        return out

    def latency_ms(self) -> tuple[float, float] | None:
        """(p50, p95) of reading time -> PUBACK over recent readings, None before any."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return pick(0.50), pick(0.95)

    def set_meter_online(self, meter: str, online: bool) -> None:
        """Record a meter's reachability and publish it (now, and again after reconnects)."""
        self._online[meter] = online
        lane = self._lane_for(meter)
        if lane is not None:
            lane.dirty_status.add(meter)
            lane.poke()

    def send(
        self, meter: str | None, topic: str, payload: bytes, *, qos: int | None = None
    ) -> bool:
        """Publish a control message (an RPC response, attributes) on the connection that
        carries `meter` (None: the gateway/topic connection), ahead of telemetry; not stored,
        so a message whose connection drops before it went out is lost. ``qos=0`` for a
        message sent again after every reconnection anyway (no PUBACK, no window slot); else
        the connection's QoS. False if there is no such connection."""
        lane = self._lanes.get(None) if meter is None else self._lane_for(meter)
        if lane is None:
            return False
        lane.control.append(Message(topic, payload, qos=qos))
        lane.poke()
        return True

    async def add_device(self, meter: str, mqtt: MqttSettings) -> None:
        """Device mode: start a connection for a new meter."""
        if self.settings.mode is not PublishMode.DEVICE:
            raise ValueError("add_device is only for the device mode")
        if meter in self._lanes:
            raise ValueError(f"meter {meter!r} already has a connection")
        lane = self._make_lane(mqtt, meter)
        self._lanes[meter] = lane
        if self._nursery is not None:
            await self._start_lane(self._nursery, lane)

    async def remove_meter(self, meter: str) -> None:
        """Say goodbye to a meter: gateway disconnect, or close its own connection."""
        self._online.pop(meter, None)
        if self.settings.mode is PublishMode.DEVICE:
            lane = self._lanes.pop(meter, None)
            if lane is not None:
                await lane.client.disconnect()
                lane.scope.cancel()
            return
        lane = self._lanes[None]
        lane.dirty_status.discard(meter)
        if self.settings.mode is PublishMode.GATEWAY:
            lane.announced.discard(meter)
            lane.to_announce.pop(meter, None)
            payload = dumps_compact({"device": meter}).encode()
            lane.control.append(Message(GATEWAY_DISCONNECT, payload, requeue=True))
            lane.poke()

    def publish_gateway_attributes(self, body: Mapping[str, object]) -> bool:
        """Gateway mode: publish attributes of the gateway device itself (its alarms, say).

        Only the latest body waits for the connection: an older one not yet sent is replaced.
        Returns False in the other modes (there is no gateway device).
        """
        if self.settings.mode is not PublishMode.GATEWAY:
            return False
        lane = self._lanes[None]
        stale = self._gateway_attributes
        lane.control = [m for m in lane.control if m is not stale]
        message = Message(DEVICE_ATTRIBUTES, dumps_compact(dict(body)).encode(), requeue=True)
        self._gateway_attributes = message
        lane.control.append(message)
        lane.poke()
        return True

    async def flush(self, deadline: float) -> bool:
        """Keep delivering until the outbox is empty or the Trio clock reaches `deadline`;
        True if it emptied. `run` must be running."""
        with trio.move_on_at(deadline):
            while self.outbox.depth()[0] > len(self._undeleted):
                await self._delivered.wait()
            return True
        return False

    async def disconnect(self) -> None:
        """Close every connection cleanly (DISCONNECT), e.g. after `flush` at shutdown."""
        async with trio.open_nursery() as nursery:
            for lane in self._lanes.values():
                nursery.start_soon(lane.client.disconnect)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the connections and the delivery loops until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for lane in list(self._lanes.values()):
                await self._start_lane(nursery, lane)
            if self.settings.mode is PublishMode.DEVICE:
                nursery.start_soon(self._warn_unrouted)
            nursery.start_soon(self._watch_backlog)
            task_status.started()
            await trio.sleep_forever()

    # -- internals ---------------------------------------------------------------------------

    def _lane_for(self, meter: str) -> _Lane | None:
        if self.settings.mode is PublishMode.DEVICE:
            return self._lanes.get(meter)
        return self._lanes[None]

    async def _start_lane(self, nursery: trio.Nursery, lane: _Lane) -> None:
        async def lane_main() -> None:
            with lane.scope:
                async with trio.open_nursery() as inner:
                    await inner.start(lane.client.run)
                    await self._lane_loop(lane)

        nursery.start_soon(lane_main)

    def _sample(self) -> _Sample:
        waited = {"messages": 0.0, "bytes": 0.0, "datapoints": 0.0}
        for lane in self._lanes.values():
            for kind, seconds in lane.pacer.waited_by.items():
                waited[kind] += seconds
        st = self.stats
        return _Sample(
            at=trio.current_time(),
            rows=self.outbox.depth()[0] - len(self._undeleted),
            readings=st.published_readings,
            messages=st.published_messages,
            nbytes=st.published_bytes,
            waited=waited,
        )

    async def _watch_backlog(self) -> None:
        """Raise ``publisher.falling_behind`` when the outbox keeps growing for a whole
        window while every connection is up: the limits are too low for the readings taken.

        Growing means: the least-squares trend over the window adds at least 10 % of the
        readings taken (and 3 readings), and the last quarter never comes down to the level of
        the first. A batching publisher settles at a backlog of about one round of
        messages; judging only once connected for two windows leaves that settling out.
        """
        window = self.settings.backlog_alarm_s
        step = window / _BACKLOG_SAMPLES
        samples: deque[_Sample] = deque()
        connected_since: float | None = None
        while True:
            await trio.sleep(step)
            now = trio.current_time()
            if not self._lanes or not all(lane.client.connected for lane in self._lanes.values()):
                samples.clear()  # an outage fills the outbox for another reason
                connected_since = None
                continue
            if connected_since is None:
                connected_since = now
            samples.append(self._sample())
            while samples[-1].at - samples[0].at > window + step / 2:
                samples.popleft()
            if now - connected_since < 2 * window - step / 2:
                continue
            ordered = list(samples)
            growing = _growing(ordered)
            if growing and ALARM_FALLING_BEHIND not in self._alarms:
                message = self._behind_message(ordered[0], ordered[-1])
                self._alarms[ALARM_FALLING_BEHIND] = message
                log.warning("%s", message)
            elif not growing and ALARM_FALLING_BEHIND in self._alarms:
                del self._alarms[ALARM_FALLING_BEHIND]
                log.info("the publisher keeps up again (outbox %d readings)", ordered[-1].rows)

    def _behind_message(self, first: _Sample, last: _Sample) -> str:
        """Which limit holds the publisher back, from what it waited for over the window."""
        s = self.settings
        span = max(last.at - first.at, 1e-9)
        sent = last.readings - first.readings
        messages = last.messages - first.messages
        nbytes = last.nbytes - first.nbytes
        taken = sent + (last.rows - first.rows)
        waited = {k: last.waited[k] - first.waited[k] for k in last.waited}
        kind = max(waited, key=lambda k: waited[k])
        per_message = sent / messages if messages else 0.0
        if waited[kind] < 0.2 * span:
            advice = (
                f"the broker is slow to acknowledge (at most {s.max_in_flight} messages wait "
                "for a PUBACK at a time); no pacing limit is the cause"
            )
        elif kind == "bytes":
            advice = f"raise publish.max_bytes_per_s (now {s.max_bytes_per_s:g})"
        elif kind == "datapoints":
            advice = f"raise max_datapoints_per_s (now {s.max_datapoints_per_s:g})"
        elif per_message >= 0.9 * s.batch_rows:
            advice = (
                f"raise publish.max_readings_per_message (now {s.batch_rows}) or "
                f"publish.max_messages_per_s (now {s.max_messages_per_s:g})"
            )
        elif messages and nbytes / messages >= 0.8 * s.max_payload_bytes:
            advice = (
                f"raise publish.max_payload_bytes (now {s.max_payload_bytes}) or "
                f"publish.max_messages_per_s (now {s.max_messages_per_s:g})"
            )
        else:
            advice = f"raise publish.max_messages_per_s (now {s.max_messages_per_s:g})"
        return (
            f"the publisher cannot keep up: the outbox grew from {first.rows} to {last.rows} "
            f"readings in {span:.0f} s while connected ({taken / span:.1f} readings/s taken, "
            f"{sent / span:.1f}/s published in {messages / span:.1f} messages/s, "
            f"{per_message:.1f} readings per message); {advice}"
        )

    async def _warn_unrouted(self) -> None:
        try:
            meters = await self.outbox.pending_meters()
        except OutboxError as exc:
            log.error("cannot list the meters waiting in the outbox: %s", exc)
            return
        for meter in meters:
            if meter not in self._lanes:
                log.warning(
                    "outbox holds readings of meter %r, which has no device connection; they "
                    "stay stored until it gets one",
                    meter,
                )

    async def _lane_loop(self, lane: _Lane) -> None:
        while True:
            await lane.client.wait_connected()
            generation = lane.client.generation
            # (Again) connected: announce meters and repeat every known status.
            lane.announced.clear()
            lane.attributes_sent.clear()
            lane.dirty_status |= {m for m in self._online if self._lane_for(m) is lane}
            lane.failure = None
            if self.on_connected is not None:
                self.on_connected(lane.meter)
            failure = await self._deliver(lane, generation)
            if failure is not None:
                self.stats.last_error = failure
                log.debug("delivery to %s interrupted: %s", lane.client.settings.host, failure)
                if lane.client.connected and lane.client.generation == generation:
                    # Still connected (a PUBACK timeout, an outbox error): do not hammer.
                    await trio.sleep(_RETRY_DELAY)

    async def _deliver(self, lane: _Lane, generation: int) -> str | None:
        """Deliver from the oldest stored row on, until the connection changes or a message
        fails (`lane.failure`); the caller then starts over."""
        cursor = 0
        # The outbox's `appended` event when a look found nothing after `cursor`: while it is
        # still the current one, nothing was stored since and the outbox need not be asked.
        empty_since: trio.Event | None = None
        async with trio.open_nursery() as in_flight:
            # Failures of in-flight messages cancel this scope; nothing is raised across the
            # nursery, so no exception groups to unpick.
            while lane.failure is None:
                if not lane.client.connected or lane.client.generation != generation:
                    break
                lane.wake = trio.Event()
                appended = self.outbox.appended
                try:
                    await self._send_control(lane, in_flight)
                    if not await self._retry_deletes():
                        # Far too much delivered and not deleted: wait for the outbox.
                        await trio.sleep(_RETRY_DELAY)
                        continue
                    if empty_since is appended and not appended.is_set():
                        rows = []
                    else:
                        rows = await self.outbox.peek(
                            self.settings.batch_rows, meter=lane.meter, after_id=cursor
                        )
                        empty_since = appended if not rows else None
                except (PublishError, OutboxError) as exc:
                    self._fail(lane, in_flight, exc)
                    break
                if not rows:
                    try:
                        if await self._announce(lane, in_flight):
                            continue
                    except PublishError as exc:
                        self._fail(lane, in_flight, exc)
                        break
                    await _wait_any(appended, lane.wake, lane.client)
                    continue
                fresh = [row for row in rows if row.id not in self._undeleted]
                if not fresh:
                    cursor = rows[-1].id
                    continue
                for message in self._messages(lane, fresh):
                    try:
                        if lane.to_announce and lane.sent_since_announce >= ANNOUNCE_EVERY:
                            announcement = self._next_announcement(lane)
                            if announcement is not None:
                                await self._send(lane, announcement, in_flight)
                        lane.sent_since_announce += 1
                        await self._send(lane, message, in_flight)
                    except (PublishError, OutboxError) as exc:
                        self._fail(lane, in_flight, exc)
                        break
                    if message.rows:
                        # Topic mode groups by meter: ids are in order per message only.
                        cursor = max(cursor, message.rows[-1].id)
            in_flight.cancel_scope.cancel()
        return lane.failure

    def _fail(self, lane: _Lane, in_flight: trio.Nursery, exc: Exception) -> None:
        if lane.failure is None:
            lane.failure = str(exc)
        in_flight.cancel_scope.cancel()

    def _messages(self, lane: _Lane, rows: list[OutboxRow]) -> Iterator[Message]:
        s = self.settings
        budget = s.max_payload_bytes
        i = 0
        if s.mode is PublishMode.TOPIC:
            yield from self._topic_messages(rows)
            return
        while i < len(rows):
            if s.mode is PublishMode.DEVICE:
                message, taken = device_telemetry(rows[i:], budget)
                yield from self._attribute_messages(lane, message.rows)
            else:
                message, taken = gateway_telemetry(rows[i:], budget)
                for meter in dict.fromkeys(r.reading.meter for r in message.rows):
                    if meter not in lane.announced:
                        lane.to_announce[meter] = None
                yield from self._attribute_messages(lane, message.rows)
            i += taken
            yield message

    def _topic_messages(self, rows: list[OutboxRow]) -> Iterator[Message]:
        """Topic mode: the rows grouped by meter (each meter's in order), as few messages as
        the limits allow; one reading per message (a JSON object) when ``batch_rows`` is 1."""
        s = self.settings
        by_meter: dict[str, list[OutboxRow]] = {}
        for row in rows:
            by_meter.setdefault(row.reading.meter, []).append(row)
        for mine in by_meter.values():
            if s.batch_rows == 1:
                for row in mine:
                    try:
                        yield topic_message(row, s)
                    except UndeliverableError as exc:
                        yield Message("", b"", (row,), problem=str(exc))
                    except ValueError:
                        entry = _topic_entry(row.reading, s)  # logs the clash
                        topic = s.topic_template.replace("{meter}", row.reading.meter)
                        yield Message(topic, entry, (row,))
                continue
            i = 0
            while i < len(mine):
                message, taken = topic_batch(mine[i:], s, s.max_payload_bytes)
                i += taken
                yield message

    async def _announce(self, lane: _Lane, in_flight: trio.Nursery) -> bool:
        """Send gateway ``connect`` messages while there is no telemetry to send.

        ThingsBoard creates a gateway's device from its first telemetry; ``connect`` only
        matters for server-side RPC and attribute updates. So announcements never go ahead of
        readings: one goes only when the outbox has nothing for this lane and the pacer has
        room right now; otherwise this waits for new rows or for the pacer, whichever is
        first (and while telemetry keeps the pacer busy, one goes every `ANNOUNCE_EVERY`
        telemetry messages). Returns True when it did anything (the caller looks at the
        outbox again).
        """
        while lane.to_announce:
            meter = next(iter(lane.to_announce))
            if meter in lane.announced:
                lane.to_announce.pop(meter)
                continue
            # Room for a few at once (when the pacer is what limits them, a wake-up for each
            # would cost more than the announcement).
            count = min(len(lane.to_announce), ANNOUNCE_WAIT_FOR)
            wait = lane.pacer.delay(len(self._connect_message(meter).payload), count)
            if wait > 0:
                with trio.move_on_after(wait):
                    await _wait_any(self.outbox.appended, lane.wake, lane.client)
                return True
            # A burst while the pacer has room and no telemetry arrives: one round of the
            # delivery loop per announcement cost more than the announcement.
            appended = self.outbox.appended
            for _ in range(ANNOUNCE_BURST):
                announcement = self._next_announcement(lane)
                if announcement is None:
                    break
                await self._send(lane, announcement, in_flight)
                if not lane.to_announce or appended.is_set() or lane.wake.is_set():
                    break
                upcoming = self._connect_message(next(iter(lane.to_announce)))
                if lane.pacer.delay(len(upcoming.payload)) > 0:
                    break
            return True
        return False

    def _next_announcement(self, lane: _Lane) -> Message | None:
        """The next gateway ``connect`` to send (the meter then counts as announced)."""
        while lane.to_announce:
            meter = next(iter(lane.to_announce))
            lane.to_announce.pop(meter)
            if meter not in lane.announced:
                lane.announced.add(meter)
                lane.sent_since_announce = 0
                return self._connect_message(meter)
        return None

    def _attribute_messages(self, lane: _Lane, rows: Sequence[OutboxRow]) -> Iterator[Message]:
        """Device attributes of these rows' meters that this connection has not published yet,
        or whose values changed."""
        changed: dict[str, dict[str, Any]] = {}
        for row in rows:
            reading = row.reading
            if not reading.attributes:
                continue
            current = reading.attributes_json()
            sent = lane.attributes_sent.get(reading.meter)
            if current and current != sent:
                lane.attributes_sent[reading.meter] = current
                changed[reading.meter] = current
        if not changed:
            return
        if self.settings.mode is PublishMode.GATEWAY:
            yield Message(GATEWAY_ATTRIBUTES, dumps_compact(changed).encode())
        else:
            for body in changed.values():
                yield Message(DEVICE_ATTRIBUTES, dumps_compact(body).encode())

    def _connect_message(self, meter: str) -> Message:
        body: dict[str, object] = {"device": meter}
        if self.settings.device_type is not None:
            body["type"] = self.settings.device_type
        return Message(GATEWAY_CONNECT, dumps_compact(body).encode(), qos=ANNOUNCE_QOS)

    def _status_messages(self, lane: _Lane) -> list[Message]:
        s = self.settings
        meters = sorted(lane.dirty_status)
        lane.dirty_status.clear()
        attr = s.online_attribute
        out: list[Message] = []
        if s.mode is PublishMode.GATEWAY:
            for meter in meters:
                if self._online.get(meter) and meter not in lane.announced:
                    lane.to_announce[meter] = None
            if attr is not None and meters:
                body = {m: {attr: self._online[m]} for m in meters if m in self._online}
                if body:
                    out.append(Message(GATEWAY_ATTRIBUTES, dumps_compact(body).encode()))
        elif attr is not None:
            for meter in meters:
                if meter not in self._online:
                    continue
                if s.mode is PublishMode.DEVICE:
                    payload = dumps_compact({attr: self._online[meter]}).encode()
                    out.append(Message(DEVICE_ATTRIBUTES, payload))
                else:
                    topic = s.status_topic_template.replace("{meter}", meter)
                    payload = dumps_compact({"meter": meter, attr: self._online[meter]}).encode()
                    out.append(Message(topic, payload, retain=True))
        return out

    async def _send_control(self, lane: _Lane, in_flight: trio.Nursery) -> None:
        control, lane.control = lane.control, []
        control += self._status_messages(lane)
        for index, message in enumerate(control):
            try:
                await self._send(lane, message, in_flight)
            except BaseException:
                # Not handed over: keep what must not be forgotten for the next attempt.
                lane.control[:0] = [m for m in control[index:] if m.requeue]
                raise

    async def _send(self, lane: _Lane, message: Message, in_flight: trio.Nursery) -> None:
        """Wait for a window slot and the pacer, hand the message to the connection (this
        fixes its place on the wire) and leave the PUBACK to a task."""
        limit = self.settings.max_payload_bytes
        if message.rows and len(message.payload) > limit:
            await self._drop_undeliverable(
                message, f"needs {len(message.payload)} bytes, more than max_payload_bytes={limit}"
            )
            return
        if message.problem is not None:
            await self._drop_undeliverable(message, message.problem)
            return
        if message.qos == 0 and not message.rows:
            # A control message at QoS 0: nothing to wait for, no window slot to hold.
            await lane.pacer.acquire(len(message.payload), 0)
            try:
                lane.client.start_publish(message.topic, message.payload, 0, retain=message.retain)
            except BaseException:
                if message.requeue:
                    lane.control.insert(0, message)
                raise
            self.stats.control_messages += 1
            return
        await lane.window.acquire()
        try:
            pacer = lane.pacer
            # Counted only under a data-point limit (a sum over every reading of the message).
            datapoints = message.datapoints if pacer.datapoints is not None else 0
            await pacer.acquire(len(message.payload), datapoints)
            delivery = lane.client.start_publish(
                message.topic, message.payload, self.settings.qos, retain=message.retain
            )
        except BaseException:
            lane.window.release()
            if message.requeue:
                lane.control.insert(0, message)
            raise
        in_flight.start_soon(self._await_ack, lane, message, delivery, in_flight)

    async def _await_ack(
        self, lane: _Lane, message: Message, delivery: Delivery, in_flight: trio.Nursery
    ) -> None:
        try:
            try:
                await delivery.wait(self.settings.ack_timeout)
            except PublishError as exc:
                self.stats.publish_failures += 1
                if message.requeue:
                    lane.control.insert(0, message)
                self._fail(lane, in_flight, exc)
                return
            if not message.rows:
                self.stats.control_messages += 1
                return
            # Delete even if we are being cancelled right now: the broker has the readings.
            ids = [row.id for row in message.rows]
            with trio.CancelScope(shield=True):
                try:
                    await self.outbox.delete(ids)
                except OutboxError as exc:
                    if not exc.disk:
                        self._fail(lane, in_flight, exc)
                        return
                    # Delivered, but the outbox cannot write: remember them rather than send
                    # them again; they are deleted once it can (the writer's alarm says so).
                    self._undeleted.update(ids)
            self._record_delivery(message.rows, len(message.payload))
        finally:
            lane.window.release()

    async def _retry_deletes(self) -> bool:
        """Delete rows delivered earlier whose delete failed; False while too many wait."""
        if not self._undeleted:
            return True
        ids = sorted(self._undeleted)
        try:
            await self.outbox.delete(ids)
        except OutboxError as exc:
            if not exc.disk:
                raise
            return len(self._undeleted) < _MAX_UNDELETED
        self._undeleted.difference_update(ids)
        self._notify_delivered()
        return True

    async def _drop_undeliverable(self, message: Message, why: str) -> None:
        # Kept, such a row would stall its meter's delivery for good; say so loudly instead.
        first = message.rows[0].reading
        log.error(
            "reading of meter %r at ts %d can never be delivered (%s); it is removed from the "
            "outbox",
            first.meter,
            first.ts_ms,
            why,
        )
        self.stats.undeliverable_dropped += len(message.rows)
        await self.outbox.delete([r.id for r in message.rows])
        self._notify_delivered()

    def _record_delivery(self, rows: Sequence[OutboxRow], nbytes: int) -> None:
        now = time.time()
        self.stats.published_messages += 1
        self.stats.published_readings += len(rows)
        self.stats.published_bytes += nbytes
        self.stats.last_delivery_ts = now
        now_ms = now * 1000.0
        self._latencies.extend([max(0.0, now_ms - row.reading.ts_ms) for row in rows])
        self._notify_delivered()

    def _notify_delivered(self) -> None:
        self._delivered.set()
        self._delivered = trio.Event()


def _growing(samples: list[_Sample]) -> bool:
    """Whether the outbox depth grew over `samples` (see `Publisher._watch_backlog`)."""
    if len(samples) < 4:
        return False
    t0 = samples[0].at
    xs = [x.at - t0 for x in samples]
    ys = [float(x.rows) for x in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var <= 0:
        return False
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    growth = slope * (xs[-1] - xs[0])
    taken = samples[-1].readings - samples[0].readings + samples[-1].rows - samples[0].rows
    quarter = max(1, len(samples) // 4)
    # Strictly: the lowest depth of the last quarter above the highest of the first, so that
    # the saw-tooth of a batching publisher that keeps up (about one round of messages deep)
    # never counts as growth.
    rising = min(ys[-quarter:]) > max(ys[:quarter])
    return rising and growth >= max(3.0, 0.1 * taken)


async def _wait_any(appended: trio.Event, wake: trio.Event, client: MqttClient) -> None:
    """Return when rows were appended, the lane was poked, or the connection dropped."""
    async with trio.open_nursery() as nursery:

        async def wait(fn: object) -> None:
            await fn()  # type: ignore[operator]
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, appended.wait)
        nursery.start_soon(wait, wake.wait)
        nursery.start_soon(wait, client.wait_disconnected)
