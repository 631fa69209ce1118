"""Paced, ordered delivery of readings from the outbox to the broker.

Formats (`PublishMode`):

- ``gateway``: the ThingsBoard gateway MQTT API over one connection (the gateway device's
  token). ``v1/gateway/connect`` ``{"device": "<meter>"}`` announces each meter once per
  connection, at low priority: only while no telemetry waits (ThingsBoard creates the device
  from its telemetry; the announcement matters only for RPC and attribute updates);
  ``v1/gateway/telemetry`` carries many readings of many meters per message,
  ``{"<meter>": [{"ts": ms, "values": {...}}, ...], ...}``;
  ``v1/gateway/disconnect`` ``{"device": "<meter>"}`` is sent when a meter is removed; the
  online flag goes to ``v1/gateway/attributes`` ``{"<meter>": {"online": true}}``.
- ``device``: the ThingsBoard device MQTT API, one connection per meter (each meter's own
  token): ``v1/devices/me/telemetry`` ``[{"ts": ms, "values": {...}}, ...]`` and
  ``v1/devices/me/attributes`` ``{"online": true}``.
- ``topic``: any broker. One reading per message on `PublisherSettings.topic_template`
  (``{meter}`` is replaced), shaped ``thingsboard`` ``{"ts": ms, "values": {...}}`` or
  ``flat`` ``{"meter": "<meter>", "ts": ms, <key>: <value>, ...}``; the online flag is a
  retained ``{"meter": "<meter>", "online": true}`` on `status_topic_template`.

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
- ``max_datapoints_per_s = None``: self-hosted ThingsBoard has no data-point limit by default;
  set it for ThingsBoard Cloud plans, whose tenant profiles limit telemetry data points.
"""

from __future__ import annotations

import enum
import functools
import json
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
from bridge.readings import Reading, dumps_compact

__all__ = [
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

_RETRY_DELAY = 1.0
#: While telemetry keeps the pacer busy, one gateway ``connect`` may go after this many
#: telemetry messages, so announcements cannot starve (telemetry keeps >= 90% of the pace).
ANNOUNCE_EVERY = 10
#: The configuration's defaults are the publisher's (one home for each default).
_CONFIG = PublishConfig()
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
    batch_rows: int = attrs.field(default=_CONFIG.max_readings_per_message, validator=_at_least(1))
    qos: int = 1

    def __attrs_post_init__(self) -> None:
        if self.mode is PublishMode.TOPIC and "{meter}" not in self.topic_template:
            raise ValueError(
                f"publisher topic_template {self.topic_template!r} must contain {{meter}}"
            )


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

    def delay(self, nbytes: int) -> float:
        """Seconds until one message of `nbytes` may go (0: now)."""
        now = trio.current_time()
        return max(self.messages.delay(1, now), self.bytes.delay(nbytes, now))

    async def acquire(self, nbytes: int, datapoints: int = 0) -> None:
        """Wait until one message of `nbytes` (carrying `datapoints` values) may go."""
        while True:
            now = trio.current_time()
            wait = max(self.messages.delay(1, now), self.bytes.delay(nbytes, now))
            if self.datapoints is not None and datapoints:
                wait = max(wait, self.datapoints.delay(datapoints, now))
            if wait <= 0:
                break
            self.waited += wait
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

    @property
    def datapoints(self) -> int:
        return sum(len(row.reading.telemetry()) for row in self.rows)


def _key(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _entry(reading: Reading) -> str:
    # ThingsBoard's documented order: ts first, then values.
    return f'{{"ts":{reading.ts_ms},"values":{reading.values_json()}}}'


def gateway_telemetry(rows: Sequence[OutboxRow], max_bytes: int) -> tuple[Message, int]:
    """The gateway telemetry message for the longest prefix of `rows` within `max_bytes`
    (at least one row); returns the message and how many rows it took."""
    groups: dict[str, list[str]] = {}
    size = 2  # the braces
    taken = 0
    for row in rows:
        entry = _entry(row.reading)
        meter = row.reading.meter
        if meter in groups:
            extra = len(entry.encode()) + 1
        else:
            extra = len(_key(meter).encode()) + 3 + len(entry.encode()) + (1 if groups else 0)
        if taken and size + extra > max_bytes:
            break
        groups.setdefault(meter, []).append(entry)
        size += extra
        taken += 1
    body = ",".join(f"{_key(m)}:[{','.join(entries)}]" for m, entries in groups.items())
    payload = f"{{{body}}}".encode()
    return Message(GATEWAY_TELEMETRY, payload, tuple(rows[:taken])), taken


def device_telemetry(rows: Sequence[OutboxRow], max_bytes: int) -> tuple[Message, int]:
    """The device API telemetry array for the longest prefix of `rows` within `max_bytes`."""
    entries: list[str] = []
    size = 2
    for row in rows:
        entry = _entry(row.reading)
        extra = len(entry.encode()) + (1 if entries else 0)
        if entries and size + extra > max_bytes:
            break
        entries.append(entry)
        size += extra
    payload = f"[{','.join(entries)}]".encode()
    return Message(DEVICE_TELEMETRY, payload, tuple(rows[: len(entries)])), len(entries)


class UndeliverableError(ValueError):
    """A reading that no retry can deliver (e.g. its meter name cannot be in a topic)."""


def topic_message(row: OutboxRow, settings: PublisherSettings) -> Message:
    """One reading on the configured topic, in the configured shape."""
    reading = row.reading
    topic = settings.topic_template.replace("{meter}", reading.meter)
    if any(c in reading.meter for c in "+#\0"):
        raise UndeliverableError(
            f"meter name {reading.meter!r} cannot be part of an MQTT topic ({topic!r})"
        )
    if settings.payload_shape is PayloadShape.FLAT:
        # A plain broker has no device attributes: they travel with the values.
        flat: dict[str, object] = {**reading.attributes_json(), **reading.telemetry()}
        clash = {"meter", "ts"} & flat.keys()
        if clash:
            raise ValueError(
                f"reading of meter {reading.meter!r}: keys {sorted(clash)} clash with the flat "
                "payload's own fields"
            )
        flat["meter"] = reading.meter
        flat["ts"] = reading.ts_ms
        payload = dumps_compact(flat).encode()
    else:
        values = {**reading.attributes_json(), **reading.telemetry()}
        payload = f'{{"ts":{reading.ts_ms},"values":{dumps_compact(values)}}}'.encode()
    return Message(topic, payload, (row,))


# -- the publisher -----------------------------------------------------------------------------


@attrs.define(eq=False)
class PublisherStats:
    """Counters of the publisher over its lifetime."""

    published_messages: int = 0
    published_readings: int = 0
    publish_failures: int = 0
    control_messages: int = 0
    undeliverable_dropped: int = 0
    last_delivery_ts: float | None = None
    last_error: str | None = None


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
        """Union of the alarms of every connection."""
        out: set[str] = set()
        for lane in self._lanes.values():
            out |= lane.client.alarms
        return frozenset(out)

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

    def send(self, meter: str | None, topic: str, payload: bytes) -> bool:
        """Publish a control message (an RPC response, attributes) on the connection that
        carries `meter` (None: the gateway/topic connection), ahead of telemetry; not stored,
        so a message whose connection drops before it went out is lost. False if there is no
        such connection."""
        lane = self._lanes.get(None) if meter is None else self._lane_for(meter)
        if lane is None:
            return False
        lane.control.append(Message(topic, payload))
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
            while self.outbox.depth()[0] > 0:
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
                    rows = await self.outbox.peek(
                        self.settings.batch_rows, meter=lane.meter, after_id=cursor
                    )
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
                for message in self._messages(lane, rows):
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
                        cursor = message.rows[-1].id
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
        while i < len(rows):
            if s.mode is PublishMode.TOPIC:
                try:
                    message, taken = topic_message(rows[i], s), 1
                except UndeliverableError as exc:
                    message, taken = Message("", b"", (rows[i],), problem=str(exc)), 1
                except ValueError as exc:
                    log.error("%s; the reading is sent in the thingsboard shape instead", exc)
                    message = Message(
                        s.topic_template.replace("{meter}", rows[i].reading.meter),
                        _entry(rows[i].reading).encode(),
                        (rows[i],),
                    )
                    taken = 1
            elif s.mode is PublishMode.DEVICE:
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
            wait = lane.pacer.delay(len(self._connect_message(meter).payload))
            if wait > 0:
                with trio.move_on_after(wait):
                    await _wait_any(self.outbox.appended, lane.wake, lane.client)
                return True
            announcement = self._next_announcement(lane)
            if announcement is not None:
                await self._send(lane, announcement, in_flight)
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
        return Message(GATEWAY_CONNECT, dumps_compact(body).encode())

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
        await lane.window.acquire()
        try:
            await lane.pacer.acquire(len(message.payload), message.datapoints)
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
            with trio.CancelScope(shield=True):
                try:
                    await self.outbox.delete([row.id for row in message.rows])
                except OutboxError as exc:
                    self._fail(lane, in_flight, exc)
                    return
            self._record_delivery(message.rows)
        finally:
            lane.window.release()

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

    def _record_delivery(self, rows: Sequence[OutboxRow]) -> None:
        now = time.time()
        self.stats.published_messages += 1
        self.stats.published_readings += len(rows)
        self.stats.last_delivery_ts = now
        now_ms = now * 1000.0
        for row in rows:
            self._latencies.append(max(0.0, now_ms - row.reading.ts_ms))
        self._notify_delivered()

    def _notify_delivered(self) -> None:
        self._delivered.set()
        self._delivered = trio.Event()


async def _wait_any(appended: trio.Event, wake: trio.Event, client: MqttClient) -> None:
    """Return when rows were appended, the lane was poked, or the connection dropped."""
    async with trio.open_nursery() as nursery:

        async def wait(fn: object) -> None:
            await fn()  # type: ignore[operator]
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, appended.wait)
        nursery.start_soon(wait, wake.wait)
        nursery.start_soon(wait, client.wait_disconnected)
