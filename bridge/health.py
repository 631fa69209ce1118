"""Health verdicts from the service's status (what ``dlms-bridge health`` prints).

:func:`evaluate` is pure: the status document (from the status socket) and the wall-clock time
in, a :class:`HealthReport` out. The rules:

=============  ===========================================================================
check          verdict
=============  ===========================================================================
``service``    ok while running; warning while starting or stopping; critical when the
               status cannot be had (the command reports that itself)
``mqtt``       ok when every broker connection is up; critical when one is down
``publish``    warning when readings wait and nothing was delivered for
               :func:`delivery_grace_s`
``outbox``     warning when the oldest unsent reading is older than :func:`delivery_grace_s`;
               critical while readings are dropped (``outbox.overflow``); warning while it
               cannot write (disk full, read-only) and readings wait in memory
``meter:NAME`` ok when the meter gave a reading within :data:`FRESH_INTERVALS` intervals
               (or the service started less long ago); warning (stale) otherwise
``alarms``     warning for every active alarm that no check above already judged
=============  ===========================================================================

The exit code is the worst verdict: 0 ok, 1 warning, 2 critical (the Nagios plugin codes).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "DELIVERY_GRACE_MIN_S",
    "FRESH_INTERVALS",
    "METRIC_KEYS",
    "Check",
    "HealthReport",
    "Verdict",
    "delivery_grace_s",
    "evaluate",
    "unreachable",
]

#: A meter is fresh while its last reading is at most this many intervals old.
FRESH_INTERVALS = 2
#: The metrics of a report (``--json`` always has each key, null when not known).
METRIC_KEYS = ("outbox_rows", "meters_ok", "meters_stale", "mqtt_up", "mqtt_down", "alarms")
#: Readings may wait this long (at least) for delivery before it is a warning.
DELIVERY_GRACE_MIN_S = 120.0


class Verdict(enum.IntEnum):
    """A check's verdict; the value is the exit code it asks for."""

    OK = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        """``OK``, ``WARNING`` or ``CRITICAL``."""
        return self.name


@attrs.frozen
class Check:
    """One line of the report."""

    name: str
    verdict: Verdict
    detail: str

    def to_json(self) -> dict[str, Any]:
        """``{"name", "status", "detail"}`` with status ``ok``/``warning``/``critical``."""
        return {"name": self.name, "status": self.verdict.name.lower(), "detail": self.detail}


@attrs.frozen
class HealthReport:
    """Every check and the overall verdict."""

    checks: tuple[Check, ...]
    service: str | None = None
    #: Numbers for monitoring graphs (the Nagios performance data): outbox rows, meters ok
    #: and stale, broker connections up and down, active alarms (:data:`METRIC_KEYS`).
    metrics: dict[str, int] = attrs.field(factory=dict)

    def perfdata(self) -> str:
        """``name=value ...`` of :attr:`metrics` (empty when there are none)."""
        return " ".join(f"{k}={v}" for k, v in self.metrics.items())

    def metrics_json(self) -> dict[str, int | None]:
        """Every documented metric, None for those not known (the service unreachable)."""
        return {key: self.metrics.get(key) for key in METRIC_KEYS}

    @property
    def verdict(self) -> Verdict:
        """The worst verdict of any check."""
        return max((c.verdict for c in self.checks), default=Verdict.OK)

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 warnings, 2 critical."""
        return int(self.verdict)

    def summary(self) -> str:
        """One line: the verdict and what is wrong (or how many checks passed)."""
        bad = [c for c in self.checks if c.verdict is not Verdict.OK]
        if not bad:
            return f"OK: {len(self.checks)} checks passed"
        worst = sorted(bad, key=lambda c: -c.verdict)
        return f"{self.verdict.label}: " + "; ".join(f"{c.name}: {c.detail}" for c in worst)

    def to_json(self) -> dict[str, Any]:
        """The documented ``--json`` form."""
        return {
            "status": self.verdict.name.lower(),
            "exit_code": self.exit_code,
            "service": self.service,
            "summary": self.summary(),
            "checks": [c.to_json() for c in self.checks],
            "metrics": self.metrics_json(),
        }


def unreachable(reason: str) -> HealthReport:
    """The report when the service cannot be asked."""
    return HealthReport((Check("service", Verdict.CRITICAL, f"unreachable: {reason}"),))


def delivery_grace_s(status: Mapping[str, Any]) -> float:
    """How long readings may wait for delivery: 4 of the longest poll intervals, at least
    :data:`DELIVERY_GRACE_MIN_S`."""
    intervals = [float(m.get("interval_s") or 0) for m in (status.get("meters") or {}).values()]
    return max(DELIVERY_GRACE_MIN_S, 4 * max(intervals, default=0.0))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def evaluate(status: Mapping[str, Any], now: float) -> HealthReport:
    """Judge a status document (see :mod:`bridge.status_socket`) at wall-clock time ``now``."""
    checks: list[Check] = []
    judged_alarms: set[str] = set()
    alarms: dict[str, str] = dict(status.get("alarms") or {})
    started_at = float(status.get("started_at") or now)
    uptime = now - started_at
    grace = delivery_grace_s(status)

    # service
    up = f"up {_age(uptime)}, pid {status.get('pid')}, version {status.get('version')}"
    if status.get("stopping"):
        checks.append(Check("service", Verdict.WARNING, f"stopping ({up})"))
    elif not status.get("ready", True):
        checks.append(Check("service", Verdict.WARNING, f"starting ({up})"))
    else:
        checks.append(Check("service", Verdict.OK, up))

    # mqtt
    connections: dict[str, Any] = dict(status.get("mqtt") or {})
    down = {k: v for k, v in connections.items() if not v.get("connected")}
    if not connections:
        checks.append(Check("mqtt", Verdict.CRITICAL, "no broker connection configured"))
    elif down:
        parts = []
        for key, conn in sorted(down.items()):
            who = conn.get("broker") or ("broker" if key == "None" else key)
            why = conn.get("last_error") or ", ".join(conn.get("alarms") or []) or "connecting"
            parts.append(why if who in why else f"{who}: {why}")
            judged_alarms.update(conn.get("alarms") or [])
        checks.append(
            Check(
                "mqtt",
                Verdict.CRITICAL,
                f"{len(down)} of {len(connections)} broker connection(s) down: " + "; ".join(parts),
            )
        )
    else:
        n = len(connections)
        checks.append(Check("mqtt", Verdict.OK, f"connected ({n} connection{'s' * (n != 1)})"))
    for name in alarms:
        if name.startswith("mqtt.") and down:
            judged_alarms.add(name)

    # outbox and publish
    outbox: dict[str, Any] = dict(status.get("outbox") or {})
    rows = int(outbox.get("rows") or 0)
    oldest_ms = outbox.get("oldest_ts_ms")
    publisher: dict[str, Any] = dict(status.get("publisher") or {})
    last_delivery = publisher.get("last_delivery_ts")
    if last_delivery is None:
        last = "nothing delivered since the start"
    else:
        last = f"last delivery {_age(now - float(last_delivery))} ago"
    waiting_since = float(last_delivery) if last_delivery is not None else started_at
    if rows and now - waiting_since > grace:
        checks.append(Check("publish", Verdict.WARNING, f"{last}; {rows} reading(s) waiting"))
    else:
        checks.append(Check("publish", Verdict.OK, last))
    if "outbox.overflow" in alarms:
        judged_alarms.add("outbox.overflow")
        checks.append(
            Check("outbox", Verdict.CRITICAL, f"full: dropping the oldest readings ({rows} rows)")
        )
    elif outbox.get("error"):
        checks.append(Check("outbox", Verdict.CRITICAL, str(outbox["error"])))
    elif outbox.get("writable") is False:
        # Polling goes on into the in-memory spill: nothing lost yet, but the operator must act.
        judged_alarms.add("outbox.write_failed")
        spilled = int(outbox.get("spill_rows") or 0)
        problem = outbox.get("problem") or "cannot write"
        detail = f"{problem}; {spilled} reading(s) kept in memory until it writes again"
        checks.append(Check("outbox", Verdict.WARNING, detail))
    elif rows and oldest_ms is not None and now - float(oldest_ms) / 1000 > grace:
        checks.append(
            Check(
                "outbox",
                Verdict.WARNING,
                f"{rows} rows, oldest unsent reading {_age(now - float(oldest_ms) / 1000)} old",
            )
        )
    elif rows and oldest_ms is not None:
        age = _age(now - float(oldest_ms) / 1000)
        checks.append(Check("outbox", Verdict.OK, f"{rows} rows, oldest {age} old"))
    else:
        checks.append(Check("outbox", Verdict.OK, f"{rows} rows"))

    # meters
    for name, meter in sorted((status.get("meters") or {}).items()):
        interval = float(meter.get("interval_s") or 0)
        window = FRESH_INTERVALS * interval
        last_ms = meter.get("last_success_ms")
        failing = f"meter.{name}.failing"
        extra = f"; {meter['last_error']}" if meter.get("last_error") else ""
        if last_ms is not None and now - float(last_ms) / 1000 <= window:
            checks.append(
                Check(
                    f"meter:{name}",
                    Verdict.OK,
                    f"fresh, last reading {_age(now - float(last_ms) / 1000)} ago",
                )
            )
            continue
        if last_ms is None and uptime <= window:
            checks.append(Check(f"meter:{name}", Verdict.OK, "starting, no reading yet"))
            continue
        judged_alarms.add(failing)
        judged_alarms.add(f"meter.{name}.crashed")
        if last_ms is None:
            detail = f"stale: no reading since the start {_age(uptime)} ago{extra}"
        else:
            age = _age(now - float(last_ms) / 1000)
            detail = f"stale: last reading {age} ago (interval {interval:g} s){extra}"
        checks.append(Check(f"meter:{name}", Verdict.WARNING, detail))

    # alarms
    rest = {k: v for k, v in alarms.items() if k not in judged_alarms}
    if rest:
        checks.append(
            Check(
                "alarms",
                Verdict.WARNING,
                f"{len(rest)} active: " + "; ".join(f"{k}: {v}" for k, v in sorted(rest.items())),
            )
        )
    else:
        checks.append(Check("alarms", Verdict.OK, "none active"))
    service = status.get("name")
    meter_checks = [c for c in checks if c.name.startswith("meter:")]
    metrics = {
        "outbox_rows": rows,
        "meters_ok": sum(c.verdict is Verdict.OK for c in meter_checks),
        "meters_stale": sum(c.verdict is not Verdict.OK for c in meter_checks),
        "mqtt_up": len(connections) - len(down),
        "mqtt_down": len(down),
        "alarms": len(alarms),
    }
    return HealthReport(
        tuple(checks),
        service=str(service) if service is not None else None,
        metrics=metrics,
    )
