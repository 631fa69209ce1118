"""Changes to the meter list through the API: checked like the config file, applied like a
SIGHUP reload, kept in the data directory (:mod:`bridge.api_meters`), never in the config file."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bridge.api_meters import ApiMeters, read_document
from bridge.config import BridgeConfig, ConfigError, MeterConfig, config_from_dict
from bridge.meter_work import RequestFailed
from bridge.poller import MeterPoller, secured_endpoint_for
from bridge.session import MeterIOError, MeterSession
from bridge.worker_link import WorkerRequestError
from codec.client import RegisterReading, RegisterSpec
from codec.errors import ProtocolError

if TYPE_CHECKING:
    from bridge.web.console import Console
    from bridge.workers import WorkerPool

__all__ = [
    "AdminError",
    "add_meter",
    "delete_meter",
    "patch_meter",
    "read_now",
    "read_now_in_worker",
]

#: A read-now may take this many reply timeouts (connect, associate, read, release).
READ_NOW_TIMEOUTS = 6
#: ... but at least this long when it waits for the poller's current poll to end.
READ_NOW_QUEUE_S = 10.0


class AdminError(Exception):
    """A refused change: the HTTP status and one ``{"path", "message"}`` per problem."""

    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


def _error(status: int, path: str, message: str) -> AdminError:
    return AdminError(status, [{"path": path, "message": message}])


_LINE = re.compile(r"^(?P<path>[^:]*): (?P<message>.*)$", re.DOTALL)


def _errors_for(lines: list[str], meters: list[Any], name: str) -> list[dict[str, str]]:
    """The config's errors, with the changed meter's paths made relative to the request body."""
    index = next(
        (i for i, m in enumerate(meters) if isinstance(m, dict) and m.get("name") == name), None
    )
    prefix = f"meters[{index}]"
    out = []
    for line in lines:
        match = _LINE.match(line)
        path, message = (match["path"], match["message"]) if match else ("", line)
        if index is not None and (path == prefix or path.startswith(prefix + ".")):
            path = path[len(prefix) + 1 :] or "(body)"
        out.append({"path": path, "message": message})
    return out


def _find(config: BridgeConfig, name: str) -> MeterConfig:
    meter = next((m for m in config.meters if m.name == name), None)
    if meter is None:
        raise _error(404, "name", f"no meter named {name!r}")
    return meter


async def _apply(console: Console, name: str, change: Callable[[ApiMeters], None]) -> BridgeConfig:
    service = console.service
    path = service.config_path
    if path is None:
        raise _error(409, "", "the service runs without a config file; meters cannot be changed")
    data_dir = service.config.bridge.data_dir
    async with console.admin_lock:
        try:
            store = await trio.to_thread.run_sync(ApiMeters.load, data_dir)
        except ValueError as exc:
            raise _error(500, "", str(exc)) from None
        candidate = store.copy()
        change(candidate)
        try:
            document = await trio.to_thread.run_sync(read_document, path)
        except ConfigError as exc:
            raise AdminError(409, [{"path": "", "message": e} for e in exc.errors]) from None
        merged, touched = candidate.apply(document)
        base_dir = os.path.dirname(os.path.abspath(os.fspath(path)))
        try:
            new = config_from_dict(merged, source=service.config.source, base_dir=base_dir)
        except ConfigError as exc:
            raise AdminError(422, _errors_for(exc.errors, merged["meters"], name)) from None
        new = attrs.evolve(new, api_meters=tuple(touched))
        await trio.to_thread.run_sync(candidate.save, data_dir)
        await service.reload(new)
        return new


def _check_body(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _error(400, "(body)", "expected a JSON object: one meter table as in the config")
    # A secret read from a file or the environment would let a caller send any file the service
    # can read, or any of its variables (the MQTT token...), to a host of its choosing.
    sourced = [k for k, v in body.items() if k.endswith(("_file", "_env")) and v is not None]
    if sourced:
        raise AdminError(
            422,
            [
                {
                    "path": key,
                    "message": "the API takes a secret's value only; _file and _env forms "
                    "are for the config file",
                }
                for key in sourced
            ],
        )
    return body


async def add_meter(console: Console, body: object) -> MeterConfig:
    """Add a meter (a whole ``[[meters]]`` table as JSON)."""
    table = _check_body(body)
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _error(422, "name", "required: a non-empty string")
    if any(m.name == name for m in console.service.config.meters):
        raise _error(409, "name", f"a meter named {name!r} exists already")

    def change(store: ApiMeters) -> None:
        keys = {k: v for k, v in table.items() if k != "name"}
        if name in store.removed:
            # A meter of the file the API removed comes back, with the given keys on top.
            store.removed.remove(name)
            store.patched[name] = keys
        else:
            store.added[name] = keys

    return _find(await _apply(console, name, change), name)


def _merge(table: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(table)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)  # null: back to the file's (or the default) value
        else:
            out[key] = value
    return out


async def patch_meter(console: Console, name: str, body: object) -> MeterConfig:
    """Change some keys of a meter (``null`` removes the API's value of a key)."""
    patch = _check_body(body)
    _find(console.service.config, name)
    if "name" in patch and patch["name"] != name:
        raise _error(422, "name", "a meter cannot be renamed; add a new one and remove this one")

    def change(store: ApiMeters) -> None:
        changes = {k: v for k, v in patch.items() if k != "name"}
        if name in store.added:
            store.added[name] = _merge(store.added[name], changes)
        else:
            store.patched[name] = _merge(store.patched.get(name, {}), changes)

    return _find(await _apply(console, name, change), name)


async def delete_meter(console: Console, name: str) -> None:
    """Remove a meter (one of the file's stays removed until the API adds it back)."""
    _find(console.service.config, name)

    def change(store: ApiMeters) -> None:
        store.patched.pop(name, None)
        if store.added.pop(name, None) is None and name not in store.removed:
            store.removed.append(name)

    await _apply(console, name, change)


async def read_now(
    meter: MeterConfig, data_dir: str, poller: MeterPoller | None = None
) -> dict[str, Any]:
    """Read a meter's registers now; raises AdminError 502/503/504 when that fails.

    With the meter's ``poller`` the read runs on the poller's association, between two polls
    (a meter that allows one association at a time refuses a second one); without one (a meter
    not polled by this process) on an association of its own, with the meter's security and
    its invocation counters in ``data_dir``. The cadence is left alone.
    """
    specs = [RegisterSpec(r.obis, r.class_id, r.attribute, r.key) for r in meter.registers]
    timeout = READ_NOW_TIMEOUTS * meter.timeout_s
    try:
        if poller is not None:
            readings = await poller.submit(
                lambda session: session.read_registers(specs), max(READ_NOW_QUEUE_S, timeout)
            )
        else:
            readings = await _read_alone(meter, data_dir, specs, timeout)
    except RequestFailed as exc:
        status = {"timeout": 504, "busy": 503}.get(exc.code, 502)
        raise _error(status, "", str(exc)) from None
    except trio.TooSlowError:
        raise _error(504, "", f"meter {meter.name} did not answer in time") from None
    except (MeterIOError, ProtocolError) as exc:
        raise _error(502, "", f"meter {meter.name}: {exc}") from None
    return {
        "meter": meter.name,
        "values": {
            r.spec.name: {
                "value": r.value,
                "unit": r.unit.symbol if r.unit else None,
                **({"quality": r.quality.value} if r.quality is not None else {}),
            }
            for r in readings
            if r.ok
        },
        "errors": {r.spec.name: r.error for r in readings if not r.ok},
    }


async def read_now_in_worker(pool: WorkerPool, meter: MeterConfig) -> dict[str, Any]:
    """:func:`read_now` by the meter's poller in the worker process that polls it; the same
    answer, and the same errors (503 also while the worker restarts)."""
    timeout = max(READ_NOW_QUEUE_S, READ_NOW_TIMEOUTS * meter.timeout_s)
    try:
        result = await pool.request(meter.name, "read_now", {}, timeout)
    except WorkerRequestError as exc:
        raise _error(exc.status, "", exc.message) from None
    if not isinstance(result, dict):
        raise _error(502, "", "the worker process answered with something other than an object")
    return result


async def _read_alone(
    meter: MeterConfig, data_dir: str, specs: list[RegisterSpec], timeout: float
) -> list[RegisterReading]:
    session = MeterSession(secured_endpoint_for(meter, data_dir))
    with trio.fail_after(timeout):
        try:
            await session.open()
            return await session.read_registers(specs)
        finally:
            await session.release(timeout=meter.timeout_s)
