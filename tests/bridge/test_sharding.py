"""Splitting one inventory across bridges (``shard = "K/N"``): the hashing itself, and three
real bridges against one simulator and one broker, each meter read by exactly one of them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.config import ConfigError, config_from_dict
from bridge.service import BridgeService
from bridge.sharding import SHARD_SALT, WORKER_SALT, bucket_of, parse_shard
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Mosquitto

NAMES = [f"meter-{i:04d}" for i in range(3000)]


def test_every_name_has_one_bucket_and_the_buckets_are_balanced() -> None:
    counts = Counter(bucket_of(name, 3) for name in NAMES)
    assert set(counts) == {0, 1, 2}
    # 1,000 expected each; the binomial spread is ~26, so 100 is far outside chance.
    assert all(900 <= c <= 1100 for c in counts.values()), counts
    # The same answer every time (no per-process hash seed).
    assert [bucket_of(n, 3) for n in NAMES[:50]] == [bucket_of(n, 3) for n in NAMES[:50]]


def test_adding_a_bridge_moves_only_the_meters_the_new_one_takes() -> None:
    before = {n: bucket_of(n, 3) for n in NAMES}
    after = {n: bucket_of(n, 4) for n in NAMES}
    moved = [n for n in NAMES if before[n] != after[n]]
    assert all(after[n] == 3 for n in moved), "a meter moved between two old bridges"
    assert 0.2 < len(moved) / len(NAMES) < 0.3, len(moved)  # ~1/4, not a reshuffle


def test_workers_and_shards_split_independently() -> None:
    shard0 = [n for n in NAMES if bucket_of(n, 2, SHARD_SALT) == 0]
    workers = Counter(bucket_of(n, 2, WORKER_SALT) for n in shard0)
    assert min(workers.values()) > 0.4 * len(shard0), workers


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0/3", "K in '0/3' must be between 1 and 3"),
        ("4/3", "K in '4/3' must be between 1 and 3"),
        ("1/0", "N in '1/0' must be at least 1"),
        ("one of three", 'expected "K/N"'),
    ],
)
def test_bad_shards_are_refused_with_the_reason(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        parse_shard(text)
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {
                "bridge": {"shard": text},
                "mqtt": {"host": "h", "token": "t"},
                "meters": [{"name": "a", "host": "h", "port": 1, "registers": "field-meter"}],
            }
        )
    assert any(line.startswith("bridge.shard: ") and error in line for line in info.value.errors)


async def test_three_bridges_read_every_meter_exactly_once(
    simulator: Any, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """One inventory of 24 meters, three bridges with ``shard = "K/3"`` and their own client ids
    and data directories, topic ``fleet/{bridge}/{meter}``: every meter's readings arrive from
    exactly one bridge, the one rendezvous hashing names, and none is left out."""
    meters = 24
    _sim, ports = await simulator(meters=meters)
    names = [f"m{i:02d}" for i in range(meters)]
    collector = Collector(mosquitto, ["fleet/#"], client_id="shard-collector").start()
    try:
        services = []
        for k in (1, 2, 3):
            config = config_from_dict(
                {
                    "bridge": {
                        "name": f"edge{k}",
                        "data_dir": str(tmp_path / f"edge{k}"),
                        "shard": f"{k}/3",
                    },
                    "mqtt": {
                        "host": mosquitto.host,
                        "port": mosquitto.port,
                        "username": GATEWAY_TOKEN,
                        "password": TOKEN_PASSWORD,
                        "client_id": f"edge{k}",
                    },
                    "publish": {"mode": "topic", "topic": "fleet/{bridge}/{meter}"},
                    "defaults": {
                        "password": "00000000",
                        "registers": "field-meter",
                        "interval_s": 0.5,
                        "timeout_s": 0.3,
                    },
                    "meters": [
                        {"name": name, "host": "127.0.0.1", "port": port}
                        for name, port in zip(names, ports, strict=True)
                    ],
                }
            )
            services.append(BridgeService(config, handle_signals=False))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for service in services:
                    await nursery.start(service.run)

                def every_meter_twice(messages: list[Any]) -> bool:
                    seen = Counter(m.topic.rsplit("/", 1)[1] for m in messages)
                    return len(seen) == meters and min(seen.values()) >= 2

                await collector.wait_for(every_meter_twice, timeout=30)
                for service in services:
                    service.stop()
        by_meter: dict[str, set[str]] = {}
        for message in collector.messages:
            _fleet, bridge, meter = message.topic.split("/")
            # Topic mode: each message is an array of the meter's readings, oldest first.
            readings = json.loads(message.payload)
            assert readings and all("ts" in r for r in readings), readings
            by_meter.setdefault(meter, set()).add(bridge)
        assert sorted(by_meter) == names
        for meter, bridges in by_meter.items():
            assert bridges == {f"edge{bucket_of(meter, 3) + 1}"}, (meter, bridges)
        assert sorted(len(s.meters) for s in services) == sorted(
            Counter(bucket_of(n, 3) for n in names).values()
        )
    finally:
        collector.stop()
