"""The JSON views of the API: the service's status and each meter, never with a secret."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from bridge import __version__
from bridge.config import MeterConfig, converter

if TYPE_CHECKING:
    from bridge.web.console import Console

__all__ = ["meter_config_view", "meter_view", "status_view"]

#: Keys of a meter's config that are secrets (marked so in bridge.config): never shown, only
#: whether they are set.
SECRET_KEYS = tuple(f.name for f in attrs.fields(MeterConfig) if f.metadata.get("secret"))


def meter_config_view(meter: MeterConfig) -> dict[str, Any]:
    """A meter's resolved config without its secrets."""
    blanked: dict[str, Any] = dict.fromkeys(SECRET_KEYS)
    out: dict[str, Any] = converter.unstructure(attrs.evolve(meter, **blanked))
    for key in SECRET_KEYS:
        out.pop(key, None)
        out[f"has_{key}"] = getattr(meter, key) is not None
    return out


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def meter_view(
    console: Console,
    meter: MeterConfig,
    *,
    brief: bool = False,
    alarms: Iterable[str] | None = None,
) -> dict[str, Any]:
    """One meter: config, state, last values with units and age, rates, recoveries.

    ``alarms``: the service's active alarm names, when the caller already has them.
    """
    service = console.service
    if alarms is None:
        alarms = service.all_alarms()
    name = meter.name
    poller = service.polled(name)
    totals = console.tracker.meters.get(name)
    counts = totals.counts if totals is not None else {}
    reading = console.last.get(name)
    units = poller.units if poller is not None else {}
    stats = poller.stats.as_dict() if poller is not None else {}
    if not meter.enabled:
        state = "disabled"
    elif poller is None:
        state = "starting"
    else:
        state = poller.stats.state
    out: dict[str, Any] = {
        "name": name,
        "source": "api" if name in service.config.api_meters else "file",
        "enabled": meter.enabled,
        "address": meter.address,
        "interval_s": meter.interval_s,
        "state": state,
        "online": bool(service.online.get(name)),
        "circuit": "open" if stats.get("circuit_open") else "closed",
        "values": {
            key: {"value": value, "unit": units.get(key)}
            for key, value in (reading.values.items() if reading is not None else ())
        },
        "ts_ms": reading.ts_ms if reading is not None else None,
        "age_s": round(time.time() - reading.ts_ms / 1000, 3) if reading is not None else None,
        "success_rate": _rate(counts.get("successes", 0), counts.get("cycles", 0)),
        "latency_p50_s": stats.get("latency_p50"),
        "latency_p95_s": stats.get("latency_p95"),
        "recoveries": {
            "in_place": counts.get("recovered_in_place", 0),
            "reassociate": counts.get("reassociations", 0),
            "reconnect": counts.get("reconnects", 0),
        },
        "last_error": stats.get("last_error"),
        "alarms": sorted(a for a in alarms if a.startswith(f"meter.{name}.")),
    }
    if not brief:
        out["counters"] = dict(counts)
        out["config"] = meter_config_view(meter)
    return out


def status_view(console: Console) -> dict[str, Any]:
    """The service as a whole: MQTT, outbox, counters, meters, alarms."""
    service = console.service
    console.sync_totals()
    publisher = service.publisher
    clients = list(publisher.clients.values()) if publisher is not None else []
    outbox = service.outbox
    rows, nbytes = outbox.depth() if outbox is not None else (0, 0)
    oldest_age = console.oldest_unsent_age_s()
    taken = sum(t.counts["readings"] for t in console.tracker.meters.values())
    cycles = sum(t.counts["cycles"] for t in console.tracker.meters.values())
    failures = sum(t.counts["failures"] for t in console.tracker.meters.values())
    meters = service.config.meters
    return {
        "name": service.config.bridge.name,
        "version": __version__,
        "uptime_s": round(console.uptime_s(), 3),
        "healthy": service.healthy(),
        "mqtt": {
            "broker": service.config.mqtt.address,
            "mode": service.config.publish.mode,
            "connected": bool(clients) and all(c.connected for c in clients),
            "connections": len(clients),
            "connections_up": sum(c.connected for c in clients),
            "alarms": sorted(publisher.alarms) if publisher is not None else [],
        },
        "outbox": {
            "rows": rows,
            "bytes": nbytes,
            "max_rows": service.config.publish.outbox_max_rows,
            "max_bytes": service.config.publish.outbox_max_bytes,
            "oldest_unsent_age_s": round(oldest_age, 3) if oldest_age is not None else None,
            "dropped": outbox.dropped_rows if outbox is not None else 0,
        },
        "counters": {
            "cycles": cycles,
            "failures": failures,
            "readings_taken": taken,
            "readings_published": publisher.stats.published_readings if publisher else 0,
            "messages_published": sum(c.stats.published for c in clients),
            "messages_acknowledged": sum(c.stats.acked for c in clients),
            "publish_failures": publisher.stats.publish_failures if publisher else 0,
            "reloads": service.reloads,
        },
        "meters": {
            "total": len(meters),
            "enabled": sum(m.enabled for m in meters),
            "online": sum(1 for m in meters if service.online.get(m.name)),
            "from_api": len(service.config.api_meters),
        },
        "alarms_active": len(console.alarms.active()),
        **console.state_summary(),
    }
