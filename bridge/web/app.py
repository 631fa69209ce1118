"""The Starlette application: the admin API under ``/api/v1``, metrics, health, the dashboard."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bridge.web.admin import (
    AdminError,
    add_meter,
    delete_meter,
    patch_meter,
    read_now,
    read_now_in_worker,
)
from bridge.web.events import sse_stream
from bridge.web.metrics import CONTENT_TYPE, render_metrics
from bridge.web.openapi import openapi_document
from bridge.web.views import meter_view, status_view

if TYPE_CHECKING:
    from bridge.web.console import Console

__all__ = ["MAX_BODY_BYTES", "make_app"]

log = logging.getLogger("bridge.web")

#: A request body larger than this is refused (413).
MAX_BODY_BYTES = 256 * 1024
#: The dashboard's files, served from the package: name -> content type.
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: Default span of a history query (ms).
HISTORY_DEFAULT_MS = 3 * 3600 * 1000

Handler = Callable[[Request], Awaitable[Response]]


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def _problem(status: int, errors: list[dict[str, str]]) -> JSONResponse:
    return _json({"error": errors[0]["message"] if errors else "error", "errors": errors}, status)


async def _read_json(request: Request) -> object:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise AdminError(
            413, [{"path": "(body)", "message": f"larger than {MAX_BODY_BYTES} bytes"}]
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise AdminError(
                413, [{"path": "(body)", "message": f"larger than {MAX_BODY_BYTES} bytes"}]
            )
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise AdminError(400, [{"path": "(body)", "message": "empty body: expected JSON"}])
    try:
        return json.loads(raw)
    except RecursionError:
        raise AdminError(400, [{"path": "(body)", "message": "JSON nested too deeply"}]) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = (
            f" at line {exc.lineno}, column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise AdminError(400, [{"path": "(body)", "message": f"not valid JSON{where}"}]) from None


#: Times outside this range (ms since the epoch) are refused.
_TIME_RANGE_MS = (0, 2**53)


def _time_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        if raw.isdigit() and len(raw) <= 16:
            value = int(raw)
            value = value * 1000 if value < 10**11 else value  # seconds or milliseconds
        else:
            value = int(datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() * 1000)
        if not _TIME_RANGE_MS[0] <= value <= _TIME_RANGE_MS[1]:
            raise ValueError(raw)
        return value
    except (ValueError, OverflowError):
        raise AdminError(
            400,
            [
                {
                    "path": name,
                    "message": f"expected ms or s since the epoch or ISO 8601, got {raw!r}",
                }
            ],
        ) from None


def make_app(console: Console) -> Starlette:
    """The console's ASGI application."""
    service = console.service
    auth = console.auth

    def guarded(fn: Handler, *, write: bool) -> Handler:
        async def handler(request: Request) -> Response:
            refused = auth.check(request, write=write)
            if refused is not None:
                return refused
            try:
                return await fn(request)
            except AdminError as exc:
                return _problem(exc.status, exc.errors)

        return handler

    def meter_or_404(name: str) -> Any:
        meter = next((m for m in service.config.meters if m.name == name), None)
        if meter is None:
            raise AdminError(404, [{"path": "name", "message": f"no meter named {name!r}"}])
        return meter

    async def status(_request: Request) -> Response:
        return _json(status_view(console))

    async def meters(_request: Request) -> Response:
        console.sync_totals()
        alarms = set(service.all_alarms())
        return _json(
            {
                "meters": [
                    meter_view(console, m, brief=True, alarms=alarms) for m in service.config.meters
                ]
            }
        )

    async def meter(request: Request) -> Response:
        console.sync_totals()
        return _json(meter_view(console, meter_or_404(request.path_params["name"])))

    async def create(request: Request) -> Response:
        added = await add_meter(console, await _read_json(request))
        return _json(meter_view(console, added), 201)

    async def change(request: Request) -> Response:
        changed = await patch_meter(console, request.path_params["name"], await _read_json(request))
        return _json(meter_view(console, changed))

    async def remove(request: Request) -> Response:
        name = request.path_params["name"]
        await delete_meter(console, name)
        return _json({"removed": name})

    def enable_fn(enabled: bool) -> Handler:
        async def handler(request: Request) -> Response:
            changed = await patch_meter(console, request.path_params["name"], {"enabled": enabled})
            return _json(meter_view(console, changed))

        return handler

    async def read(request: Request) -> Response:
        meter = meter_or_404(request.path_params["name"])
        running = service.meters.get(meter.name)
        poller = running.poller if running is not None else None
        pool = service.pool
        if poller is None and pool is not None and meter.name not in service.paused:
            config = pool.meter_config(meter.name)
            if config is not None:
                # Polled in a worker process: read by its poller there.
                return _json(await read_now_in_worker(pool, config))
        return _json(await read_now(meter, service.config.bridge.data_dir, poller))

    async def history(request: Request) -> Response:
        name = request.path_params["name"]
        meter_or_404(name)
        now = int(time.time() * 1000)
        until = _time_param(request, "until", now)
        since = _time_param(request, "since", until - HISTORY_DEFAULT_MS)
        if since > until:
            raise AdminError(400, [{"path": "since", "message": "since is after until"}])
        key = request.query_params.get("key") or None
        return _json(await console.history.query(name, since, until, key))

    async def alarms(_request: Request) -> Response:
        return _json(console.alarms.listing())

    async def ack(request: Request) -> Response:
        raw = request.path_params["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise AdminError(400, [{"path": "id", "message": f"not an alarm id: {raw!r}"}])
        alarm = console.alarms.ack(int(raw))
        if alarm is None:
            raise AdminError(404, [{"path": "id", "message": f"no alarm {raw}"}])
        console.hub.publish("alarm", {"change": "acked", **alarm})
        return _json(alarm)

    async def events(_request: Request) -> Response:
        receive = console.hub.subscribe()
        if receive is None:
            raise AdminError(503, [{"path": "", "message": "too many event streams open"}])
        return StreamingResponse(
            sse_stream(receive, {"name": service.config.bridge.name}),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def openapi(_request: Request) -> Response:
        return _json(openapi_document())

    async def metrics(request: Request) -> Response:
        refused = auth.check(request, write=False)
        if refused is not None:
            return refused
        return Response(render_metrics(console), media_type=CONTENT_TYPE)

    async def healthz(_request: Request) -> Response:
        healthy = service.healthy()
        return _json({"status": "ok" if healthy else "unhealthy"}, 200 if healthy else 503)

    files = {
        name: resources.files("bridge.web").joinpath("static", name).read_bytes() for name in STATIC
    }

    def static(name: str) -> Handler:
        async def handler(_request: Request) -> Response:
            return Response(
                files[name],
                media_type=STATIC[name],
                headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
            )

        return handler

    api = "/api/v1"
    read_only = {"write": False}
    writing = {"write": True}
    routes = [
        Route("/", static("index.html")),
        *(Route(f"/static/{name}", static(name)) for name in STATIC),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route(f"{api}/openapi.json", openapi),
        Route(f"{api}/status", guarded(status, **read_only)),
        Route(f"{api}/meters", guarded(meters, **read_only), methods=["GET"]),
        Route(f"{api}/meters", guarded(create, **writing), methods=["POST"]),
        Route(f"{api}/meters/{{name}}", guarded(meter, **read_only), methods=["GET"]),
        Route(f"{api}/meters/{{name}}", guarded(change, **writing), methods=["PATCH"]),
        Route(f"{api}/meters/{{name}}", guarded(remove, **writing), methods=["DELETE"]),
        Route(
            f"{api}/meters/{{name}}/enable", guarded(enable_fn(True), **writing), methods=["POST"]
        ),
        Route(
            f"{api}/meters/{{name}}/disable", guarded(enable_fn(False), **writing), methods=["POST"]
        ),
        Route(f"{api}/meters/{{name}}/read", guarded(read, **writing), methods=["POST"]),
        Route(f"{api}/meters/{{name}}/history", guarded(history, **read_only)),
        Route(f"{api}/alarms", guarded(alarms, **read_only)),
        Route(f"{api}/alarms/{{id}}/ack", guarded(ack, **writing), methods=["POST"]),
        Route(f"{api}/events", guarded(events, **read_only)),
    ]

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"error": exc.detail}, exc.status_code)

    async def server_error(_request: Request, exc: Exception) -> Response:
        log.error("event=console_error error=%s", type(exc).__name__, exc_info=exc)
        return _json({"error": "internal error (see the service log)"}, 500)

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
