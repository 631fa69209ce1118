"""Two-way ThingsBoard: server-side RPC and shared attributes, over the publisher's connection(s).

Requests:

- gateway mode: ``v1/gateway/rpc`` ``{"device": "<meter>", "data": {"id": 7, "method": "read",
  "params": {...}}}``, answered on ``v1/gateway/rpc`` with ``{"device": "<meter>", "id": 7,
  "data": {...}}``;
- device mode: ``v1/devices/me/rpc/request/<id>`` ``{"method": "read", "params": {...}}`` on the
  meter's own connection, answered on ``v1/devices/me/rpc/response/<id>``.

Every request is answered: with the method's result, or with ``{"error": {"code": ...,
"message": ...}}`` (unknown device or method, bad params, meter unreachable, refused, timeout).

Methods (``params`` in brackets):

==================  =============================================================================
``read``            ``[registers]``: configured keys, OBIS codes or ``{obis, class_id, attribute}``
                    (default: the meter's configured registers) -> ``{"values", "units", "errors"}``
``read_profile``    ``{obis, from, to}`` (ISO 8601; default profile: the first configured; at most
                    31 days) -> ``{"obis", "entries": [{"ts", "values"}]}``
``get_clock``       -> ``{"meter_time", "box_time", "drift_s", "clock_status"}``
``sync_clock``      ``[threshold_s]`` -> sets the meter's clock from the box's if the drift exceeds
                    the threshold; refused while the box's clock is not NTP-synchronised
``set_interval``    ``{interval_s}`` -> polls at the new interval from now on (kept across restarts)
``disconnect``      only with ``allow_control = true``: remote_disconnect (0-0:96.3.10 method 1)
``reconnect``       only with ``allow_control = true``: remote_reconnect (method 2)
==================  =============================================================================

Requests that talk to the meter run between its polls on its one association
(:meth:`bridge.poller.MeterPoller.submit`). With ``[bridge] workers`` the meter's poller runs in
a worker process: the request is sent there (:meth:`bridge.workers.WorkerPool.request`) and run
by the same code on that poller (:func:`run_on_poller`); ``set_interval`` and the shared
attributes are kept by the service and passed on to the worker.

Shared attributes (``v1/gateway/attributes`` ``{"device": "<meter>", "data": {...}}``, or
``v1/devices/me/attributes`` in device mode): ``interval_s`` and ``enabled`` are applied to the
meter at once and kept across restarts (:mod:`bridge.overrides`); other keys are ignored. After
every (re)connect their current values are asked for (``v1/gateway/attributes/request``, or
``v1/devices/me/attributes/request/<id>``), so changes made while the bridge was away apply too;
the gateway's requests (one per meter) go at QoS 0 and a quarter of the message rate.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from bridge.config import MeterConfig, ProfileConfig
from bridge.logs import log_event
from bridge.meter_work import RequestFailed, read_clock, sync_clock
from bridge.overrides import KEYS as OVERRIDE_KEYS
from bridge.profiles import (
    entries_from_buffer,
    read_buffer_entries,
    read_buffer_range,
    read_layout,
)
from bridge.readings import dumps_compact
from bridge.session import MeterIOError, MeterSession
from bridge.worker_link import WorkerRequestError
from codec.apdu import AttributeDescriptor, MethodDescriptor
from codec.axdr import Data
from codec.client import RegisterSpec
from codec.cosem import InterfaceClass
from codec.errors import DataAccessError, ProtocolError
from codec.obis import InvalidObis, Obis

if TYPE_CHECKING:
    from bridge.poller import MeterPoller
    from bridge.service import BridgeService

__all__ = [
    "DEVICE_ATTRIBUTES",
    "DEVICE_RPC_REQUEST",
    "GATEWAY_ATTRIBUTES",
    "GATEWAY_RPC",
    "METHODS",
    "RpcError",
    "RpcHost",
    "RpcRequest",
    "RpcServer",
    "parse_message",
    "request_timeout",
    "run_on_poller",
]

log = logging.getLogger("bridge.rpc")

GATEWAY_RPC = "v1/gateway/rpc"
GATEWAY_ATTRIBUTES = "v1/gateway/attributes"
DEVICE_RPC_REQUEST = "v1/devices/me/rpc/request/+"
DEVICE_RPC_RESPONSE = "v1/devices/me/rpc/response/"
DEVICE_ATTRIBUTES = "v1/devices/me/attributes"
GATEWAY_ATTRIBUTES_REQUEST = "v1/gateway/attributes/request"
GATEWAY_ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
DEVICE_ATTRIBUTES_REQUEST = "v1/devices/me/attributes/request/"
DEVICE_ATTRIBUTES_RESPONSE = "v1/devices/me/attributes/response/+"
#: The gateway's shared-attribute requests go in rounds this far apart (at a large fleet's
#: rates; one a round when the pace allows fewer).
ASK_ROUND_S = 0.25
DISCONNECT_CONTROL = Obis(0, 0, 96, 3, 10, 255)
#: Requests being handled at once, at most; more are answered "busy" at once.
MAX_IN_PROGRESS = 64
#: Longest range a ``read_profile`` may ask for, and most entries it returns.
MAX_PROFILE_DAYS = 31
MAX_PROFILE_ENTRIES = 3000
_UTC = _dt.UTC


class RpcError(Exception):
    """A request that cannot be carried out; answered as ``{"error": {code, message}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class RpcRequest:
    """One RPC request: for which meter, its id, method and params, and where to answer."""

    meter: str
    id: Any
    method: str
    params: Any
    #: The topic of the answer; its payload is `response`'s.
    reply_topic: str
    gateway: bool

    def response(self, data: dict[str, Any]) -> bytes:
        """The answer's payload."""
        if self.gateway:
            return dumps_compact({"device": self.meter, "id": self.id, "data": data}).encode()
        return dumps_compact(data).encode()


@attrs.frozen
class SharedAttributes:
    """Shared attributes sent to a meter's device; ``deleted`` lists removed keys."""

    meter: str
    values: dict[str, Any]
    deleted: tuple[str, ...] = ()


@attrs.frozen
class BadMessage:
    """A request that cannot even be parsed; answered when it says where to."""

    problem: str
    meter: str | None = None
    id: Any = None
    reply_topic: str | None = None
    gateway: bool = True


def _load(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None


def parse_message(
    lane_meter: str | None, topic: str, payload: bytes
) -> RpcRequest | SharedAttributes | BadMessage | None:
    """Sort an incoming message; None for messages that are not for us (e.g. our own
    publications echoed by a plain broker)."""
    body = _load(payload)
    if topic == GATEWAY_RPC:
        if not isinstance(body, dict) or "id" in body:
            return None  # an answer (ours, echoed) or not JSON at all
        meter, data = body.get("device"), body.get("data")
        if not isinstance(meter, str) or not isinstance(data, dict):
            return BadMessage('a gateway RPC needs "device" and "data": {"id", "method"}')
        if not isinstance(data.get("method"), str):
            return BadMessage(
                'the RPC has no "method"', meter, data.get("id"), GATEWAY_RPC, gateway=True
            )
        return RpcRequest(
            meter, data.get("id"), data["method"], data.get("params"), GATEWAY_RPC, True
        )
    if topic.startswith(DEVICE_RPC_REQUEST[:-1]) and lane_meter is not None:
        request_id = topic[len(DEVICE_RPC_REQUEST) - 1 :]
        reply = DEVICE_RPC_RESPONSE + request_id
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return BadMessage(
                'an RPC request is a JSON object with "method"', lane_meter, request_id, reply,
                gateway=False,
            )  # fmt: skip
        return RpcRequest(lane_meter, request_id, body["method"], body.get("params"), reply, False)
    if topic == GATEWAY_ATTRIBUTES:
        if not isinstance(body, dict) or not isinstance(body.get("device"), str):
            return None  # our own {"<meter>": {"online": ...}}, echoed
        data = body.get("data")
        if not isinstance(data, dict):
            return None
        return _shared(body["device"], data)
    if topic == DEVICE_ATTRIBUTES and lane_meter is not None and isinstance(body, dict):
        return _shared(lane_meter, body)
    return None


def _shared(meter: str, data: dict[str, Any]) -> SharedAttributes | None:
    deleted = data.get("deleted")
    gone = tuple(k for k in deleted if isinstance(k, str)) if isinstance(deleted, list) else ()
    values = {k: v for k, v in data.items() if k in OVERRIDE_KEYS}
    if not values and not any(k in OVERRIDE_KEYS for k in gone):
        return None
    return SharedAttributes(meter, values, tuple(k for k in gone if k in OVERRIDE_KEYS))


# -- params ---------------------------------------------------------------------------------------


def _params(request: RpcRequest) -> dict[str, Any]:
    params = request.params
    if params is None or params == "":
        return {}
    if isinstance(params, str):
        parsed = _load(params.encode())
        if isinstance(parsed, dict):
            return parsed
    if not isinstance(params, dict):
        raise RpcError("bad_params", f"params of {request.method} must be an object")
    return params


def _obis(value: Any, what: str) -> Obis:
    if not isinstance(value, str):
        raise RpcError("bad_params", f"{what} must be an OBIS code as a string, got {value!r}")
    try:
        return Obis.parse(value)
    except InvalidObis:
        raise RpcError("bad_params", f"{what}: not an OBIS code: {value!r}") from None


def _int(value: Any, what: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RpcError("bad_params", f"{what} must be an integer, got {value!r}")
    return value


def register_specs(meter: MeterConfig, params: dict[str, Any]) -> list[RegisterSpec]:
    """What a ``read`` asks for: configured keys, OBIS codes or descriptor objects."""
    configured = {
        r.key: RegisterSpec(r.obis, r.class_id, r.attribute, r.key) for r in meter.registers
    }
    wanted = params.get("registers", params.get("keys"))
    if wanted is None:
        return list(configured.values())
    if isinstance(wanted, str):
        wanted = [wanted]
    if not isinstance(wanted, list) or not wanted or len(wanted) > 64:
        raise RpcError("bad_params", "registers must be a list of 1 to 64 keys or OBIS codes")
    specs: list[RegisterSpec] = []
    for i, item in enumerate(wanted):
        if isinstance(item, str) and item in configured:
            specs.append(configured[item])
        elif isinstance(item, str):
            specs.append(RegisterSpec(_obis(item, f"registers[{i}]")))
        elif isinstance(item, dict):
            obis = _obis(item.get("obis"), f"registers[{i}].obis")
            class_id = _int(item.get("class_id"), f"registers[{i}].class_id", 3)
            attribute = _int(item.get("attribute"), f"registers[{i}].attribute", 2)
            if not (1 <= class_id <= 0xFFFF and 1 <= attribute <= 127):
                raise RpcError("bad_params", f"registers[{i}]: class_id or attribute out of range")
            key = item.get("key")
            specs.append(
                RegisterSpec(obis, class_id, attribute, key if isinstance(key, str) else None)
            )
        else:
            raise RpcError("bad_params", f"registers[{i}] must be a key, an OBIS code or an object")
    return specs


def _time(value: Any, what: str) -> _dt.datetime:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise RpcError("bad_params", f"{what} must be an ISO 8601 time or ms since the epoch")
    if isinstance(value, int):
        return _dt.datetime.fromtimestamp(value / 1000, _UTC)
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise RpcError("bad_params", f"{what}: not an ISO 8601 time: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_UTC)


# -- the methods ----------------------------------------------------------------------------------


class RpcHost(Protocol):
    """What the methods need from where they run: the service (:class:`RpcServer`), or the
    worker process that polls the meter."""

    def wall_clock(self, meter: MeterConfig) -> Callable[[], float]:
        """The wall clock the meter's poller uses."""

    def clock_synchronised(self) -> bool:
        """Whether the box's clock is synchronised (``sync_clock`` refuses otherwise)."""

    async def on_meter(
        self, meter: MeterConfig, fn: Callable[[MeterSession], Awaitable[Any]]
    ) -> Any:
        """Run ``fn`` on the meter's association, between its polls."""

    async def apply_override(self, meter: str, key: str, value: Any) -> None:
        """Change a runtime setting of the meter (:mod:`bridge.overrides`)."""


Method = Callable[[RpcHost, MeterConfig, dict[str, Any]], Awaitable[dict[str, Any]]]
#: The methods a worker process carries out for its meters (``set_interval`` is the service's:
#: it keeps the setting, then tells the worker).
IN_WORKER = frozenset(
    {"read", "read_profile", "get_clock", "sync_clock", "disconnect", "reconnect"}
)


def request_timeout(meter: MeterConfig) -> float:
    """How long a request may wait for the meter's poller and run on its association."""
    return max(10.0, 6 * meter.timeout_s)


async def run_on_poller(
    poller: MeterPoller, meter: MeterConfig, fn: Callable[[MeterSession], Awaitable[Any]]
) -> Any:
    """Run ``fn`` between the polls of ``poller``; the meter's failures as :class:`RpcError`."""
    try:
        return await poller.submit(fn, request_timeout(meter))
    except RequestFailed as exc:
        raise RpcError(exc.code, str(exc)) from None
    except MeterIOError as exc:
        raise RpcError("unreachable", str(exc)) from None
    except ProtocolError as exc:
        code = getattr(exc, "code", None) or "protocol_error"
        raise RpcError(str(code), exc.message) from None


async def _read(server: RpcHost, meter: MeterConfig, params: dict[str, Any]) -> dict[str, Any]:
    specs = register_specs(meter, params)

    async def run(session: MeterSession) -> dict[str, Any]:
        readings = await session.read_registers(specs)
        out: dict[str, Any] = {"values": {}, "units": {}, "errors": {}}
        for r in readings:
            if r.ok:
                out["values"][r.spec.name] = r.value
                out["units"][r.spec.name] = r.unit.symbol if r.unit is not None else None
            else:
                out["errors"][r.spec.name] = r.error
        return out

    result: dict[str, Any] = await server.on_meter(meter, run)
    return result


async def _read_profile(
    server: RpcHost, meter: MeterConfig, params: dict[str, Any]
) -> dict[str, Any]:
    if "obis" in params:
        obis = _obis(params["obis"], "obis")
    elif meter.profiles:
        obis = meter.profiles[0].obis
    else:
        raise RpcError("bad_params", "obis is required (the meter has no configured profile)")
    profile = next((p for p in meter.profiles if p.obis == obis), ProfileConfig(obis=obis))
    now = _dt.datetime.now(_UTC)
    start = _time(params.get("from", int((now.timestamp() - 86400) * 1000)), "from")
    end = _time(params.get("to", int(now.timestamp() * 1000)), "to")
    if end < start:
        raise RpcError("bad_params", f"to ({end.isoformat()}) is before from ({start.isoformat()})")
    if end - start > _dt.timedelta(days=MAX_PROFILE_DAYS):
        raise RpcError("bad_params", f"from..to must be a range of at most {MAX_PROFILE_DAYS} days")
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    async def run(session: MeterSession) -> dict[str, Any]:
        assert session.client is not None
        layout = await session.run(read_layout(session.client, obis))
        try:
            buffer = await session.run(read_buffer_range(session.client, obis, start_ms, end_ms))
        except DataAccessError:
            # No range access: the newest entries by number, then the range picked from them.
            buffer, _ = await session.run(
                read_buffer_entries(session.client, obis, MAX_PROFILE_ENTRIES, MAX_PROFILE_ENTRIES)
            )
        found = entries_from_buffer(buffer, layout, profile)
        in_range = [(ts, v) for ts, v in found.entries if start_ms <= ts <= end_ms]
        entries = [{"ts": ts, "values": v} for ts, v in in_range[:MAX_PROFILE_ENTRIES]]
        return {
            "obis": str(obis),
            "entries": entries,
            "truncated": len(in_range) > MAX_PROFILE_ENTRIES,
            "skipped": found.skipped,
        }

    result: dict[str, Any] = await server.on_meter(meter, run)
    return result


async def _get_clock(server: RpcHost, meter: MeterConfig, params: dict[str, Any]) -> dict[str, Any]:
    wall = server.wall_clock(meter)

    async def run(session: MeterSession) -> dict[str, Any]:
        return (await read_clock(session, wall)).to_json()

    result: dict[str, Any] = await server.on_meter(meter, run)
    return result


async def _sync_clock(
    server: RpcHost, meter: MeterConfig, params: dict[str, Any]
) -> dict[str, Any]:
    threshold = params.get("threshold_s", meter.clock.sync_threshold_s)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold < 0:
        raise RpcError("bad_params", f"threshold_s must be a number >= 0, got {threshold!r}")
    wall = server.wall_clock(meter)
    synchronised = server.clock_synchronised

    async def run(session: MeterSession) -> dict[str, Any]:
        return await sync_clock(
            session, wall, threshold_s=float(threshold), synchronised=synchronised
        )

    result: dict[str, Any] = await server.on_meter(meter, run)
    return result


async def _set_interval(
    server: RpcHost, meter: MeterConfig, params: dict[str, Any]
) -> dict[str, Any]:
    value = params.get("interval_s")
    if value is None:
        raise RpcError("bad_params", "interval_s is required")
    await server.apply_override(meter.name, "interval_s", value)
    return {"interval_s": value}


def _relay(method_id: int) -> Method:
    async def switch(server: RpcHost, meter: MeterConfig, params: dict[str, Any]) -> dict[str, Any]:
        if not meter.allow_control:
            raise RpcError(
                "not_allowed",
                f"meter {meter.name} does not allow control (set allow_control = true)",
            )

        async def run(session: MeterSession) -> dict[str, Any]:
            assert session.client is not None
            class_id = int(InterfaceClass.DISCONNECT_CONTROL)
            method = MethodDescriptor(class_id, DISCONNECT_CONTROL, method_id)
            await session.run(session.client.action(method, Data.integer(0)))
            state = await session.get(
                AttributeDescriptor(int(InterfaceClass.DISCONNECT_CONTROL), DISCONNECT_CONTROL, 2)
            )
            return {"output_state": state.value}

        result: dict[str, Any] = await server.on_meter(meter, run)
        log_event(
            log, logging.WARNING, "supply_switched", meter=meter.name,
            action="disconnect" if method_id == 1 else "reconnect", **result,
        )  # fmt: skip
        return result

    return switch


#: The RPC methods by name.
METHODS: dict[str, Method] = {
    "read": _read,
    "read_profile": _read_profile,
    "get_clock": _get_clock,
    "sync_clock": _sync_clock,
    "set_interval": _set_interval,
    "disconnect": _relay(1),
    "reconnect": _relay(2),
}


# -- the server -----------------------------------------------------------------------------------


class RpcServer:
    """Takes RPCs and shared attributes from the publisher's connections and answers them."""

    def __init__(self, service: BridgeService) -> None:
        self.service = service
        self.handled = 0
        self.failed = 0
        self._send, self._receive = trio.open_memory_channel[
            RpcRequest | SharedAttributes | BadMessage
        ](MAX_IN_PROGRESS)
        self._in_progress = 0
        self._request_ids = 0
        #: Attribute requests waiting for their answer: id -> (meter, key or None for all).
        self._attribute_requests: dict[int, tuple[str, str | None]] = {}
        self._to_ask: deque[str] = deque()
        self._ask_wakeup = trio.Event()

    def on_connected(self, lane_meter: str | None) -> None:
        """The publisher's (re)connect callback: ask for the current shared attributes.

        Device mode: one request on the meter's own connection. Gateway mode: one request per
        meter, sent by :meth:`_ask_attributes` at a quarter of the message rate, so that a
        large fleet's requests never hold up telemetry after a reconnect.
        """
        publisher = self.service.publisher
        if publisher is None:
            return
        if len(self._attribute_requests) > 10_000:  # never answered: a plain broker
            self._attribute_requests.clear()
        if lane_meter is None:
            self._to_ask = deque(m.name for m in self.service.config.meters if m.enabled)
            self._ask_wakeup.set()
            return
        self._request_ids += 1
        self._attribute_requests[self._request_ids] = (lane_meter, None)
        body = {"sharedKeys": ",".join(OVERRIDE_KEYS)}
        publisher.send(
            lane_meter,
            f"{DEVICE_ATTRIBUTES_REQUEST}{self._request_ids}",
            dumps_compact(body).encode(),
        )

    async def _ask_attributes(self) -> None:
        """Gateway mode: send the queued attribute requests, paced at a quarter of the message
        rate, in rounds of several (a wake-up apiece cost a large fleet's start more than the
        requests), at QoS 0 (all are asked again after a reconnection)."""
        while True:
            if not self._to_ask:
                self._ask_wakeup = trio.Event()
                await self._ask_wakeup.wait()
                continue
            publisher = self.service.publisher
            if publisher is None:
                return
            rate = publisher.settings.max_messages_per_s / 4
            count = max(1, int(rate * ASK_ROUND_S))
            for _ in range(min(count, len(self._to_ask))):
                meter = self._to_ask.popleft()
                self._request_ids += 1
                self._attribute_requests[self._request_ids] = (meter, None)
                body = {"id": self._request_ids, "device": meter, "client": False}
                body["keys"] = list(OVERRIDE_KEYS)
                payload = dumps_compact(body).encode()
                publisher.send(None, GATEWAY_ATTRIBUTES_REQUEST, payload, qos=0)
            await trio.sleep(count / rate)

    def _attribute_response(
        self, lane_meter: str | None, topic: str, payload: bytes
    ) -> SharedAttributes | None:
        body = _load(payload)
        if not isinstance(body, dict):
            return None
        if topic == GATEWAY_ATTRIBUTES_RESPONSE:
            request_id = body.get("id")
            pending = (
                self._attribute_requests.pop(request_id, None)
                if isinstance(request_id, int)
                else None
            )
            if pending is None:
                return None
            meter, key = pending
            # Several keys come back as "values"; one key (older versions) as "value".
            values = body.get("values")
            if not isinstance(values, dict):
                values = {key: body.get("value")} if key is not None else {}
            found = {k: v for k, v in values.items() if k in OVERRIDE_KEYS and v is not None}
            return SharedAttributes(meter, found) if found else None
        suffix = topic[len(DEVICE_ATTRIBUTES_RESPONSE) - 1 :]
        pending = self._attribute_requests.pop(int(suffix), None) if suffix.isdigit() else None
        shared = body.get("shared")
        if pending is None or lane_meter is None or not isinstance(shared, dict):
            return None
        values = {k: v for k, v in shared.items() if k in OVERRIDE_KEYS}
        return SharedAttributes(lane_meter, values) if values else None

    def on_message(self, lane_meter: str | None, topic: str, payload: bytes) -> None:
        """The publisher's message callback (synchronous, from the MQTT connection's task)."""
        message: RpcRequest | SharedAttributes | BadMessage | None
        if topic == GATEWAY_ATTRIBUTES_RESPONSE or topic.startswith(
            DEVICE_ATTRIBUTES_RESPONSE[:-1]
        ):
            message = self._attribute_response(lane_meter, topic, payload)
        else:
            message = parse_message(lane_meter, topic, payload)
        if message is None:
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            if isinstance(message, RpcRequest):
                self._answer(message, _error("busy", "too many requests in progress"))

    def wall_clock(self, meter: MeterConfig) -> Callable[[], float]:
        """The wall clock the meter's poller uses."""
        running = self.service.meters.get(meter.name)
        poller = running.poller if running is not None else None
        return time.time if poller is None else poller.wall_clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Handle messages until cancelled, each in its own task."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ask_attributes)
            task_status.started()
            async for message in self._receive:
                nursery.start_soon(self._handle, message)

    async def _handle(self, message: RpcRequest | SharedAttributes | BadMessage) -> None:
        if isinstance(message, SharedAttributes):
            await self._shared(message)
            return
        if isinstance(message, BadMessage):
            log_event(log, logging.WARNING, "rpc_refused", error=message.problem)
            if message.reply_topic is not None and message.meter is not None:
                request = RpcRequest(
                    message.meter, message.id, "", None, message.reply_topic, message.gateway
                )
                self._answer(request, _error("bad_request", message.problem))
            return
        try:
            data = await self.call(message)
        except RpcError as exc:
            self.failed += 1
            data = _error(exc.code, exc.message)
        except Exception as exc:
            # A bug must not take the service down, and the request is still answered.
            log.exception("meter=%s event=rpc_crashed method=%s", message.meter, message.method)
            self.failed += 1
            why = f"the request failed inside the bridge ({type(exc).__name__})"
            data = _error("internal", why)
        self.handled += 1
        log_event(
            log, logging.INFO, "rpc", meter=message.meter, method=message.method,
            id=message.id, ok="error" not in data,
        )  # fmt: skip
        self._answer(message, data)

    async def call(self, request: RpcRequest) -> dict[str, Any]:
        """Carry out one request; raises :class:`RpcError`."""
        meter = self._meter(request.meter)
        method = METHODS.get(request.method)
        if method is None:
            raise RpcError(
                "unknown_method",
                f"unknown method {request.method!r} (known: {', '.join(METHODS)})",
            )
        params = _params(request)
        pool = self.service.pool
        if pool is not None and request.method in IN_WORKER and pool.owns(meter.name):
            return await self._in_worker(meter, request.method, params)
        return await method(self, meter, params)

    async def _in_worker(
        self, meter: MeterConfig, method: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        """Carry out a request in the worker process that polls the meter."""
        pool = self.service.pool
        assert pool is not None
        # The box's clock is the same for the worker: asked here, as the service would.
        synchronised = self.clock_synchronised() if method == "sync_clock" else True
        body = {"method": method, "params": params, "synchronised": synchronised}
        try:
            result = await pool.request(meter.name, "rpc", body, request_timeout(meter))
        except WorkerRequestError as exc:
            raise RpcError(exc.code, exc.message) from None
        if not isinstance(result, dict):
            raise RpcError("internal", "the worker process answered with something else")
        return result

    def _meter(self, name: str) -> MeterConfig:
        running = self.service.meters.get(name)
        if running is not None:
            return running.meter
        pool = self.service.pool
        if pool is not None and name not in self.service.paused:
            config = pool.meter_config(name)
            if config is not None:
                return config
        polled = set(self.service.meters)
        if pool is not None:
            polled.update(n for n in pool.meter_names() if n not in self.service.paused)
        known = ", ".join(sorted(polled)) or "none"
        raise RpcError("unknown_device", f"no meter {name!r} is polled (polled: {known})")

    def clock_synchronised(self) -> bool:
        """Whether the box's clock is synchronised (the service's check)."""
        return self.service.clock_synchronised()

    async def apply_override(self, meter: str, key: str, value: Any) -> None:
        """Change and keep a runtime setting (:meth:`BridgeService.apply_override`)."""
        await self.service.apply_override(meter, key, value)

    async def on_meter(
        self, meter: MeterConfig, fn: Callable[[MeterSession], Awaitable[Any]]
    ) -> Any:
        """Run ``fn`` on the meter's association, between its polls."""
        running = self.service.meters.get(meter.name)
        poller = running.poller if running is not None else None
        if poller is None:
            raise RpcError("unavailable", f"meter {meter.name} is not being polled right now")
        return await run_on_poller(poller, meter, fn)

    async def _shared(self, message: SharedAttributes) -> None:
        overrides = self.service.overrides
        message = attrs.evolve(
            message,
            values={
                k: v for k, v in message.values.items() if overrides.get(message.meter, k) != v
            },
        )
        for key in message.deleted:
            try:
                await self.service.apply_override(message.meter, key, None, quiet=True)
            except RpcError as exc:
                log_event(
                    log, logging.WARNING, "shared_attribute_refused", meter=message.meter,
                    key=key, error=exc.message,
                )  # fmt: skip
        for key, value in message.values.items():
            try:
                await self.service.apply_override(message.meter, key, value)
            except RpcError as exc:
                log_event(
                    log, logging.WARNING, "shared_attribute_refused", meter=message.meter,
                    key=key, error=exc.message,
                )  # fmt: skip

    def _answer(self, request: RpcRequest, data: dict[str, Any]) -> None:
        publisher = self.service.publisher
        meter = None if request.gateway else request.meter
        limit = publisher.settings.max_payload_bytes if publisher is not None else 1 << 20
        payload = fit_answer(request, data, limit)
        if publisher is None or not publisher.send(meter, request.reply_topic, payload):
            log_event(log, logging.WARNING, "rpc_unanswered", meter=request.meter, id=request.id)


def fit_answer(request: RpcRequest, data: dict[str, Any], limit: int) -> bytes:
    """The answer's payload within ``limit`` bytes: a profile's entries are cut (and marked
    ``truncated``) to fit; anything else too large becomes an error answer."""
    payload = request.response(data)
    if len(payload) <= limit:
        return payload
    entries = data.get("entries")
    if isinstance(entries, list) and entries:
        low, high = 0, len(entries)  # the longest prefix that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if (
                len(request.response({**data, "entries": entries[:middle], "truncated": True}))
                <= limit
            ):
                low = middle
            else:
                high = middle - 1
        return request.response({**data, "entries": entries[:low], "truncated": True})
    return request.response(
        _error(
            "too_large", f"the answer ({len(payload)} bytes) exceeds max_payload_bytes ({limit})"
        )
    )


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
