"""The OpenAPI 3.1 description of the admin API (``GET /api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from bridge import __version__

__all__ = ["openapi_document"]

_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ERROR = {
    "description": "refused; `errors` lists `{path, message}` (path relative to the body)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
_METER_TABLE = {
    "description": "one [[meters]] table of the config file, as JSON ([defaults] apply)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MeterTable"}}},
}


def _op(
    summary: str,
    *,
    write: bool = False,
    params: list[Any] | None = None,
    body: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": _OK, **(extra or {})}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if write:
        op["security"] = [{"bearer": []}]
        op["responses"].update({"401": _ERROR, "403": _ERROR})
    return op


def openapi_document() -> dict[str, Any]:
    """The document."""
    bad = {"400": _ERROR, "404": _ERROR, "409": _ERROR, "422": _ERROR}
    q = [
        {
            "name": n,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": d,
        }
        for n, d in (
            ("since", "ms or s since the epoch, or ISO 8601 (default: until - 3 h)"),
            ("until", "ms or s since the epoch, or ISO 8601 (default: now)"),
            ("key", "one telemetry key (default: all)"),
        )
    ]
    paths = {
        "/status": {"get": _op("service, MQTT, outbox (depth, oldest unsent), counters")},
        "/meters": {
            "get": _op("every meter: state, last values with units and age, rates"),
            "post": _op(
                "add a meter (applied at once, kept across restarts)",
                write=True,
                body=_METER_TABLE,
                extra={"201": _OK, **bad},
            ),
        },
        "/meters/{name}": {
            "get": _op(
                "one meter, with its config (no secrets) and counters",
                params=[_NAME],
                extra={"404": _ERROR},
            ),
            "patch": _op(
                "change keys of a meter (null: back to the file's value)",
                write=True,
                params=[_NAME],
                body=_METER_TABLE,
                extra=bad,
            ),
            "delete": _op("remove a meter", write=True, params=[_NAME], extra=bad),
        },
        "/meters/{name}/enable": {"post": _op("enable a meter", write=True, params=[_NAME])},
        "/meters/{name}/disable": {"post": _op("disable a meter", write=True, params=[_NAME])},
        "/meters/{name}/read": {
            "post": _op(
                "read the meter now on an association of its own",
                write=True,
                params=[_NAME],
                extra={"502": _ERROR, "504": _ERROR},
            ),
        },
        "/meters/{name}/history": {
            "get": _op(
                "values from local history, thinned for long ranges",
                params=[_NAME, *q],
                extra={"400": _ERROR},
            ),
        },
        "/alarms": {"get": _op("active and recently cleared alarms")},
        "/alarms/{id}/ack": {
            "post": _op(
                "acknowledge an alarm (listed until it clears)",
                write=True,
                params=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                extra={"404": _ERROR},
            ),
        },
        "/events": {
            "get": {
                "summary": "server-sent events: hello, reading, state, alarm",
                "responses": {"200": {"description": "text/event-stream"}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dlms-bridge admin API",
            "version": __version__,
            "description": (
                "Read-only calls are open while the console listens on loopback; otherwise "
                "they need the token too. Every change needs `Authorization: Bearer <token>`."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "path": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "MeterTable": {
                    "type": "object",
                    "description": "keys as in [[meters]] of deploy/bridge.example.toml",
                    "properties": {
                        "name": {"type": "string"},
                        "host": {"type": "string"},
                        "port": {"type": "integer"},
                        "enabled": {"type": "boolean"},
                        "password": {"type": "string", "writeOnly": True},
                        "interval_s": {"type": "number"},
                        "registers": {"oneOf": [{"type": "string"}, {"type": "array"}]},
                    },
                },
            },
        },
    }
