"""Checks of what reached the broker against what the bridge took: shared by the service tests."""

from __future__ import annotations

import json

from tests.bridge.mosquitto import Collector


def received(collector: Collector) -> dict[str, list[int]]:
    """meter -> timestamps of the gateway telemetry received, in arrival order."""
    out: dict[str, list[int]] = {}
    for message in collector.on("v1/gateway/telemetry"):
        for meter, entries in json.loads(message.payload).items():
            out.setdefault(meter, []).extend(int(e["ts"]) for e in entries)
    return out


def missing(taken: dict[str, list[int]], got: dict[str, list[int]]) -> dict[str, list[int]]:
    """meter -> timestamps taken that never arrived (meters with none missing are left out)."""
    out = {}
    for meter, ts in taken.items():
        lost = sorted(set(ts) - set(got.get(meter, [])))
        if lost:
            out[meter] = lost
    return out


def merge(*runs: dict[str, list[int]]) -> dict[str, list[int]]:
    """The readings of several runs of the bridge, per meter."""
    out: dict[str, list[int]] = {}
    for run in runs:
        for meter, ts in run.items():
            out.setdefault(meter, []).extend(ts)
    return out


def check_order(got: dict[str, list[int]]) -> int:
    """Each meter's readings arrive in order (a redelivered run may repeat, never reorder new
    readings before old ones); returns the number of duplicates."""
    duplicates = 0
    for meter, ts in got.items():
        seen: set[int] = set()
        newest = -1
        for t in ts:
            if t in seen:
                duplicates += 1
                continue
            assert t > newest, f"{meter}: reading {t} arrived after the newer {newest}"
            seen.add(t)
            newest = t
    return duplicates
