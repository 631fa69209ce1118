"""``GET /metrics``: Prometheus text format, read from the live service at each scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.web.tracker import LATENCY_BUCKETS

if TYPE_CHECKING:
    from bridge.web.console import Console

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "dlms_bridge_"


class _ServiceCollector(Collector):
    def __init__(self, console: Console) -> None:
        self.console = console

    def collect(self) -> Iterator[Metric]:
        console = self.console
        service = console.service
        console.sync_totals()
        reads = CounterMetricFamily(
            _P + "meter_reads", "Poll cycles by result", labels=["meter", "result"]
        )
        missed = CounterMetricFamily(
            _P + "meter_missed_cycles", "Cycles skipped (overrun)", labels=["meter"]
        )
        resyncs = CounterMetricFamily(
            _P + "meter_resyncs", "Link resynchronisations", labels=["meter"]
        )
        discarded = CounterMetricFamily(
            _P + "meter_bytes_discarded", "Bytes skipped by the frame scanner", labels=["meter"]
        )
        recoveries = CounterMetricFamily(
            _P + "meter_recoveries", "Recoveries by level", labels=["meter", "level"]
        )
        latency = HistogramMetricFamily(
            _P + "meter_cycle_latency_seconds", "Duration of successful reads", labels=["meter"]
        )
        up = GaugeMetricFamily(_P + "meter_up", "1 while the meter answers", labels=["meter"])
        for name, totals in console.tracker.meters.items():
            c = totals.counts
            reads.add_metric([name, "ok"], c["successes"])
            reads.add_metric([name, "failed"], c["failures"])
            missed.add_metric([name], c["missed"])
            resyncs.add_metric([name], c["resyncs"])
            discarded.add_metric([name], c["bytes_discarded"])
            recoveries.add_metric([name, "in_place"], c["recovered_in_place"])
            recoveries.add_metric([name, "reassociate"], c["reassociations"])
            recoveries.add_metric([name, "reconnect"], c["reconnects"])
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), totals.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([name], buckets, totals.latency_sum)
            up.add_metric([name], 1.0 if service.online.get(name) else 0.0)
        yield from (reads, missed, resyncs, discarded, recoveries, latency, up)

        published = acked = failed = reconnects = connected = 0
        if service.publisher is not None:
            for client in service.publisher.clients.values():
                published += client.stats.published
                acked += client.stats.acked
                failed += client.stats.failed
                reconnects += max(0, client.stats.connects - 1)
                connected += int(client.connected)
            yield CounterMetricFamily(
                _P + "published_readings", "Readings delivered (PUBACK received)",
                value=service.publisher.stats.published_readings,
            )  # fmt: skip
        yield CounterMetricFamily(
            _P + "mqtt_messages_published",
            "MQTT messages handed to the connection",
            value=published,
        )
        yield CounterMetricFamily(
            _P + "mqtt_messages_acknowledged", "MQTT messages acknowledged (PUBACK)", value=acked
        )
        yield CounterMetricFamily(
            _P + "mqtt_messages_failed", "MQTT messages that failed", value=failed
        )
        yield CounterMetricFamily(_P + "mqtt_reconnects", "MQTT reconnections", value=reconnects)
        yield GaugeMetricFamily(_P + "mqtt_connected", "MQTT connections up", value=connected)

        if service.outbox is not None:
            rows, nbytes = service.outbox.depth()
            yield GaugeMetricFamily(
                _P + "outbox_rows", "Readings waiting in the outbox", value=rows
            )
            yield GaugeMetricFamily(
                _P + "outbox_bytes", "Bytes waiting in the outbox", value=nbytes
            )
            yield GaugeMetricFamily(
                _P + "outbox_oldest_age_seconds", "Age of the oldest unsent reading (0: empty)",
                value=console.oldest_unsent_age_s() or 0.0,
            )  # fmt: skip
            yield CounterMetricFamily(
                _P + "outbox_dropped", "Readings dropped to stay within the outbox bounds",
                value=service.outbox.dropped_rows,
            )  # fmt: skip
        yield GaugeMetricFamily(
            _P + "alarms_active", "Active alarms", value=len(console.alarms.active())
        )
        yield GaugeMetricFamily(
            _P + "uptime_seconds", "Seconds since the service started", value=console.uptime_s()
        )


def render_metrics(console: Console) -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(console))
    return generate_latest(registry)
